"""One SHA-256 over what a set of controlled runs did: each run's trace hash, rows of the
table and finding signatures, for every built-in variant, both guests, with and without
injected BUSY.  A change that must not change behaviour (moving model code into patches,
say) leaves it the same: run it before and after and compare.

    python scripts/trace_fingerprint.py [--seeds 6] [--verbose]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.variants import VARIANTS  # noqa: E402
from stress.config import RunConfig  # noqa: E402
from stress.runner import run_seed  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    total = hashlib.sha256()
    n = 0
    for variant in a.variants:
        for guest in ("linux", "ve-accept"):
            for busy in (0.0, 0.3):
                h = hashlib.sha256()
                for seed in range(a.seeds):
                    cfg = RunConfig(variant=variant, guest=guest, busy_rate=busy)
                    r = run_seed(cfg, seed, record_steps=False)
                    line = f"{r.trace_hash} {r.rows} {sorted(f.signature for f in r.findings)}"
                    h.update(line.encode())
                    total.update(line.encode())
                    n += 1
                if a.verbose:
                    print(f"{variant:14} {guest:9} busy={busy}: {h.hexdigest()[:12]}")
    print(f"{n} runs: {total.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
