"""The PCT bound of a clean campaign (reports/confidence.py) against values computed here,
independently of it: Burckhardt et al. (ASPLOS 2010) guarantee that one PCT run with n
threads and k steps finds a bug of depth d with probability at least 1/(n * k^(d-1)), so
R independent clean runs miss it with probability at most (1 - p)^R, and the runs needed
for 95% confidence are the fewest R with (1 - p)^R <= 0.05."""
import itertools
from fractions import Fraction

import pytest

from reports.confidence import confidence_text, pct_bound

pytestmark = pytest.mark.unit


def summary(n, k, depth, runs, strategy="pct", pct_runs=None):
    pct = {"k": k, "depth": depth, "sync_steps_mean": 80.0, "sync_steps_max": 150,
           "runs_past_k": 0}
    if pct_runs is not None:
        pct["runs"] = pct_runs
    return {"mode": "controlled", "strategy": strategy, "runs": runs, "threads_max": n,
            "pct": pct}


# (n, k, d, R) -> per depth 1..d: p as a fraction, the miss (worked out by hand from
# (1-p)^R, 4 significant figures) and the runs for 95% (ceil(ln 0.05 / ln(1-p)))
WORKED = [
    ((4, 100, 3, 1000), [(Fraction(1, 4), 1.151e-125, 11),
                         (Fraction(1, 400), 0.08183, 1197),
                         (Fraction(1, 40_000), 0.9753, 119_828)]),
    ((3, 10, 3, 50), [(Fraction(1, 3), 1.568e-9, 8),
                      (Fraction(1, 30), 0.1836, 89),
                      (Fraction(1, 300), 0.8462, 898)]),
]


@pytest.mark.parametrize("args, rows", WORKED, ids=["n4-k100-d3", "n3-k10-d3"])
def test_the_bound_matches_worked_values(args, rows):
    n, k, d, runs = args
    b = pct_bound(summary(n, k, d, runs))
    assert b["ok"] and (b["n"], b["k"], b["runs"]) == (n, k, runs)
    assert [r["depth"] for r in b["rows"]] == list(range(1, d + 1))
    for r, (p, miss, need) in zip(b["rows"], rows, strict=True):
        assert r["p_run"] == pytest.approx(float(p), rel=1e-12), r
        assert r["miss"] == pytest.approx(miss, rel=1e-3), r
        assert r["runs_for_95"] == need, r


def test_per_run_probability_is_one_over_n_times_k_to_the_d_minus_1():
    """Every depth of every row, against the exact fraction 1/(n * k^(d-1))."""
    for n, k, d in itertools.product((1, 2, 5), (2, 7, 64, 1000), (1, 2, 3, 4)):
        b = pct_bound(summary(n, k, d, runs=500))
        assert len(b["rows"]) == d
        for r in b["rows"]:
            exact = Fraction(1, n * k ** (r["depth"] - 1))
            assert r["p_run"] == pytest.approx(float(exact), rel=1e-12), (n, k, r)


@pytest.mark.parametrize("n, k, d, runs", [(2, 10, 3, 1), (4, 100, 3, 10_000),
                                           (6, 300, 3, 250), (3, 50, 4, 1_000_000)])
def test_miss_and_runs_for_95_follow_from_the_per_run_probability(n, k, d, runs):
    """miss = (1-p)^R, and runs_for_95 is the fewest R' with (1-p)^R' <= 0.05."""
    for r in pct_bound(summary(n, k, d, runs))["rows"]:
        p = 1 / (n * k ** (r["depth"] - 1))
        if p == 1:
            assert r["miss"] == 0 and r["runs_for_95"] == 1
            continue
        assert r["miss"] == pytest.approx((1 - p) ** runs, rel=1e-9, abs=1e-300)
        need = r["runs_for_95"]
        assert (1 - p) ** need <= 0.05 < (1 - p) ** (need - 1), (n, k, r)


def test_one_thread_at_depth_1_is_certain():
    """n = 1, d = 1: the only schedule is the one run, p = 1: nothing can be missed."""
    [r] = pct_bound(summary(1, 50, 1, 3))["rows"]
    assert (r["p_run"], r["miss"], r["runs_for_95"]) == (1.0, 0.0, 1)


def test_a_portfolio_counts_its_pct_runs_and_a_random_campaign_has_no_bound():
    s = summary(4, 100, 2, 1000, strategy="portfolio", pct_runs=500)
    b = pct_bound(s)
    assert b["runs"] == 500
    assert b["rows"][1]["miss"] == pytest.approx((1 - 1 / 400) ** 500, rel=1e-9)
    for other in (dict(s, strategy="random"), dict(s, mode="free")):
        b = pct_bound(other)
        assert not b["ok"] and b["rows"] == [] and "no probabilistic guarantee" in b["why"]


def test_the_statement_shows_the_formula_and_the_rows():
    lines = confidence_text(summary(4, 100, 3, 1000))
    assert "1/(n·k^(d-1))" in lines[0] and "n = 4" in lines[0] and "k = 100" in lines[0]
    assert "| 2 | 0.0025 | 0.0818 | 1,197 |" in lines
    assert "| 3 | 2.5e-05 | 0.975 | 119,828 |" in lines
