"""The TDP MMU (arch/x86/kvm/mmu/tdp_mmu.c) with mirror roots (docs/model.md §3).

Functions carry the names of the kernel functions they model.  This is the TDP MMU of
v6.19, the "before" order of the atomic update: freeze, call the TDX hook, write the new
value or restore the old, then ``handle_changed_spte`` for bookkeeping (children are
handled after the parent's external update).  The "after" order of the 2026 refactor
(seed 002 PATCH 07/17), where ``__handle_changed_spte`` inside the frozen window
propagates to the children *first* and then calls the single ``set_external_spte(old,
new)`` hook, is a patch over this one (:mod:`core.patches.refactor_2026`); so are the
hunts' what-if paths (:mod:`core.patches`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .oracle import classify
from .sched import cpu_relax, current
from .spte import (
    FROZEN_SPTE,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    ROOT_LEVEL,
    SHADOW_NONPRESENT_VALUE,
    SPTE_MMU_PRESENT_MASK,
    gfn_round_for_level,
    is_frozen_spte,
    is_last_spte,
    is_shadow_present_pte,
    level_pages,
    make_nonleaf_spte,
    make_spte,
    spte_index,
    spte_to_pfn,
)
from .store import KvmMmuPage

if TYPE_CHECKING:
    from .kvm import Kvm

RET_PF_CONTINUE, RET_PF_RETRY, RET_PF_EMULATE, RET_PF_INVALID = 0, 1, 2, 3
RET_PF_FIXED, RET_PF_SPURIOUS = 4, 5
RET_PF_MEMORY_FAULT = 6     # -EFAULT with KVM_EXIT_MEMORY_FAULT: userspace must convert
RET_PF_SPLIT = 7            # a private 2M leaf maps a GFN the guest wants at 4K
EBUSY, EIO, EINVAL = 16, 5, 22


class PageFault:
    """struct kvm_page_fault, reduced to what the TDP MMU uses."""

    __slots__ = ("gfn", "goal_level", "is_private", "pfn", "mmu_seq")

    def __init__(self, gfn: int, goal_level: int, is_private: bool, pfn: int,
                 mmu_seq: int = 0) -> None:
        self.gfn = gfn
        self.goal_level = goal_level
        self.is_private = is_private
        self.pfn = pfn
        self.mmu_seq = mmu_seq


class TdpMmu:
    def __init__(self, kvm: "Kvm") -> None:
        self.kvm = kvm
        self.sched = kvm.sched
        self.rec = kvm.rec
        self.pages: dict[int, KvmMmuPage] = {}
        self.mirror_root = self.tdp_mmu_alloc_sp(ROOT_LEVEL, 0, True, root=True)
        self.direct_root = self.tdp_mmu_alloc_sp(ROOT_LEVEL, 0, False, root=True)
        self.mirror_root.linked = self.direct_root.linked = True

    # ------------------------------------------------------------------ table pages
    def tdp_mmu_alloc_sp(self, level: int, gfn: int, mirror: bool,
                         root: bool = False) -> KvmMmuPage:
        """tdp_mmu_alloc_sp() (+ kvm_mmu_alloc_external_spt() for a non-root mirror)."""
        kvm = self.kvm

        def alloc() -> tuple[int, int | None]:
            # An operation, so that PFNs are handed out in schedule order and a replayed
            # free-mode trace allocates exactly the same pages.
            ext = None
            if mirror and not root:    # the S-EPT root is a TD control page
                ext = kvm.pages.alloc()
                kvm.external_state[ext] = "allocated"
            return kvm.pages.alloc(), ext
        pfn, ext = self.sched.op("alloc_page", level, alloc)
        sp = KvmMmuPage(self.sched, self.rec, pfn, level, gfn, mirror, ext)
        self.pages[sp.pfn] = sp
        return sp

    def spte_to_child_sp(self, spte: int) -> KvmMmuPage:
        """spte_to_child_sp()."""
        return self.pages[spte_to_pfn(spte)]

    def tdp_mmu_free_sp(self, sp: KvmMmuPage) -> None:
        """tdp_mmu_free_sp(): free a table that was never made reachable, at once."""
        if sp.linked and not sp.unlinked:
            self.kvm.violation(6, f"{sp!r} freed at once while linked")
        self._free_sp(sp)
        if sp.external_spt is not None:
            self.kvm.external_transition(sp.external_spt, "freed")

    def _free_sp(self, sp: KvmMmuPage) -> None:
        sp.free_count += 1
        if sp.free_count > 1:
            self.kvm.violation(6, f"{sp!r} freed {sp.free_count} times")
        sp.freed = True

    def tdp_mmu_free_sp_rcu_callback(self, sp: KvmMmuPage) -> None:
        """tdp_mmu_free_sp_rcu_callback(): runs after a grace period."""
        self._free_sp(sp)

    # ------------------------------------------------------------------ bookkeeping
    def handle_changed_spte(self, sp: KvmMmuPage, gfn: int, old: int, new: int, level: int,
                            shared: bool) -> None:
        """handle_changed_spte(): ``KVM_BUG_ON(__handle_changed_spte(...), kvm)``.

        The callers that cannot undo the change (the write-lock setter, and
        handle_removed_pt() for every child) come through here: a failed external
        update is a KVM_BUG_ON whatever the lock mode (Sean Christopherson's
        ``__handle_changed_spte`` split, RFC v5 thread; SOURCES.md).
        """
        self._handle_changed_spte(sp, gfn, old, new, level, shared, bug_on=True)

    def _handle_changed_spte(self, sp: KvmMmuPage, gfn: int, old: int, new: int, level: int,
                             shared: bool, bug_on: bool = False) -> int:
        """__handle_changed_spte(): check the transition, tear down a removed subtree, and
        (after the 2026 refactor) propagate a mirror change to the S-EPT.

        Classifies the change into its scenario row (mirror only) and reports the WARN /
        BUG the kernel has for invalid transitions.  The two S-EPT updates are
        either/or, as in RFC v5 34/45 and Sean's ``__handle_changed_spte``: a present
        non-leaf replaced by anything goes to handle_removed_pt() (children removed, the
        table page reclaimed), and only other mirror changes call set_external_spte():
        "changes to non-leaf mirror SPTEs are handled by handle_removed_pt() (the
        TDX-Module requires that child entries are removed before the parent SPTE)".
        Returns the hook's result (0 in the "before" order, which has no hook here).
        """
        kvm = self.kvm
        ctx = current()
        was_present, is_present = is_shadow_present_pte(old), is_shadow_present_pte(new)
        was_leaf = was_present and is_last_spte(old, level)
        is_leaf = is_present and is_last_spte(new, level)
        pfn_changed = spte_to_pfn(old) != spte_to_pfn(new)
        mirror = sp.is_mirror
        row = classify(old, new, level, shared) if mirror else None
        if mirror:
            if row is not None:
                ctx.rows[row] += 1
            elif was_present:
                ctx.attr_changes += 1
        pushed = row is not None
        if row is not None:
            ctx.row_stack.append(row)
        try:
            ret = self._changed_spte(sp, gfn, old, new, level, shared, was_present,
                                     is_present, was_leaf, is_leaf, pfn_changed)
            if ret and bug_on:
                # reported inside the change, so that it is attributed to its row and
                # joins the root finding of the same failure as its consequence
                kvm.kvm_bug_on("handle_changed_spte",
                               f"set_external_spte failed ({ret}) gfn={gfn:#x} L{level} "
                               f"({'read' if shared else 'write'} lock)")
            return ret
        finally:
            if pushed:
                ctx.row_stack.pop()
                if not ctx.row_stack:
                    ctx.lockdep_open = ctx.change_root = None

    def _changed_spte(self, sp: KvmMmuPage, gfn: int, old: int, new: int, level: int,
                      shared: bool, was_present: bool, is_present: bool, was_leaf: bool,
                      is_leaf: bool, pfn_changed: bool) -> int:
        """The body of __handle_changed_spte() (model helper: split out so that the
        scenario row stays pushed around it)."""
        kvm = self.kvm
        if not was_present and not is_present:
            # Row 5.  The kernel exempts MMIO and a *new* value that is FROZEN_SPTE
            # (handle_removed_pt() freezing a non-present child), not an old one:
            # WARN_ON_ONCE(!is_mmio_spte(old) && !is_mmio_spte(new) &&
            #              !is_frozen_spte(new)).
            if not is_frozen_spte(new):
                kvm.warn("handle_changed_spte", "non-present to non-present change "
                         f"gfn={gfn:#x} L{level}")
            return 0
        if was_leaf and is_leaf and pfn_changed:
            kvm.bug("handle_changed_spte", f"leaf PFN changed {spte_to_pfn(old):#x} -> "
                    f"{spte_to_pfn(new):#x} gfn={gfn:#x}")
            return 0
        if was_present and not was_leaf and is_present and not is_leaf and pfn_changed:
            kvm.warn("handle_changed_spte", f"non-leaf PFN changed gfn={gfn:#x}")

        if was_present and not was_leaf and (is_leaf or not is_present or pfn_changed):
            self.handle_removed_pt(self.spte_to_child_sp(old), shared)
            return 0

        # v6.19: no hook here (set_external_spte_present() and remove_external_spte()
        # update the S-EPT); the 2026 refactor adds one (core/patches/refactor_2026.py)
        return 0

    def handle_removed_pt(self, sp: KvmMmuPage, shared: bool, external: bool = True) -> None:
        """handle_removed_pt(): tear down a table unlinked from the tree, children first,
        then release its S-EPT page (free_external_spt / tdx_sept_free_private_spt, which
        is a KVM_BUG_ON while the HKID is assigned), then free the table through RCU.

        ``external=False`` is hunt-b's patch: PROMOTE already merged the children in the
        S-EPT and released the table page."""
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
            if sp.is_mirror and is_shadow_present_pte(old):
                # v6.19: KVM_BUG_ON(shared, kvm); remove_external_spte().
                kvm.kvm_bug_on_if(shared, "handle_removed_pt",
                                  "mirror table removed under the read lock")
                kvm.tdx.remove_external_spte(gfn, old, level)
        if sp.is_mirror and external:
            kvm.tdx.free_external_spt(sp)
        kvm.rcu.call_rcu(lambda: self.tdp_mmu_free_sp_rcu_callback(sp), "free_sp")

    def _freeze_child(self, sp: KvmMmuPage, i: int, shared: bool) -> int | None:
        """The top of handle_removed_pt()'s loop: freeze child ``i`` and return its old
        value (None: a non-present child under the write lock, skipped).  Under the read
        lock another thread may own a frozen child (a fault installing it): spin until it
        writes a real value back, then take it."""
        if shared:
            while True:
                old = sp.xchg(i, FROZEN_SPTE)
                if not is_frozen_spte(old):
                    return old
                cpu_relax(self.sched)
        old = sp.read(i)
        if not old & SPTE_MMU_PRESENT_MASK:         # !is_shadow_present_pte(old)
            return None
        sp.write(i, FROZEN_SPTE)
        return old

    # ------------------------------------------------------------------ setters
    def tdp_mmu_set_spte_atomic(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                                level: int) -> int:
        """tdp_mmu_set_spte_atomic(): change an SPTE under the read lock; -EBUSY if
        another thread changed it first or the S-EPT update failed."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_read("tdp_mmu_set_spte_atomic")
        if not sp.is_mirror:
            ok, _ = sp.cmpxchg(i, old, new)
            if not ok:
                return -EBUSY
            self.handle_changed_spte(sp, gfn, old, new, level, True)
            return 0
        return self.set_external_spte_present(sp, i, gfn, old, new, level)

    def set_external_spte_present(self, sp: KvmMmuPage, i: int, gfn: int, old: int,
                                  new: int, level: int) -> int:
        """set_external_spte_present() of v6.19: freeze, link_external_spt or
        set_external_spte, restore or write, then bookkeeping."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held("set_external_spte_present")
        if kvm.kvm_bug_on_if(is_shadow_present_pte(old), "set_external_spte_present",
                             "mirror SPTE already present"):
            return -EIO
        ok, _ = sp.cmpxchg(i, old, FROZEN_SPTE)
        if not ok:
            return -EBUSY
        if is_last_spte(new, level):
            ret = kvm.tdx.set_external_spte(gfn, level, old, new)
        else:
            ret = kvm.tdx.link_external_spt(gfn, level, self.spte_to_child_sp(new))
        sp.write(i, old if ret else new)
        if ret:
            return ret
        self.handle_changed_spte(sp, gfn, old, new, level, True)
        return 0

    def tdp_mmu_set_spte(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                         level: int) -> int:
        """tdp_mmu_set_spte(): change an SPTE under the write lock.  The value is written
        first, so nothing after it can be undone."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_write("tdp_mmu_set_spte")
        if is_frozen_spte(old) or is_frozen_spte(new):
            kvm.warn("tdp_mmu_set_spte", "frozen SPTE set under the write lock")
        old = sp.write(i, new)
        self.handle_changed_spte(sp, gfn, old, new, level, False)
        if sp.is_mirror:
            # v6.19: "Users that do non-atomic setting of PTEs don't operate on mirror
            # roots, so don't handle it and bug the VM if it's seen."
            kvm.kvm_bug_on_if(is_shadow_present_pte(new), "tdp_mmu_set_spte",
                              "mirror SPTE made present under the write lock")
            kvm.tdx.remove_external_spte(gfn, old, level)
        return old

    def tdp_mmu_link_sp(self, sp: KvmMmuPage, i: int, gfn: int, old: int, child: KvmMmuPage,
                        shared: bool) -> int:
        """tdp_mmu_link_sp(): point an SPTE at a new child table."""
        new = make_nonleaf_spte(child.pfn)
        child.ptep = (sp, i)
        if shared:
            ret = self.tdp_mmu_set_spte_atomic(sp, i, gfn, old, new, sp.level)
            if ret:
                return ret
        else:
            self.tdp_mmu_set_spte(sp, i, gfn, old, new, sp.level)
        child.linked = True
        return 0

    # ------------------------------------------------------------------ fault-in
    def kvm_tdp_mmu_map(self, fault: PageFault) -> int:
        """kvm_tdp_mmu_map(): walk and install under the read lock (or, in hunt-a1's
        what-if prefault, the write lock: ``shared`` follows the lock actually held)."""
        kvm = self.kvm
        shared = current().lock_mode != "write"
        root = self.mirror_root if fault.is_private else self.direct_root
        kvm.rcu.rcu_read_lock()
        try:
            sp, level = root, ROOT_LEVEL
            gfn = fault.gfn
            while True:
                i = spte_index(gfn, level)
                old = sp.read(i)
                if is_frozen_spte(old):
                    return RET_PF_RETRY
                if level == fault.goal_level:
                    if is_shadow_present_pte(old) and not is_last_spte(old, level) \
                            and root.is_mirror:
                        # A table already maps this range: never replace it with a leaf
                        # here (that is promotion, row 9); map at the lower level instead.
                        fault.goal_level = level - 1
                    else:
                        break
                if is_shadow_present_pte(old):
                    if is_last_spte(old, level):
                        # A huge leaf already maps the gfn.  For a private fault at a
                        # smaller level (the guest accepts at 4K) the hugepage RFC splits
                        # the leaf under the write lock first; the caller does that.
                        return RET_PF_SPLIT if root.is_mirror else RET_PF_SPURIOUS
                    sp, level = self.spte_to_child_sp(old), level - 1
                    continue
                child = self.tdp_mmu_alloc_sp(level - 1, gfn_round_for_level(gfn, level),
                                              root.is_mirror)
                if self.tdp_mmu_link_sp(sp, i, gfn_round_for_level(gfn, level), old, child,
                                        shared):
                    self.tdp_mmu_free_sp(child)
                    return RET_PF_RETRY
                sp, level = child, level - 1
            return self.tdp_mmu_map_handle_target_level(sp, i, old, fault, shared)
        finally:
            kvm.rcu.rcu_read_unlock()

    def tdp_mmu_map_handle_target_level(self, sp: KvmMmuPage, i: int, old: int,
                                        fault: PageFault, shared: bool) -> int:
        """tdp_mmu_map_handle_target_level()."""
        level = fault.goal_level
        gfn = gfn_round_for_level(fault.gfn, level)
        new = make_spte(fault.pfn - (fault.gfn - gfn), level)
        if new == old or (is_shadow_present_pte(old) and is_last_spte(old, level)):
            return RET_PF_SPURIOUS
        if shared:
            if self.tdp_mmu_set_spte_atomic(sp, i, gfn, old, new, level):
                return RET_PF_RETRY
        else:
            self.tdp_mmu_set_spte(sp, i, gfn, old, new, level)
        return RET_PF_FIXED

    def kvm_tdp_mmu_populate(self, gfn: int, level: int, shared: bool) -> bool:
        """Link the mirror tables needed to map ``gfn`` at ``level`` (the table walk of
        kvm_tdp_mmu_map() without the leaf).  Returns whether they all exist now."""
        kvm = self.kvm
        kvm.rcu.rcu_read_lock()
        try:
            sp, lvl = self.mirror_root, ROOT_LEVEL
            while lvl > level:
                i = spte_index(gfn, lvl)
                old = sp.read(i)
                if is_frozen_spte(old):
                    return False
                if is_shadow_present_pte(old):
                    if is_last_spte(old, lvl):
                        return False
                    sp, lvl = self.spte_to_child_sp(old), lvl - 1
                    continue
                base = gfn_round_for_level(gfn, lvl)
                child = self.tdp_mmu_alloc_sp(lvl - 1, base, True)
                if self.tdp_mmu_link_sp(sp, i, base, old, child, shared):
                    self.tdp_mmu_free_sp(child)
                    return False
                sp, lvl = child, lvl - 1
            return True
        finally:
            kvm.rcu.rcu_read_unlock()

    # ------------------------------------------------------------------ walks
    def _find(self, root: KvmMmuPage, gfn: int, level: int
              ) -> tuple[KvmMmuPage, int, int] | None:
        """Walk to the SPTE of ``level`` mapping ``gfn``: (table, index, value), or None
        when a table on the way is missing or a leaf above ends the walk."""
        sp, lvl = root, ROOT_LEVEL
        while True:
            i = spte_index(gfn, lvl)
            v = sp.read(i)
            if lvl == level:
                return sp, i, v
            if not is_shadow_present_pte(v) or is_last_spte(v, lvl):
                return None
            sp, lvl = self.spte_to_child_sp(v), lvl - 1

    # ------------------------------------------------------------------ zaps
    def tdp_mmu_zap_leafs(self, root: KvmMmuPage, start: int, end: int) -> bool:
        """tdp_mmu_zap_leafs(): zap every leaf in [start, end) under the write lock.

        A 2M leaf only partly inside the range is split first (hugepage RFC), so that
        only the 4K pages in the range go.  After each zapped leaf,
        tdp_mmu_iter_cond_resched(): only when the lock is contended
        (tdp_mmu_iter_need_resched(): ``rwlock_needbreak()``; the model has no
        need_resched()) does the walk leave its RCU section, drop and retake the lock
        (cond_resched_rwlock_write()) and enter RCU again; otherwise it stays inside
        the one read-side section, as the kernel's walk does (read in
        ColinIanKing/linux-next @ 1c60d04aac53, arch/x86/kvm/mmu/tdp_mmu.c: source MMU
        of core/SOURCES.md).  After a yield the walk
        restarts from the root at the next GFN (tdp_iter_restart() walks down to
        ``next_last_level_gfn``), not at the start of the range.  Returns whether
        anything was zapped.

        (The kernel asks at every SPTE the walk visits, the model after each leaf it
        zapped: the first ask after a yield cannot yield again, "Ensure forward
        progress has been made before yielding", so the model's asks are the ones that
        can yield at a leaf.)
        """
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_write("tdp_mmu_zap_leafs")
        flush = False
        kvm.rcu.rcu_read_lock()
        try:
            restart = True
            at = start
            while restart:
                restart = False
                for sp, i, gfn, level, old in self._leaves(root, at, end):
                    n = level_pages(level)
                    if level > PG_LEVEL_4K and (gfn < start or gfn + n > end):
                        self.tdp_mmu_split_huge_page(sp, i, gfn, old, level)
                        restart, at = True, max(at, gfn)
                        break
                    self.tdp_mmu_set_spte(sp, i, gfn, old, SHADOW_NONPRESENT_VALUE, level)
                    flush = True
                    # tdp_mmu_iter_cond_resched(): tdp_mmu_iter_need_resched() first
                    if not kvm.mmu_lock.needbreak():
                        continue
                    kvm.rcu.rcu_read_unlock()
                    dropped = kvm.mmu_lock.cond_resched()
                    kvm.rcu.rcu_read_lock()
                    if dropped:
                        restart, at = True, gfn + n
                        break
        finally:
            kvm.rcu.rcu_read_unlock()
        return flush

    def _leaves(self, root: KvmMmuPage, start: int, end: int):
        """Present leaves overlapping [start, end), in GFN order, read one at a time."""
        def walk(sp: KvmMmuPage):
            level = sp.level
            n = level_pages(level)
            # the entries that overlap [start, end): from the one holding start to the
            # last one below end
            base = sp.gfn
            first = max(0, (start - base) // n)
            last = min(512, (end - base + n - 1) // n)
            for i in range(first, last):
                v = sp.read(i)
                if not v & SPTE_MMU_PRESENT_MASK:       # !is_shadow_present_pte(v)
                    continue
                if is_last_spte(v, level):
                    yield sp, i, base + i * n, level, v
                else:
                    yield from walk(self.spte_to_child_sp(v))
        return walk(root)

    def tdp_mmu_split_huge_page(self, sp: KvmMmuPage, i: int, gfn: int, old: int,
                                level: int) -> int:
        """tdp_mmu_split_huge_page() under the write lock (hugepage RFC, row 8): build a
        table of 512 leaves that map the same pages, then link it in place of the leaf;
        the S-EPT side (BLOCK, TRACK, DEMOTE) happens in set_external_spte."""
        child = self.tdp_mmu_alloc_sp(level - 1, gfn, sp.is_mirror)
        pfn = spte_to_pfn(old)
        n = level_pages(level - 1)
        for j in range(512):
            # The new table is not reachable yet, so no other thread can see these
            # stores: plain writes, not operations (tdp_mmu_split_huge_page() does the
            # same before tdp_mmu_link_sp()).
            child.spt[j] = make_spte(pfn + j * n, level - 1)
        return self.tdp_mmu_link_sp(sp, i, gfn, old, child, shared=False)

    def tdp_mmu_make_huge_spte(self, parent: int) -> int | None:
        """tdp_mmu_make_huge_spte(): the huge SPTE that replaces the table ``parent``
        points at, made from its *first* present leaf (make_huge_spte(): that leaf's PFN
        aligned down to 2M); None (-ENOENT) if the table has no leaf.  Nothing checks
        the other 511: for a direct root the host mapping level says the backing is
        huge, and that is enough."""
        child = self.spte_to_child_sp(parent)
        for j in range(512):
            v = child.read(j)
            if is_shadow_present_pte(v) and is_last_spte(v, PG_LEVEL_4K):
                # "huge_spte already has the address of the sub-page being collapsed
                # from small_spte, so just clear the lower address bits"
                pfn = spte_to_pfn(v)
                return make_spte(pfn - pfn % 512, PG_LEVEL_2M)
        return None

    def recover_huge_pages_range(self, root: KvmMmuPage, start: int, end: int) -> bool:
        """recover_huge_pages_range() (David Matlack, "Recover TDP MMU huge page mappings
        in-place instead of zapping", v6.12), hunt-b's patch: run on the mirror root.
        For each 2M entry inside [start, end): skip it unless it is a present table
        whose range kvm_mmu_max_mapping_level() allows at 2M, make the huge SPTE from
        its first leaf and install it (row 9).  The kernel's runs under the read lock
        and installs with tdp_mmu_set_spte_atomic(), which restores the SPTE when the
        S-EPT update fails and retries; hunt-b's patch installs under the write lock
        with tdp_mmu_set_spte(), the setter that cannot undo, which is where seed 002's
        row 9 KVM_BUG_ON is hittable.  Returns whether it installed a huge SPTE."""
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_write("recover_huge_pages_range")
        done = False
        kvm.rcu.rcu_read_lock()
        try:
            base = gfn_round_for_level(start + 511, PG_LEVEL_2M)
            for gfn in range(base, end - 511, 512):
                found = self._find(root, gfn, PG_LEVEL_2M)
                if found is None:
                    continue
                sp, i, old = found
                if not is_shadow_present_pte(old) or is_last_spte(old, PG_LEVEL_2M):
                    continue
                # "if (max_mapping_level < iter.level) continue"
                if kvm.kvm_mmu_max_mapping_level(gfn) < PG_LEVEL_2M:
                    continue
                huge = self.tdp_mmu_make_huge_spte(old)
                if huge is None:
                    continue
                self.tdp_mmu_set_spte(sp, i, gfn, old, huge, PG_LEVEL_2M)
                done = True
        finally:
            kvm.rcu.rcu_read_unlock()
        return done

    def zap_root(self, root: KvmMmuPage) -> None:
        """__tdp_mmu_zap_root() at teardown, write lock: zap every top-level entry; the
        subtrees go through handle_removed_pt, children first."""
        kvm = self.kvm
        kvm.rcu.rcu_read_lock()
        try:
            for i in range(512):
                old = root.read(i)
                if not old & SPTE_MMU_PRESENT_MASK:     # !is_shadow_present_pte(old)
                    continue
                self.tdp_mmu_set_spte(root, i, i * level_pages(ROOT_LEVEL), old,
                                      SHADOW_NONPRESENT_VALUE, ROOT_LEVEL)
        finally:
            kvm.rcu.rcu_read_unlock()
