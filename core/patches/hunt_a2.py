"""hunt-a2 (seed 002, path (a2)): hugepage-rfc, plus pre-populating mirror tables with
plain links under the write lock (row 4), where the kernel links them atomically under
the read lock (row 3)."""
from __future__ import annotations

from ..kvm import Kvm as BaseKvm
from ..spte import PG_LEVEL_4K


class Kvm(BaseKvm):
    def kvm_populate_tables(self, gfn: int) -> bool:
        """The what-if: link the mirror tables down to ``gfn``'s 4K table under the
        write lock, with tdp_mmu_link_sp(shared=false) (row 4)."""
        if not self._ioctl_alive():
            return False
        self.mmu_lock.write_lock()
        try:
            return self.mmu.kvm_tdp_mmu_populate(gfn, PG_LEVEL_4K, shared=False)
        finally:
            self.mmu_lock.write_unlock()
