"""Campaign throughput: seeds per second with --workers 1 and --workers 2, measured in the
same run, alternating, as a ratio (target: 2 workers >= 1.8x the seeds/s of 1).

Run: python bench/bench_campaign.py [--seeds N] [--rounds R]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stress.campaign import Campaign, CampaignSpec  # noqa: E402
from stress.config import RunConfig  # noqa: E402


def seeds_per_second(workers: int, seeds: int, base: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        spec = CampaignSpec(config=RunConfig(variant="hugepage-rfc").validate(),
                            base_seed=base, seeds=seeds, duration=None, workers=workers)
        camp = Campaign(spec, Path(d), ["bench"])
        t0 = time.perf_counter()
        camp.run()
        return camp.totals.runs / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    one, two = [], []
    for r in range(args.rounds):
        one.append(seeds_per_second(1, args.seeds, 1000 * r))
        two.append(seeds_per_second(2, args.seeds, 1000 * r))
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"--workers 1: {m1:6.1f} seeds/s   (rounds: {', '.join(f'{x:.1f}' for x in one)})")
    print(f"--workers 2: {m2:6.1f} seeds/s   (rounds: {', '.join(f'{x:.1f}' for x in two)})")
    print(f"ratio 2/1  : {m2 / m1:6.2f}x (target >= 1.8x); {args.seeds} seeds of hugepage-rfc "
          f"per measurement, process start included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
