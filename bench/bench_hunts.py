"""Time to first finding per hunt and strategy, side by side (the campaign issue).

For every hunt variant and strategy (controlled pct, controlled random, free), from each
of 5 base seeds (and bounded exploration on the hunt's small workload, once: it is
deterministic), run seeds until the finding the hunt is after fires (docs/model.md §6), or a cap;
print the median wall time and seeds to it.  One process, default configuration (as
`tdx-stress run --variant hunt-X --stop-on-first --strategy S` would use, minus the
worker start-up).

Run: python bench/bench_hunts.py [--cap S] [--bases N] [--guest linux]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.variants import HUNTS  # noqa: E402
from stress.config import RunConfig  # noqa: E402
from stress.runner import hunt_stop, run_seed  # noqa: E402

STRATEGIES = (("portfolio", "controlled"), ("pct", "controlled"), ("random", "controlled"),
              ("pct", "free"))


def time_to_first(variant: str, strategy: str, mode: str, base: int, cap: float,
                  guest: str = "linux"):
    cfg = RunConfig(variant=variant, strategy=strategy, mode=mode, guest=guest).validate()
    stop = hunt_stop(variant)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < cap:
        r = run_seed(cfg, base + n, stop_on=stop, record_steps=False)
        n += 1
        if any(stop(f) for f in r.findings):
            return time.perf_counter() - t0, n
    return None, n


def bounded_to_first(variant: str, preemptions: int = 2, cap: float = 60.0):
    """The bounded strategy on the hunt's small workload (stress.small, the scripted
    tests'): executions and seconds until the hunt's finding, iterative bounds 0..P."""
    from stress.bounded import explore
    from stress.small import SMALL, run_small
    [name] = [n for n, w in SMALL.items() if w.hunt == variant]
    stop = hunt_stop(variant)

    def execute(strategy):
        seq = run_small(name, variant, strategy)
        return list(seq.rec.findings), list(seq.sched.decisions)
    t0 = time.perf_counter()
    e = explore(execute, preemptions, stop_on=stop, deadline=time.monotonic() + cap)
    hit = any(stop(f) for f, _ in e.findings)
    return (time.perf_counter() - t0 if hit else None), e.executions_total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per search")
    ap.add_argument("--bases", type=int, default=5)
    ap.add_argument("--guest", default="linux", choices=("linux", "ve-accept"),
                    help="the guest (linux: with MapGPA conversions)")
    args = ap.parse_args()
    print(f"guest {args.guest}")
    bases = [100_000 * (i + 1) for i in range(args.bases)]
    head = f"{'hunt':<8}" + "".join(f" | {s + ('/' + m if m == 'free' else ''):>24}"
                                    for s, m in STRATEGIES) + f" | {'bounded P=2, small':>24}"
    print(head)
    print("-" * len(head))
    for v in HUNTS:
        cells = []
        for s, m in STRATEGIES:
            times, seeds, missed = [], [], 0
            for b in bases:
                t, n = time_to_first(v, s, m, b, args.cap, args.guest)
                seeds.append(n)
                if t is None:
                    missed += 1
                    times.append(float("inf"))
                else:
                    times.append(t)
            med = statistics.median(times)
            cell = (f"{med:6.1f} s, {int(statistics.median(seeds)):5d} seeds"
                    if med != float("inf") else f"  >{args.cap:.0f} s")
            if missed:
                cell += f" ({missed} miss)"
            cells.append(cell)
        t, n = bounded_to_first(v, cap=args.cap)
        cells.append(f"{t:6.2f} s, {n:5d} sched" if t is not None else f"  >{args.cap:.0f} s")
        print(f"{v:<8}" + "".join(f" | {c:>24}" for c in cells), flush=True)
    print(f"(median over {args.bases} base seeds; cap {args.cap:.0f} s per search; "
          "'miss' = not found within the cap; bounded: deterministic, on the hunt's small "
          "workload from stress/small.py, schedules run until the hunt's finding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
