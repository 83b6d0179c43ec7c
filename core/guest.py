"""The guest CPU: runs a guest program while its vCPU is in guest mode.

A program is a tuple of instructions, one per guest RIP:

* ``("touch", gfn)``: access a private page;
* ``("accept", gfn, level)``: accept the page or 2M range at ``gfn``;
* ``("shared", gfn)``: access a shared page through the direct root;
* ``("mapgpa", gfn, npages, shared)``: convert ``[gfn, gfn + npages)`` to shared
  (``shared`` = 1) or to private (0) with TDG.VP.VMCALL<MapGPA> (Linux TD only).

Two kinds of guest run them (``RunConfig.guest``):

* :class:`LinuxTdGuest` (the default): a Linux TD.  Its TD has ATTRIBUTES.SEPT_VE_DISABLE
  (arch/x86/coco/tdx/tdx.c, tdx_parse_tdinfo(): "TD misconfiguration: SEPT_VE_DISABLE
  attribute must be set."), so touching a PENDING page is a TD exit that KVM answers by
  killing the VM; it accepts memory before it uses it, with tdx_accept_memory()'s
  policy (arch/x86/coco/tdx/tdx-shared.c: the largest aligned size first, then the next
  smaller on *any* error, no retry; a 4K failure fails the whole accept, which
  arch_accept_memory() turns into a panic); it converts memory with MapGPA and, on the
  way to private, accepts the range (tdx_enc_status_changed()).
* :class:`ProgramGuest` (``ve-accept``): a guest without SEPT_VE_DISABLE whose #VE
  handler accepts a PENDING page on touch, BUSY retried at once.  Legal for the TDX
  module, and the most adversarial partner for KVM; no Linux TD behaves like this.

Before every instruction the CPU checks for a pending IPI or request and exits if there
is one, so a kick always gets the vCPU out within one instruction.  Zero-step mitigation
sees the same RIP exit again and again while an instruction cannot complete.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

# GuestExit at module level, not in the functions that use it: an import statement in a
# function runs the import machinery at every call (several microseconds), and these run
# at every guest instruction.  (core.kvm does not import this module.)
from .kvm import GuestExit
from .sched import cpu_relax, current
from .spte import (
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    ROOT_LEVEL,
    is_last_spte,
    is_shadow_present_pte,
    spte_index,
    spte_to_pfn,
)
from .tdx_errno import (
    TDX_EPT_ENTRY_STATE_INCORRECT,
    TDX_EPT_WALK_FAILED,
    TDX_PAGE_ALREADY_ACCEPTED,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_SUCCESS,
    status,
    tdx_operand_busy,
)

if TYPE_CHECKING:
    from .kvm import Kvm, KvmVcpu

Instr = tuple
AGAIN = object()      # _execute(): run the same instruction again at once


class ProgramGuest:
    """The ``ve-accept`` guest: runs ``program`` once, instruction by instruction, from
    RIP 0; its #VE handler accepts a PENDING page it touched."""

    kind = "ve-accept"

    def __init__(self, program: tuple[Instr, ...], accept_retries: int = 64) -> None:
        self.program = program
        self.rip = 0
        self.accept_retries = accept_retries
        self.accepts = 0
        self.accept_busy = 0

    @property
    def done(self) -> bool:
        return self.rip >= len(self.program)

    def complete_hypercall(self, kvm: "Kvm", vcpu: "KvmVcpu") -> None:
        """KVM completed the guest's TDVMCALL (this guest makes none)."""

    def run(self, kvm: "Kvm", vcpu: "KvmVcpu") -> "GuestExit":
        """Run the guest's instructions until an exit.  Common to both guests: the kick
        check before every instruction, the shared access, retiring an instruction;
        what an instruction does is :meth:`_execute`."""
        me = current()
        while self.rip < len(self.program):
            me.item = self.rip         # the shrinker attributes steps to instructions
            if kvm.guest_check_exit(vcpu):
                return GuestExit("kick", rip=self.rip)
            ins = self.program[self.rip]
            if ins[0] == "shared":
                if not self._shared_mapped(kvm, ins[1]):
                    return GuestExit("ept", ins[1], PG_LEVEL_4K, self.rip, private=False)
            else:
                ex = self._execute(kvm, vcpu, ins)
                if ex is AGAIN:
                    continue
                if ex is not None:
                    return ex       # type: ignore[return-value]
            self._retire(kvm, vcpu)
        return GuestExit("done", rip=self.rip)

    def _retire(self, kvm: "Kvm", vcpu: "KvmVcpu") -> None:
        """The instruction at RIP completed: a new RIP clears zero-step's state."""
        self.rip += 1
        kvm.module.guest_progress(vcpu.vcpu_id, self.rip)

    def _execute(self, kvm: "Kvm", vcpu: "KvmVcpu", ins: Instr) -> "GuestExit | object | None":
        """One private instruction of the ve-accept guest: None when it completed, an
        exit, or AGAIN (run it again: the access after #VE handling).  A PENDING page
        raises #VE and the #VE handler accepts it (a Linux TD does not:
        :class:`LinuxTdGuest`)."""
        op = ins[0]
        if op == "touch":
            gfn = ins[1]
            level = self._region_level(kvm, gfn)
            r = kvm.module.guest_access(vcpu.vcpu_id, gfn)
            if r == "ept":
                return GuestExit("ept", gfn, level, self.rip)
            if r == "pending_exit":
                return GuestExit("ept", gfn, level, self.rip, pending=True)
            if r == "pending":
                ex = self._accept(kvm, vcpu, gfn, level)
                return ex if ex is not None else AGAIN
            return None
        if op == "accept":
            return self._accept(kvm, vcpu, ins[1], ins[2])
        raise ValueError(f"unknown guest instruction {ins!r}")

    def _region_level(self, kvm: "Kvm", gfn: int) -> int:
        """The size this guest accepts ``gfn`` at when its #VE handler does, and the
        level of an access's EPT violation: 2M in a huge region when the host maps
        private memory at 2M, else 4K.  (Tool shortcut: the guest reads the host's
        limit, tdx_gmem_max_mapping_level(), where a real guest would learn it from
        TDX_PAGE_SIZE_MISMATCH; a Linux TD's own accepts try 2M first either way.)"""
        r = kvm.region_of(gfn)
        if r is None or not r.huge:
            return PG_LEVEL_4K
        return min(PG_LEVEL_2M, kvm.tdx.tdx_gmem_max_mapping_level(kvm.gmem.get(gfn, 0), True))

    def _accept(self, kvm: "Kvm", vcpu: "KvmVcpu", gfn: int, level: int) -> "GuestExit | None":
        base = gfn & ~((1 << (9 * (level - 1))) - 1)
        for _ in range(self.accept_retries):
            self.accepts += 1
            err = kvm.module.tdg_mem_page_accept(vcpu.vcpu_id, base, level)
            if err in (TDX_SUCCESS, TDX_PAGE_ALREADY_ACCEPTED):
                return None
            if tdx_operand_busy(err):
                self.accept_busy += 1
                if kvm.guest_check_exit(vcpu):
                    return GuestExit("kick", rip=self.rip)
                cpu_relax(kvm.sched)
                continue
            if status(err) == TDX_PAGE_SIZE_MISMATCH and level > PG_LEVEL_4K:
                level, base = PG_LEVEL_4K, gfn
                continue
            # async_tdexit_ept_violation(): an EPT-violation exit of type ACCEPT
            return GuestExit("ept", gfn, level, self.rip, accept=True)
        return GuestExit("kick", rip=self.rip)

    def _shared_mapped(self, kvm: "Kvm", gfn: int) -> bool:
        """The CPU's walk of the direct root (hardware: no RCU, one atomic step)."""
        def step() -> bool:
            sp, level = kvm.mmu.direct_root, ROOT_LEVEL
            while True:
                v = sp.spt[spte_index(gfn, level)]
                if not is_shadow_present_pte(v):
                    return False
                if is_last_spte(v, level):
                    return True
                sp, level = kvm.mmu.pages[spte_to_pfn(v)], level - 1
        return kvm.sched.op("EPT.walk", gfn, step)


class LinuxTdGuest(ProgramGuest):
    """A Linux TD (see the module docstring): accepts before it touches, with
    tdx_accept_memory()'s fall-back policy; converts with MapGPA.

    A failed accept is the guest's end: ``arch_accept_memory()`` panics ("TDX: Failed
    to accept memory"), reported as a ``GUEST`` finding, because the host made a
    correct guest die.  A failed accept after a MapGPA to private is
    ``__set_memory_enc_pgtable()``'s WARN (the pages are leaked, the guest goes on)."""

    kind = "linux"

    def __init__(self, program: tuple[Instr, ...]) -> None:
        super().__init__(program, accept_retries=0)
        self._accept_at: int | None = None     # next GFN of the accept in progress
        self._mapped = False                   # MapGPA of this RIP completed by KVM
        self.leaked: set[int] = set()          # pages whose conversion failed
        self.failed = False
        self._claimed: int | None = None       # the accept_memory() unit this vCPU holds
        self._accept_level: int | None = None  # size of a TDCALL that exited to KVM
        self.accepted = 0                      # TDG.MEM.PAGE.ACCEPTs that succeeded

    def complete_hypercall(self, kvm: "Kvm", vcpu: "KvmVcpu") -> None:
        """tdx_complete_vmcall_map_gpa(): the MapGPA at RIP returned success."""
        self._mapped = True

    def _retire(self, kvm: "Kvm", vcpu: "KvmVcpu") -> None:
        self._accept_at, self._mapped, self._accept_level = None, False, None
        super()._retire(kvm, vcpu)

    def _execute(self, kvm: "Kvm", vcpu: "KvmVcpu", ins: Instr) -> "GuestExit | object | None":
        """A Linux TD's use of memory: accept before use (``accept_memory()``), never
        touch a PENDING page on purpose, convert with MapGPA."""
        op = ins[0]
        if op == "touch":
            gfn = ins[1]
            if gfn in self.leaked:
                return None
            r = kvm.module.guest_access(vcpu.vcpu_id, gfn)
            if r != "ok":
                # "pending_exit": the access-before-accept TD exit KVM kills on
                return GuestExit("ept", gfn, self._region_level(kvm, gfn), self.rip,
                                 pending=r != "ept")
            return None
        if op == "accept":
            return self.accept_memory(kvm, vcpu, ins[1])
        if op == "mapgpa":
            gfn, n, shared = ins[1], ins[2], bool(ins[3])
            if not self._mapped:
                # tdx_map_gpa(): TDG.VP.VMCALL<MapGPA>, a TD exit to KVM
                return GuestExit("mapgpa", gfn, PG_LEVEL_4K, self.rip, npages=n,
                                 shared=shared)
            if shared:
                return None
            # tdx_enc_status_changed(): "shared->private conversion requires memory to
            # be accepted before use"
            ex = self.tdx_accept_memory(kvm, vcpu, gfn, gfn + n)
            if ex is not None and ex.reason != "panic":
                return ex
            if ex is not None:
                # __set_memory_enc_pgtable(): "CPA VMM failure to convert memory" WARN;
                # the pages are leaked, the guest goes on
                kvm.guest_failure("tdx_enc_status_changed",
                                  f"set_memory_encrypted() failed: accept at gfn "
                                  f"{self._accept_at:#x}", fatal=False)
                self.leaked.update(range(gfn, gfn + n))
            return None
        raise ValueError(f"unknown guest instruction {ins!r}")

    def accept_memory(self, kvm: "Kvm", vcpu: "KvmVcpu", gfn: int) -> "GuestExit | None":
        """accept_memory() (drivers/firmware/efi/unaccepted_memory.c) of the unit that
        holds ``gfn``: nothing if it is accepted; wait (spinning, kickable) while another
        vCPU accepts it (``accepting_list``); else claim it, tdx_accept_memory() it
        (arch_accept_memory(), which panics on failure) and clear its bit."""
        mem = guest_memory(kvm)
        unit, size = mem.unit_of(gfn)
        if self._claimed != unit:
            while True:
                got = kvm.sched.op("accept_memory:unaccepted_memory_lock", unit,
                                   lambda: mem.claim(unit, vcpu.vcpu_id))
                if got == "done":
                    return None
                if got == "claimed":
                    self._claimed = unit
                    break
                # spin until the other vCPU is done; an IPI still gets this one out
                kvm.sched.op("accept_memory:accepting_list", unit, lambda: None,
                             lambda: unit not in mem.accepting or vcpu.ipi_pending
                             or bool(vcpu.requests))
                if kvm.guest_check_exit(vcpu):
                    return GuestExit("kick", rip=self.rip)
        ex = self.tdx_accept_memory(kvm, vcpu, unit, unit + size)
        if ex is not None:
            if ex.reason == "panic":
                kvm.guest_failure("arch_accept_memory",
                                  f"TDX: Failed to accept memory (gfn {self._accept_at:#x})",
                                  fatal=True)
                self.failed = True
            return ex
        kvm.sched.op("accept_memory:clear", unit, lambda: mem.accepted(unit))
        self._claimed = None
        return None

    def tdx_accept_memory(self, kvm: "Kvm", vcpu: "KvmVcpu", start: int, end: int
                          ) -> "GuestExit | None":
        """tdx_accept_memory() / try_accept_one(): from ``start`` (kept across exits: a
        TDCALL that exits to KVM is re-executed on re-entry), the largest size that
        ``start`` is aligned to and the range still covers, then smaller on any error;
        a 4K error fails the accept.  Returns None when the range is accepted, an
        "ept" exit (the module's EPT violation of type ACCEPT), or a "panic" exit."""
        if self._accept_at is None:
            self._accept_at = start
        while self._accept_at < end:
            at = self._accept_at
            for level, size in ((PG_LEVEL_2M, 512), (PG_LEVEL_4K, 1)):
                if at % size or end - at < size:
                    continue        # try_accept_one(): not aligned, or too short
                if self._accept_level is not None and level > self._accept_level:
                    continue        # re-executing the TDCALL that exited, at its size
                self._accept_level = None
                self.accepts += 1
                err = kvm.module.tdg_mem_page_accept(vcpu.vcpu_id, at, level)
                if err == TDX_SUCCESS:
                    self.accepted += 1
                    self._accept_at = at + size
                    break
                if status(err) in (TDX_EPT_WALK_FAILED, TDX_EPT_ENTRY_STATE_INCORRECT):
                    # async_tdexit_ept_violation(): not an error the guest sees; the
                    # TDCALL is executed again, at the same size, on re-entry
                    self._accept_level = level
                    return GuestExit("ept", at, level, self.rip, accept=True)
                if tdx_operand_busy(err):
                    self.accept_busy += 1
            else:
                return GuestExit("panic", at, PG_LEVEL_4K, self.rip)
        return None


class LinuxGuestMemory:
    """The Linux TD's own record of its memory, shared by its vCPUs (tool-named: the
    guest kernel's unaccepted-memory bitmap and ``accepting_list``).

    Units are 2M (``unit_size`` = PMD_SIZE) in a huge region; the model's 16-page 4K
    region stands for memory accepted below 2M granularity (a firmware-accepted small
    range), so its units are 4K pages.  PAGE.ADD pages start accepted."""

    def __init__(self, kvm: "Kvm") -> None:
        self.kvm = kvm
        self.unaccepted: set[int] = set()
        for r in kvm.regions:
            if r.huge:
                self.unaccepted.update(range(r.base, r.base + r.npages, 512))
            else:
                self.unaccepted.update(range(r.base, r.base + r.npages))
        self.unaccepted -= set(kvm.initial_gfns)
        self.accepting: dict[int, int] = {}

    def unit_of(self, gfn: int) -> tuple[int, int]:
        """(first GFN, pages) of the unit holding ``gfn``: ``unaccepted->unit_size``."""
        r = self.kvm.region_of(gfn)
        if r is not None and r.huge:
            return gfn & ~511, 512
        return gfn, 1

    def claim(self, unit: int, vcpu_id: int) -> str:
        """Under unaccepted_memory_lock: "done", "wait" or "claimed"."""
        if unit not in self.unaccepted:
            return "done"
        if unit in self.accepting:
            return "wait"
        self.accepting[unit] = vcpu_id
        return "claimed"

    def accepted(self, unit: int) -> None:
        """``accept_memory()`` clears the unit's bit and leaves ``accepting_list``."""
        self.unaccepted.discard(unit)
        self.accepting.pop(unit, None)


def guest_memory(kvm: "Kvm") -> LinuxGuestMemory:
    """The TD's :class:`LinuxGuestMemory`, made on first use."""
    mem = getattr(kvm, "guest_memory", None)
    if mem is None:
        mem = kvm.guest_memory = LinuxGuestMemory(kvm)
    return mem
