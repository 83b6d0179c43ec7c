"""A planted bug on both sides, for the invariant checker: KVM removes private leaves
(and splits 2M ones) with no TDH.MEM.TRACK, and the TDX module, which would refuse the
REMOVE (TDX_TLB_TRACKING_NOT_DONE), lets it through and only records it.  Invariant 4
(no leaf removed without BLOCK and TRACK before it) must catch it from the module's
audit.
"""
from core.tdx import KvmTdx as BaseTdx
from core.tdx_errno import TDX_EPT_ENTRY_STATE_INCORRECT, TDX_OPERAND_ID_RCX, TDX_SUCCESS
from core.tdx_module import BLOCKED, FREE, LEAF_STATES, PENDING_BLOCKED
from core.tdx_module import TdxModule as BaseModule

BASE = "hugepage-rfc"
SUMMARY = "tdx_track() does nothing, and TDH.MEM.PAGE.REMOVE does not check tracking"
FINDS = ("INVARIANT", None)


class KvmTdx(BaseTdx):
    def tdx_track(self) -> None:
        pass


class TdxModule(BaseModule):
    def tdh_mem_page_remove(self, gfn: int, level: int) -> int:
        def effect(call: object) -> int:
            e = self.entry(gfn, level)
            blocked = e.state in (BLOCKED, PENDING_BLOCKED)
            tracked = self._tracked(e.bepoch)
            if e.state not in LEAF_STATES:
                return TDX_EPT_ENTRY_STATE_INCORRECT | TDX_OPERAND_ID_RCX
            if not (blocked and tracked):
                self.audit.append((4, f"leaf gfn={gfn:#x} L{level} removed "
                                      f"(blocked={blocked}, tracked={tracked})"))
            e.state, e.pfn, e.bepoch = FREE, None, None
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.PAGE.REMOVE", (gfn, level),
                              lambda c: self._lock_host_entry(c, gfn, level, False), effect)
