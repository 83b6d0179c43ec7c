"""A private leaf removal that forgets TDH.MEM.TRACK (a planted mistake).

The mistake a developer could make while reworking tdx_sept_remove_private_spte(): the
TLB tracking between BLOCK and REMOVE looks like a flush that the caller already does.
The TDX module refuses the REMOVE (TDX_TLB_TRACKING_NOT_DONE): a TDX_BUG_ON.

    tdx-stress run --variant examples/patches/remove_without_track.py --stop-on-first
"""
from core.spte import spte_to_pfn
from core.tdp_mmu import EIO
from core.tdx import KvmTdx as Base

BASE = "hugepage-rfc"
SUMMARY = "tdx_sept_remove_private_spte() without tdx_track() between BLOCK and REMOVE"
FINDS = ("TDX_BUG_ON", "tdx_sept_remove_private_spte")


class KvmTdx(Base):
    def tdx_sept_remove_private_spte(self, gfn: int, level: int, old: int) -> int:
        kvm, m = self.kvm, self.module
        kvm.mmu_lock.lockdep_assert_held_write("tdx_sept_remove_private_spte")
        if kvm.kvm_bug_on_if(not m.hkid_assigned, "tdx_sept_remove_private_spte",
                             "private leaf zapped after the HKID was released"):
            return -EIO
        err = self.tdh_do_no_vcpus("TDH.MEM.RANGE.BLOCK", m.tdh_mem_range_block, gfn, level)
        if kvm.tdx_bug_on(err, "tdx_sept_remove_private_spte", "TDH.MEM.RANGE.BLOCK"):
            return -EIO
        # (the patch: no TLB tracking here)
        err = self.tdh_do_no_vcpus("TDH.MEM.PAGE.REMOVE", m.tdh_mem_page_remove, gfn, level)
        if kvm.tdx_bug_on(err, "tdx_sept_remove_private_spte", "TDH.MEM.PAGE.REMOVE"):
            return -EIO
        m.tdh_phymem_page_wbinvd_hkid(spte_to_pfn(old))
        return 0
