"""hunt-c (seed 002, path (c)): hugepage-rfc, plus an atomic zap of mirror leaves under
the read lock (row 11), with no invalidation bracket (its begin and end need the write
lock), the way the TDP MMU's read-lock zaps of direct roots run
(tdp_mmu_zap_possible_nx_huge_page(), zap_collapsible_spte_range()); it replaces the
memory-failure zap, kvm_gmem_error_folio().  Stacked on ``read_lock_mirror_zap``.
"""
from __future__ import annotations

from ..kvm import Kvm as BaseKvm
from ..sched import cpu_relax
from ..spte import SHADOW_NONPRESENT_VALUE, is_last_spte, is_shadow_present_pte
from ..store import KvmMmuPage
from ..tdp_mmu import TdpMmu as BaseMmu


class Kvm(BaseKvm):
    def kvm_gmem_error_folio(self, start: int, end: int) -> None:
        """The what-if kvm_gmem_error_folio(): zap the private leaves of [start, end)
        with the atomic setter under the read lock (row 11); an ioctl-driven path, so
        not on a dead VM."""
        if not self._ioctl_alive():
            return
        self.mmu_lock.read_lock()
        try:
            self.mmu.tdp_mmu_zap_leafs_atomic(self.mmu.mirror_root, start, end)
        finally:
            self.mmu_lock.read_unlock()


class TdpMmu(BaseMmu):
    def tdp_mmu_zap_leafs_atomic(self, root: KvmMmuPage, start: int, end: int) -> int:
        """hunt-c's what-if: zap mirror leaves in [start, end) under the read lock with
        the atomic setter (row 11).  Returns how many it zapped."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_read("tdp_mmu_zap_leafs_atomic")
        zapped = 0
        kvm.rcu.rcu_read_lock()
        try:
            for sp, i, gfn, level, old in list(self._leaves(root, start, end)):
                while is_shadow_present_pte(old) and is_last_spte(old, level):
                    if not self.tdp_mmu_set_spte_atomic(sp, i, gfn, old,
                                                        SHADOW_NONPRESENT_VALUE, level):
                        zapped += 1
                        break
                    if not kvm._ioctl_alive():
                        return zapped
                    cpu_relax(self.sched)
                    old = sp.read(i)
        finally:
            kvm.rcu.rcu_read_unlock()
        return zapped
