"""Ten SCTBench programs under every search strategy, and under the Python peers when
they are installed (issue 14, point 4).

For each program of :mod:`bench.sctbench` and each search of :data:`SEARCHES`, from
each of 5 base seeds far apart, run executions until the program's bug shows (a failed
assertion or a deadlock) or a cap (executions or seconds); print executions per
second (measured apart: :func:`throughput`; a peer's over its hunts), the median
executions and seconds to the first bug, the observed hit rate
(bugs found over executions run, all bases together) and, for PCT, the bound
1/(n k^(d-1)) it promises for a bug of depth at most d, with n the program's threads and
k its steps, measured by first runs (``calibrate``: the most scheduling decisions of 10
random executions).  PCT is given that k: with its default horizon the change points
fall after the run ends and the bound does not hold.

A search is ``make(program, base_seed, k)`` returning the strategies of successive
executions (an iterable; an exhaustive search ends it when it has run every schedule
it covers), so adding one is one line in :data:`SEARCHES`.  The peers (frontrun 0.7.0,
interleave-test 0.1.0: ``pip install -e '.[peers]'``) run the same thread functions,
with plain attribute accesses and real ``threading.Lock`` mutexes which they patch;
a peer that is not importable is skipped with a line saying so.

Run: python bench/bench_sctbench.py [--cap-execs N] [--cap-seconds S] [--bases N]
     [--programs a,b] [--strategies random,pct-d2] [--no-peers]
"""
from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sctbench import FIXED, PROGRAMS, Direct, Program, RealMutex  # noqa: E402
from bench.sctbench.run import Outcome, execute  # noqa: E402
from core.sched import ThreadCtx, set_current  # noqa: E402
from stress.bounded import walks  # noqa: E402
from stress.strategies import PCTStrategy, RandomStrategy, Strategy  # noqa: E402


@dataclass(frozen=True)
class Search:
    """How a strategy searches: ``make(program, base_seed, k)`` gives the strategy of
    each execution in turn.  ``depth``: PCT's d (the table prints its bound);
    ``deterministic``: the base seed changes nothing, so it is run once."""
    make: Callable[[Program, int, int], Iterable[Strategy]]
    depth: int | None = None
    deterministic: bool = False


def seeded(strategy: Callable[[random.Random, int], Strategy]
           ) -> Callable[[Program, int, int], Iterable[Strategy]]:
    """A fresh strategy per execution, execution i of base b on seed b + i."""
    def make(program: Program, base: int, k: int) -> Iterable[Strategy]:
        return (strategy(random.Random(base + i), k) for i in itertools.count())
    return make


def sct_footprint(thread: int, label: str, arg: object):
    """What an SCTBench operation touches: a variable (read or written) or a mutex
    (taken or given: its owner, which its lock step's readiness reads)."""
    for prefix, writes in (("read ", False), ("write ", True)):
        if label.startswith(prefix):
            return (("var", label[len(prefix):]), writes)
    if label.startswith(("pthread_mutex_lock(", "pthread_mutex_unlock(")):
        return (("mutex", arg), True)
    return None


def bounded(preemptions: int, iterative: bool = True, bound: str = "preemptions"
            ) -> Callable[[Program, int, int], Iterable[Strategy]]:
    """Every schedule with at most ``preemptions`` preemptions (stress.bounded; with
    ``iterative``, the walks of :func:`stress.bounded.walks`: the bounds 0..P in turn,
    round-robin free choices first): one strategy object, one execution per item; the
    iterable ends when the last walk is complete."""
    def make(program: Program, base: int, k: int) -> Iterable[Strategy]:
        for b in walks(preemptions, iterative=iterative, footprint=sct_footprint,
                       exit_conflicts=False, bound=bound):
            while b.next_execution():
                yield b
    return make


SEARCHES: dict[str, Search] = {
    "random": Search(seeded(lambda rng, k: RandomStrategy(rng))),
    "pct-d2": Search(seeded(lambda rng, k: PCTStrategy(rng, depth=2, horizon=k)), depth=2),
    "pct-d3": Search(seeded(lambda rng, k: PCTStrategy(rng, depth=3, horizon=k)), depth=3),
    "bounded-p2": Search(bounded(2), deterministic=True),
    "bounded-d3": Search(bounded(3, bound="delays"), deterministic=True),
}


@dataclass
class Hunt:
    """One search from one base seed: executions run, seconds, and whether the bug
    showed (on the last execution) or the search ran out (``exhausted``)."""
    execs: int
    seconds: float
    found: bool
    exhausted: bool = False
    outcome: Outcome | None = None


def calibrate(program: Program, runs: int = 10) -> int:
    """PCT's k for ``program``: the most scheduling decisions in ``runs`` random
    executions (what PCTStrategy counts its change points in)."""
    return max(execute(program, RandomStrategy(random.Random(i))).decisions
               for i in range(1, runs + 1))


def hunt(program: Program, search: Search, base: int, k: int, *, cap_execs: int = 20_000,
         cap_seconds: float = 20.0) -> Hunt:
    """Run ``search`` on ``program`` until its bug shows or a cap is reached."""
    t0 = time.perf_counter()
    n = 0
    strategies = iter(search.make(program, base, k))
    while n < cap_execs and time.perf_counter() - t0 < cap_seconds:
        strategy = next(strategies, None)
        if strategy is None:
            return Hunt(n, time.perf_counter() - t0, False, exhausted=True)
        o = execute(program, strategy)
        n += 1
        if o.kind in ("unfinished",) or (o.kind is not None and not o.shows(program)):
            raise RuntimeError(f"{program.name}: an execution showed {o.kind}, not the "
                               f"program's bug: {o.detail}")
        if o.shows(program):
            return Hunt(n, time.perf_counter() - t0, True, outcome=o)
    return Hunt(n, time.perf_counter() - t0, False)


def throughput(program: Program, search: Search, base: int, k: int, *, execs: int = 300,
               seconds: float = 1.0) -> float:
    """Executions per second of ``search`` on ``program``, bugs or not (a hunt that
    ends at its first execution says nothing about speed): at least ``execs``
    executions and ``seconds``, or until the search ends."""
    t0 = time.perf_counter()
    n = 0
    for strategy in search.make(program, base, k):
        execute(program, strategy)
        n += 1
        if n >= execs and time.perf_counter() - t0 >= seconds:
            break
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------- peers
Peer = Callable[[Program, int, int, float], Hunt]


def _peer_workers(program: Program) -> list[Callable]:
    direct = Direct()

    def worker(fn):
        def w(st):
            try:
                fn(st, direct)
            except AssertionError:
                pass            # noted in st.bug, which the invariant reads
        return w
    return [worker(fn) for _, fn in program.threads]


def frontrun_peer(strategy: str) -> Peer:
    def run(program: Program, base: int, cap_execs: int, cap_seconds: float) -> Hunt:
        import frontrun
        from frontrun._cooperative import patch_locks, unpatch_locks
        kw: dict = ({"max_attempts": cap_execs, "seed": base} if strategy == "random"
                    else {"max_executions": cap_execs, "stop_on_first": True})
        # what the `frontrun` command does for a whole process: real locks become
        # cooperative ones; only around the peer's own runs (our batons are locks too)
        patch_locks()
        t0 = time.perf_counter()
        try:
            r = frontrun.explore(setup=lambda: program.fresh(RealMutex),
                                 workers=_peer_workers(program),
                                 invariant=lambda st: st.bug is None, strategy=strategy,
                                 reproduce_on_failure=0, detect_io=False,
                                 total_timeout=cap_seconds, **kw)
        finally:
            unpatch_locks()
        return Hunt(r.num_explored, time.perf_counter() - t0, r.property_holds is False)
    return run


def interleave_peer(strategy: str) -> Peer:
    def run(program: Program, base: int, cap_execs: int, cap_seconds: float) -> Hunt:
        import interleave_test as it
        workers = _peer_workers(program)

        def model() -> None:
            st = program.fresh(RealMutex)      # threading.Lock is patched in the run
            ts = [it.spawn(w, st) for w in workers]
            for t in ts:
                t.join()
            assert st.bug is None, st.bug

        t0 = time.perf_counter()
        r = it.explore(model, iterations=cap_execs, seed=base, strategy=strategy,
                       raise_on_failure=False)
        found = r.failure is not None
        n = r.failure.iteration + 1 if found else r.schedules_run
        return Hunt(n, time.perf_counter() - t0, found, exhausted=r.exhausted and not found)
    return run


# name: (module to import, run, deterministic)
PEERS: dict[str, tuple[str, Peer, bool]] = {
    "frontrun-random": ("frontrun", frontrun_peer("random"), False),
    "frontrun-dpor": ("frontrun", frontrun_peer("dpor"), True),
    "interleave-random": ("interleave_test", interleave_peer("random"), False),
    "interleave-pct": ("interleave_test", interleave_peer("pct"), False),
    "interleave-dfs": ("interleave_test", interleave_peer("dfs"), True),
}


# ---------------------------------------------------------------------- table
def summarise(hunts: list[Hunt], rate: float | None = None) -> dict:
    """The hunts of one program and search, as a table row's figures; ``rate``:
    executions per second measured apart (else the hunts' own)."""
    execs = sum(h.execs for h in hunts)
    secs = sum(h.seconds for h in hunts)
    found = [h for h in hunts if h.found]
    to_bug = sorted(h.execs if h.found else math.inf for h in hunts)
    t_bug = sorted(h.seconds if h.found else math.inf for h in hunts)
    if rate is None:
        rate = execs / secs if secs else 0.0
    return {"rate": rate,
            "median": statistics.median(to_bug), "median_s": statistics.median(t_bug),
            "found": len(found), "of": len(hunts), "hit": len(found) / execs if execs else 0.0,
            "exhausted": any(h.exhausted for h in hunts)}


def row(program: str, n: int, k: int, name: str, s: dict, bound: str) -> str:
    med = "miss" if s["median"] == math.inf else f"{s['median']:.0f}"
    med_s = "-" if s["median_s"] == math.inf else f"{s['median_s']:.3f}"
    if s["exhausted"] and not s["found"]:
        med = "exhausted"
    return (f"{program:<11} {n:>2} {k:>3} {name:<17} {s['rate']:>8,.0f} {med:>9} "
            f"{s['found']:>2}/{s['of']:<2} {med_s:>8} {s['hit']:>9.4f} {bound:>9}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap-execs", type=int, default=20_000)
    ap.add_argument("--cap-seconds", type=float, default=20.0)
    ap.add_argument("--bases", type=int, default=5)
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--strategies", default=",".join(SEARCHES))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--fixed-runs", type=int, default=500,
                    help="executions of each fixed program per strategy (must stay clean)")
    args = ap.parse_args()
    set_current(ThreadCtx("bench"))
    bases = [100_000 * (i + 1) for i in range(args.bases)]
    for given, known, what in ((args.programs, PROGRAMS, "program"),
                               (args.strategies, SEARCHES, "strategy")):
        bad = [x for x in given.split(",") if x and x not in known]
        if bad:
            ap.error(f"unknown {what} {bad[0]!r}; known: {', '.join(known)}")
    programs = [PROGRAMS[p] for p in args.programs.split(",") if p]
    searches = {s: SEARCHES[s] for s in args.strategies.split(",") if s}
    print(f"caps: {args.cap_execs} executions or {args.cap_seconds:g} s per search; "
          f"bases {bases}; medians over bases (miss: the cap came first)")
    head = (f"{'program':<11} {'n':>2} {'k':>3} {'strategy':<17} {'execs/s':>8} "
            f"{'to bug':>9} {'found':>5} {'median s':>8} {'hit rate':>9} {'PCT bound':>9}")
    print(head)
    print("-" * len(head))
    ks = {}
    throughput(programs[0], SEARCHES["random"], 1, 10, execs=50, seconds=0.2)   # warm up
    for p in programs:
        ks[p.name] = k = calibrate(p)
        for name, search in searches.items():
            hunts = [hunt(p, search, b, k, cap_execs=args.cap_execs,
                          cap_seconds=args.cap_seconds)
                     for b in (bases[:1] if search.deterministic else bases)]
            rate = throughput(p, search, bases[0], k)
            bound = "-"
            if search.depth is not None and p.depth is not None and p.depth <= search.depth:
                bound = f"{1 / (p.n * k ** (search.depth - 1)):.4f}"
            print(row(p.name, p.n, k, name, summarise(hunts, rate), bound),
                  flush=True)
    print("\nprogram     PB depth  SCTBench threads/steps  (PB, depth: this port, main "
          "not a thread; threads/steps: benchmarks/buggy.txt)")
    for p in programs:
        print(f"{p.name:<11} {p.preemptions:>2} {p.depth:>5}  {p.sct_threads:>8}/{p.sct_steps}")

    print(f"\nfixed programs, {args.fixed_runs} executions per strategy (must be clean):")
    for p in FIXED.values():
        k = calibrate(p)
        for name, search in searches.items():
            flagged = []
            for strategy in itertools.islice(search.make(p, bases[0], k), args.fixed_runs):
                o = execute(p, strategy)
                if o.kind is not None:
                    flagged.append(o)
            print(f"  {p.name:<16} {name:<8} flagged {len(flagged)}"
                  + (f": {flagged[0].kind}: {flagged[0].detail}" if flagged else ""))

    if args.no_peers:
        return 0
    print("\npeers (same thread functions, plain attributes and patched threading.Lock):")
    for name in [x for x in args.peers.split(",") if x]:
        module, run, deterministic = PEERS[name]
        try:
            __import__(module)
        except ImportError as e:
            print(f"  {name}: skipped, {module} not importable ({e}); "
                  f"pip install -e '.[peers]' (interleave-test needs Python >= 3.12)")
            continue
        for p in programs:
            hunts = [run(p, b, args.cap_execs, args.cap_seconds)
                     for b in (bases[:1] if deterministic else bases)]
            print(row(p.name, p.n, ks[p.name], name, summarise(hunts), "-"),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
