"""PCT's k is learned (stress.runner.learned_pct_k, stress.strategies.learn_horizon) and
the bound it gives holds: a planted depth-2 bug is found at least at the bound's rate,
and a campaign's report counts every run longer than k."""
from __future__ import annotations

import json
import math
import random

import pytest

from stress.controlled import ControlledScheduler
from stress.strategies import HorizonLearner, PCTStrategy


def depth2_program(strategy):
    """Thread a writes x then y; thread b reads y then x: b seeing y == 1 and x == 0 is
    impossible, so the planted bug is b reading x *between* a's two writes after reading
    y... made reachable by writing y first: a: y = 1; x = 1.  b: ry = y; rx = x; bug if
    ry == 1 and rx == 0 - a must be preempted between its writes and b must run both
    reads there: depth 2 (one priority order, one change point)."""
    sched = ControlledScheduler(strategy, record_steps=False)
    mem = {"x": 0, "y": 0}
    seen = {}

    def a():
        for _ in range(3):                       # some steps before the window
            sched.op("pad", None, lambda: None)
        sched.op("w.y", None, lambda: mem.__setitem__("y", 1))
        sched.op("w.x", None, lambda: mem.__setitem__("x", 1))

    def b():
        seen["y"] = sched.op("r.y", None, lambda: mem["y"])
        seen["x"] = sched.op("r.x", None, lambda: mem["x"])
    sched.run([("a", a), ("b", b)])
    return seen == {"y": 1, "x": 0}, sched


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_learned_k_covers_the_runs_and_a_depth2_bug_is_found_at_the_bound_rate():
    learner = HorizonLearner(initial=2)
    for i in range(5):                           # learn k as Shuttle does
        s = PCTStrategy(random.Random(10_000 + i), depth=2, horizon=learner.k)
        depth2_program(s)
        learner.observe(s.sync_steps)
    k = learner.k
    runs, hits, longer = 3000, 0, 0
    for i in range(runs):
        s = PCTStrategy(random.Random(i), depth=2, horizon=k)
        hit, _ = depth2_program(s)
        hits += hit
        longer += s.sync_steps > k
    assert longer == 0                           # k covers every run of this program
    p = 1 / (2 * k)                              # n = 2 threads, d = 2
    # hits ~ Binomial(runs, >= p): fewer than this would happen with probability < 1e-4
    floor = runs * p - 4 * math.sqrt(runs * p * (1 - p))
    assert hits >= floor, (hits, runs, k, p)


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_the_horizon_has_no_default_and_is_never_below_one():
    with pytest.raises(TypeError):
        PCTStrategy(random.Random(1), 2)         # type: ignore[call-arg]
    with pytest.raises(ValueError):
        PCTStrategy(random.Random(1), 2, horizon=0)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_campaign_learns_k_once_and_reports_every_run_past_it(tmp_path):
    from reports.confidence import confidence_text
    from stress.campaign import Campaign, CampaignSpec
    from stress.config import RunConfig
    from stress.runner import learned_pct_k, run_seed
    cfg = RunConfig(strategy="pct", guest="ve-accept", ops=4).validate()
    k = learned_pct_k(cfg)
    # what the campaign's runs will be: the same seeds with the same k
    past = sum(run_seed(cfg.with_(pct_k=k), seed, record_steps=False).sync_steps > k
               for seed in range(40))
    (tmp_path / "run").mkdir()
    camp = Campaign(CampaignSpec(config=cfg, base_seed=0, seeds=40, duration=None),
                    tmp_path / "run", [])
    camp.run()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["config"]["pct_k"] == k == s["pct"]["k"]
    assert s["pct"]["runs"] == 40 and s["pct"]["runs_past_k"] == past
    text = " ".join(confidence_text(s))
    assert f"k = {k} SEAMCALL windows" in text and f"{past:,} of 40 runs had more" in text
