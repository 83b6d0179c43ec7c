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
    # the campaign's way: each run draws its k among the learned lengths; the bound for
    # a bug in the first m windows is the mean of 1/(n*k) over the horizons k >= m
    ks = sorted(learner.samples + [3 * k])       # one far longer horizon in the mix
    rng = random.Random(99)
    hits = 0
    for i in range(runs):
        s = PCTStrategy(random.Random(50_000 + i), depth=2, horizon=rng.choice(ks))
        hits += depth2_program(s)[0]
    p = sum(1 / (2 * h) for h in ks if h >= k) / len(ks)
    floor = runs * p - 4 * math.sqrt(runs * p * (1 - p))
    assert hits >= floor, (hits, runs, ks, p)


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
    from stress.runner import learned_pct_ks, run_seed
    cfg = RunConfig(strategy="pct", guest="ve-accept", ops=4).validate()
    ks = learned_pct_ks(cfg)
    assert len(ks) > 1 and list(ks) == sorted(ks)
    # what the campaign's runs will be: the same seeds with the same horizons, each run
    # past its own k counted
    rs = [run_seed(cfg.with_(pct_ks=ks), seed, record_steps=False) for seed in range(40)]
    assert all(r.pct_k in ks for r in rs) and len({r.pct_k for r in rs}) > 1
    past = sum(r.sync_steps > r.pct_k for r in rs)
    (tmp_path / "run").mkdir()
    camp = Campaign(CampaignSpec(config=cfg, base_seed=0, seeds=40, duration=None),
                    tmp_path / "run", [])
    camp.run()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["config"]["pct_ks"] == list(ks) and s["pct"]["k"] == max(r.pct_k for r in rs)
    assert s["pct"]["runs"] == 40 and s["pct"]["runs_past_k"] == past
    text = " ".join(confidence_text(s))
    assert f"{past:,} of 40 runs had more windows than their own k" in text
    assert f"({ks[0]} to {max(ks)} SEAMCALL windows)" in text


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_the_mixed_bound_is_the_mean_over_the_horizons_that_reach_the_bug():
    from reports.confidence import pct_bound
    s = {"mode": "controlled", "strategy": "pct", "runs": 100, "threads_max": 4,
         "config": {"pct_ks": [40, 40, 2000]},
         "pct": {"k": 2000, "depth": 2, "runs": 100, "sync_steps_mean": 700.0,
                 "runs_past_k": 3}}
    b = pct_bound(s)
    # a bug anywhere in the first 2000 windows: only the 2000-horizon runs reach it
    assert b["rows"][1]["p_run"] == pytest.approx((1 / (4 * 2000)) / 3)
    # a bug in the first 40 windows: every horizon reaches it
    assert b["short"][1]["p_run"] == pytest.approx((2 / (4 * 40) + 1 / (4 * 2000)) / 3)
    assert b["rows"][0]["p_run"] == pytest.approx(1 / 4)   # depth 1: no change point
