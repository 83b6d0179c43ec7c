"""KVM's side of the TDX hooks (arch/x86/kvm/vmx/tdx.c, docs/model.md §4.3).

Mapping: BUSY becomes ``-EBUSY`` (the mirror is restored and the fault retried); any
other error is ``TDX_BUG_ON``.  Removal goes BLOCK, TRACK plus a kick, REMOVE, WBINVD,
each of BLOCK/TRACK/REMOVE through ``tdh_do_no_vcpus`` (one retry after forcing every
vCPU out and holding new entries off with ``wait_for_sept_zap``).  These are v6.19's
hooks, 4K pages only; seed 000's single ``set_external_spte(old, new)`` hook and the
hugepage RFC's split are patches over them (:mod:`core.patches`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .spte import PG_LEVEL_4K, is_last_spte, is_shadow_present_pte, spte_to_pfn
from .store import KvmMmuPage
from .tdp_mmu import EBUSY, EIO
from .tdx_errno import tdx_operand_busy
from .tdx_module import TD_RUNNABLE

if TYPE_CHECKING:
    from .kvm import Kvm

KVM_REQ_OUTSIDE_GUEST_MODE = "KVM_REQ_OUTSIDE_GUEST_MODE"
KVM_REQ_VM_DEAD = "KVM_REQ_VM_DEAD"


class KvmTdx:
    """struct kvm_tdx plus the TDX hooks of kvm_x86_ops."""

    def __init__(self, kvm: "Kvm") -> None:
        self.kvm = kvm
        self.module = kvm.module
        self.wait_for_sept_zap = False

    # ------------------------------------------------------------------ helpers
    def _set_wait_for_sept_zap(self, value: bool) -> None:
        def step() -> None:
            self.wait_for_sept_zap = value
        self.kvm.sched.op("WRITE_ONCE(wait_for_sept_zap)", value, step)

    def tdh_do_no_vcpus(self, name: str, fn: Callable[..., int], *args: int) -> int:
        """tdh_do_no_vcpus(): one SEAMCALL, and on BUSY one retry with every vCPU out of
        the guest and new entries held off."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_write("tdh_do_no_vcpus")
        err = fn(*args)
        if tdx_operand_busy(err):
            self._set_wait_for_sept_zap(True)
            kvm.kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)
            err = fn(*args)
            self._set_wait_for_sept_zap(False)
        return err

    def tdx_track(self) -> None:
        """tdx_track(): TRACK, then kick every vCPU so that the old epoch drains."""
        kvm = self.kvm
        if self.module.td_state != TD_RUNNABLE:
            return
        kvm.mmu_lock.lockdep_assert_held_write("tdx_track")
        err = self.tdh_do_no_vcpus("TDH.MEM.TRACK", self.module.tdh_mem_track)
        kvm.tdx_bug_on(err, "tdx_track", "TDH.MEM.TRACK")
        kvm.kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)

    # ------------------------------------------------------------------ mapping
    def tdx_sept_link_private_spt(self, gfn: int, level: int, child: KvmMmuPage) -> int:
        """tdx_sept_link_private_spt(): TDH.MEM.SEPT.ADD of the child's external_spt."""
        kvm = self.kvm
        if kvm.kvm_bug_on_if(child.external_spt is None, "tdx_spte_to_external_spt",
                             "child has no external_spt") or \
           kvm.kvm_bug_on_if(child.level + 1 != level, "tdx_spte_to_external_spt",
                             "child level mismatch"):
            return -EIO
        assert child.external_spt is not None
        err = self.module.tdh_mem_sept_add(gfn, level, child.external_spt)
        if tdx_operand_busy(err):
            return -EBUSY
        if kvm.tdx_bug_on(err, "tdx_sept_link_private_spt", "TDH.MEM.SEPT.ADD"):
            return -EIO
        kvm.external_transition(child.external_spt, "in_sept")
        return 0

    def link_external_spt(self, gfn: int, level: int, child: KvmMmuPage) -> int:
        """kvm_x86_ops.link_external_spt (v6.19 only)."""
        return self.tdx_sept_link_private_spt(gfn, level, child)

    def tdx_gmem_max_mapping_level(self, pfn: int, is_private: bool) -> int:
        """tdx_gmem_max_mapping_level() of v6.19 (kvm_x86_ops.gmem_max_mapping_level):
        no restriction (0) for shared memory, 4K for private memory."""
        return PG_LEVEL_4K if is_private else 0

    def tdx_sept_set_private_spte(self, gfn: int, level: int, new: int) -> int:
        """tdx_sept_set_private_spte() of v6.19 for a leaf: "TODO: handle large pages."
        (``KVM_BUG_ON(level != PG_LEVEL_4K)``), then PAGE.ADD before the TD is finalised,
        PAGE.AUG after."""
        if self.kvm.kvm_bug_on_if(level != PG_LEVEL_4K, "tdx_sept_set_private_spte",
                                  "large page without hugepage support"):
            return -EIO
        return self._tdx_map_leaf(gfn, level, spte_to_pfn(new))

    def _tdx_map_leaf(self, gfn: int, level: int, pfn: int) -> int:
        """The rest of tdx_sept_set_private_spte() (model helper): PAGE.ADD before the TD
        is finalised (the model adds here, where the kernel counts the page and
        tdx_gmem_post_populate() adds it), tdx_mem_page_aug() after."""
        kvm = self.kvm
        if self.module.td_state != TD_RUNNABLE:
            err = self.module.tdh_mem_page_add(gfn, pfn)
            what = "TDH.MEM.PAGE.ADD"
        else:
            err = self.module.tdh_mem_page_aug(gfn, level, pfn)
            what = "TDH.MEM.PAGE.AUG"
        if tdx_operand_busy(err):
            return -EBUSY
        if kvm.tdx_bug_on(err, "tdx_sept_set_private_spte", what):
            return -EIO
        return 0

    def set_external_spte(self, gfn: int, level: int, old: int, new: int) -> int:
        """kvm_x86_ops.set_external_spte of v6.19: a leaf only (tables go through
        link_external_spt, removals through remove_external_spte).  The 2026 refactor
        makes it the single hook (core/patches/refactor_2026.py)."""
        return self.tdx_sept_set_private_spte(gfn, level, new)

    # ------------------------------------------------------------------ removal
    def remove_external_spte(self, gfn: int, old: int, level: int) -> None:
        """tdp_mmu.c remove_external_spte() of v6.19: leaves only (tables go through
        free_external_spt), write lock asserted."""
        if not is_shadow_present_pte(old) or not is_last_spte(old, level):
            return
        self.kvm.mmu_lock.lockdep_assert_held_write("remove_external_spte")
        self.tdx_sept_remove_private_spte(gfn, level, old)

    def tdx_sept_remove_private_spte(self, gfn: int, level: int, old: int) -> int:
        """tdx_sept_remove_private_spte() of v6.19: the HKID must be assigned, "TODO:
        handle large pages" (``KVM_BUG_ON(level != PG_LEVEL_4K)``), then BLOCK, TRACK +
        kick, REMOVE, WBINVD."""
        kvm, m = self.kvm, self.module
        kvm.mmu_lock.lockdep_assert_held_write("tdx_sept_remove_private_spte")
        if kvm.kvm_bug_on_if(not m.hkid_assigned, "tdx_sept_remove_private_spte",
                             "private leaf zapped after the HKID was released"):
            return -EIO
        if kvm.kvm_bug_on_if(level != PG_LEVEL_4K, "tdx_sept_remove_private_spte",
                             "large page"):
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

    def free_external_spt(self, sp: KvmMmuPage) -> None:
        """tdx_sept_free_private_spt() (kvm_x86_ops.free_external_spt; RFC v5:
        tdx_sept_reclaim_private_spt): release a removed table's S-EPT page.

        "KVM doesn't (yet) zap page table pages in mirror page table while TD is
        active ... KVM should only free mirror page tables after the TD's hkid is
        freed": ``KVM_BUG_ON(is_hkid_assigned)`` and the page is leaked; after the HKID
        is released it is reclaimed with TDH.PHYMEM.PAGE.RECLAIM (tdx_reclaim_page(),
        whose failure is a TDX_BUG_ON and leaks the page on purpose)."""
        kvm = self.kvm
        if sp.external_spt is None:
            return
        if kvm.kvm_bug_on_if(self.module.hkid_assigned, "tdx_sept_free_private_spt",
                             "S-EPT table page freed while the HKID is assigned: leaked"):
            self._leak(sp)
            return
        err = self.module.tdh_phymem_page_reclaim(sp.external_spt)
        if kvm.tdx_bug_on(err, "tdx_reclaim_page", "TDH.PHYMEM.PAGE.RECLAIM"):
            self._leak(sp)
            return
        kvm.external_transition(sp.external_spt, "freed")

    def _leak(self, sp: KvmMmuPage) -> None:
        if sp.external_spt is not None:
            self.kvm.external_transition(sp.external_spt, "leaked")
            sp.external_spt = None
