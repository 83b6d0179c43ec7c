"""The simulated VM: ``struct kvm`` with its vCPUs, guest_memfd, the TDP MMU, the TDX
hooks and the TDX module, plus the entry points that threads call.

Threads (vCPUs and zappers) are made by ``stress``; here are the kernel paths they run:

* vCPU: :meth:`Kvm.vcpu_enter_guest` (enter, run the guest, handle the exit), with
  :meth:`Kvm.tdx_handle_ept_violation` for faults (local retry, docs/model.md §3.4);
* zappers: punch a hole, convert, delete and re-add a memslot, split a 2M leaf, zap a
  table, prefault, populate tables, recover huge pages, a memory-failure zap.  This is
  v6.19 (4K private pages: splitting, zapping a table and recovering do nothing); the
  hugepage RFC and each hunt's what-if path are patches over it (:mod:`core.patches`);
* :meth:`Kvm.build` (PAGE.ADD, finalise) and :meth:`Kvm.kvm_destroy_vm` (teardown: close
  guest_memfd, release the HKID, zap the roots and reclaim the S-EPT pages).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

from .findings import Recorder
from .mmu_lock import MmuLock
from .rcu import Rcu
from .sched import PassThrough, Scheduler, cpu_relax, current
from .spte import (
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    gfn_round_for_level,
)
from .store import PageAllocator
from .tdp_mmu import RET_PF_MEMORY_FAULT, RET_PF_RETRY, RET_PF_SPLIT, PageFault, TdpMmu
from .tdx import KVM_REQ_OUTSIDE_GUEST_MODE, KVM_REQ_VM_DEAD, KvmTdx
from .tdx_errno import NAMES, status, tdx_operand_busy
from .tdx_module import TdxModule
from .variants import Variant, get_variant

# The guest a run models: a Linux TD (SEPT_VE_DISABLE, accepts before use, MapGPA), or
# a guest whose #VE handler accepts a PENDING page on touch (legal for the module; no
# Linux TD does it).  See core.guest.
GUEST_KINDS = ("linux", "ve-accept")
EIO = 5
EFAULT = 14

OUTSIDE_GUEST_MODE = "OUTSIDE_GUEST_MODE"
IN_GUEST_MODE = "IN_GUEST_MODE"


@dataclass(frozen=True)
class MemRegion:
    """A private memory region backed by guest_memfd; ``huge`` regions are 2M-aligned
    and may be mapped by 2M leaves where the kernel maps private memory at 2M."""
    base: int
    npages: int
    huge: bool = False

    def __contains__(self, gfn: int) -> bool:
        return self.base <= gfn < self.base + self.npages


@dataclass
class GuestExit:
    """How a guest run ended: ``reason`` is "ept" (with the GFN, level hint and RIP),
    "mapgpa" (a TDG.VP.VMCALL<MapGPA>), "kick" (an IPI from a request), "panic" (the
    guest died) or "done" (the guest program finished)."""
    reason: str
    gfn: int | None = None
    level: int = PG_LEVEL_4K
    rip: int | None = None
    private: bool = True
    accept: bool = False      # the EPT violation of a TDG.MEM.PAGE.ACCEPT, not of an access
    # extended exit qualification type PENDING_EPT_VIOLATION: an access to a PENDING
    # page of a TD with SEPT_VE_DISABLE (td_ept_violation.c)
    pending: bool = False
    npages: int = 0           # "mapgpa": TDG.VP.VMCALL<MapGPA> of [gfn, gfn + npages)
    shared: bool = False      # "mapgpa": to shared (else to private)


def _count_changes(cls: type, base: type, methods: tuple[str, ...]) -> None:
    """Give ``cls`` each of ``base``'s mutating ``methods``, bumping the instance's
    ``changes`` first."""
    def counting(method: str) -> Any:
        f = getattr(base, method)

        def m(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.changes += 1
            return f(self, *args, **kwargs)
        m.__name__ = method
        m.__qualname__ = f"{cls.__name__}.{method}"
        return m
    for method in methods:
        setattr(cls, method, counting(method))


class CountedDict(dict):
    """A dict that counts the changes made to it (``changes``); reads are the dict's
    own, as fast.  Model helper: lets a check over many entries (Kvm._folio_intact) be
    remembered until the next change."""
    changes = 0


class CountedSet(set):
    """A set that counts the changes made to it (``changes``), as CountedDict."""
    changes = 0


_count_changes(CountedDict, dict, ("__setitem__", "__delitem__", "__ior__", "pop", "popitem",
                                   "setdefault", "update", "clear"))
_count_changes(CountedSet, set, ("add", "discard", "remove", "pop", "clear", "update",
                                 "difference_update", "intersection_update",
                                 "symmetric_difference_update", "__ior__", "__iand__",
                                 "__isub__", "__ixor__"))


class Guest(Protocol):
    """A guest program: runs while its vCPU is in the guest, until it must exit."""

    def run(self, kvm: "Kvm", vcpu: "KvmVcpu") -> GuestExit: ...

    def complete_hypercall(self, kvm: "Kvm", vcpu: "KvmVcpu") -> None: ...


class KvmVcpu:
    """struct kvm_vcpu: mode, requests, and the counter the kick waits on."""

    def __init__(self, vcpu_id: int) -> None:
        self.vcpu_id = vcpu_id
        self.mode = OUTSIDE_GUEST_MODE
        self.outside_count = 0      # times it went back to OUTSIDE_GUEST_MODE
        self.requests: set[str] = set()
        # An IPI sent to this CPU while the vCPU was in guest mode: it forces the guest
        # out and is gone (hardware, not a KVM request).
        self.ipi_pending = False
        self.thread: str = ""
        self.stats = {"entries": 0, "busy_enter": 0, "ept": 0, "kicks": 0, "zap_wait": 0,
                      "faults": 0, "fault_retries": 0}

    def __repr__(self) -> str:
        return f"vcpu{self.vcpu_id}"


class Kvm:
    """One TD and everything KVM keeps for it."""

    def __new__(cls, variant: Variant | str = "hugepage-rfc", *args: object,
                **kwargs: object) -> "Kvm":
        """A patch variant that overrides Kvm's functions gets its subclass."""
        v = get_variant(variant) if isinstance(variant, str) else variant
        return super().__new__(v.compose(cls))

    def __init__(self, variant: Variant | str = "hugepage-rfc", sched: Scheduler | None = None,
                 *, nr_vcpus: int = 2, regions: tuple[MemRegion, ...] | None = None,
                 busy_rate: float = 0.0, rng: random.Random | None = None,
                 recorder: Recorder | None = None, signal_rate: float = 0.0,
                 signal_rng: random.Random | None = None, guest: str = "ve-accept",
                 hostile_vmm: bool = False) -> None:
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        self.sched: Scheduler = sched or PassThrough()
        self.rec = recorder or Recorder(lambda: self.sched.step)
        self.pages = PageAllocator()
        self.external_state: dict[int, str] = {}
        self.mmu_lock = MmuLock(self.sched, self.rec)
        self.rcu = Rcu(self.sched, self.rec)
        if guest not in GUEST_KINDS:
            raise ValueError(f"unknown guest {guest!r}; known: {', '.join(GUEST_KINDS)}")
        self.guest_kind = guest
        # the VMM converts, punches and deletes memory on its own (async conversions):
        # a guest that fails because memory went from under it is its doing
        self.hostile_vmm = hostile_vmm
        # A Linux TD is created with ATTRIBUTES.SEPT_VE_DISABLE (docs/model.md §3.4)
        v = self.variant
        self.module = v.compose(TdxModule)(self.sched, nr_vcpus, busy_rate=busy_rate,
                                           rng=rng,
                                           sept_ve_disable=guest == "linux")
        self.tdx = v.compose(KvmTdx)(self)
        self.mmu = v.compose(TdpMmu)(self)
        self.vcpus = [KvmVcpu(i) for i in range(nr_vcpus)]
        self.regions = regions if regions is not None else (
            MemRegion(0x0, 16), MemRegion(0x200, 512, huge=True))
        self.gmem: dict[int, int] = CountedDict()   # private gfn -> pfn (guest_memfd)
        # slot->gmem.file: the memslots' guest_memfd, until kvm_gmem_release() clears it
        self.gmem_file_open = True
        self.shared_mem: dict[int, int] = {}    # shared gfn -> pfn
        self.shared_gfns: set[int] = CountedSet()   # memory attributes: these are shared
        # _folio_intact()'s answers: 2M base -> (gmem, its changes, shared_gfns, its
        # changes, answer), good while neither container changed
        self._intact_memo: dict[int, tuple] = {}
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.mmu_invalidate_range: tuple[int, int] | None = None   # merged [start, end)
        self.invalid_slots: list[tuple[int, int]] = []   # KVM_MEMSLOT_INVALID ranges
        self.vm_bugged = False
        self.vm_dead = False
        # why KVM killed the VM without a bug (kvm_vm_dead(): the guest's fault, or the
        # VMM's), for the run's outcome; a finding never comes from this
        self.vm_killed: str | None = None
        # the VMM stopped running the vCPUs (vmm_stop_vm)
        self.vmm_stopped = False
        # kvm->srcu: read-side sections open per thread, and how many each has left
        # lpage_info's KVM_LPAGE_GUEST_INHIBIT_FLAG at 2M: 2M ranges the guest accepted
        # below 2M; set under the write lock after the split, never cleared (RFC5 40/45)
        self.guest_inhibit_2m: set[int] = set()
        self.srcu_readers: dict[str, int] = {}
        self.srcu_left: dict[str, int] = {}
        self.initial_gfns: tuple[int, ...] = ()
        self.guest_memory: object | None = None     # core.guest.LinuxGuestMemory
        self.signal_rate = signal_rate
        self._signal_rng = signal_rng or random.Random(0)
        self.signals = 0

    def signal_pending(self) -> bool:
        """signal_pending(current): a signal for the thread in a retry loop (the VMM's
        SIGUSR to kick a vCPU thread out to userspace, a fatal signal).  Rare and drawn
        from the seed's own stream, so a run replays exactly."""
        def step() -> bool:
            hit = self.signal_rate > 0.0 and self._signal_rng.random() < self.signal_rate
            self.signals += hit
            return hit
        return self.sched.op("signal_pending", None, step)

    # ------------------------------------------------------------------ reporting
    def _mark_bugged(self) -> None:
        def step() -> None:
            self.vm_bugged = True
            self._vm_dead()
        self.sched.op("kvm_vm_bugged", None, step)

    def _vm_dead(self) -> None:
        """The VM is dead: every vCPU gets KVM_REQ_VM_DEAD (inside a step)."""
        self.vm_dead = True
        for v in self.vcpus:
            v.requests.add(KVM_REQ_VM_DEAD)

    def kvm_vm_dead(self, why: str) -> None:
        """kvm_vm_dead(): the VM is dead (vCPUs leave with KVM_REQ_VM_DEAD, ioctls fail)
        without being bugged: KVM's deliberate answer to something the guest or VMM did.
        Kept as the run's outcome, never as a finding."""
        def step() -> None:
            self._record_outcome(why)
            self._vm_dead()
        self.sched.op("kvm_vm_dead", None, step)

    def _record_outcome(self, why: str) -> None:
        """The run's outcome when the VM ends without a bug: the first reason only, and
        none once the VM is bugged (the finding says what happened; inside a step)."""
        if self.vm_killed is None and not self.vm_bugged:
            self.vm_killed = why

    def vmm_stop_vm(self, why: str) -> None:
        """What the VMM does when KVM_RUN fails in a way it cannot resolve, or the guest
        reports a fatal error (QEMU: "KVM run failed" / guest panic, vm_stop()): it stops
        every vCPU thread, kicking those still in the guest (tool-named; the kernel has
        no such function: the signal that gets a vCPU out is the VMM's).  The run's
        outcome, like kvm_vm_dead(), never a finding."""
        def step() -> None:
            self._record_outcome(f"userspace stopped the VM: {why}")
            self.vmm_stopped = True
        self.sched.op("vmm_stop_vm", None, step)
        self.kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)

    def guest_failure(self, where: str, message: str, fatal: bool) -> None:
        """A Linux TD failed (a panic, or a WARN with leaked pages): a ``GUEST`` finding
        when the VMM converts only when asked (MapGPA), since then KVM or the module made
        it fail; with a VMM that takes memory on its own (async) it is that VMM's doing:
        a panic is the run's outcome, like a VM KVM killed, and never a finding."""
        if not self.hostile_vmm:
            self.rec.report("GUEST", where, message, current())
        elif fatal:
            self.sched.op("guest_panic", None, lambda: self._record_outcome(
                f"the guest panicked under a hostile VMM: {message}"))

    def kvm_bug_on(self, where: str, message: str) -> None:
        """KVM_BUG_ON(): WARN, mark the VM bugged (vCPUs leave with KVM_REQ_VM_DEAD)."""
        self.rec.report("KVM_BUG_ON", where, message, current())
        self._mark_bugged()

    def kvm_bug_on_if(self, cond: bool, where: str, message: str) -> bool:
        """KVM_BUG_ON(cond, kvm): report when ``cond`` holds; returns ``cond``."""
        if cond:
            self.kvm_bug_on(where, message)
        return cond

    def tdx_bug_on(self, err: int, where: str, seamcall: str) -> bool:
        """TDX_BUG_ON(err, SEAMCALL, kvm): a failed SEAMCALL that KVM cannot handle."""
        if not err:
            return False
        name = NAMES.get(status(err), f"{status(err):#x}")
        self.rec.report("TDX_BUG_ON", f"{where}:{seamcall}:{name}",
                        f"SEAMCALL {seamcall} failed: {err:#x} ({name})", current())
        self._mark_bugged()
        return True

    def warn(self, where: str, message: str) -> None:
        """WARN_ON_ONCE()."""
        self.rec.report("WARN", where, message, current())

    def bug(self, where: str, message: str) -> None:
        """BUG(): the host would crash; the model marks the VM dead and goes on."""
        self.rec.report("BUG", where, message, current())
        self._mark_bugged()

    def violation(self, invariant: int, message: str) -> None:
        """An invariant of docs/model.md §7 broken, seen the moment it happened."""
        self.rec.report("INVARIANT", f"invariant{invariant}", message, current())

    def external_transition(self, pfn: int, new: str) -> None:
        """Track an external_spt page: allocated -> in_sept -> freed | leaked."""
        old = self.external_state.get(pfn)
        if old in ("freed", "leaked"):
            self.violation(6, f"external_spt {pfn:#x} {new} after it was {old}")
        self.external_state[pfn] = new

    # ------------------------------------------------------------------ guest_memfd
    def region_of(self, gfn: int) -> MemRegion | None:
        """gfn_to_memslot(), over the model's fixed regions."""
        for r in self.regions:
            if gfn in r:
                return r
        return None

    def kvm_gmem_get_pfn(self, gfn: int) -> tuple[int, int] | None:
        """kvm_gmem_get_pfn(): (pfn, max mapping level), allocating the backing page
        (a 2M folio for a huge region); None if the gfn has no private backing."""
        region = self.region_of(gfn)
        if region is None:
            return None
        # kvm_gmem_get_file(slot): NULL once the file was released, and __kvm_gmem_get_pfn
        # fails (-EFAULT)
        if not self.sched.op("kvm_gmem_get_file", gfn, lambda: self.gmem_file_open):
            return None

        def step() -> tuple[int, int]:
            if gfn not in self.gmem:
                self.kvm_gmem_get_folio(gfn, region)
            pfn = self.gmem[gfn]
            # kvm_mmu_faultin_pfn_private(): "fault->max_level =
            # kvm_max_level_for_order(max_order)", then the vendor's limit
            # (kvm_x86_ops.gmem_max_mapping_level)
            level = self.tdx.tdx_gmem_max_mapping_level(pfn, True)
            if level > PG_LEVEL_4K and not self._folio_intact(gfn):
                level = PG_LEVEL_4K
            return pfn, level
        return self.sched.op("kvm_gmem_get_pfn", gfn, step)

    def kvm_gmem_get_folio(self, gfn: int, region: MemRegion) -> None:
        """kvm_gmem_get_folio() (virt/kvm/guest_memfd.c) of v6.19: allocate the folio
        backing ``gfn``, of order 0 (guest_memfd allocates PAGE_SIZE folios; 2M folios
        are the hugepage RFC's)."""
        self.gmem[gfn] = self.pages.alloc()

    def _folio_intact(self, gfn: int) -> bool:
        """The guest_memfd folio behind ``gfn``'s 2M range is one whole 2M folio and no
        GFN of the range is shared (model helper: kvm_gmem_mapping_order() and the
        mixed-attribute flag of lpage_info)."""
        base = gfn_round_for_level(gfn, PG_LEVEL_2M)
        gmem, shared = self.gmem, self.shared_gfns
        if not (isinstance(gmem, CountedDict) and isinstance(shared, CountedSet)):
            return self._folio_intact_now(base)     # replaced by plain containers
        memo = self._intact_memo.get(base)
        if memo is not None and memo[0] is gmem and memo[1] == gmem.changes \
                and memo[2] is shared and memo[3] == shared.changes:
            return memo[4]
        answer = self._folio_intact_now(base)
        self._intact_memo[base] = (gmem, gmem.changes, shared, shared.changes, answer)
        return answer

    def _folio_intact_now(self, base: int) -> bool:
        """_folio_intact() of the 2M range at ``base``, read from guest_memfd and the
        memory attributes as they are."""
        first = self.gmem.get(base)
        if first is None or first % 512:
            return False
        # every GFN of the range backed by the folio's page at its offset (first + i) ...
        if list(map(self.gmem.get, range(base, base + 512))) != list(range(first, first + 512)):
            return False
        # ... and none of them shared (the set is small: look its members up in the range)
        return not any(base <= g < base + 512 for g in self.shared_gfns)

    # ------------------------------------------------------------------ invalidation
    def kvm_mmu_invalidate_begin(self) -> None:
        """kvm_mmu_invalidate_begin() (virt/kvm/kvm_main.c), mmu_lock held for write: one
        more invalidation in progress; the first one resets the merged range."""
        self.mmu_lock.lockdep_assert_held_write("kvm_mmu_invalidate_begin")

        def step() -> None:
            self.mmu_invalidate_in_progress += 1
            if self.mmu_invalidate_in_progress == 1:
                self.mmu_invalidate_range = None
        self.sched.op("kvm_mmu_invalidate_begin", None, step)

    def kvm_mmu_invalidate_range_add(self, start: int, end: int) -> None:
        """kvm_mmu_invalidate_range_add(), mmu_lock held for write: KVM keeps *one* range,
        the union hull of every range added while invalidations are in progress, so a
        fault anywhere in it retries (wider than the ranges really being zapped)."""
        self.mmu_lock.lockdep_assert_held_write("kvm_mmu_invalidate_range_add")

        def step() -> None:
            r = self.mmu_invalidate_range
            self.mmu_invalidate_range = (start, end) if r is None else (
                min(r[0], start), max(r[1], end))
        self.sched.op("kvm_mmu_invalidate_range_add", (start, end), step)

    def kvm_mmu_invalidate_end(self) -> None:
        """kvm_mmu_invalidate_end(), mmu_lock held for write: bump the sequence count,
        one invalidation fewer in progress."""
        self.mmu_lock.lockdep_assert_held_write("kvm_mmu_invalidate_end")

        def step() -> None:
            self.mmu_invalidate_seq += 1
            self.mmu_invalidate_in_progress -= 1
        self.sched.op("kvm_mmu_invalidate_end", None, step)

    def _invalidate_end(self) -> None:
        """KVM_MMU_LOCK(); kvm_mmu_invalidate_end(); KVM_MMU_UNLOCK() (the second half of
        kvm_gmem_invalidate_end() and of KVM_SET_MEMORY_ATTRIBUTES' post-set pass)."""
        self.mmu_lock.write_lock()
        try:
            self.kvm_mmu_invalidate_end()
        finally:
            self.mmu_lock.write_unlock()

    def is_page_fault_stale(self, fault: PageFault) -> bool:
        """is_page_fault_stale() / mmu_invalidate_retry_gfn()."""
        def step() -> bool:
            if self.vm_dead:
                return True
            r = self.mmu_invalidate_range
            if self.mmu_invalidate_in_progress and (r is None or r[0] <= fault.gfn < r[1]):
                return True
            return self.mmu_invalidate_seq != fault.mmu_seq
        return self.sched.op("is_page_fault_stale", fault.gfn, step)

    # ------------------------------------------------------------------ faults
    def kvm_tdp_page_fault(self, gfn: int, private: bool = True,
                           level_hint: int = PG_LEVEL_2M, write_lock: bool = False) -> int:
        """kvm_tdp_page_fault() -> kvm_tdp_mmu_page_fault(): resolve the pfn, then map
        under the read lock (``write_lock`` only for hunt-a1's what-if prefault)."""
        seq = self.sched.op("READ(mmu_invalidate_seq)", None, lambda: self.mmu_invalidate_seq)
        # kvm_mmu_faultin_pfn(): the memslot this fault looked up (under kvm->srcu, so
        # a deletion waits for the fault to finish): "if (slot->flags &
        # KVM_MEMSLOT_INVALID) return RET_PF_RETRY" (-EAGAIN for a prefault)
        if self.sched.op("kvm_faultin_pfn:slot", gfn,
                         lambda: any(s <= gfn < e for s, e in self.invalid_slots)):
            return RET_PF_RETRY
        if private:
            if self.sched.op("kvm_mem_is_private", gfn, lambda: gfn in self.shared_gfns):
                # kvm_mmu_prepare_memory_fault_exit(): the attributes say shared
                return RET_PF_MEMORY_FAULT
            got = self.kvm_gmem_get_pfn(gfn)
            if got is None:
                # kvm_mmu_faultin_pfn_private(): kvm_gmem_get_pfn() fails (no
                # guest_memfd behind the GFN: -EFAULT) and KVM prepares a memory-fault
                # exit; the fault ends, it is not retried
                return -EFAULT
            pfn, max_level = got
            level = min(max_level, level_hint)
        else:
            def shared_pfn() -> int:
                if gfn not in self.shared_mem:
                    self.shared_mem[gfn] = self.pages.alloc()
                return self.shared_mem[gfn]
            pfn = self.sched.op("shared_get_pfn", gfn, shared_pfn)
            level = PG_LEVEL_4K
        fault = PageFault(gfn, level, private, pfn, seq)
        self.mmu_lock.lock("write" if write_lock else "read")
        try:
            if self.is_page_fault_stale(fault):
                return RET_PF_RETRY
            if fault.goal_level > PG_LEVEL_4K and private and self.hugepage_test_guest_inhibit(gfn):
                # kvm_mmu_hugepage_adjust() -> kvm_mmu_max_mapping_level(), under
                # mmu_lock: the guest-inhibit bit sits in disallow_lpage
                fault.goal_level = PG_LEVEL_4K
            return self.mmu.kvm_tdp_mmu_map(fault)
        finally:
            self.mmu_lock.unlock()

    def tdx_handle_ept_violation(self, vcpu: KvmVcpu, exit: GuestExit) -> int:
        """tdx_handle_ept_violation(): fault in, retrying locally without re-entering
        the guest while the fault says RETRY, until the VM is dead or the memslot is
        being deleted (private GPAs only: "Only private GPA triggers zero-step
        mitigation")."""
        assert exit.gfn is not None
        if exit.private and exit.pending:
            # tdx_is_sept_violation_unexpected_pending(): "Guest access before accepting
            # 0x%llx on vCPU %d", kvm_vm_dead(), -EIO.  A Linux TD accepts before it
            # touches, so only memory taken from under it (by the VMM) gets here.
            self.kvm_vm_dead(f"tdx_handle_ept_violation: Guest access before accepting "
                             f"gfn {exit.gfn:#x} on vCPU {vcpu.vcpu_id}")
            return -EIO
        while True:
            vcpu.stats["faults"] += 1
            ret = self.kvm_tdp_page_fault(exit.gfn, exit.private, exit.level)
            if ret == RET_PF_SPLIT:
                # hugepage RFC: the guest accepts at 4K inside a private 2M leaf; split
                # the leaf under the write lock, then fault the 4K page in.
                self.kvm_split_huge_page(exit.gfn)
                continue
            # "if (ret != RET_PF_RETRY || !local_retry) break;": a shared GPA goes back
            # to the guest at once
            if ret != RET_PF_RETRY or not exit.private:
                return ret
            vcpu.stats["fault_retries"] += 1
            # "Bail if the memslot is invalid, i.e. is being deleted, as faulting in will
            # never succeed and this task needs to drop SRCU in order to let memslot
            # deletion complete."  The guest re-faults at the same RIP: zero-step food.
            gfn = exit.gfn
            if self.sched.op("kvm_vcpu_gfn_to_memslot", gfn,
                             lambda: any(s <= gfn < e for s, e in self.invalid_slots)):
                vcpu.stats["slot_invalid"] = vcpu.stats.get("slot_invalid", 0) + 1
                cpu_relax(self.sched, "cond_resched")
                return ret
            # "if (kvm_vcpu_has_events(vcpu) || signal_pending(current)) break;": the
            # model has no interrupts, NMIs or SMIs to deliver, and a kick is no
            # event (KVM_REQ_OUTSIDE_GUEST_MODE leaves nothing behind); a signal is a
            # rare seeded event; then "if (kvm_test_request(KVM_REQ_VM_DEAD, vcpu))".
            if self.signal_pending():
                return ret
            if self.sched.op("kvm_test_request(KVM_REQ_VM_DEAD)", vcpu.vcpu_id,
                             lambda: KVM_REQ_VM_DEAD in vcpu.requests):
                return ret
            cpu_relax(self.sched, "cond_resched")

    # ------------------------------------------------------------------ vCPU run
    def _set_mode(self, vcpu: KvmVcpu, mode: str) -> None:
        def step() -> None:
            vcpu.mode = mode
            if mode == OUTSIDE_GUEST_MODE:
                vcpu.outside_count += 1
                vcpu.ipi_pending = False    # delivered to the host, where it does nothing
        self.sched.op("vcpu->mode", (vcpu.vcpu_id, mode), step)

    def kvm_make_all_cpus_request(self, req: str) -> None:
        """kvm_make_all_cpus_request(): post ``req`` to every vCPU, IPI each one that is
        in guest mode, and wait until each of those has left it (KVM_REQUEST_WAIT).

        ``KVM_REQ_OUTSIDE_GUEST_MODE`` is ``KVM_REQUEST_NO_ACTION``: kvm_make_vcpu_request()
        sets no request bit for it (``if (likely(!(req & KVM_REQUEST_NO_ACTION)))
        __kvm_make_request(req, vcpu)``), so the kick leaves nothing behind: it only
        forces the vCPUs out of guest mode.  A vCPU already outside guest mode (in its
        fault-retry loop, say) gets no IPI and is not disturbed."""
        me = current()
        vcpu_self = me.vcpu
        no_action = req == KVM_REQ_OUTSIDE_GUEST_MODE

        def request() -> list[tuple[KvmVcpu, int]]:
            targets = []
            for v in self.vcpus:
                if not no_action:
                    v.requests.add(req)
                if v.mode == IN_GUEST_MODE and v is not vcpu_self:
                    v.ipi_pending = True
                    targets.append((v, v.outside_count))
                    v.stats["kicks"] += 1
            return targets
        targets = self.sched.op("kvm_make_all_cpus_request", req, request)
        if targets:
            def acked() -> bool:
                return all(v.outside_count != n for v, n in targets)
            me.pending = "kick.wait"
            self.sched.op("kvm_kick.wait", tuple(v.vcpu_id for v, _ in targets),
                          lambda: None, acked)
            me.pending = ""

    def guest_check_exit(self, vcpu: KvmVcpu) -> bool:
        """Inside the guest: is an IPI pending (the CPU takes the exit) or a request
        posted that one would have come with?"""
        return self.sched.op("guest.irq_pending", vcpu.vcpu_id,
                             lambda: vcpu.ipi_pending or bool(vcpu.requests))

    def vcpu_enter_guest(self, vcpu: KvmVcpu, guest: Guest) -> bool:
        """One trip of vcpu_enter_guest() with tdx_vcpu_run() and the exit handler.
        Returns False once the vCPU must stop (the VM is dead, or the VMM stopped it)."""
        # kvm_arch_vcpu_ioctl_run(): "if (kvm_run->immediate_exit) { r = -EINTR; ...}":
        # a VMM that stops the VM sets it for every vCPU thread (QEMU's kick)
        if self.sched.op("READ(kvm_run->immediate_exit)", vcpu.vcpu_id,
                         lambda: self.vmm_stopped):
            return False
        self.srcu_read_lock()
        try:
            return self._vcpu_enter_guest(vcpu, guest)
        finally:
            if self.srcu_held():
                self.srcu_read_unlock()

    def _vcpu_enter_guest(self, vcpu: KvmVcpu, guest: Guest) -> bool:
        m = self.module
        self._set_mode(vcpu, IN_GUEST_MODE)
        reqs = self.sched.op("kvm_check_request", vcpu.vcpu_id, lambda: self._take_requests(vcpu))
        if KVM_REQ_VM_DEAD in reqs:
            self._set_mode(vcpu, OUTSIDE_GUEST_MODE)
            return False
        if reqs:
            self._set_mode(vcpu, OUTSIDE_GUEST_MODE)
            cpu_relax(self.sched, "cond_resched")
            return True
        # tdx_vcpu_run(): "Wait until retry of SEPT-zap-related SEAMCALL completes before
        # allowing vCPU entry to avoid contention with tdh_vp_enter() and TDCALLs."
        if self.sched.op("READ_ONCE(wait_for_sept_zap)", None, lambda: self.tdx.wait_for_sept_zap):
            vcpu.stats["zap_wait"] += 1
            self._set_mode(vcpu, OUTSIDE_GUEST_MODE)
            cpu_relax(self.sched, "cond_resched")   # vcpu_run()'s loop reschedules here
            return True
        # vcpu_enter_guest(): kvm_vcpu_srcu_read_unlock() just before VM-enter, and
        # kvm_vcpu_srcu_read_lock() again after the exit
        self.srcu_read_unlock()
        err, faked = m.tdh_vp_enter(vcpu.vcpu_id)
        if tdx_operand_busy(err):
            vcpu.stats["busy_enter"] += 1
            self._set_mode(vcpu, OUTSIDE_GUEST_MODE)
            cpu_relax(self.sched, "cond_resched")
            return True
        if err:
            self.tdx_bug_on(err, "tdx_vcpu_run", "TDH.VP.ENTER")
            self._set_mode(vcpu, OUTSIDE_GUEST_MODE)
            return False
        if faked is not None:
            exit = GuestExit("ept", faked, PG_LEVEL_2M, m.vcpus[vcpu.vcpu_id].last_rip)
        else:
            vcpu.stats["entries"] += 1
            exit = guest.run(self, vcpu)
            # only a hardware EPT violation on a private GPA feeds zero-step accounting
            stepping = exit.reason == "ept" and exit.private and not exit.accept
            m.td_exit(vcpu.vcpu_id, exit.gfn if stepping else None, exit.rip)
        self._set_mode(vcpu, OUTSIDE_GUEST_MODE)
        self.srcu_read_lock()
        if exit.reason == "panic":
            # the guest is gone (TDVMCALL<ReportFatalError>): the VMM stops the VM
            self.vmm_stop_vm("the guest panicked")
            return False
        if exit.reason == "mapgpa":
            return self.tdx_map_gpa(vcpu, exit, guest)
        if exit.reason == "ept":
            vcpu.stats["ept"] += 1
            ret = self.tdx_handle_ept_violation(vcpu, exit)
            if ret < 0:
                # -EIO (the VM is dead) or -EFAULT (no guest_memfd behind the GFN) to
                # userspace, which cannot resolve either and stops the VM
                self.vmm_stop_vm(f"KVM_RUN returned {ret}")
                return False
            if ret == RET_PF_RETRY:
                # back to vcpu_run()'s loop, which reschedules before the next entry
                # (xfer_to_guest_mode_handle_work())
                cpu_relax(self.sched, "cond_resched")
            if ret == RET_PF_MEMORY_FAULT and exit.gfn is not None:
                # KVM_EXIT_MEMORY_FAULT: the VMM converts the page back to private on
                # this vCPU's thread (the guest asked for a private access), then re-enters.
                self.kvm_vm_set_mem_attributes(exit.gfn, exit.gfn + 1, shared=False)
        return exit.reason != "done"

    def tdx_map_gpa(self, vcpu: KvmVcpu, exit: GuestExit, guest: Guest) -> bool:
        """TDG.VP.VMCALL<MapGPA> (tdx_map_gpa() -> __tdx_map_gpa()): KVM exits to
        userspace with KVM_HC_MAP_GPA_RANGE; the VMM, on this vCPU's thread, converts
        the range (:meth:`vmm_convert_memory`) and completes the hypercall
        (tdx_complete_vmcall_map_gpa()); the guest resumes after the TDVMCALL.  The
        model's ranges are small, so one exit covers the whole range."""
        assert exit.gfn is not None
        vcpu.stats["map_gpa"] = vcpu.stats.get("map_gpa", 0) + 1
        self.vmm_convert_memory(exit.gfn, exit.gfn + exit.npages, exit.shared)
        guest.complete_hypercall(self, vcpu)
        return True

    def vmm_convert_memory(self, start: int, end: int, shared: bool) -> None:
        """What the VMM does for KVM_HC_MAP_GPA_RANGE (tool-named: QEMU's
        kvm_convert_memory()): KVM_SET_MEMORY_ATTRIBUTES first, then discard the
        backing the range left: the guest_memfd pages on the way to shared
        (ram_block_discard_guest_memfd_range(), a PUNCH_HOLE), the shared pages on the
        way to private (ram_block_discard_range())."""
        self.kvm_vm_set_mem_attributes(start, end, shared=shared)
        if shared:
            self.kvm_gmem_punch_hole(start, end)
        else:
            def discard() -> None:
                for g in range(start, end):
                    self.shared_mem.pop(g, None)
            self.sched.op("discard_shared", (start, end), discard)

    def _take_requests(self, vcpu: KvmVcpu) -> set[str]:
        """kvm_check_request() of the requests the model posts (only KVM_REQ_VM_DEAD,
        which stays set: the VM stays dead)."""
        return set(vcpu.requests)

    # ------------------------------------------------------------------ zapper paths
    def _ioctl_alive(self) -> bool:
        """KVM ioctls fail with -EIO once the VM is bugged."""
        return not self.sched.op("READ(vm_dead)", None, lambda: self.vm_dead)

    def kvm_mmu_unmap_gfn_range(self, start: int, end: int, private: bool,
                                invalidate: tuple[int, int] | None = None) -> None:
        """The first half of an invalidation (kvm_gmem_invalidate_begin(),
        KVM_SET_MEMORY_ATTRIBUTES' pre-set pass): under the write lock,
        kvm_mmu_invalidate_begin(), kvm_mmu_invalidate_range_add() and the zap of the
        root's leaves (kvm_unmap_gfn_range() -> tdp_mmu_zap_leafs())."""
        root = self.mmu.mirror_root if private else self.mmu.direct_root
        self.mmu_lock.write_lock()
        try:
            self.kvm_mmu_invalidate_begin()
            self.kvm_mmu_invalidate_range_add(*(invalidate or (start, end)))
            self.mmu.tdp_mmu_zap_leafs(root, start, end)
        finally:
            self.mmu_lock.write_unlock()

    def kvm_gmem_punch_hole(self, start: int, end: int) -> None:
        """guest_memfd FALLOC_FL_PUNCH_HOLE (kvm_gmem_punch_hole()): zap the private range,
        free its pages.  A file operation, not a VM ioctl: it runs on a bugged VM too
        (no vm_dead check on the path down to the S-EPT removal)."""
        self.kvm_mmu_unmap_gfn_range(start, end, private=True)

        def free() -> None:
            for g in range(start, end):
                self.gmem.pop(g, None)
        self.sched.op("kvm_gmem_free", (start, end), free)
        self._invalidate_end()

    def kvm_arch_pre_set_memory_attributes_range(self, start: int, end: int
                                                  ) -> tuple[int, int]:
        """The range kvm_arch_pre_set_memory_attributes() invalidates in v6.19: the
        range being converted (kvm_unmap_gfn_range(); no private mapping is larger than
        4K).  The hugepage RFC widens it to the huge-page head and tail."""
        return start, end

    def kvm_vm_set_mem_attributes(self, start: int, end: int, shared: bool) -> None:
        """KVM_SET_MEMORY_ATTRIBUTES: convert a range; the mapping in the root being
        left is zapped (private->shared zaps the mirror), over the range widened to the
        huge-page head and tail, so that no fault that read the old attributes can
        install a huge leaf across the converted GFNs."""
        if not self._ioctl_alive():
            return
        self.kvm_mmu_unmap_gfn_range(start, end, private=shared,
                                     invalidate=self.kvm_arch_pre_set_memory_attributes_range(
                                         start, end))

        def flip() -> None:
            for g in range(start, end):
                if shared:
                    self.shared_gfns.add(g)
                else:
                    self.shared_gfns.discard(g)
        self.sched.op("set_mem_attributes", (start, end, shared), flip)
        self._invalidate_end()

    def srcu_read_lock(self) -> None:
        """srcu_read_lock(&kvm->srcu) (kvm_vcpu_srcu_read_lock() on a vCPU): the calling
        thread enters a read-side section."""
        name = current().name

        def step() -> None:
            self.srcu_readers[name] = self.srcu_readers.get(name, 0) + 1
        self.sched.op("srcu_read_lock", name, step)

    def srcu_read_unlock(self) -> None:
        """srcu_read_unlock(): the calling thread leaves its section."""
        name = current().name

        def step() -> None:
            self.srcu_readers[name] -= 1
            self.srcu_left[name] = self.srcu_left.get(name, 0) + 1
        self.sched.op("srcu_read_unlock", name, step)

    def srcu_held(self) -> bool:
        """Is the calling thread inside a kvm->srcu read-side section? (model helper)"""
        return self.srcu_readers.get(current().name, 0) > 0

    def synchronize_srcu(self) -> None:
        """synchronize_srcu_expedited(&kvm->srcu) in kvm_swap_active_memslots(): wait
        until every read-side section that had begun has ended (a vCPU inside the fault
        path or its local retry loop holds one; so does KVM_PRE_FAULT_MEMORY)."""
        me = current()
        readers = self.sched.op("synchronize_srcu", None,
                                lambda: [(n, self.srcu_left.get(n, 0))
                                         for n, c in sorted(self.srcu_readers.items())
                                         if c > 0 and n != me.name])
        if readers:
            me.pending = "synchronize_srcu"
            self.sched.op("synchronize_srcu.wait", tuple(n for n, _ in readers),
                          lambda: None,
                          lambda: all(self.srcu_left.get(n, 0) != k for n, k in readers))
            me.pending = ""

    def kvm_memslot_delete_readd(self, start: int, end: int) -> None:
        """Delete and re-add a memslot (kvm_set_memslot(), KVM_MR_DELETE then
        KVM_MR_CREATE): the slot is marked KVM_MEMSLOT_INVALID and SRCU synchronised
        (kvm_invalidate_memslot()), both roots are zapped (kvm_mmu_zap_memslot()), the
        slot goes, then comes back.  Faults in the range fail until it is back."""
        if not self._ioctl_alive():
            return

        def mark(invalid: bool) -> None:
            if invalid:
                self.invalid_slots.append((start, end))
            else:
                self.invalid_slots.remove((start, end))
        self.sched.op("memslot.invalidate", (start, end), lambda: mark(True))
        # kvm_invalidate_memslot(): the INVALID copy is made active and
        # kvm_swap_active_memslots() waits out every vCPU inside the fault path; a fault
        # that began before sees its mapping zapped below, one that begins after finds
        # the slot invalid and retries.
        self.synchronize_srcu()
        # kvm_arch_flush_shadow_memslot() -> kvm_mmu_zap_memslot(): both roots in one
        # write-lock section, no invalidation bracket (SRCU did that job).
        self.mmu_lock.write_lock()
        try:
            self.mmu.tdp_mmu_zap_leafs(self.mmu.mirror_root, start, end)
            self.mmu.tdp_mmu_zap_leafs(self.mmu.direct_root, start, end)
        finally:
            self.mmu_lock.write_unlock()
        # kvm_delete_memslot(): the slot goes (another swap, another grace period)
        self.synchronize_srcu()
        self.sched.op("memslot.readd", (start, end), lambda: mark(False))

    def kvm_gmem_error_folio(self, start: int, end: int) -> None:
        """kvm_gmem_error_folio() (virt/kvm/guest_memfd.c): a memory failure on a
        guest_memfd folio unmaps its private range (kvm_gmem_invalidate_begin(): bracket
        and zap under the write lock, row 12, then kvm_gmem_invalidate_end()); the folio
        stays, unlike a hole punch.  No HVA-based MMU notifier zaps the mirror root
        (__kvm_handle_hva_range() filters to shared), so this is the kernel's nearest
        unmap of private leaves that frees nothing (hunt-c's patch replaces it).  Not an
        ioctl: no vm_dead check, it runs on a bugged VM too."""
        self.kvm_mmu_unmap_gfn_range(start, end, private=True)
        self._invalidate_end()

    def kvm_gmem_release(self) -> None:
        """kvm_gmem_release() (virt/kvm/guest_memfd.c), the guest_memfd file's last
        close: every bound memslot's ``slot->gmem.file`` is cleared, then
        kvm_gmem_invalidate_begin(gmem, 0, -1ul) zaps every private mapping (bracket and
        zap under the write lock, row 12) and kvm_gmem_invalidate_end() closes the
        bracket.  "Do not free the backing memory, as its lifetime is associated with the
        inode, not the file."  The memslots hold no reference to the file, so a VMM can
        close it while vCPUs run (legal, hostile): every later private fault fails
        (-EFAULT, a memory-fault exit) and the vCPU goes back to userspace.  At teardown
        it is the first step of kvm_destroy_vm()."""
        end = max(r.base + r.npages for r in self.regions)

        def close() -> None:
            self.gmem_file_open = False
        self.sched.op("kvm_gmem_release", None, close)
        self.kvm_mmu_unmap_gfn_range(0, end, private=True)
        self._invalidate_end()

    def kvm_split_huge_page(self, gfn: int) -> bool:
        """The zapper's split of a private 2M leaf (tool-named: the hugepage RFC's split
        under the write lock, row 8).  v6.19 maps no private 2M leaf: nothing to split."""
        return False

    def hugepage_test_guest_inhibit(self, gfn: int) -> bool:
        """hugepage_test_guest_inhibit() at 2M (RFC5 40/45)."""
        base = gfn_round_for_level(gfn, PG_LEVEL_2M)
        return self.sched.op("hugepage_test_guest_inhibit", base,
                             lambda: base in self.guest_inhibit_2m)

    def kvm_zap_table(self, gfn: int) -> bool:
        """The zapper's zap of the mirror table under a 2M range (tool-named: hunt-d's
        what-if path).  No kernel has it: "KVM doesn't (yet) zap page table pages in
        mirror page table while TD is active" (tdx_sept_free_private_spt()); as designed
        it does nothing."""
        return False

    def kvm_prefault(self, gfn: int) -> int:
        """KVM_PRE_FAULT_MEMORY: kvm_tdp_map_page(), which retries the fault for as long
        as it says RET_PF_RETRY (``do { ... } while (r == RET_PF_RETRY)``), stopping on a
        dead VM (``kvm_test_request(KVM_REQ_VM_DEAD)``) and, since the memslot-deletion
        fix, on a memslot being deleted (-EAGAIN).  Coming back for the entry matters:
        a host SEAMCALL that met a guest's ACCEPT set the entry's host-priority bit,
        and only a host's next acquisition clears it.  Under the read lock, as every
        fault (hunt-a1's patch maps under the write lock)."""
        # kvm_arch_vcpu_pre_fault_memory(): "idx = srcu_read_lock(&vcpu->kvm->srcu)"
        self.srcu_read_lock()
        try:
            return self.kvm_tdp_map_page(gfn)
        finally:
            self.srcu_read_unlock()

    def kvm_tdp_map_page(self, gfn: int) -> int:
        """kvm_tdp_map_page() (arch/x86/kvm/mmu/mmu.c, later kvm_tdp_page_prefault()):
        ``do { ... r = kvm_mmu_do_page_fault(...); } while (r == RET_PF_RETRY)``,
        returning on a signal (-EINTR), a dead VM (-EIO, Yan Zhao's "Bail out
        kvm_tdp_map_page() when VM dead") and a memslot being deleted (-EAGAIN)."""
        while True:
            if self.signal_pending():
                return RET_PF_RETRY         # -EINTR
            if not self._ioctl_alive():
                return RET_PF_RETRY
            r = self.kvm_mmu_do_page_fault(gfn)
            if r != RET_PF_RETRY:
                return r
            if self.sched.op("kvm_faultin_pfn:slot", gfn,
                             lambda: any(s <= gfn < e for s, e in self.invalid_slots)):
                return r        # -EAGAIN: userspace is deleting the memslot
            cpu_relax(self.sched, "cond_resched")

    def kvm_mmu_do_page_fault(self, gfn: int) -> int:
        """kvm_mmu_do_page_fault() of a prefault (the call inside kvm_tdp_map_page()'s
        loop): kvm_tdp_page_fault() of the private ``gfn``, up to 2M."""
        return self.kvm_tdp_page_fault(gfn, True, PG_LEVEL_2M)

    def kvm_populate_tables(self, gfn: int) -> bool:
        """Pre-populate the mirror tables down to the 4K table for ``gfn``: atomic links
        under the read lock, row 3 (the table walk of a fault; hunt-a2's patch links
        them under the write lock)."""
        if not self._ioctl_alive():
            return False
        self.mmu_lock.read_lock()
        try:
            return self.mmu.kvm_tdp_mmu_populate(gfn, PG_LEVEL_4K, shared=True)
        finally:
            self.mmu_lock.read_unlock()

    def kvm_recover_huge_pages(self, gfn: int) -> bool:
        """kvm_mmu_recover_huge_pages() of the memslot holding ``gfn`` (what
        kvm_mmu_slot_apply_flags() calls when dirty logging stops; a guest_memfd slot
        cannot log dirty pages, so as designed it never runs on private memory and
        does nothing here; hunt-b's patch runs it on the mirror root)."""
        return False

    def kvm_mmu_max_mapping_level(self, gfn: int) -> int:
        """kvm_mmu_max_mapping_level() for a private GFN, without a fault: 2M when the
        guest_memfd folio behind the 2M range is whole (kvm_gmem_mapping_order()), no GFN
        of the range has other attributes (the mixed flag in lpage_info) and the guest
        did not inhibit 2M there (RFC5 hugepage_test_guest_inhibit()); else 4K."""
        region = self.region_of(gfn)
        # kvm_gmem_max_mapping_level(): the vendor's limit, then the folio's order
        if region is None or not region.huge or \
                self.tdx.tdx_gmem_max_mapping_level(self.gmem.get(gfn, 0), True) < PG_LEVEL_2M:
            return PG_LEVEL_4K
        base = gfn_round_for_level(gfn, PG_LEVEL_2M)

        def level() -> int:
            ok = self._folio_intact(base) and base not in self.guest_inhibit_2m
            return PG_LEVEL_2M if ok else PG_LEVEL_4K
        return self.sched.op("kvm_mmu_max_mapping_level", base, level)

    # ------------------------------------------------------------------ lifecycle
    def build(self, initial_gfns: tuple[int, ...] = ()) -> None:
        """KVM_TDX_INIT_MEM_REGION for ``initial_gfns`` (PAGE.ADD through the fault
        path), then KVM_TDX_FINALIZE_VM (TDH.MR.FINALIZE)."""
        self.initial_gfns = tuple(initial_gfns)
        for gfn in initial_gfns:
            while self.kvm_tdp_page_fault(gfn, True, PG_LEVEL_4K) == RET_PF_RETRY:
                if self.vm_dead:
                    break
        err = self.module.tdh_mr_finalize()
        self.tdx_bug_on(err, "tdx_td_finalize", "TDH.MR.FINALIZE")

    def kvm_destroy_vm(self) -> None:
        """Teardown, vCPUs gone: close guest_memfd (every private leaf removed while the
        TD has its key), release the HKID, zap the roots (S-EPT tables reclaimed)."""
        self.module.phase = "teardown"      # accounting only: SEAMCALLs by phase
        # kvm_gmem_release(): no vm_bugged check, the leaves go even from a bugged VM
        # (whose later failures no longer warn); nothing left if userspace closed it early
        if self.module.hkid_assigned and self.gmem_file_open:
            self.kvm_gmem_release()
        err = self.module.release_hkid()
        self.tdx_bug_on(err, "tdx_mmu_release_hkid", "TDH.MNG.KEY.FREEID")
        self.mmu_lock.write_lock()
        try:
            self.mmu.zap_root(self.mmu.mirror_root)
            self.mmu.zap_root(self.mmu.direct_root)
        finally:
            self.mmu_lock.write_unlock()
        self.rcu.rcu_barrier()

