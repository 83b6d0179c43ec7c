"""Bounded exploration on the hunts' small workloads (stress/small.py), printed.

For each workload: in its hunt variant, the executions (iterative bounds 0..P) and
seconds until the hunt's finding; in hugepage-rfc, the whole walk with at most P
preemptions: schedules run, pruned, seconds, and the completeness statement.  With
``--no-prune`` beside it, the same walks without happens-before caching (what pruning
saves).

Run: python bench/bench_bounded.py [--preemptions 2] [--no-prune]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.variants import get_variant  # noqa: E402
from stress.bounded import explore  # noqa: E402
from stress.small import SMALL, run_small  # noqa: E402


def execute_for(name: str, variant: str):
    def execute(strategy):
        seq = run_small(name, variant, strategy)
        return list(seq.rec.findings), list(seq.sched.decisions)
    return execute


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preemptions", type=int, default=2)
    ap.add_argument("--no-prune", action="store_true", help="also walk without pruning")
    a = ap.parse_args()
    p = a.preemptions
    print(f"{'workload':<9}| {'hunt: executions to its finding':>34} | "
          f"{'hugepage-rfc, P=' + str(p) + ': schedules run + pruned':>52} | seconds")
    for name, w in SMALL.items():
        hit = get_variant(w.hunt).hunt_hit
        h = explore(execute_for(name, w.hunt), p, stop_on=hit)
        found = any(hit(f) for f, _ in h.findings)
        hunt = (f"{w.hunt} {h.executions_total:,} ({h.elapsed_s:.2f} s)" if found
                else f"{w.hunt} not found")
        clean = explore(execute_for(name, "hugepage-rfc"), p)
        walk = f"{clean.schedules:,} + {clean.pruned:,} (all walks {clean.executions_total:,})"
        if a.no_prune:
            full = explore(execute_for(name, "hugepage-rfc"), p, prune=False)
            walk += f" (unpruned {full.schedules:,})"
        print(f"{name:<9}| {hunt:>34} | {walk:>52} | {clean.elapsed_s:.1f}", flush=True)
        print(f"{'':<9}  {clean.statement()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
