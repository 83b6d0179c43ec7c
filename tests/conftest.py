"""Shared fixtures: a fresh thread context per test, so row counters and lock records
of one test never leak into another (tests run on the main thread).  And the test tiers:
every test is exactly one of ``TIERS`` (``pytest -m unit`` is the quick loop)."""
import os

import pytest
from _pytest.doctest import DoctestItem

from core.sched import ThreadCtx, set_current

TIERS = ("unit", "scripted", "integration", "quality")

# patch files the mutation tests load by path: not test modules, and not to be imported
# by --doctest-modules
collect_ignore = ["patches"]

# --doctest-modules collects core/, stress/ and reports/ of this checkout.  Where the
# package is installed as a copy (tox's non-editable install, run by the `pytest` script),
# those modules are already imported from site-packages and pytest would call each an
# "import file mismatch"; their doctests then run on the installed copy, the code tested.
os.environ.setdefault("PY_IGNORE_IMPORTMISMATCH", "1")

# report.html's plots cost about a second per report (matplotlib's import and layout),
# some 45 s of the suite's wall time on two cores; only tests/test_reports.py, which
# tests them, draws them (its fixture lifts this).  Set it to 1 to draw them everywhere.
os.environ.setdefault("TDX_STRESS_PLOTS", "0")


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker's controlled runs keep to a CPU of their own (gw0 the first
    allowed, gw1 the next, ...; stress.controlled.one_cpu()), so that the two workers'
    runs never share one CPU while the other idles.  Nothing else is pinned: the
    subprocesses the tests start are free to use every CPU."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit() and hasattr(os, "sched_getaffinity"):
        from stress.controlled import set_model_cpu
        cpus = sorted(os.sched_getaffinity(0))
        set_model_cpu(cpus[int(worker[2:]) % len(cpus)])


def _tiers(node: pytest.Item | pytest.Collector) -> list[str]:
    return sorted({m.name for m in node.own_markers if m.name in TIERS})


def _tier_of(item: pytest.Item) -> tuple[str | None, str]:
    """The tier of ``item`` and, when it has none or two, why, in one sentence: a tier
    marked on the test overrides its class's, which overrides its module's
    ``pytestmark``; doctests are ``unit``."""
    node: pytest.Item | pytest.Collector | None = item
    while node is not None and not _tiers(node):
        node = node.parent
    tiers = _tiers(node) if node is not None else []
    if not tiers and isinstance(item, DoctestItem):
        return "unit", ""
    if len(tiers) == 1:
        return tiers[0], ""
    why = ("has no tier marker" if not tiers else
           f"has {len(tiers)} tier markers ({', '.join(tiers)}) on "
           f"{'the test' if node is item else node.nodeid}")
    return None, (f"{item.nodeid} {why}: mark it with exactly one of {', '.join(TIERS)} "
                  f"(see tests/conftest.py)")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A test without exactly one tier fails the collection of its module (a collection
    error, which pytest-xdist's workers report as such; an exception in a worker's
    pytest_collection_modifyitems would only be an INTERNALERROR)."""
    rep = yield
    if rep.passed:
        bad = [why for x in rep.result if isinstance(x, pytest.Item)
               for tier, why in [_tier_of(x)] if tier is None]
        if bad:
            rep.outcome, rep.longrepr, rep.result = "failed", "\n".join(bad), []
    return rep


@pytest.hookimpl(tryfirst=True)     # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move each test's tier onto the test and off its module and class, so that ``-m``
    sees exactly one (``-m unit`` must not pick an integration test of a unit module)."""
    chosen: dict[str, str] = {}
    for item in items:
        tier, why = _tier_of(item)
        if tier is None:        # a test collected where the check above did not run
            raise pytest.UsageError(why)
        chosen[item.nodeid] = tier
    for item in items:
        for node in item.listchain()[:-1]:
            node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
        if not _tiers(item):
            item.add_marker(chosen[item.nodeid])


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
