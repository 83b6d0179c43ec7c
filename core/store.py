"""The SPTE store: table pages of 512 64-bit entries with atomic operations.

Each read, write, exchange and compare-exchange is one operation of the scheduler (one
yield point, then an atomic step), so the controlled scheduler can interleave threads
between any two SPTE accesses, exactly where real CPUs can.  A page freed through RCU
stays allocated as an object; touching it afterwards is reported as the ``BUG`` a KASAN
use-after-free report would be, and the access still happens (the memory is still there).
"""
from __future__ import annotations

from .findings import Recorder
from .sched import Scheduler, current
from .spte import PT64_ENT_PER_PAGE, SHADOW_NONPRESENT_VALUE


class PageAllocator:
    """Hands out page frame numbers deterministically (never reused within a run).

    Never reusing a PFN keeps use-after-free and double-map detection exact: a stale
    PFN can never alias a live page.
    """

    def __init__(self, first: int = 0x1000) -> None:
        self._next = first

    def alloc(self) -> int:
        pfn = self._next
        self._next += 1
        return pfn

    def alloc_range(self, n: int, align: int = 1) -> int:
        self._next = (self._next + align - 1) // align * align
        base = self._next
        self._next += n
        return base


class KvmMmuPage:
    """struct kvm_mmu_page: one table of the TDP MMU ("sp").

    ``level`` is ``role.level``, the level of this table's entries; ``gfn`` the first GFN
    it maps; ``ptep`` the (parent page, index) SPTE that links it (None for a root).
    """

    __slots__ = ("spt", "pfn", "level", "gfn", "is_mirror", "external_spt", "ptep",
                 "freed", "free_count", "linked", "unlinked", "_sched", "_rec")

    def __init__(self, sched: Scheduler, rec: Recorder, pfn: int, level: int, gfn: int,
                 is_mirror: bool, external_spt: int | None = None) -> None:
        self.spt = [SHADOW_NONPRESENT_VALUE] * PT64_ENT_PER_PAGE
        self.pfn = pfn
        self.level = level
        self.gfn = gfn
        self.is_mirror = is_mirror
        self.external_spt = external_spt
        self.ptep: tuple[KvmMmuPage, int] | None = None
        self.freed = False
        self.free_count = 0
        self.linked = False       # ever made reachable from a root
        self.unlinked = False     # made unreachable again (a parent SPTE stopped pointing here)
        self._sched = sched
        self._rec = rec

    def __repr__(self) -> str:
        kind = "mirror" if self.is_mirror else "direct"
        return f"sp({kind} L{self.level} gfn={self.gfn:#x} pfn={self.pfn:#x})"

    def _check_live(self, what: str) -> None:
        if self.freed:
            self._rec.report("BUG", "KASAN:use-after-free",
                             f"{what} on {self!r} after it was freed", current())

    # Each accessor is one operation.  The lambdas run inside the atomic step.  (They
    # test ``freed`` before calling _check_live(), which reports only a freed page.)
    def read(self, i: int) -> int:
        """READ_ONCE(*sptep) / kvm_tdp_mmu_read_spte()."""
        def step() -> int:
            if self.freed:
                self._check_live("read")
            return self.spt[i]
        return self._sched.op("spte.read", (self, i), step)

    def write(self, i: int, new: int) -> int:
        """WRITE_ONCE(*sptep, new) (__kvm_tdp_mmu_write_spte); returns the old value."""
        def step() -> int:
            if self.freed:
                self._check_live("write")
            old = self.spt[i]
            self.spt[i] = new
            return old
        return self._sched.op("spte.write", (self, i, new), step)

    def xchg(self, i: int, new: int) -> int:
        """xchg(sptep, new) (kvm_tdp_mmu_write_spte_atomic); returns the old value."""
        def step() -> int:
            if self.freed:
                self._check_live("xchg")
            old = self.spt[i]
            self.spt[i] = new
            return old
        return self._sched.op("spte.xchg", (self, i, new), step)

    def cmpxchg(self, i: int, old: int, new: int) -> tuple[bool, int]:
        """try_cmpxchg64(sptep, &old, new): (succeeded, value found)."""
        def step() -> tuple[bool, int]:
            if self.freed:
                self._check_live("cmpxchg")
            cur = self.spt[i]
            if cur == old:
                self.spt[i] = new
                return True, cur
            return False, cur
        return self._sched.op("spte.cmpxchg", (self, i, old, new), step)
