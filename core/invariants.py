"""The invariants of docs/model.md §7, checked at a quiescent point (no thread inside an
operation or holding a frozen SPTE) and at teardown.

The checker reads the machine's state directly, not through operations: it runs when
nothing else does, and it must not add yield points to the schedule.  Invariants about
history (3, 4, 5: what order things happened in) come from the TDX module's audit, which
records the facts at the moment of each SEAMCALL whether or not the module's own checks
are enabled; invariant 6 violations are also reported the moment they happen
(:meth:`core.kvm.Kvm.violation`); 7 is lockdep (LOCKDEP findings); 9's deadlocks and hangs
are the scheduler's to find.
"""
from __future__ import annotations

from itertools import compress
from typing import TYPE_CHECKING

from .spte import (
    FROZEN_SPTE,
    LEVEL_MASK,
    PG_LEVEL_4K,
    PT_PAGE_SIZE_MASK,
    ROOT_LEVEL,
    SHADOW_NONPRESENT_VALUE,
    SPTE_BASE_ADDR_MASK,
    SPTE_MMU_PRESENT_MASK,
    is_last_spte,
    is_shadow_present_pte,
    level_pages,
    spte_to_pfn,
)
from .tdx_module import FREE, LEAF_STATES, MAPPED, NL_BLOCKED, NL_MAPPED, PENDING

if TYPE_CHECKING:
    from .kvm import Kvm
    from .store import KvmMmuPage

_INDEXES = range(512)
_NONPRESENT = SHADOW_NONPRESENT_VALUE
_MAPPED_LEAF = frozenset((PENDING, MAPPED))       # the states of a mirrored S-EPT leaf
_TABLE_STATES = frozenset((NL_MAPPED, NL_BLOCKED))  # the states of a parent S-EPT entry


def _walk(kvm: "Kvm", root: "KvmMmuPage"):
    """Every (table, index, gfn, level, value) reachable from ``root``, but for the
    entries that hold ``SHADOW_NONPRESENT_VALUE`` (never written, or zapped): no
    invariant looks at those, and they are most of every table."""
    stack = [root]
    while stack:
        sp = stack.pop()
        n = level_pages(sp.level)
        spt = sp.spt
        if spt.count(SHADOW_NONPRESENT_VALUE) == len(spt):
            continue
        # the indexes in use, found without a Python loop over all 512 (compress()
        # keeps the i whose entry differs from SHADOW_NONPRESENT_VALUE)
        for i, v in [(i, spt[i]) for i in compress(_INDEXES, map(_NONPRESENT.__ne__, spt))]:
            yield sp, i, sp.gfn + i * n, sp.level, v
            if is_shadow_present_pte(v) and not is_last_spte(v, sp.level):
                child = kvm.mmu.pages.get(spte_to_pfn(v))
                if child is not None:
                    stack.append(child)


def check_invariants(kvm: "Kvm", final: bool = False) -> list[tuple[int, str]]:
    """All violations found now, as (invariant number, message)."""
    out: list[tuple[int, str]] = []
    m = kvm.module
    mirror_seen: dict[tuple[int, int], int] = {}

    # 2: nothing reachable is frozen (both roots); 1: mirror -> S-EPT agreement.
    # (is_frozen_spte(), is_shadow_present_pte(), is_last_spte(), spte_to_pfn() and
    # m.peek() written out: this visits every entry in use, twice a run)
    entries = m.entries
    pages = kvm.mmu.pages
    hkid = m.hkid_assigned
    for sp, i, gfn, level, v in _walk(kvm, kvm.mmu.mirror_root):
        if v == FROZEN_SPTE:
            out.append((2, f"FROZEN SPTE left at {sp!r}[{i}] (gfn={gfn:#x} L{level})"))
        if not v & SPTE_MMU_PRESENT_MASK:
            continue
        if sp.freed:
            out.append((6, f"freed table {sp!r} still reachable"))
        mirror_seen[(level, gfn)] = v
        if not hkid:
            continue
        e = entries.get((level, gfn & LEVEL_MASK[level]))
        pfn = (v & SPTE_BASE_ADDR_MASK) >> 12
        if level == PG_LEVEL_4K or v & PT_PAGE_SIZE_MASK:        # a leaf
            if e is None or e.state not in _MAPPED_LEAF or e.pfn != pfn:
                out.append((1, f"mirror leaf gfn={gfn:#x} L{level} pfn={pfn:#x}"
                               f" but S-EPT {e.state if e else FREE} "
                               f"pfn={getattr(e, 'pfn', None)}"))
        else:
            child = pages.get(pfn)
            ext = child.external_spt if child else None
            if e is None or e.state != NL_MAPPED or e.pfn != ext:
                out.append((1, f"mirror non-leaf gfn={gfn:#x} L{level} but S-EPT "
                               f"{e.state if e else FREE}"))
    for sp, i, gfn, level, v in _walk(kvm, kvm.mmu.direct_root):
        if v == FROZEN_SPTE:
            out.append((2, f"FROZEN SPTE left at {sp!r}[{i}] (gfn={gfn:#x} L{level})"))

    # 1 (other direction) and 3 (no orphans): every live S-EPT entry is mirrored and
    # hangs below a non-leaf.
    if hkid:
        for (level, gfn), e in sorted(kv for kv in entries.items() if kv[1].state != FREE):
            if (level, gfn) not in mirror_seen:
                out.append((1, f"S-EPT {e.state} gfn={gfn:#x} L{level} has no present "
                               "mirror SPTE"))
            if level < ROOT_LEVEL:
                up = level + 1
                parent = entries.get((up, gfn & LEVEL_MASK[up]))     # m.peek(gfn, up)
                if parent is None or parent.state not in _TABLE_STATES:
                    out.append((3, f"S-EPT {e.state} gfn={gfn:#x} L{level} is orphaned "
                                   f"(parent {getattr(parent, 'state', FREE)})"))

    # 10: no private leaf covers a GFN whose memory attributes say shared (a 2M private
    # leaf installed over a GFN that was just converted would let the guest reach
    # private memory at a shared GPA's page).
    shared_gfns = kvm.shared_gfns
    for _sp, _i, gfn, level, v in _walk(kvm, kvm.mmu.mirror_root) if shared_gfns else ():
        if is_shadow_present_pte(v) and is_last_spte(v, level):
            # the shared GFNs the leaf covers, in order: whichever is the shorter to scan,
            # the leaf's GFNs or the shared set
            n = level_pages(level)
            shared = [g for g in range(gfn, gfn + n) if g in shared_gfns] \
                if n <= len(shared_gfns) else sorted(g for g in shared_gfns if gfn <= g < gfn + n)
            if shared:
                out.append((10, f"private leaf gfn={gfn:#x} L{level} covers shared GFN "
                                f"{shared[0]:#x}" + (f" and {len(shared) - 1} more"
                                                     if len(shared) > 1 else "")))

    # 8: a guest page is mapped in at most one S-EPT leaf.
    owner: dict[int, int] = {}      # pfn -> the GFN whose leaf maps it
    for (level, gfn), e in m.entries.items():
        if e.state in LEAF_STATES and e.pfn is not None:
            n = level_pages(level)
            if n == 1:
                if e.pfn not in owner:
                    owner[e.pfn] = gfn
                    continue
            else:
                pfns = range(e.pfn, e.pfn + n)
                if owner.keys().isdisjoint(pfns):      # no page mapped twice: all at once
                    owner.update(zip(pfns, range(gfn, gfn + n), strict=True))
                    continue
            for k in range(n):
                pfn = e.pfn + k
                if pfn in owner:
                    out.append((8, f"pfn {pfn:#x} mapped by gfn={owner[pfn]:#x} and "
                                   f"gfn={gfn + k:#x}"))
                    break
                owner[pfn] = gfn + k

    # 3, 4, 5: the module's audit of what it was asked to do (new entries only).
    out.extend(m.audit[m.audit_checked:])
    m.audit_checked = len(m.audit)

    if final:
        # 5: every S-EPT table page taken back once the HKID is released.
        if not m.hkid_assigned:
            for page, (level, gfn) in sorted(m.sept_pages.items()):
                if kvm.external_state.get(page) != "leaked":
                    out.append((5, f"S-EPT page {page:#x} (L{level} gfn={gfn:#x}) never "
                                   "reclaimed"))
        # 6: every table page freed once; every external_spt freed or leaked.
        for sp in kvm.mmu.pages.values():
            if sp is kvm.mmu.mirror_root or sp is kvm.mmu.direct_root:
                continue
            if not sp.freed:
                out.append((6, f"{sp!r} never freed"))
        for page, state in sorted(kvm.external_state.items()):
            if state not in ("freed", "leaked"):
                out.append((6, f"external_spt {page:#x} left {state}"))
    return out


def report_invariants(kvm: "Kvm", final: bool = False) -> int:
    """Check and report every violation as an INVARIANT finding; how many there were."""
    found = check_invariants(kvm, final)
    for n, msg in found:
        kvm.violation(n, msg)
    return len(found)
