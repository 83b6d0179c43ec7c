"""hunt-b (seed 002, path (b)): hugepage-rfc, plus huge-page recovery run on the mirror
root under the write lock: a table becomes a 2M leaf made from its first leaf, with
TDH.MEM.PAGE.PROMOTE (row 9).

No kernel promotes a mirror table ("Promotion/demotion is not yet supported",
linux-next tdx.c); the promotion is written the way the RFC's split is.
"""
from __future__ import annotations

from ..kvm import Kvm as BaseKvm
from ..spte import is_last_spte, is_shadow_present_pte
from ..store import KvmMmuPage
from ..tdp_mmu import EIO
from ..tdp_mmu import TdpMmu as BaseMmu
from ..tdx import KvmTdx as BaseTdx


class Kvm(BaseKvm):
    def kvm_recover_huge_pages(self, gfn: int) -> bool:
        """kvm_mmu_recover_huge_pages() of the memslot holding ``gfn``, run on the
        mirror root: recover_huge_pages_range() under the write lock (row 9)."""
        if not self._ioctl_alive():
            return False
        region = self.region_of(gfn)
        if region is None:
            return False
        self.mmu_lock.write_lock()
        try:
            return self.mmu.recover_huge_pages_range(self.mmu.mirror_root, region.base,
                                                     region.base + region.npages)
        finally:
            self.mmu_lock.write_unlock()


class TdpMmu(BaseMmu):
    def _changed_spte(self, sp: KvmMmuPage, gfn: int, old: int, new: int, level: int,
                      shared: bool, was_present: bool, is_present: bool, was_leaf: bool,
                      is_leaf: bool, pfn_changed: bool) -> int:
        """__handle_changed_spte() with promotion: a mirror table replaced by a leaf
        merges its children in the S-EPT with PROMOTE first (the hook), then drops the
        mirror children without touching the S-EPT again."""
        if sp.is_mirror and was_present and not was_leaf and is_leaf:
            ret = self.kvm.tdx.set_external_spte(gfn, level, old, new)
            if not ret:
                self.handle_removed_pt(self.spte_to_child_sp(old), shared, external=False)
            return ret
        return super()._changed_spte(sp, gfn, old, new, level, shared, was_present,
                                     is_present, was_leaf, is_leaf, pfn_changed)


class KvmTdx(BaseTdx):
    def set_external_spte(self, gfn: int, level: int, old: int, new: int) -> int:
        """The single hook, plus promotion: a table that becomes a leaf goes to
        tdx_sept_promote_private_spte()."""
        if is_shadow_present_pte(old) and not is_last_spte(old, level) \
                and is_shadow_present_pte(new) and is_last_spte(new, level):
            return self.tdx_sept_promote_private_spte(gfn, level, old, new)
        return super().set_external_spte(gfn, level, old, new)

    def tdx_sept_promote_private_spte(self, gfn: int, level: int, old: int, new: int) -> int:
        """hunt-b's what-if promotion (no kernel has one: "Promotion/demotion is not yet
        supported", linux-next tdx.c), written the way the RFC v5 split path
        (tdx_sept_split_private_spte) demotes: BLOCK the table, tdx_track(), PROMOTE,
        BLOCK and PROMOTE through tdh_do_no_vcpus, each failure a TDX_BUG_ON.  A BUSY
        from a running vCPU is retried with every vCPU out and goes through; what
        remains is what the module refuses outright, e.g. a table of PENDING and
        MAPPED children."""
        kvm, m = self.kvm, self.module
        child = kvm.mmu.spte_to_child_sp(old)
        kvm.mmu_lock.lockdep_assert_held_write("tdx_sept_promote_private_spte")
        err = self.tdh_do_no_vcpus("TDH.MEM.RANGE.BLOCK", m.tdh_mem_range_block, gfn, level)
        if kvm.tdx_bug_on(err, "tdx_sept_promote_private_spte", "TDH.MEM.RANGE.BLOCK"):
            return -EIO
        self.tdx_track()
        err = self.tdh_do_no_vcpus("TDH.MEM.PAGE.PROMOTE", m.tdh_mem_page_promote, gfn, level)
        if kvm.tdx_bug_on(err, "tdx_sept_promote_private_spte", "TDH.MEM.PAGE.PROMOTE"):
            return -EIO
        if child.external_spt is not None:
            kvm.external_transition(child.external_spt, "freed")
        return 0
