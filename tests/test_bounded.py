"""Bounded exploration (stress/bounded.py): it enumerates exactly the schedules with at
most P preemptions, its pruning loses no outcome, it refuses a program that is not
deterministic, it finds each hunt's bug on the hunt's small workload and says
"complete, none fires" for hugepage-rfc on the same workload."""
from __future__ import annotations

import itertools

import pytest

from core.variants import get_variant
from stress.bounded import NonDeterminism, explore
from stress.controlled import ControlledScheduler
from stress.small import SMALL, run_small


def program(nthreads: int, nops: int, objects=None):
    """Threads doing ``nops`` operations each; ``objects(t, k)`` names what operation k
    of thread t touches (None: undeclared, conflicts with everything).  Returns an
    ``execute`` for :func:`explore` whose outcome is the order of steps per object."""
    outcomes: list = []

    def execute(strategy):
        sched = ControlledScheduler(strategy, record_steps=False)
        per_object: dict = {}

        def body(t):
            def f():
                for k in range(nops):
                    obj = objects(t, k) if objects else "x"
                    sched.op(f"op{obj}", (t, k),
                             lambda t=t, k=k, obj=obj: per_object.setdefault(obj, []).append(t))
            return f
        sched.run([(f"t{i}", body(i)) for i in range(nthreads)])
        if not sched.aborting:
            outcomes.append(tuple(sorted((o, tuple(v)) for o, v in per_object.items())))
        return [], list(sched.decisions)
    return execute, outcomes


def _interleavings(nthreads: int, steps: int) -> set[tuple[int, ...]]:
    """Every order of ``steps`` steps of each of ``nthreads`` threads."""
    return set(itertools.permutations([t for t in range(nthreads) for _ in range(steps)]))


def brute_force(nthreads: int, nops: int, bound: int, free: int | None = None) -> int:
    """Schedules of ``nthreads`` threads of ``nops`` operations with at most ``bound``
    preemptions, counted by enumerating every interleaving of their steps (a thread's
    first step is its start) and pricing each switch away from a thread that had steps
    left at one preemption.  With ``free``, also at most ``free`` free choices (the
    first, and each after a thread ended) that are not round robin's: the next thread
    after the one that ended, in index order (the lowest at the start)."""
    steps = nops + 1
    count = 0
    for order in _interleavings(nthreads, steps):
        left = [steps] * nthreads
        cost, fcost, prev = 0, 0, None
        for t in order:
            if prev is not None and t != prev and left[prev] > 0:
                cost += 1
            if prev is None or left[prev] == 0:
                after = -1 if prev is None else prev
                rr = min((i for i in range(nthreads) if left[i] > 0),
                         key=lambda i: (i <= after, i))
                fcost += t != rr
            left[t] -= 1
            prev = t
        count += cost <= bound and (free is None or fcost <= free)
    return count


@pytest.mark.unit
@pytest.mark.timeout(60)
@pytest.mark.parametrize("nthreads,nops", [(2, 2), (3, 1), (2, 3)])
def test_walk_runs_exactly_the_schedules_within_the_bound(nthreads, nops):
    for bound in range(4):
        execute, _ = program(nthreads, nops)
        e = explore(execute, bound, prune=False, iterative=False)
        assert e.complete and e.pruned == 0
        assert e.schedules == brute_force(nthreads, nops, bound), (nthreads, nops, bound)


@pytest.mark.unit
@pytest.mark.timeout(60)
@pytest.mark.parametrize("nthreads,nops", [(3, 1), (3, 2)])
def test_a_free_choice_budget_runs_exactly_its_schedules_and_says_when_it_cut(nthreads,
                                                                               nops):
    """Deepening over free choices (stress.bounded.walks): a walk with at most ``free``
    non-round-robin free choices runs exactly the schedules brute force counts, and says
    it cut (``cut``) exactly when that is fewer than the walk without the budget."""
    from stress.bounded import BoundedStrategy
    for bound in range(3):
        every = brute_force(nthreads, nops, bound)
        for free in range(3):
            execute, _ = program(nthreads, nops)
            b = BoundedStrategy(bound, prune=False, free=free)
            n = 0
            while b.next_execution():
                execute(b)
                n += 1
            want = brute_force(nthreads, nops, bound, free)
            assert b.complete and n == want, (nthreads, nops, bound, free, n, want)
            assert b.cut == (want < every), (bound, free, want, every)
    assert brute_force(nthreads, nops, 0, 0) == 1


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_iterative_walks_end_with_the_complete_walk_and_lose_no_outcome():
    """The iterative plan (free budgets 0, 1, any over the bounds 0..P) ends complete,
    with the same last-walk figures and the same outcomes as one plain walk."""
    objects = lambda t, k: "shared" if k == 1 else f"own{t}"   # noqa: E731
    fp = lambda t, label, arg: (label, True)   # noqa: E731
    for bound in range(3):
        plain, plain_out = program(3, 3, objects)
        deep, deep_out = program(3, 3, objects)
        e_plain = explore(plain, bound, iterative=False, footprint=fp)
        e_deep = explore(deep, bound, footprint=fp)
        assert e_plain.complete and e_deep.complete, e_deep.statement()
        assert (e_deep.schedules, e_deep.pruned) == (e_plain.schedules, e_plain.pruned)
        assert set(deep_out) == set(plain_out)
        assert e_deep.executions_total > e_plain.executions_total


def brute_force_delays(nthreads: int, nops: int, bound: int) -> int:
    """The same, priced by delays: a round-robin scheduler keeps the running thread while
    it has steps, else moves to the next thread in index order; skipping j runnable
    threads of that order costs j."""
    steps = nops + 1
    count = 0
    for order in _interleavings(nthreads, steps):
        left = [steps] * nthreads
        cost, cur = 0, None
        for t in order:
            runnable = [i for i in range(nthreads) if left[i] > 0]
            start = 0 if cur is None else (cur if left[cur] > 0 else cur + 1)
            rr = sorted(runnable, key=lambda i: (i < start, i))
            cost += rr.index(t)
            left[t] -= 1
            cur = t
        count += cost <= bound
    return count


@pytest.mark.unit
@pytest.mark.timeout(60)
@pytest.mark.parametrize("nthreads,nops", [(2, 2), (3, 1)])
def test_delay_bounded_walk_runs_exactly_the_schedules_within_the_bound(nthreads, nops):
    from stress.bounded import BoundedStrategy
    for bound in range(5):
        execute, _ = program(nthreads, nops)
        b = BoundedStrategy(bound, prune=False, bound="delays")
        n = 0
        while b.next_execution():
            execute(b)
            n += 1
        assert b.complete and n == brute_force_delays(nthreads, nops, bound), \
            (nthreads, nops, bound, n)
    assert brute_force_delays(nthreads, nops, 0) == 1


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_pruning_cuts_commuting_orders_and_loses_no_outcome():
    # operations 0 and 2 of each thread touch the thread's own object, operation 1 a
    # shared one: only the order of the shared steps can differ between outcomes
    objects = lambda t, k: "shared" if k == 1 else f"own{t}"   # noqa: E731
    # (bound 3 adds no outcome: all 6 are reached from bound 0; it cost 10 s of the 14)
    for bound in range(3):
        full, full_out = program(3, 3, objects)
        cut, cut_out = program(3, 3, objects)
        e_full = explore(full, bound, prune=False, iterative=False)
        e_cut = explore(cut, bound, iterative=False,
                        footprint=lambda t, label, arg: (label, True))
        assert e_full.complete and e_cut.complete
        assert set(cut_out) == set(full_out)
        if bound >= 2:
            assert e_cut.pruned > 0 and e_cut.schedules < e_full.schedules


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_a_full_graph_cache_costs_pruning_never_an_outcome(monkeypatch):
    """The happens-before cache is capped (CACHE_CAP): past the cap, graphs are not kept,
    so fewer schedules are pruned and more run, and the walk still reaches every
    outcome and is complete."""
    import stress.bounded as bounded
    objects = lambda t, k: "shared" if k == 1 else f"own{t}"   # noqa: E731
    fp = lambda t, label, arg: (label, True)                    # noqa: E731
    prog, out = program(3, 3, objects)
    whole = explore(prog, 2, iterative=False, footprint=fp)
    monkeypatch.setattr(bounded, "CACHE_CAP", 5)
    prog_c, out_c = program(3, 3, objects)
    capped = explore(prog_c, 2, iterative=False, footprint=fp)
    assert whole.complete and capped.complete
    assert set(out_c) == set(out)
    assert capped.pruned < whole.pruned and capped.schedules > whole.schedules


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_a_program_that_is_not_deterministic_is_refused():
    calls = itertools.count()

    def execute(strategy):
        sched = ControlledScheduler(strategy, record_steps=False)
        n = 1 + next(calls) % 2          # changes from one execution to the next

        def body():
            for _ in range(n):
                sched.op("x", None, lambda: None)
        sched.run([("a", body), ("b", body)])
        return [], list(sched.decisions)
    with pytest.raises(NonDeterminism):
        explore(execute, 2, iterative=False)


def _execute(name, variant):
    def execute(strategy):
        seq = run_small(name, variant, strategy)
        return list(seq.rec.findings), list(seq.sched.decisions)
    return execute


@pytest.mark.scripted
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_bounded_finds_each_hunt_on_its_small_workload(name):
    w = SMALL[name]
    hit = get_variant(w.hunt).hunt_hit
    e = explore(_execute(name, w.hunt), 2, stop_on=hit, max_executions=2000)
    assert any(hit(f) for f, _ in e.findings), e.statement()
    # the kept schedule replays the finding
    from stress.strategies import ReplayStrategy
    f, schedule = next((f, s) for f, s in e.findings if hit(f))
    seq = run_small(name, w.hunt, ReplayStrategy(schedule))
    assert f.signature in {g.signature for g in seq.rec.findings}


@pytest.mark.scripted
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["b", "c", "d"])
def test_bounded_is_complete_and_clean_on_hugepage_rfc(name):
    e = explore(_execute(name, "hugepage-rfc"), 2)
    assert e.complete and not e.findings, e.statement()
    assert e.statement().startswith("complete: all ")


@pytest.mark.integration
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name,variant,bound", [("c", "hunt-c", 2), ("c", "hugepage-rfc", 2)])
def test_pruning_loses_no_outcome_on_the_model(name, variant, bound):
    """Every final state and finding of the unpruned walk is reached with pruning."""
    def collect(outcomes):
        def execute(strategy):
            seq = run_small(name, variant, strategy)
            if not seq.sched.aborting:
                m = seq.kvm.module
                outcomes.add((tuple(sorted(f.signature for f in seq.rec.findings)),
                              tuple(sorted((k, e.state, e.pfn) for k, e in m.entries.items()))))
            return list(seq.rec.findings), list(seq.sched.decisions)
        return execute
    full: set = set()
    cut: set = set()
    e_full = explore(collect(full), bound, prune=False, iterative=False)
    e_cut = explore(collect(cut), bound, iterative=False)
    assert e_full.complete and e_cut.complete
    assert cut == full
    assert e_cut.pruned > 0 and e_cut.schedules < e_full.schedules


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_cli_bounded_states_completeness_and_keeps_replayable_findings(tmp_path):
    import json
    import subprocess
    import sys

    def run(variant, out, *extra):
        return subprocess.run([sys.executable, "-m", "stress", "run", "--strategy", "bounded",
                               "--preemptions", "1", "--vcpus", "1", "--zappers", "1",
                               "--ops", "1", "--seeds", "1", "--seed", "3", "--variant",
                               variant, "--out", str(out), "-q", *extra],
                              capture_output=True, text=True, timeout=100)
    clean = run("hugepage-rfc", tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr
    s = json.loads((tmp_path / "clean" / "summary.json").read_text())
    b = s["bounded"]
    assert b["workloads"] == b["complete"] == 1 and b["schedules"] > 10
    assert "Complete and clean" in (tmp_path / "clean" / "report.md").read_text()
    assert "every schedule with at most 1 preemptions" in \
        (tmp_path / "clean" / "report.md").read_text()

    hunt = run("hunt-c", tmp_path / "hunt", "--ops", "2")
    assert hunt.returncode == 1, hunt.stderr
    s = json.loads((tmp_path / "hunt" / "summary.json").read_text())
    [f] = [f for f in s["findings"] if f["path"] == "c"][:1]
    rp = subprocess.run([sys.executable, "-m", "stress", "replay", str(tmp_path / "hunt" /
                                                                      f["repro"])],
                        capture_output=True, text=True, timeout=60)
    assert rp.returncode == 1 and "reproduced" in rp.stdout, rp.stdout + rp.stderr
