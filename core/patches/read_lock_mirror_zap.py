"""What hunt-c and hunt-d share: the atomic setter's guard against zapping a mirror
SPTE under the read lock, lifted.

Seed 000's ``__tdp_mmu_set_spte_atomic()`` refuses a mirror change that is not an
install: "KVM doesn't currently support zapping or splitting mirror SPTEs while holding
mmu_lock for read" (``KVM_BUG_ON`` of a present old value or a non-present new one).  A
patch that zaps the mirror under the read lock must drop that check; the rest of the
frozen window stays as the refactor has it.
"""
from __future__ import annotations

from ..store import KvmMmuPage
from .refactor_2026 import TdpMmu as RefactorMmu


class TdpMmu(RefactorMmu):
    def tdp_mmu_set_spte_atomic(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                                level: int) -> int:
        """tdp_mmu_set_spte_atomic() without the guard: any mirror change goes through
        the frozen window (freeze, the hook, write or restore)."""
        if not sp.is_mirror:
            return super().tdp_mmu_set_spte_atomic(sp, i, gfn, old, new, level)
        self.kvm.mmu_lock.lockdep_assert_held_read("tdp_mmu_set_spte_atomic")
        return self._frozen_window(sp, i, gfn, old, new, level)
