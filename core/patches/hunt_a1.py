"""hunt-a1 (seed 002, path (a1)): hugepage-rfc, plus KVM_PRE_FAULT_MEMORY installing a
mirror leaf with the plain setter under the write lock (row 2) once the tables above it
exist.  A canary: no kernel maps under the write lock (kvm_tdp_mmu_map() runs under the
read lock).

Linking tables stays as designed: the write-lock fault is taken only where the 4K table
already exists, and no path of this variant removes a table while the TD runs, so the
walk under the write lock never links one (row 4 is hunt-a2's).
"""
from __future__ import annotations

from ..kvm import Kvm as BaseKvm
from ..spte import PG_LEVEL_4K


class Kvm(BaseKvm):
    def kvm_mmu_do_page_fault(self, gfn: int) -> int:
        """The what-if prefault: where the tables down to the 4K one exist, fault in
        under the write lock at 4K (kvm_tdp_mmu_map() then installs with
        tdp_mmu_set_spte(), row 2); elsewhere as designed."""
        if self._tables_present(gfn, PG_LEVEL_4K):
            return self.kvm_tdp_page_fault(gfn, True, PG_LEVEL_4K, write_lock=True)
        return super().kvm_mmu_do_page_fault(gfn)

    def _tables_present(self, gfn: int, level: int) -> bool:
        self.rcu.rcu_read_lock()
        try:
            return self.mmu._find(self.mmu.mirror_root, gfn, level) is not None
        finally:
            self.rcu.rcu_read_unlock()
