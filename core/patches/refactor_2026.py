"""The 2026 refactor as a patch over v6.19 (refactor-2026, and every variant built on it).

Seed 000's single ``set_external_spte(old, new)`` hook, called inside the frozen window
(the "after" order of PATCH 07/17), in place of v6.19's ``set_external_spte_present()``
and ``remove_external_spte()``: the same shape as ``examples/patches/seed000_single_hook.py``,
written the way a user's patch is (see ``stress.patches``).  hugepage-rfc's split and
hunt-b's promotion extend the same hook (``hugepage_rfc``, ``hunt_b``).
"""
from __future__ import annotations

from ..spte import FROZEN_SPTE, is_frozen_spte, is_last_spte, is_shadow_present_pte, level_pages
from ..store import KvmMmuPage
from ..tdp_mmu import EBUSY, EIO
from ..tdp_mmu import TdpMmu as BaseMmu
from ..tdx import KvmTdx as BaseTdx


class TdpMmu(BaseMmu):
    """The TDP MMU of the 2026 refactor."""

    def _changed_spte(self, sp: KvmMmuPage, gfn: int, old: int, new: int, level: int,
                      shared: bool, was_present: bool, is_present: bool, was_leaf: bool,
                      is_leaf: bool, pfn_changed: bool) -> int:
        """__handle_changed_spte() after the refactor: v6.19's checks and its
        handle_removed_pt() of a non-leaf that goes away, then the single hook for every
        other mirror change."""
        ret = super()._changed_spte(sp, gfn, old, new, level, shared, was_present,
                                    is_present, was_leaf, is_leaf, pfn_changed)
        if not sp.is_mirror or (not was_present and not is_present) \
                or (was_leaf and is_leaf and pfn_changed) \
                or (was_present and not was_leaf
                    and (is_leaf or not is_present or pfn_changed)):
            return ret
        return self.kvm.tdx.set_external_spte(gfn, level, old, new)

    def handle_removed_pt(self, sp: KvmMmuPage, shared: bool, external: bool = True) -> None:
        """handle_removed_pt() after the refactor: each child's removal goes through
        handle_changed_spte() and the single hook (no remove_external_spte())."""
        kvm = self.kvm
        sp.unlinked = True
        level = sp.level
        step = level_pages(level)
        for i in range(512):
            old = self._freeze_child(sp, i, shared)
            if old is None or not external:
                continue
            gfn = sp.gfn + i * step
            self.handle_changed_spte(sp, gfn, old, FROZEN_SPTE, level, shared)
        if sp.is_mirror and external:
            kvm.tdx.free_external_spt(sp)
        kvm.rcu.call_rcu(lambda: self.tdp_mmu_free_sp_rcu_callback(sp), "free_sp")

    def tdp_mmu_set_spte_atomic(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                                level: int) -> int:
        """tdp_mmu_set_spte_atomic() after the refactor: on a mirror SPTE, freeze it,
        run __handle_changed_spte() (the hook) inside the frozen window, then write the
        new value or restore the old one."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_read("tdp_mmu_set_spte_atomic")
        if not sp.is_mirror:
            return super().tdp_mmu_set_spte_atomic(sp, i, gfn, old, new, level)
        # seed 000: "KVM doesn't currently support zapping or splitting mirror SPTEs
        # while holding mmu_lock for read."  (hunt-c and hunt-d lift this guard:
        # read_lock_mirror_zap.py.)
        if kvm.kvm_bug_on_if(is_shadow_present_pte(old), "__tdp_mmu_set_spte_atomic",
                             "mirror SPTE already present") or \
           kvm.kvm_bug_on_if(not is_shadow_present_pte(new), "__tdp_mmu_set_spte_atomic",
                             "mirror SPTE set non-present under the read lock"):
            return -EBUSY
        return self._frozen_window(sp, i, gfn, old, new, level)

    def _frozen_window(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                       level: int) -> int:
        """The frozen window of __tdp_mmu_set_spte_atomic() on a mirror SPTE (model
        helper, the part after the guard): freeze with try_cmpxchg64(), run
        __handle_changed_spte() (the hook), then write the new value or restore the old
        one ("__kvm_tdp_mmu_write_spte(sptep, ret ? old_spte : new_spte)")."""
        ok, _ = sp.cmpxchg(i, old, FROZEN_SPTE)
        if not ok:
            return -EBUSY
        ret = self._handle_changed_spte(sp, gfn, old, new, level, True)
        sp.write(i, old if ret else new)
        return ret

    def tdp_mmu_set_spte(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                         level: int) -> int:
        """tdp_mmu_set_spte() after the refactor: handle_changed_spte() updates the
        S-EPT through the hook (v6.19's mirror BUG and remove_external_spte() go)."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_write("tdp_mmu_set_spte")
        if is_frozen_spte(old) or is_frozen_spte(new):
            kvm.warn("tdp_mmu_set_spte", "frozen SPTE set under the write lock")
        old = sp.write(i, new)
        self.handle_changed_spte(sp, gfn, old, new, level, False)
        return old


class KvmTdx(BaseTdx):
    """KVM's TDX glue after the refactor."""

    def set_external_spte(self, gfn: int, level: int, old: int, new: int) -> int:
        """kvm_x86_ops.set_external_spte after seed 000 and the 2026 refactor: the single
        hook; TDX decides which SEAMCALLs the change needs."""
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
        # A non-leaf that goes away is handle_removed_pt()'s (children, then the table
        # page through free_external_spt); the TDP MMU never hands it to this hook.
        self.kvm.kvm_bug_on("set_external_spte", f"unexpected mirror change gfn={gfn:#x} "
                            f"L{level}")
        return -EIO
