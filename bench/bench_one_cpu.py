"""What keeping a controlled run to one CPU gives (stress.controlled.one_cpu), printed.

Default runs (hugepage-rfc, controlled, portfolio) in this one process, the way
``replay``, ``shrink``, bounded exploration and the pytest plugin run seeds (a
campaign's workers are on a CPU each anyway): the same seeds with the run kept to one
CPU and with its threads free to move, alternating by round (ABBA) so that the
machine's noise falls on both alike.  What counts is the median of the ratios.

    python bench/bench_one_cpu.py [--rounds 6] [--seeds 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stress.controlled as controlled  # noqa: E402
from stress.config import RunConfig  # noqa: E402
from stress.runner import run_seed  # noqa: E402


def one_round(cfg: RunConfig, seeds: range, pinned: bool) -> float:
    """Seconds for ``seeds``, kept to one CPU or not."""
    real = controlled.model_cpu
    if not pinned:
        controlled.model_cpu = lambda: None
    try:
        t0 = time.perf_counter()
        for seed in seeds:
            run_seed(cfg, seed, record_steps=False)
        return time.perf_counter() - t0
    finally:
        controlled.model_cpu = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=20)
    a = ap.parse_args()
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench_one_cpu: needs at least two CPUs to compare with")
    cfg = RunConfig().validate()
    seeds = range(1000, 1000 + a.seeds)
    run_seed(cfg, 999, record_steps=False)          # warm-up (imports, learned k)
    free, one = [], []
    for r in range(a.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for pinned in order:
            (one if pinned else free).append(one_round(cfg, seeds, pinned))
        print(f"round {r + 1}: free {a.seeds / free[-1]:6.2f} runs/s   one CPU "
              f"{a.seeds / one[-1]:6.2f} runs/s   ratio {free[-1] / one[-1]:.2f}x", flush=True)
    ratios = [f / o for f, o in zip(free, one, strict=True)]
    print(f"median: free {a.seeds / statistics.median(free):.2f} runs/s, one CPU "
          f"{a.seeds / statistics.median(one):.2f} runs/s; median ratio "
          f"{statistics.median(ratios):.2f}x over {a.rounds} rounds of {a.seeds} seeds")


if __name__ == "__main__":
    main()
