"""A planted bug for the invariant checker: the atomic setter leaves the mirror SPTE
frozen (REMOVED_SPTE) after the hook, instead of writing the new value or restoring the
old one.  Invariant 2 (no FROZEN SPTE reachable once the change is over) must catch it.
"""
from core.spte import FROZEN_SPTE
from core.store import KvmMmuPage
from core.tdp_mmu import EBUSY
from core.tdp_mmu import TdpMmu as Base

BASE = "hugepage-rfc"
SUMMARY = "__tdp_mmu_set_spte_atomic() never writes the frozen mirror SPTE back"
FINDS = ("INVARIANT", None)


class TdpMmu(Base):
    def _frozen_window(self, sp: KvmMmuPage, i: int, gfn: int, old: int, new: int,
                       level: int) -> int:
        ok, _ = sp.cmpxchg(i, old, FROZEN_SPTE)
        if not ok:
            return -EBUSY
        return self._handle_changed_spte(sp, gfn, old, new, level, True)
