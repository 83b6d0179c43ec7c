"""The scenario oracle: classify every ``handle_changed_spte`` on a mirror SPTE into the
14 rows of seed 002's table (docs/model.md §5).
"""
from __future__ import annotations

from .spte import (
    FROZEN_SPTE,
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    SPTE_BASE_ADDR_MASK,
    SPTE_MMU_PRESENT_MASK,
    is_last_spte,
    is_shadow_present_pte,
)

# (old kind, new kind, shared) -> row; kinds: "np", "leaf", "nl".  Rows 5, 6, 10 cover
# both lock modes.
_ROWS = {
    ("np", "leaf", True): 1, ("np", "leaf", False): 2,
    ("np", "nl", True): 3, ("np", "nl", False): 4,
    ("np", "np", True): 5, ("np", "np", False): 5,
    ("leaf", "leaf", True): 6, ("leaf", "leaf", False): 6,
    ("leaf", "nl", True): 7, ("leaf", "nl", False): 8,
    ("nl", "leaf", True): 9, ("nl", "leaf", False): 9,
    ("nl", "nl", True): 10, ("nl", "nl", False): 10,
    ("leaf", "np", True): 11, ("leaf", "np", False): 12,
    ("nl", "np", True): 13, ("nl", "np", False): 14,
}

ROW_TEXT = {
    1: ("NP", "leaf P", "Y"), 2: ("NP", "leaf P", "N"), 3: ("NP", "non-leaf P", "Y"),
    4: ("NP", "non-leaf P", "N"), 5: ("NP", "NP", "either"), 6: ("leaf P", "leaf P", "either"),
    7: ("leaf P", "non-leaf P", "Y"), 8: ("leaf P", "non-leaf P", "N"),
    9: ("non-leaf P", "leaf P", "either"), 10: ("non-leaf P", "non-leaf P", "either"),
    11: ("leaf P", "NP", "Y"), 12: ("leaf P", "NP", "N"), 13: ("non-leaf P", "NP", "Y"),
    14: ("non-leaf P", "NP", "N"),
}

# docs/model.md §5, as the seed 002 table states it: mirror allowed, KVM_BUG_ON hittable (path).
EXPECTED = {
    1: ("Y", "N"), 2: ("N", "Y (a1)"), 3: ("Y", "N"), 4: ("N", "Y (a2)"),
    5: ("N", "WARN unless MMIO or frozen"), 6: ("either", "N"), 7: ("N", "N"),
    8: ("Y", "N"), 9: ("N", "Y (b)"), 10: ("either", "WARN if the PFN changed"),
    11: ("N", "N (c)"), 12: ("Y", "N"), 13: ("N", "Y (d)"), 14: ("Y", "N"),
}


def spte_kind(spte: int, level: int) -> str:
    if not is_shadow_present_pte(spte):
        return "np"
    return "leaf" if is_last_spte(spte, level) else "nl"


def classify(old: int, new: int, level: int, shared: bool) -> int | None:
    """The row of a change, or None for an attribute-only change of a present SPTE
    (rows 6 and 10 count only PFN-changing transitions) and for a non-present SPTE
    frozen by handle_removed_pt(): the kernel's own allowed case, which its row-5 WARN
    exempts (``!is_frozen_spte(new_spte)``), is not the invalid transition of row 5."""
    # spte_kind() of each, is_frozen_spte() and spte_to_pfn(), written out: this runs on
    # every change of a mirror SPTE
    leaf = level == PG_LEVEL_4K
    ko = "np" if not old & SPTE_MMU_PRESENT_MASK else \
        "leaf" if leaf or old & PT_PAGE_SIZE_MASK else "nl"
    kn = "np" if not new & SPTE_MMU_PRESENT_MASK else \
        "leaf" if leaf or new & PT_PAGE_SIZE_MASK else "nl"
    if ko == kn == "np" and new == FROZEN_SPTE:
        return None
    if ko == kn and ko != "np" and (old & SPTE_BASE_ADDR_MASK) == (new & SPTE_BASE_ADDR_MASK):
        return None
    return _ROWS[(ko, kn, shared)]


def force_transition(row: int) -> list[str]:
    """The model's own handling of a transition the TDP MMU never makes on purpose
    (rows 5, 6 and 10): build a VM, hand ``handle_changed_spte`` that change on a mirror
    SPTE under the write lock, and return the kinds of finding it reports."""
    from .kvm import Kvm
    from .sched import ThreadCtx, current, set_current
    from .spte import FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, make_nonleaf_spte, make_spte
    saved = current()
    ctx = ThreadCtx("forced")
    set_current(ctx)
    try:
        kvm = Kvm("hugepage-rfc", nr_vcpus=1)
        mmu = kvm.mmu
        ctx.lock_mode = "write"
        if row == 5:
            old, new, level = SHADOW_NONPRESENT_VALUE, SHADOW_NONPRESENT_VALUE | 0x10, 1
        elif row == 6:
            old, new, level = make_spte(0x5000, 1), make_spte(0x6000, 1), 1
        elif row == 10:
            a = mmu.tdp_mmu_alloc_sp(1, 0, True)
            b = mmu.tdp_mmu_alloc_sp(1, 0, True)
            old, new, level = make_nonleaf_spte(a.pfn), make_nonleaf_spte(b.pfn), 2
        else:
            raise ValueError(f"row {row} is not a forced transition")
        assert classify(old, new, level, False) == row and new != FROZEN_SPTE
        mmu.handle_changed_spte(mmu.mirror_root, 0, old, new, level, False)
        # what handle_changed_spte() itself reports (row 10's WARN); the teardown of the
        # old child that follows it is TDX's (tdx_sept_free_private_spt), not the check
        here = "handle_changed_spte"
        kinds = {f.kind for f in kvm.rec.findings if f.where == here}
        kinds |= {c["kind"] for f in kvm.rec.findings for c in f.consequences
                  if c["where"] == here}
        return sorted(kinds)
    finally:
        set_current(saved)
