"""Mirror tables pre-populated with plain links under the write lock (a mistake a
developer could make, with no FINDS: written as if it were harmless).

Holding mmu_lock for write looks like it makes the atomic link unnecessary, so this
patch links with tdp_mmu_link_sp(shared=false).  That is row 4 of seed 002's table: the
plain setter cannot undo a failed TDH.MEM.SEPT.ADD, so a BUSY from the module becomes a
KVM_BUG_ON.  The table holds a patch without FINDS to the as-designed rows and names the
row it opens:

    tdx-stress table --variant examples/patches/populate_under_write_lock.py
"""
from core.kvm import Kvm as Base
from core.spte import PG_LEVEL_4K

BASE = "hugepage-rfc"
SUMMARY = "kvm_populate_tables() links mirror tables under the write lock"


class Kvm(Base):
    def kvm_populate_tables(self, gfn: int) -> bool:
        if not self._ioctl_alive():
            return False
        self.mmu_lock.write_lock()
        try:
            return self.mmu.kvm_tdp_mmu_populate(gfn, PG_LEVEL_4K, shared=False)
        finally:
            self.mmu_lock.write_unlock()
