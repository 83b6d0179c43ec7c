"""hugepage-rfc: private 2M leaves and their split, as a patch over refactor-2026.

"[RFC PATCH v5 00/45] TDX: Dynamic PAMT + S-EPT Hugepage" (ledger keys RFC5, RFC5-41,
RFC5-45), with the guest_memfd 2M folios it builds on.  What it changes, function by function:

* guest_memfd hands out 2M folios in a huge region (``kvm_gmem_get_folio``);
* TDX lets private memory map at 2M once the TD runs (``tdx_gmem_max_mapping_level``),
  and AUG and REMOVE take any level (the "TODO: handle large pages" checks go);
* a 2M leaf becomes a table of 512 leaves under the write lock: TDH.MEM.RANGE.BLOCK,
  tdx_track(), TDH.MEM.PAGE.DEMOTE (``tdx_sept_split_private_spte``, dispatched by the
  single hook), for a zap that covers part of it, a guest that accepts at 4K inside it
  (``tdx_handle_mismatched_accept``, 41/45), and the zapper's split;
* a memory-attribute change invalidates the 2M head and tail of its range.

Page tables are still removed only at teardown (row 14).
"""
from __future__ import annotations

from ..kvm import GuestExit, KvmVcpu, MemRegion
from ..kvm import Kvm as BaseKvm
from ..spte import (
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    gfn_round_for_level,
    is_last_spte,
    is_shadow_present_pte,
    spte_to_pfn,
)
from ..tdp_mmu import EIO
from ..tdx import KvmTdx as BaseTdx
from ..tdx_module import TD_RUNNABLE


class Kvm(BaseKvm):
    """KVM with the hugepage RFC."""

    def kvm_gmem_get_folio(self, gfn: int, region: MemRegion) -> None:
        """kvm_gmem_get_folio() with 2M folios: in a huge region, the whole 2M-aligned
        folio around ``gfn`` (one 2M-aligned range of PFNs)."""
        if not region.huge:
            return super().kvm_gmem_get_folio(gfn, region)
        base = gfn_round_for_level(gfn, PG_LEVEL_2M)
        first = self.pages.alloc_range(512, align=512)
        for i in range(512):
            self.gmem.setdefault(base + i, first + i)
        return None

    def kvm_arch_pre_set_memory_attributes_range(self, start: int, end: int
                                                  ) -> tuple[int, int]:
        """The range kvm_arch_pre_set_memory_attributes() invalidates with 2M leaves:
        widened to the huge-page-aligned head and tail, because a fault elsewhere in a 2M
        range may have computed a 2M max level from the old attributes (the kernel zaps
        and adds the head and tail; the zap splits a partly covered 2M leaf)."""
        return (gfn_round_for_level(start, PG_LEVEL_2M),
                gfn_round_for_level(end + 511, PG_LEVEL_2M))

    def tdx_handle_ept_violation(self, vcpu: KvmVcpu, exit: GuestExit) -> int:
        """tdx_handle_ept_violation() with RFC5 41/45: an EPT violation of type ACCEPT
        at 4K on a private GPA first goes to tdx_handle_mismatched_accept()."""
        if exit.private and not exit.pending and exit.accept and exit.level == PG_LEVEL_4K:
            assert exit.gfn is not None
            self.tdx_handle_mismatched_accept(exit.gfn)
        return super().tdx_handle_ept_violation(vcpu, exit)

    def tdx_handle_mismatched_accept(self, gfn: int) -> None:
        """RFC5 41/45 tdx_handle_mismatched_accept(): an EPT violation of type ACCEPT at
        4K: unless the 2M range is already inhibited (tested without the lock, which
        "relies on (a) setting the inhibit after performing the split, and (b) never
        clearing the flag"), take the write lock, split a 2M leaf there, and set the
        guest-inhibit bit, so no later fault maps 2M in the range and no recovery
        promotes it."""
        if self.hugepage_test_guest_inhibit(gfn):
            return
        base = gfn_round_for_level(gfn, PG_LEVEL_2M)
        self.mmu_lock.write_lock()
        try:
            self._split_huge_page_locked(gfn)
            self.sched.op("hugepage_set_guest_inhibit", base,
                          lambda: self.guest_inhibit_2m.add(base))
        finally:
            self.mmu_lock.write_unlock()

    def kvm_split_huge_page(self, gfn: int) -> bool:
        """Split the private 2M leaf mapping ``gfn`` under the write lock (row 8): the
        RFC's split of a mirror leaf, as the zapper asks for it."""
        if not self._ioctl_alive():
            return False
        self.mmu_lock.write_lock()
        try:
            return self._split_huge_page_locked(gfn)
        finally:
            self.mmu_lock.write_unlock()

    def _split_huge_page_locked(self, gfn: int) -> bool:
        base = gfn_round_for_level(gfn, PG_LEVEL_2M)
        self.rcu.rcu_read_lock()
        try:
            found = self.mmu._find(self.mmu.mirror_root, base, PG_LEVEL_2M)
            if found is None:
                return False
            sp, i, old = found
            if not is_shadow_present_pte(old) or not is_last_spte(old, PG_LEVEL_2M):
                return False
            return not self.mmu.tdp_mmu_split_huge_page(sp, i, base, old, PG_LEVEL_2M)
        finally:
            self.rcu.rcu_read_unlock()


class KvmTdx(BaseTdx):
    """KVM's TDX glue with the hugepage RFC."""

    def tdx_gmem_max_mapping_level(self, pfn: int, is_private: bool) -> int:
        """tdx_gmem_max_mapping_level() with TDX huge pages: 2M for private memory once
        the TD is runnable ("if (unlikely(to_kvm_tdx(kvm)->state !=
        TD_STATE_RUNNABLE)) return PG_LEVEL_4K; return PG_LEVEL_2M")."""
        if not is_private:
            return 0
        return PG_LEVEL_2M if self.module.td_state == TD_RUNNABLE else PG_LEVEL_4K

    def tdx_sept_set_private_spte(self, gfn: int, level: int, new: int) -> int:
        """tdx_sept_set_private_spte() (tdx_sept_map_leaf_spte() in RFC5) with huge
        pages: "TODO: Support hugepages when building the initial TD image."
        (``KVM_BUG_ON(level != PG_LEVEL_4K && state != TD_STATE_RUNNABLE)``, 45/45), then
        AUG at the leaf's level."""
        if self.kvm.kvm_bug_on_if(level != PG_LEVEL_4K and self.module.td_state != TD_RUNNABLE,
                                  "tdx_sept_set_private_spte",
                                  "large page while building the TD image"):
            return -EIO
        return self._tdx_map_leaf(gfn, level, spte_to_pfn(new))

    def tdx_sept_remove_private_spte(self, gfn: int, level: int, old: int) -> int:
        """tdx_sept_remove_private_spte() without v6.19's 4K-only check: BLOCK, TRACK +
        kick, REMOVE at the leaf's level."""
        kvm, m = self.kvm, self.module
        kvm.mmu_lock.lockdep_assert_held_write("tdx_sept_remove_private_spte")
        if kvm.kvm_bug_on_if(not m.hkid_assigned, "tdx_sept_remove_private_spte",
                             "private leaf zapped after the HKID was released"):
            return -EIO
        err = self.tdh_do_no_vcpus("TDH.MEM.RANGE.BLOCK", m.tdh_mem_range_block, gfn, level)
        if kvm.tdx_bug_on(err, "tdx_sept_remove_private_spte", "TDH.MEM.RANGE.BLOCK"):
            return -EIO
        self.tdx_track()
        err = self.tdh_do_no_vcpus("TDH.MEM.PAGE.REMOVE", m.tdh_mem_page_remove, gfn, level)
        if kvm.tdx_bug_on(err, "tdx_sept_remove_private_spte", "TDH.MEM.PAGE.REMOVE"):
            return -EIO
        m.tdh_phymem_page_wbinvd_hkid(spte_to_pfn(old))
        return 0

    def set_external_spte(self, gfn: int, level: int, old: int, new: int) -> int:
        """The single hook, plus the split: a present leaf that becomes a table goes
        to tdx_sept_split_private_spte()."""
        if is_shadow_present_pte(old) and is_last_spte(old, level) \
                and is_shadow_present_pte(new) and not is_last_spte(new, level):
            return self.tdx_sept_split_private_spte(gfn, level, old, new)
        return super().set_external_spte(gfn, level, old, new)

    def tdx_sept_split_private_spte(self, gfn: int, level: int, old: int, new: int) -> int:
        """tdx_sept_split_private_spte() (RFC v5): split of a private 2M leaf under the
        write lock: BLOCK, TRACK + kick, DEMOTE into the new table's external_spt,
        BLOCK and DEMOTE through tdh_do_no_vcpus."""
        kvm, m = self.kvm, self.module
        child = kvm.mmu.spte_to_child_sp(new)
        kvm.mmu_lock.lockdep_assert_held_write("tdx_sept_split_private_spte")
        err = self.tdh_do_no_vcpus("TDH.MEM.RANGE.BLOCK", m.tdh_mem_range_block, gfn, level)
        if kvm.tdx_bug_on(err, "tdx_sept_split_private_spte", "TDH.MEM.RANGE.BLOCK"):
            return -EIO
        self.tdx_track()
        assert child.external_spt is not None
        err = self.tdh_do_no_vcpus("TDH.MEM.PAGE.DEMOTE", m.tdh_mem_page_demote, gfn, level,
                                   child.external_spt)
        if kvm.tdx_bug_on(err, "tdx_sept_split_private_spte", "TDH.MEM.PAGE.DEMOTE"):
            return -EIO
        kvm.external_transition(child.external_spt, "in_sept")
        return 0
