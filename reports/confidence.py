"""What a clean campaign says: the PCT bound on the chance that a bug was missed.

Burckhardt et al. (ASPLOS 2010, "A Randomized Scheduler with Probabilistic Guarantees
of Finding Bugs"): one PCT run with n threads, k steps and depth d finds any given bug
of depth at most d with probability at least ``p = 1/(n * k^(d-1))``.  Runs use
independent seeds, so ``R`` clean runs miss such a bug with probability at most
``(1 - p)^R``.  tdx-stress counts k over SEAMCALL windows only (see
``stress.controlled.PCTStrategy``), so the bound is about bugs whose ordering points
lie within the first k windows of a run; the summary records how many runs had more.

A campaign learns its horizons (``config.pct_ks``: the lengths of calibration runs) and
each run draws its k among them, so for a bug whose ordering points lie in a run's
first m windows one run's chance is at least the mean, over the horizons, of
``[k >= m] / (n * k^(d-1))``.  The statement is given for m = the longest horizon (a bug
anywhere in a run as long as the longest calibration run) and m = the median one.

Example::

    >>> b = pct_bound({"mode": "controlled", "strategy": "pct", "runs": 1000,
    ...                "threads_max": 4, "pct": {"k": 100, "depth": 2,
    ...                "sync_steps_mean": 80.0, "sync_steps_max": 150, "runs_past_k": 10}})
    >>> round(b["rows"][1]["p_run"], 6), round(b["rows"][1]["miss"], 3)
    (0.0025, 0.082)
"""
from __future__ import annotations

import math


def pct_bound(s: dict) -> dict:
    """The bound for each depth 1..d of a summary, or why there is none.

    Returns ``{"ok": bool, "why": str, "n", "k", "runs", "runs_past_k", "rows": [{"depth",
    "p_run", "miss", "runs_for_95"}]}``.
    """
    pct = s.get("pct")
    if s.get("mode") != "controlled" or s.get("strategy") not in ("pct", "portfolio") \
            or not pct:
        how = "free mode" if s.get("mode") == "free" else f"strategy {s.get('strategy')}"
        return {"ok": False, "why": f"{how} gives no probabilistic guarantee; the PCT "
                f"bound needs --mode controlled and --strategy pct or portfolio", "rows": []}
    # only the runs PCT scheduled count (a portfolio's even seeds); summaries written
    # before the portfolio existed ran PCT alone
    runs = int(pct.get("runs", s.get("runs", 0)))
    if runs == 0:
        return {"ok": False, "why": "no run finished", "rows": []}
    n, k, d = max(1, int(s.get("threads_max", 1))), max(1, int(pct["k"])), int(pct["depth"])
    ks = sorted(int(x) for x in (s.get("config") or {}).get("pct_ks") or ()) or [k]
    k = max(ks)
    m_short = ks[(len(ks) - 1) // 2]

    def chance(depth: int, m: int) -> float:
        if depth == 1:          # no change point: the priorities alone, whatever k
            return 1.0 / n
        return sum(1.0 / (n * h ** (depth - 1)) for h in ks if h >= m) / len(ks)

    def row(depth: int, p: float) -> dict:
        # (1-p)^R without underflow trouble; log1p keeps tiny p exact
        miss = math.exp(runs * math.log1p(-p)) if p < 1 else 0.0
        need = math.ceil(math.log(0.05) / math.log1p(-p)) if 0 < p < 1 else 1
        return {"depth": depth, "p_run": p, "miss": miss, "runs_for_95": need}
    rows = [row(depth, chance(depth, k)) for depth in range(1, d + 1)]
    short = [row(depth, chance(depth, m_short)) for depth in range(1, d + 1)]
    return {"ok": True, "why": "", "n": n, "k": k, "ks": ks, "m_short": m_short,
            "runs": runs, "runs_past_k": int(pct.get("runs_past_k", 0)),
            "sync_steps_mean": pct.get("sync_steps_mean"), "rows": rows, "short": short}


def bounded_text(s: dict) -> list[str]:
    """What a ``--strategy bounded`` campaign establishes: how many workloads were walked
    completely, the schedules run and pruned, and whether any fired."""
    b = s["bounded"]
    p = b["preemptions"]
    clean = not s.get("findings")
    lines = [f"Bounded exploration (CHESS preemption bounding, P = {p}): "
             f"{b['complete']:,} of {b['workloads']:,} workloads walked completely; "
             f"{b['schedules']:,} schedules with at most {p} preemption"
             f"{'s' if p != 1 else ''} run to the end and {b['pruned']:,} cut as "
             f"equivalent to one of them ({b['executions']:,} executions with the "
             f"iterative bounds 0..{p})."]
    if b["complete"] == b["workloads"] and clean:
        lines += ["", f"Complete and clean: for each of these {b['workloads']:,} workloads, "
                  f"every schedule with at most {p} preemptions was run, or cut as "
                  "equivalent to one that was, and none fires."]
    elif clean:
        lines += ["", f"{b['workloads'] - b['complete']:,} walk(s) stopped before the end "
                  "(time, the cap, or an interrupt): nothing is claimed for the schedules "
                  "they did not reach."]
    else:
        lines.append("The campaign was not clean: see the findings.")
    return lines


def confidence_text(s: dict) -> list[str]:
    """The statement as Markdown lines (also used, escaped, by the HTML report)."""
    if s.get("bounded"):
        return bounded_text(s)
    b = pct_bound(s)
    if not b["ok"]:
        return [f"No PCT bound: {b['why']}."]
    which = (f" PCT runs (the portfolio's even seeds, of {int(s.get('runs', 0)):,})"
             if s.get("strategy") == "portfolio" else " runs")
    several = len(b["ks"]) > 1
    horizons = (f"horizons k drawn per run among {len(b['ks'])} learned from calibration "
                f"runs ({b['ks'][0]} to {b['k']} SEAMCALL windows)" if several else
                f"k = {b['k']} SEAMCALL windows")
    lines = [f"PCT bound (Burckhardt et al. 2010) for {b['runs']:,}{which} with n = {b['n']} "
             f"threads and {horizons}: a run with horizon k finds a given bug of depth d "
             f"in its first k windows with probability at least 1/(n·k^(d-1)).", "",
             f"| depth d | bug in the first {b['k']} windows: per run, at least | "
             "missed by all runs, at most | runs for 95% |"
             + (f" bug in the first {b['m_short']}: per run | missed by all |"
                if several else ""),
             "|---|---|---|---|" + ("---|---|" if several else "")]
    for r, t in zip(b["rows"], b["short"], strict=True):
        lines.append(f"| {r['depth']} | {r['p_run']:.3g} | {r['miss']:.3g} | "
                     f"{r['runs_for_95']:,} |"
                     + (f" {t['p_run']:.3g} | {t['miss']:.3g} |" if several else ""))
    lines += ["", f"It holds for a bug reachable in every run's workload (each seed draws its "
              f"own) whose ordering points lie in the stated first windows of a run; "
              f"{b['runs_past_k']:,} of {b['runs']:,} runs had more windows than their own "
              f"k (mean {b['sync_steps_mean']}), and PCT placed no change point past k in "
              "them."]
    if s.get("findings"):
        lines.append("The campaign was not clean: the bound says nothing about the findings.")
    return lines


__all__ = ["pct_bound", "confidence_text", "bounded_text"]
