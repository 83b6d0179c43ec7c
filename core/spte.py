"""SPTE encoding (docs/model.md §1), after arch/x86/kvm/mmu/spte.h.

Values are plain ints (64-bit).  Only the bits the model needs exist: RWX (0-2), large
(7), KVM's shadow-present (11), the PFN (12-51), and bit 63, which every non-present
value carries (``SHADOW_NONPRESENT_VALUE``).
"""
from __future__ import annotations

PT64_ENT_PER_PAGE = 512
PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G, PG_LEVEL_512G = 1, 2, 3, 4
ROOT_LEVEL = 4  # 4-level EPT
# gfn & LEVEL_MASK[level]: gfn_round_for_level(gfn, level), ~(level_pages(level) - 1),
# looked up rather than computed (every S-EPT access rounds a GFN)
# (there is no level 0: its mask is 0)
LEVEL_MASK: tuple[int, ...] = (0,) + tuple(-(1 << (9 * (level - 1)))
                                           for level in range(1, ROOT_LEVEL + 2))

VMX_EPT_READABLE_MASK = 1 << 0
VMX_EPT_WRITABLE_MASK = 1 << 1
VMX_EPT_EXECUTABLE_MASK = 1 << 2
VMX_EPT_RWX_MASK = 0x7
PT_PAGE_SIZE_MASK = 1 << 7          # "large": a leaf above level 1
SPTE_MMU_PRESENT_MASK = 1 << 11     # KVM's software "shadow present" bit
SPTE_BASE_ADDR_MASK = ((1 << 52) - 1) & ~((1 << 12) - 1)   # bits 12-51
SHADOW_NONPRESENT_VALUE = 1 << 63
FROZEN_SPTE = SHADOW_NONPRESENT_VALUE | 0x5A0


def is_shadow_present_pte(spte: int) -> bool:
    """spte.h is_shadow_present_pte(): KVM's present bit."""
    return spte & SPTE_MMU_PRESENT_MASK != 0


def is_large_pte(spte: int) -> bool:
    """spte.h is_large_pte()."""
    return spte & PT_PAGE_SIZE_MASK != 0


def is_last_spte(spte: int, level: int) -> bool:
    """spte.h is_last_spte(): a leaf at level 1, or a large page above it."""
    return level == PG_LEVEL_4K or spte & PT_PAGE_SIZE_MASK != 0     # is_large_pte()


def is_frozen_spte(spte: int) -> bool:
    """spte.h is_frozen_spte()."""
    return spte == FROZEN_SPTE


def spte_to_pfn(spte: int) -> int:
    """spte.h spte_to_pfn()."""
    return (spte & SPTE_BASE_ADDR_MASK) >> 12


def make_spte(pfn: int, level: int, rwx: int = VMX_EPT_RWX_MASK) -> int:
    """spte.c make_spte(): a leaf.  Private leaves are always RWX."""
    spte = SPTE_MMU_PRESENT_MASK | (pfn << 12) | (rwx & VMX_EPT_RWX_MASK)
    if level > PG_LEVEL_4K:
        spte |= PT_PAGE_SIZE_MASK
    return spte


def make_nonleaf_spte(child_pfn: int) -> int:
    """spte.c make_nonleaf_spte(): a link to a child table, always RWX."""
    return SPTE_MMU_PRESENT_MASK | (child_pfn << 12) | VMX_EPT_RWX_MASK


def level_pages(level: int) -> int:
    """How many 4K pages an entry at ``level`` covers (KVM_PAGES_PER_HPAGE)."""
    return 1 << (9 * (level - 1))


def spte_index(gfn: int, level: int) -> int:
    """tdp_iter.h SPTE_INDEX(): the entry of a level-``level`` table that maps ``gfn``."""
    return (gfn >> (9 * (level - 1))) & (PT64_ENT_PER_PAGE - 1)


def gfn_round_for_level(gfn: int, level: int) -> int:
    """mmu.h gfn_round_for_level()."""
    return gfn & LEVEL_MASK[level]     # gfn & ~(level_pages(level) - 1)


def describe(spte: int, level: int) -> str:
    """A short human form for traces and swim lanes: NP, FROZEN, leaf(pfn)@L, nl(pfn)."""
    if is_frozen_spte(spte):
        return "FROZEN"
    if not is_shadow_present_pte(spte):
        return "NP"
    kind = "leaf" if is_last_spte(spte, level) else "nl"
    return f"{kind}({spte_to_pfn(spte):#x})"
