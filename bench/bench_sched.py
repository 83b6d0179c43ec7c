"""Scheduler costs, printed as figures (issue: controlled and free schedulers).

1. Controlled yield points per second with a switch at every step, beside a bare baton
   loop (one threading.Lock per thread, handing over in a ring) measured in the same
   run; the figure that matters is the ratio of costs (target: at most 2x).
2. Controlled yield points per second when the strategy never switches (target: at
   least 500k/s).
3. Free mode: instrumented compare-exchanges per second with and without trace
   recording (target: recording costs at most 1.5x).

Run: python bench/bench_sched.py [--seconds S]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.findings import Recorder  # noqa: E402
from core.sched import ThreadCtx, set_current  # noqa: E402
from core.store import KvmMmuPage  # noqa: E402
from stress.controlled import ControlledScheduler, one_cpu  # noqa: E402
from stress.free import FreeScheduler  # noqa: E402
from stress.strategies import Strategy  # noqa: E402


def bare_baton(n_threads: int, handoffs: int) -> float:
    """Handoffs per second of a ring of threads passing one baton (a Lock each), on one
    CPU as a controlled run is (stress.controlled.one_cpu): like with like."""
    with one_cpu():
        return _bare_baton(n_threads, handoffs)


def _bare_baton(n_threads: int, handoffs: int) -> float:
    locks = [threading.Lock() for _ in range(n_threads)]
    for lk in locks:
        lk.acquire()
    per = handoffs // n_threads

    def body(i: int) -> None:
        for _ in range(per):
            locks[i].acquire()
            locks[(i + 1) % n_threads].release()

    ts = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n_threads)]
    for t in ts:
        t.start()
    t0 = time.perf_counter()
    locks[0].release()
    for t in ts:
        t.join()
    return per * n_threads / (time.perf_counter() - t0)


class RoundRobin(Strategy):
    """Switch at every step: the next runnable thread after the current one."""

    def choose(self, view, runnable):
        cur = view.current if view.current is not None else -1
        later = [i for i in runnable if i > cur]
        return later[0] if later else runnable[0]


class Stay(Strategy):
    """Never switch while the current thread can go on."""

    def choose(self, view, runnable):
        cur = view.current
        return cur if cur is not None and cur in runnable else runnable[0]


def controlled(strategy: Strategy, n_threads: int, ops: int) -> float:
    rec = Recorder()
    sched = ControlledScheduler(strategy, recorder=rec, record_steps=False,
                                max_steps=10 ** 9)
    sp = KvmMmuPage(sched, rec, 0x1000, 1, 0, True)
    per = ops // n_threads

    def body() -> None:
        for _ in range(per):
            sp.read(0)

    t0 = time.perf_counter()
    sched.run([(f"t{i}", body) for i in range(n_threads)], join_timeout=600)
    return sched.step / (time.perf_counter() - t0)


def free_cmpxchg(record: bool, n_threads: int, ops: int) -> float:
    rec = Recorder()
    sched = FreeScheduler(stall_rate=0.0, recorder=rec, record_trace=record,
                          max_steps=10 ** 9)
    sp = KvmMmuPage(sched, rec, 0x1000, 1, 0, True)
    per = ops // n_threads

    def body() -> None:
        for _ in range(per):
            v = sp.read(0)
            sp.cmpxchg(0, v, v + 1)

    t0 = time.perf_counter()
    sched.run([(f"t{i}", body) for i in range(n_threads)])
    return 2 * per * n_threads / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ops", type=int, default=40_000)
    args = ap.parse_args()
    set_current(ThreadCtx("bench"))
    bare, ctl_sw, ctl_stay, free_rec, free_norec = [], [], [], [], []
    for _ in range(args.rounds):
        # interleave the measurements so machine noise hits all of them alike
        bare.append(bare_baton(4, args.ops))
        ctl_sw.append(controlled(RoundRobin(), 4, args.ops))
        ctl_stay.append(controlled(Stay(), 1, 5 * args.ops))
        free_rec.append(free_cmpxchg(True, 2, args.ops))
        free_norec.append(free_cmpxchg(False, 2, args.ops))
    med = statistics.median
    print(f"bare baton ring (4 threads)          : {med(bare):>10,.0f} handoffs/s")
    print(f"controlled, switch at every step     : {med(ctl_sw):>10,.0f} yield points/s")
    print(f"  cost ratio controlled / bare       : {med(bare) / med(ctl_sw):>10.2f}x "
          f"(target <= 2x)")
    print(f"controlled, no switch                : {med(ctl_stay):>10,.0f} yield points/s "
          f"(target >= 500,000)")
    print(f"free mode cmpxchg+read, trace on     : {med(free_rec):>10,.0f} ops/s")
    print(f"free mode cmpxchg+read, trace off    : {med(free_norec):>10,.0f} ops/s")
    print(f"  trace recording cost ratio         : {med(free_norec) / med(free_rec):>10.2f}x "
          f"(target <= 1.5x)")
    print(f"(medians of {args.rounds} interleaved rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
