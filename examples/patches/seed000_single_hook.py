"""Seed 000's patch, written over v6.19: one set_external_spte(old, new) hook, called
inside the frozen window (the "after" order of PATCH 07/17), in place of v6.19's
link_external_spt / set_external_spte_present / remove_external_spte.

It must behave exactly as the built-in refactor-2026 does (tests/test_patches.py checks
that every run is trace-identical):

    tdx-stress variants --show examples/patches/seed000_single_hook.py
"""
from core.spte import (
    FROZEN_SPTE,
    is_frozen_spte,
    is_last_spte,
    is_shadow_present_pte,
    level_pages,
)
from core.store import KvmMmuPage
from core.tdp_mmu import EBUSY, EIO
from core.tdp_mmu import TdpMmu as BaseMmu
from core.tdx import KvmTdx as BaseTdx

BASE = "v6.19"
SUMMARY = ("seed 000 over v6.19: a single set_external_spte(old, new) hook inside the "
           "frozen window")


class TdpMmu(BaseMmu):
    def _changed_spte(self, sp: KvmMmuPage, gfn: int, old: int, new: int, level: int,
                      shared: bool, was_present: bool, is_present: bool, was_leaf: bool,
                      is_leaf: bool, pfn_changed: bool) -> int:
        # v6.19's checks and its handle_removed_pt() of a non-leaf that goes away
        ret = super()._changed_spte(sp, gfn, old, new, level, shared, was_present,
                                    is_present, was_leaf, is_leaf, pfn_changed)
        if not sp.is_mirror or (not was_present and not is_present) \
                or (was_leaf and is_leaf and pfn_changed) \
                or (was_present and not was_leaf and (is_leaf or not is_present
                                                      or pfn_changed)):
            return ret
        # + the single hook, for every other mirror change
        return self.kvm.tdx.set_external_spte(gfn, level, old, new)

    def handle_removed_pt(self, sp: KvmMmuPage, shared: bool, external: bool = True) -> None:
        kvm = self.kvm
        sp.unlinked = True
        level = sp.level
        step = level_pages(level)
        for i in range(512):
            gfn = sp.gfn + i * step
            old = self._freeze_child(sp, i, shared)
            if old is None or not external:
                continue
            self.handle_changed_spte(sp, gfn, old, FROZEN_SPTE, level, shared)
        if sp.is_mirror and external:
            kvm.tdx.free_external_spt(sp)
        kvm.rcu.call_rcu(lambda: self.tdp_mmu_free_sp_rcu_callback(sp), "free_sp")

    def tdp_mmu_set_spte_atomic(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                                level: int) -> int:
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_read("tdp_mmu_set_spte_atomic")
        if not sp.is_mirror:
            return super().tdp_mmu_set_spte_atomic(sp, i, gfn, old, new, level)
        # - set_external_spte_present(); + freeze, __handle_changed_spte(), write back
        if kvm.kvm_bug_on_if(is_shadow_present_pte(old), "__tdp_mmu_set_spte_atomic",
                             "mirror SPTE already present") or \
           kvm.kvm_bug_on_if(not is_shadow_present_pte(new), "__tdp_mmu_set_spte_atomic",
                             "mirror SPTE set non-present under the read lock"):
            return -EBUSY
        ok, _ = sp.cmpxchg(i, old, FROZEN_SPTE)
        if not ok:
            return -EBUSY
        ret = self._handle_changed_spte(sp, gfn, old, new, level, True)
        sp.write(i, old if ret else new)
        return ret

    def tdp_mmu_set_spte(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                         level: int) -> int:
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_write("tdp_mmu_set_spte")
        if is_frozen_spte(old) or is_frozen_spte(new):
            kvm.warn("tdp_mmu_set_spte", "frozen SPTE set under the write lock")
        old = sp.write(i, new)
        self.handle_changed_spte(sp, gfn, old, new, level, False)
        # - the mirror BUG and remove_external_spte(): handle_changed_spte() did it
        return old


class KvmTdx(BaseTdx):
    def set_external_spte(self, gfn: int, level: int, old: int, new: int) -> int:
        # the single hook decides which SEAMCALLs the change needs
        was_present = is_shadow_present_pte(old)
        is_present = is_shadow_present_pte(new)
        was_leaf = was_present and is_last_spte(old, level)
        is_leaf = is_present and is_last_spte(new, level)
        if not was_present and is_present:
            if is_leaf:
                return self.tdx_sept_set_private_spte(gfn, level, new)
            return self.tdx_sept_link_private_spt(gfn, level,
                                                  self.kvm.mmu.spte_to_child_sp(new))
        if was_leaf and not is_present:
            return self.tdx_sept_remove_private_spte(gfn, level, old)
        self.kvm.kvm_bug_on("set_external_spte", f"unexpected mirror change gfn={gfn:#x} "
                            f"L{level}")
        return -EIO

