"""Runs per second of the default run (``tdx-stress run``: hugepage-rfc, controlled mode,
portfolio strategy), and where its time goes (issue 14, point 6).

Seeds run the way a campaign's worker runs them (:func:`stress.campaign.run_batch`:
``record_steps=False``, a deadline far away), each tree in a worker process of its own
whose imports come from that tree.  Two trees are compared in one run by alternating
them seed by seed (ABBA order: one worker runs while the other waits), so that the
machine's noise hits both alike; a round is one pass over the seeds, and what counts is
the median over rounds of the ratio of their runs/s, not the absolute figures.

    python bench/bench_speed.py                       # this tree against 5a93889
    python bench/bench_speed.py --base REV --rounds 5 --seeds 40
    python bench/bench_speed.py --profile [--tree DIR | --profile-rev REV] [--seeds 20]
    python bench/bench_speed.py --fingerprint [--fingerprint-rev REV] [--seeds 192]

``--base REV`` extracts that commit with ``git archive`` into a temporary directory (the
repository and its worktrees are left as they are); ``--base-tree DIR`` uses a tree
already on disk.  ``--profile`` runs cProfile in *every* thread of the run (each model
thread gets its own profiler from ``threading.setprofile``), sums them per function and
prints the top 25 by own time; it needs nothing outside the standard library.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "5a93889"


# ---------------------------------------------------------------------- child side
def _import_from(tree: Path) -> None:
    """Make ``core`` and ``stress`` come from ``tree``, and check that they do."""
    sys.path.insert(0, str(tree))
    import core
    import stress
    for mod in (core, stress):
        where = Path(mod.__file__).resolve()
        if tree.resolve() not in where.parents:
            raise SystemExit(f"{mod.__name__} imported from {where}, not from {tree}")


def child_serve(tree: Path, warm_seed: int, cpu: int | None) -> None:
    """A measuring worker: imports ``tree``, runs one seed to warm up, then runs each
    seed it is sent on stdin (one number a line) and answers with one JSON line.
    ``cpu``: run on that CPU only, as a campaign's worker does (campaign._worker_init)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    _import_from(tree)
    from stress.campaign import run_batch
    from stress.config import RunConfig
    cfg = RunConfig().validate().to_dict()
    run_batch(cfg, [warm_seed], False, deadline=time.monotonic() + 3600)   # warm-up
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        seed = int(line)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        out = run_batch(cfg, [seed], False, deadline=time.monotonic() + 3600)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        print(json.dumps({"wall": wall, "cpu": cpu, "steps": out[0]["steps"]}), flush=True)


def child_fingerprint(tree: Path, seeds: list[int]) -> None:
    """What a tree's model does on ``seeds`` (default configuration, PCT's k learned as
    a campaign does), as one hash over each run's trace hash, steps, decisions and
    finding signatures: a change made for speed alone leaves it as it was."""
    _import_from(tree)
    import hashlib

    from stress.config import RunConfig
    from stress.runner import run_seed, with_learned_pct_ks
    cfg = with_learned_pct_ks(RunConfig().validate())
    h = hashlib.sha256()
    for seed in seeds:
        r = run_seed(cfg, seed, record_steps=False)
        h.update(repr((seed, r.trace_hash, r.steps, len(r.schedule),
                       sorted(f.signature for f in r.findings))).encode())
    print(f"{len(seeds)} runs: {h.hexdigest()}")


class _Snapshot:
    """A profiler's figures so far, for pstats (which would otherwise disable it from
    the wrong thread)."""

    def __init__(self, prof) -> None:
        prof.snapshot_stats()
        self.stats = prof.stats

    def create_stats(self) -> None:
        pass


def child_profile(tree: Path, seeds: list[int], top: int) -> None:
    _import_from(tree)
    import cProfile
    import pstats
    import threading

    from stress.campaign import run_batch
    from stress.config import RunConfig
    cfg = RunConfig().validate().to_dict()
    # no warm-up run: every thread (a pool's too) must start after the hook is set
    profilers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(frame, event, arg):
        # called once in every thread started from now on, before its run(): replace
        # this hook by a profiler of that thread's own
        sys.setprofile(None)
        p = cProfile.Profile()
        with lock:
            profilers.append(p)
        p.enable()

    threading.setprofile(start_in_thread)
    main = cProfile.Profile()
    profilers.append(main)
    t0 = time.perf_counter()
    main.enable()
    run_batch(cfg, seeds, False, deadline=time.monotonic() + 3600)
    main.disable()
    wall = time.perf_counter() - t0
    threading.setprofile(None)     # type: ignore[arg-type]
    stats = pstats.Stats(_Snapshot(profilers[0]))
    for p in profilers[1:]:
        stats.add(_Snapshot(p))
    # a parked thread's time is spent in a lock's acquire while another thread runs:
    # waiting, not work; shown apart so that the shares are of the work done
    parked = {k: v for k, v in stats.stats.items()      # type: ignore[attr-defined]
              if k[0] == "~" and "acquire" in k[2] and "lock" in k[2]}
    work = {k: v for k, v in stats.stats.items() if k not in parked}  # type: ignore[attr-defined]
    total = sum(v[2] for v in work.values())
    waited = sum(v[2] for v in parked.values())
    calls = sum(v[1] for v in parked.values())
    print(f"profile of {len(seeds)} default runs in {tree}: {len(profilers)} threads "
          f"profiled (main + model threads), {wall:.2f} s wall under the profiler, "
          f"{total:.2f} s own time of work in all threads (+ {waited:.2f} s parked in "
          f"{calls:,} lock acquires, left out)")
    print(f"top {top} functions by own time, summed over every thread:")
    rows = sorted(work.items(), key=lambda kv: -kv[1][2])
    print(f"{'own s':>7} {'own %':>6} {'cum s':>7} {'calls':>10}  function")
    for (file, line, name), (_cc, nc, tt, ct, _callers) in rows[:top]:
        short = file
        for root in (str(tree.resolve()) + "/", str(tree) + "/"):
            short = short.replace(root, "")
        print(f"{tt:7.2f} {100 * tt / total:5.1f}% {ct:7.2f} {nc:>10,}  "
              f"{short}:{line}({name})")


# ---------------------------------------------------------------------- parent side
class Worker:
    """A child process measuring one tree, seed by seed (:func:`child_serve`)."""

    def __init__(self, tree: Path, warm_seed: int, cpu: int | None) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--tree", str(tree),
               "--first-seed", str(warm_seed)] + ([] if cpu is None else ["--cpu", str(cpu)])
        env = dict(os.environ, PYTHONHASHSEED="0")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=str(tree))
        self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"measuring worker exited ({self.proc.wait()})")
        return json.loads(line)

    def run(self, seed: int) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{seed}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def extract(rev: str, into: Path) -> Path:
    """The source tree of commit ``rev`` (``git archive``: no worktree, no checkout)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(HERE), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compare(base: Path, base_name: str, new: Path, seeds: list[int], rounds: int,
            cpu: int | None) -> int:
    print(f"default run (hugepage-rfc, controlled, portfolio), seeds {seeds[0]}.."
          f"{seeds[-1]} per round; one worker process per tree, the two alternating seed "
          f"by seed (ABBA), so that the machine's noise falls on both alike")
    print(f"  base: {base_name} ({base})")
    print(f"  new : {new}")
    print(f"  workers on {'any CPU' if cpu is None else f'CPU {cpu} only'}")
    workers = {"base": Worker(base, seeds[0] - 1, cpu), "new": Worker(new, seeds[0] - 1, cpu)}
    ratios, base_rps, new_rps, cpu_ratios = [], [], [], []
    try:
        for r in range(rounds):
            res = {k: {"runs": 0, "wall": 0.0, "cpu": 0.0, "steps": 0} for k in workers}
            for j, seed in enumerate(seeds):
                order = ["base", "new"] if (j + r) % 2 == 0 else ["new", "base"]
                got = {k: workers[k].run(seed) for k in order}
                if got["base"]["steps"] != got["new"]["steps"]:
                    print(f"  note: seed {seed} took {got['base']['steps']} steps in base, "
                          f"{got['new']['steps']} in new: not the same model")
                for k in workers:
                    for f in ("wall", "cpu", "steps"):
                        res[k][f] += got[k][f]
                    res[k]["runs"] += 1
            b, n = (res[k]["runs"] / res[k]["wall"] for k in ("base", "new"))
            sb, sn = (res[k]["steps"] / res[k]["wall"] for k in ("base", "new"))
            cb, cn = (res[k]["runs"] / res[k]["cpu"] for k in ("base", "new"))
            cpu_ratios.append(cn / cb)
            base_rps.append(b)
            new_rps.append(n)
            ratios.append(n / b)
            print(f"round {r + 1}: base {b:6.2f} runs/s  new {n:6.2f} runs/s  "
                  f"ratio {n / b:5.2f}x   (per CPU second: {cn / cb:5.2f}x; steps/s: base "
                  f"{sb:,.0f}, new {sn:,.0f})", flush=True)
    finally:
        for w in workers.values():
            w.close()
    med = statistics.median
    print(f"median: base {med(base_rps):.2f} runs/s, new {med(new_rps):.2f} runs/s; "
          f"median ratio new/base {med(ratios):.2f}x (target >= 2x) over {rounds} rounds; "
          f"per CPU second {med(cpu_ratios):.2f}x")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=HERE, help="the tree measured (new)")
    ap.add_argument("--base", default=DEFAULT_BASE, help="the commit compared against")
    ap.add_argument("--base-tree", type=Path, default=None,
                    help="compare against this source tree instead of --base")
    ap.add_argument("--seeds", type=int, default=30, help="seeds per measurement")
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--profile", action="store_true",
                    help="profile every thread of --tree's runs instead of comparing")
    ap.add_argument("--profile-rev", default=None, metavar="REV",
                    help="with --profile: profile commit REV (extracted) instead of --tree")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--fingerprint", action="store_true",
                    help="print a hash of what --tree's model does on the seeds (trace "
                         "hashes, steps, decisions, findings) instead of comparing")
    ap.add_argument("--fingerprint-rev", default=None, metavar="REV",
                    help="with --fingerprint: of commit REV (extracted) instead of --tree")
    ap.add_argument("--cpu", default="first", metavar="N|first|any",
                    help="the CPU the measuring workers run on: like a campaign's worker, "
                         "pinned to one (default: the first allowed), or 'any'")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    if a.cpu == "any":
        cpu = None
    elif a.cpu == "first":
        cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    else:
        cpu = int(a.cpu)
    if a.child:
        child_serve(a.tree, a.first_seed, cpu)
        return 0
    if a.fingerprint:
        if a.fingerprint_rev is None:
            child_fingerprint(a.tree, seeds)
            return 0
        with tempfile.TemporaryDirectory(prefix="bench-speed-fp-") as d:
            child_fingerprint(extract(a.fingerprint_rev, Path(d)), seeds)
        return 0
    if a.profile:
        if a.profile_rev is None:
            child_profile(a.tree, seeds, a.top)
            return 0
        with tempfile.TemporaryDirectory(prefix="bench-speed-prof-") as d:
            child_profile(extract(a.profile_rev, Path(d)), seeds, a.top)
        return 0
    if a.base_tree is not None:
        return compare(a.base_tree, str(a.base_tree), a.tree, seeds, a.rounds, cpu)
    with tempfile.TemporaryDirectory(prefix="bench-speed-base-") as d:
        base = extract(a.base, Path(d))
        return compare(base, a.base, a.tree, seeds, a.rounds, cpu)


if __name__ == "__main__":
    sys.exit(main())
