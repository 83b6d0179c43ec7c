"""The guest CPU: runs a guest program while its vCPU is in guest mode.

A program is a tuple of instructions, one per guest RIP:

* ``("touch", gfn)``: access a private page.  A PENDING page raises #VE, and the guest's
  handler accepts it (at the level of its memory region) before retrying, as a Linux TDX
  guest does; a page that is not mapped is an EPT violation exit at this RIP.
* ``("accept", gfn, level)``: TDG.MEM.PAGE.ACCEPT.  BUSY is retried at once; a page not
  there to accept is an EPT violation exit; a size mismatch falls back to 4K.
* ``("shared", gfn)``: access a shared page through the direct root.

Before every instruction the CPU checks for a pending IPI or request and exits if there
is one, so a kick always gets the vCPU out within one instruction.  Zero-step mitigation
sees the same RIP exit again and again while an instruction cannot complete.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

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
    TDX_PAGE_ALREADY_ACCEPTED,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_SUCCESS,
    status,
    tdx_operand_busy,
)

if TYPE_CHECKING:
    from .kvm import GuestExit, Kvm, KvmVcpu

Instr = tuple


class ProgramGuest:
    """A guest that runs ``program`` once, instruction by instruction, from RIP 0."""

    def __init__(self, program: tuple[Instr, ...], accept_retries: int = 64) -> None:
        self.program = program
        self.rip = 0
        self.accept_retries = accept_retries
        self.accepts = 0
        self.accept_busy = 0

    @property
    def done(self) -> bool:
        return self.rip >= len(self.program)

    def run(self, kvm: "Kvm", vcpu: "KvmVcpu") -> "GuestExit":
        """Run the guest's instructions until an exit; a PENDING page raises #VE and the
        #VE handler accepts it (see SOURCES.md: a Linux TD differs, issue 10)."""
        from .kvm import GuestExit
        m = kvm.module
        me = current()
        while self.rip < len(self.program):
            me.item = self.rip         # the shrinker attributes steps to instructions
            if kvm.guest_check_exit(vcpu):
                return GuestExit("kick", rip=self.rip)
            ins = self.program[self.rip]
            op = ins[0]
            if op == "shared":
                if not self._shared_mapped(kvm, ins[1]):
                    return GuestExit("ept", ins[1], PG_LEVEL_4K, self.rip, private=False)
            elif op == "touch":
                gfn = ins[1]
                level = self._region_level(kvm, gfn)
                r = m.guest_access(vcpu.vcpu_id, gfn)
                if r == "ept":
                    return GuestExit("ept", gfn, level, self.rip)
                if r == "pending":
                    ex = self._accept(kvm, vcpu, gfn, level)
                    if ex is not None:
                        return ex
                    continue        # retry the access after #VE handling
            elif op == "accept":
                ex = self._accept(kvm, vcpu, ins[1], ins[2])
                if ex is not None:
                    return ex
            else:
                raise ValueError(f"unknown guest instruction {ins!r}")
            self.rip += 1
            m.guest_progress(vcpu.vcpu_id, self.rip)
        return GuestExit("done", rip=self.rip)

    def _region_level(self, kvm: "Kvm", gfn: int) -> int:
        r = kvm.region_of(gfn)
        return PG_LEVEL_2M if r is not None and r.huge and kvm.variant.hugepages else PG_LEVEL_4K

    def _accept(self, kvm: "Kvm", vcpu: "KvmVcpu", gfn: int, level: int) -> "GuestExit | None":
        from .kvm import GuestExit
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
