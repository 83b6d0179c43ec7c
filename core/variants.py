"""Kernel variants: the model of v6.19 (``core/``) and patches over it.

Every variant but v6.19 is a stack of patch modules (:mod:`core.patches`), each a set of
subclasses of the model classes overriding the functions its kernel patch changes:
refactor-2026 is v6.19 plus seed 000's single hook; hugepage-rfc adds 2M leaves and their
split; each hunt is hugepage-rfc plus exactly one what-if path that opens one row of the
scenario table to the mirror root, the way a patch under review might.  The zapper
operations exist in every variant (prefault a range, populate tables, recover huge pages,
a memory-failure zap, zap a range's tables); a hunt's patch swaps the as-designed
implementation of one of them for its what-if one, and nothing else changes, so a finding
in a hunt variant is caused by its path.  The as-designed variants must run clean
forever.  A user's patch file goes on top of a built-in variant (``stress.patches``).

The fields other than ``patches`` describe a variant to the driver (which operations
its workload draws, which finding a hunt is after); the model never reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class UnknownVariant(ValueError):
    """A variant name that does not exist; the message lists the valid ones."""


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    hugepages: bool            # private 2M leaves, split under the write lock (row 8)
    hunt: str | None = None    # the path this variant opens: a1, a2, b, c, d
    opens_row: int | None = None
    hunt_kind: str | None = None   # the finding the hunt is after
    hunt_where: str | None = None  # ... and where it is reported (None: anywhere)
    # a user's patch (``--variant PATH.py``, see stress.patches): the built-in variant it
    # derives from, its model classes that override the base's, the finding it is after
    # (kind, where) if it plants one, and a hash of its source
    base: str | None = None
    # built-in patches under it, bottom first (modules of core.patches)
    patches: tuple[str, ...] = ()
    overrides: tuple[type, ...] = ()
    finds: tuple[str, str | None] | None = None
    patch_hash: str = ""

    @property
    def as_designed(self) -> bool:
        """Expected to run clean: no hunt, and not a patch that plants a bug."""
        return self.hunt is None and self.finds is None

    def compose(self, cls: type) -> type:
        """The class this variant uses for model class ``cls``: ``cls`` with the built-in
        patches under it and a user's patch on top, each overriding what it changes
        (one class whose method resolution order is top patch, ..., bottom patch, cls);
        ``cls`` itself when nothing overrides it."""
        key = (self.name, self.patch_hash, cls)
        if key in _COMPOSED:
            return _COMPOSED[key]
        import importlib
        chain = [o for o in self.overrides if issubclass(o, cls)]
        for name in reversed(self.patches):
            m = importlib.import_module(name)
            chain += [c for c in vars(m).values() if isinstance(c, type) and c is not cls
                      and issubclass(c, cls) and c.__module__ == m.__name__]
        got = cls if not chain else chain[0] if len(chain) == 1 else \
            type(f"{cls.__name__}[{self.name}]", tuple(chain), {})
        _COMPOSED[key] = got
        return got

    def hunt_hit(self, f: Any) -> bool:
        """Whether finding ``f`` (a :class:`core.findings.Finding` or its dict) is the
        bug this hunt is after: it is, or its own failure led to (a consequence in the
        same SPTE change), a ``hunt_kind`` at ``hunt_where`` on this hunt's path.

        The first bug is the finding: when a child's removal fails, the TDX_BUG_ON
        of the SEAMCALL is reported first and the KVM_BUG_ON of handle_changed_spte()
        right after it stays silent (the VM is already bugged), so (d)'s KVM_BUG_ON
        is usually the consequence of the root, not the root itself."""
        get = (lambda k: f.get(k)) if isinstance(f, dict) else (lambda k: getattr(f, k))
        if self.finds is not None:
            kind, at = self.finds

            def plain(k: str, w: str) -> bool:
                return k == kind and (at is None or w.split(":")[0] == at)
            return plain(get("kind") or "", get("where") or "") or any(
                c.get("same_change") and plain(c["kind"], c["where"])
                for c in get("consequences") or ())
        if self.hunt is None:
            return False

        def match(kind: str, where: str, path: str | None) -> bool:
            return kind == self.hunt_kind and path == self.hunt and (
                self.hunt_where is None or where.split(":")[0] == self.hunt_where)
        if match(get("kind") or "", get("where") or "", get("path")):
            return True
        if get("path") != self.hunt:
            return False
        return any(c.get("same_change") and match(c["kind"], c["where"], c.get("path"))
                   for c in get("consequences") or ())


_COMPOSED: dict[tuple, type] = {}
REFACTOR = ("core.patches.refactor_2026",)
HUGEPAGE = REFACTOR + ("core.patches.hugepage_rfc",)
READ_LOCK_ZAP = HUGEPAGE + ("core.patches.read_lock_mirror_zap",)
_BASE: dict[str, Any] = dict(hugepages=True)

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("v6.19", "\"before\" order; hooks link_external_spt, set_external_spte, "
            "remove_external_spte, free_external_spt; 4K private pages only",
            hugepages=False),
    Variant("refactor-2026", "\"after\" order; single set_external_spte(old, new) hook "
            "(seed 000), removal through it; 4K private pages only",
            hugepages=False, patches=REFACTOR),
    Variant("hugepage-rfc", "refactor-2026 plus private 2M leaves, split under the write "
            "lock (row 8); page tables removed only at teardown (row 14)", patches=HUGEPAGE,
            **_BASE),
    Variant("hunt-a1", "hugepage-rfc plus prefault installing mirror leaves under the "
            "write lock (row 2); no kernel maps under the write lock (kvm_tdp_mmu_map() "
            "runs under the read lock): a canary", hunt="a1", opens_row=2, hunt_kind="KVM_BUG_ON",
            hunt_where="handle_changed_spte", patches=HUGEPAGE + ("core.patches.hunt_a1",),
            **_BASE),
    Variant("hunt-a2", "hugepage-rfc plus table population linking mirror tables under the "
            "write lock (row 4)", hunt="a2", opens_row=4, hunt_kind="KVM_BUG_ON",
            hunt_where="handle_changed_spte", patches=HUGEPAGE + ("core.patches.hunt_a2",),
            **_BASE),
    Variant("hunt-b", "hugepage-rfc plus huge-page recovery (recover_huge_pages_range()) "
            "run on the mirror root under the write lock: a table becomes a 2M leaf made "
            "from its first leaf, with TDH.MEM.PAGE.PROMOTE (row 9)", hunt="b", opens_row=9,
            hunt_kind="KVM_BUG_ON",
            hunt_where="handle_changed_spte", patches=HUGEPAGE + ("core.patches.hunt_b",),
            **_BASE),
    Variant("hunt-c", "hugepage-rfc plus an atomic zap of mirror leaves under the read lock "
            "(row 11)", hunt="c", opens_row=11, hunt_kind="TDX_BUG_ON",
            patches=READ_LOCK_ZAP + ("core.patches.hunt_c",), **_BASE),
    Variant("hunt-d", "hugepage-rfc plus an atomic zap of mirror tables under the read lock "
            "(row 13)", hunt="d", opens_row=13, hunt_kind="KVM_BUG_ON",
            hunt_where="handle_changed_spte", patches=READ_LOCK_ZAP + ("core.patches.hunt_d",),
            **_BASE),
)}

AS_DESIGNED = tuple(n for n, v in VARIANTS.items() if v.as_designed)
# The hunts' identity, in one place: each hunt variant, the path it takes (a1 .. d) and
# the row of seed 002's table it opens to the mirror root.
HUNTS = tuple(n for n, v in VARIANTS.items() if v.hunt)
HUNT_OF_ROW = {v.opens_row: n for n, v in VARIANTS.items() if v.hunt and v.opens_row}
PATH_OF_ROW = {v.opens_row: v.hunt for v in VARIANTS.values() if v.hunt and v.opens_row}


# Modules whose load_patch(name) knows variants that are not built in (patch files),
# imported only when a name is not a built-in one; each returns a Variant, or None if
# the name is not its kind.
LOADERS: list[str] = ["stress.patches"]


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (a built-in one, or one a loader knows, such as a
    patch file); an unknown name raises :class:`UnknownVariant`."""
    try:
        return VARIANTS[name]
    except KeyError:
        import importlib
        for module in LOADERS:
            v = importlib.import_module(module).load_patch(name)
            if v is not None:
                return v
        raise UnknownVariant(f"unknown variant {name!r}; valid variants: "
                             f"{', '.join(VARIANTS)}, or a patch file (PATH.py)") from None
