"""tdh_do_no_vcpus() rewritten as a loop of at most two tries (a harmless refactor).

Every SEAMCALL, kick and wait_for_sept_zap write happens in the same order as before, so
the as-designed kernel stays clean:

    tdx-stress run --variant examples/patches/retry_loop_refactor.py --duration 30
"""
from typing import Callable

from core.tdx import KVM_REQ_OUTSIDE_GUEST_MODE
from core.tdx import KvmTdx as Base
from core.tdx_errno import tdx_operand_busy

BASE = "hugepage-rfc"
SUMMARY = "tdh_do_no_vcpus() as a two-try loop (no change in behaviour)"


class KvmTdx(Base):
    def tdh_do_no_vcpus(self, name: str, fn: Callable[..., int], *args: int) -> int:
        kvm = self.kvm
        kvm.mmu_lock.lockdep_assert_held_write("tdh_do_no_vcpus")
        err = 0
        for attempt in range(2):
            if attempt:
                self._set_wait_for_sept_zap(True)
                kvm.kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)
            err = fn(*args)
            if attempt:
                self._set_wait_for_sept_zap(False)
            if not tdx_operand_busy(err):
                break
        return err
