"""hunt-d (seed 002, path (d)): hugepage-rfc, plus an atomic zap of a mirror table under
the read lock (row 13), as tdp_mmu_zap_possible_nx_huge_page() zaps a direct root's
table, with no invalidation bracket.  No kernel has it: "KVM doesn't (yet) zap page table
pages in mirror page table while TD is active" (tdx_sept_free_private_spt()).  Stacked on
``read_lock_mirror_zap``.
"""
from __future__ import annotations

from ..kvm import Kvm as BaseKvm
from ..spte import (
    PG_LEVEL_2M,
    SHADOW_NONPRESENT_VALUE,
    gfn_round_for_level,
    is_last_spte,
    is_shadow_present_pte,
)
from ..store import KvmMmuPage
from ..tdp_mmu import TdpMmu as BaseMmu


class Kvm(BaseKvm):
    def kvm_zap_table(self, gfn: int) -> bool:
        """The what-if: zap the mirror table under ``gfn``'s 2M range with the atomic
        setter under the read lock (row 13)."""
        if not self._ioctl_alive():
            return False
        base = gfn_round_for_level(gfn, PG_LEVEL_2M)
        self.mmu_lock.read_lock()
        try:
            return self.mmu.tdp_mmu_zap_table(self.mmu.mirror_root, base, PG_LEVEL_2M)
        finally:
            self.mmu_lock.read_unlock()


class TdpMmu(BaseMmu):
    def tdp_mmu_zap_table(self, root: KvmMmuPage, gfn: int, level: int) -> bool:
        """hunt-d's what-if: zap the table mapping the level-``level`` range at ``gfn``
        under the read lock with the atomic setter (row 13), the way
        tdp_mmu_zap_possible_nx_huge_page() zaps a direct root's table; the subtree is
        torn down by handle_removed_pt(shared=true).  Returns whether it zapped."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_read("tdp_mmu_zap_table")
        kvm.rcu.rcu_read_lock()
        try:
            found = self._find(root, gfn, level)
            if found is None:
                return False
            sp, i, old = found
            if not is_shadow_present_pte(old) or is_last_spte(old, level):
                return False
            base = gfn_round_for_level(gfn, level)
            return not self.tdp_mmu_set_spte_atomic(sp, i, base, old,
                                                    SHADOW_NONPRESENT_VALUE, level)
        finally:
            kvm.rcu.rcu_read_unlock()
