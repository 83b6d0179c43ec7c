"""Shared fixtures: a fresh thread context per test, so row counters and lock records
of one test never leak into another (tests run on the main thread)."""
import pytest

from core.sched import ThreadCtx, set_current


@pytest.fixture(autouse=True)
def fresh_ctx():
    ctx = ThreadCtx("main")
    set_current(ctx)
    yield ctx


@pytest.fixture
def table_observation():
    """A factory of observations for ``stress.table.render_table`` that agree with seed
    002's table: every variant named saw the as-designed rows, and each hunt fired its
    bug on its row."""
    def make(names):
        rows = [0] * 15
        for i in (1, 3, 8, 12, 14):
            rows[i] = 5
        per = {n: {"rows": list(rows), "bugs": {}, "runs": 1, "seconds": 1.0,
                   "found_at": 1.0, "attr_changes": 0} for n in names}
        for name, row, kind, path in (("hunt-a1", 2, "KVM_BUG_ON", "a1"),
                                      ("hunt-a2", 4, "KVM_BUG_ON", "a2"),
                                      ("hunt-b", 9, "KVM_BUG_ON", "b"),
                                      ("hunt-c", 11, "TDX_BUG_ON", "c"),
                                      ("hunt-d", 13, "KVM_BUG_ON", "d")):
            per[name]["bugs"][f"{kind}|{row}|{path}"] = 1
        return {"variants": per, "forced": {5: ["WARN"], 6: ["BUG"], 10: ["WARN"]}}
    return make
