"""Unit tests of the controlled scheduler (DESIGN "Execution model"): determinism of the
seeded strategies, replay and divergence, DEADLOCK and HANG detection, one thread at a
time, and PCT at depth 1."""
from __future__ import annotations

import random
import re
import threading
import time
from itertools import pairwise
from typing import Callable

import pytest

from core.findings import Recorder
from core.mmu_lock import MmuLock
from core.rcu import Rcu
from core.sched import current
from core.store import KvmMmuPage
from stress.controlled import ControlledScheduler, ScheduleDiverged
from stress.strategies import PCTStrategy, RandomStrategy, ReplayStrategy, ScriptStrategy

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

JOIN = 10.0
Threads = list[tuple[str, Callable[[], None]]]


def new_sched(strategy, max_steps: int = 50_000) -> tuple[ControlledScheduler, Recorder]:
    rec = Recorder()
    sched = ControlledScheduler(strategy, recorder=rec, max_steps=max_steps)
    return sched, rec


def workload(sched, rec: Recorder, incs: int = 3, rounds: int = 6) -> tuple[Threads,
                                                                           Callable[[], int]]:
    """Readers CAS-incrementing one SPTE under the read lock, a writer adding 100 under the
    write lock, and an RCU reader: mixed operations, waits and retries."""
    lock = MmuLock(sched, rec)
    rcu = Rcu(sched, rec)
    sp = KvmMmuPage(sched, rec, 0x3000, 1, 0, True)
    sp.spt[0] = 0

    def inc() -> None:
        for _ in range(rounds):
            lock.read_lock()
            while True:
                cur = sp.read(0)
                if sp.cmpxchg(0, cur, cur + 1)[0]:
                    break
            lock.read_unlock()

    def writer() -> None:
        for _ in range(rounds // 2):
            lock.write_lock()
            sp.write(0, sp.read(0) + 100)
            lock.cond_resched()
            lock.write_unlock()

    def walker() -> None:
        for _ in range(rounds):
            rcu.rcu_read_lock()
            sp.read(0)
            rcu.rcu_read_unlock()
            rcu.call_rcu(lambda: None, "noop")

    threads: Threads = [(f"inc{i}", inc) for i in range(incs)]
    threads += [("writer", writer), ("walker", walker)]
    return threads, lambda: sp.spt[0]


def expected_total(incs: int = 3, rounds: int = 6) -> int:
    return incs * rounds + 100 * (rounds // 2)


def run_workload(strategy) -> tuple[list[int], list[tuple[int, str]], ControlledScheduler]:
    sched, rec = new_sched(strategy)
    threads, value = workload(sched, rec)
    sched.run(threads, join_timeout=JOIN)
    assert not sched.aborting, sched.abort_reason
    assert rec.findings == []
    assert value() == expected_total()
    return list(sched.schedule), [(s.thread, s.label) for s in sched.steps], sched


# ------------------------------------------------------------------------ 1. determinism
@pytest.mark.parametrize("make", [
    lambda: RandomStrategy(random.Random(1234)),
    lambda: PCTStrategy(random.Random(1234), depth=3, horizon=150),
], ids=["random", "pct"])
def test_same_seed_same_schedule_20_runs(make):
    """The same seed over the same threads gives the same schedule and steps, 20 times."""
    first_sched, first_steps, s = run_workload(make())
    assert len(first_steps) > 100                   # a workload with enough steps
    assert len(set(t for t, _ in first_steps)) == 5
    for _ in range(19):
        sched_i, steps_i, _s = run_workload(make())
        assert sched_i == first_sched
        assert steps_i == first_steps


def test_different_seed_different_schedule_random():
    """RandomStrategy: two different seeds give different schedules on this workload."""
    a, steps_a, _ = run_workload(RandomStrategy(random.Random(1)))
    b, steps_b, _ = run_workload(RandomStrategy(random.Random(2)))
    assert a != b
    assert steps_a != steps_b


def test_different_seed_different_schedule_pct():
    """PCTStrategy: different seeds do not all give the same schedule."""
    schedules = {tuple(run_workload(PCTStrategy(random.Random(seed), depth=3,
                                                horizon=150))[0])
                 for seed in range(1, 6)}
    assert len(schedules) > 1


# ------------------------------------------------------------------------ 2. replay
def test_replay_reproduces_recorded_schedule():
    """ReplayStrategy(schedule) reproduces the recorded schedule and steps exactly."""
    for seed in (3, 4):
        sched_a, steps_a, _ = run_workload(RandomStrategy(random.Random(seed)))
        replay = ReplayStrategy(sched_a)
        sched_b, steps_b, s = run_workload(replay)
        assert s.divergence is None
        assert sched_b == sched_a
        assert steps_b == steps_a
        assert replay.pos == len(sched_a)


def test_replay_of_pct_schedule():
    """A PCT run replays exactly too (the replay knows nothing of priorities)."""
    sched_a, steps_a, _ = run_workload(PCTStrategy(random.Random(8), depth=3, horizon=150))
    sched_b, steps_b, s = run_workload(ReplayStrategy(sched_a))
    assert (sched_b, steps_b) == (sched_a, steps_a)


def test_replay_divergence_on_blocked_thread():
    """A schedule asking for a thread blocked on mmu_lock sets divergence with its step."""
    sched, rec = new_sched(ReplayStrategy([0, 0, 1, 1, 1, 0, 0, 0]))
    lock = MmuLock(sched, rec)
    sp = KvmMmuPage(sched, rec, 0x3000, 1, 0, True)

    def a() -> None:
        lock.write_lock()
        sp.read(0)
        lock.write_unlock()

    def b() -> None:
        lock.write_lock()
        lock.write_unlock()

    t0 = time.monotonic()
    sched.run([("a", a), ("b", b)], join_timeout=JOIN)
    assert time.monotonic() - t0 < 5
    d = sched.divergence
    assert isinstance(d, ScheduleDiverged)
    # decisions: a starts, a takes write_lock, b starts, b queues, then b (waiting) wanted
    assert d.step == 2
    assert re.search(r"\bb\b", str(d)), str(d)
    assert sched.aborting
    assert all(t.finished for t in sched.threads)


def test_replay_divergence_on_finished_thread():
    """A schedule asking for a thread that already ended sets divergence at that step."""
    sched, rec = new_sched(ReplayStrategy([0, 0, 0]))
    sp = KvmMmuPage(sched, rec, 0x3000, 1, 0, True)
    sched.run([("a", lambda: sp.read(0)), ("b", lambda: (sp.read(1), sp.read(2)))],
              join_timeout=JOIN)
    assert isinstance(sched.divergence, ScheduleDiverged)
    assert sched.divergence.step == 1
    assert all(t.finished for t in sched.threads)


# ------------------------------------------------------------------------ 3. DEADLOCK
def _waits_at(message: str, name: str, label: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b[^,\n]*{re.escape(label)}", message) is not None


@pytest.mark.scripted
def test_deadlock_lock_never_released():
    """A writer that never unlocks: the run ends with DEADLOCK naming each blocked waiter."""
    sched, rec = new_sched(ScriptStrategy([("finish", "holder")]))
    lock = MmuLock(sched, rec)
    reached: list[str] = []

    def holder() -> None:
        lock.write_lock()                # planted bug: no write_unlock

    def reader() -> None:
        lock.read_lock()
        reached.append("reader")

    def writer2() -> None:
        lock.write_lock()
        reached.append("writer2")

    t0 = time.monotonic()
    sched.run([("holder", holder), ("reader", reader), ("writer2", writer2)],
              join_timeout=JOIN)
    assert time.monotonic() - t0 < 5
    assert reached == []
    assert all(t.finished for t in sched.threads)
    assert all(not t.thread.is_alive() for t in sched.threads)
    dl = rec.of("DEADLOCK")
    assert len(dl) == 1
    msg = dl[0].message
    assert _waits_at(msg, "reader", "mmu_lock.read_lock.wait"), msg
    assert _waits_at(msg, "writer2", "mmu_lock.write_lock.wait"), msg
    # the holder finished: it must not be listed as waiting anywhere
    assert not re.search(r"\bholder\b[^,\n]*\.wait", msg), msg
    assert rec.kinds() == {"DEADLOCK"}


@pytest.mark.scripted
def test_deadlock_two_locks_opposite_order():
    """Two MmuLocks taken in opposite order, forced by a script: DEADLOCK names both."""
    sched, rec = new_sched(ScriptStrategy([
        ("through", "ab", "mmu_lock.write_lock"),
        ("through", "ba", "mmu_lock.write_lock"),
    ]))
    la, lb = MmuLock(sched, rec), MmuLock(sched, rec)
    done: list[str] = []

    def ab() -> None:
        la.write_lock()
        lb.write_lock()
        done.append("ab")
        lb.write_unlock()
        la.write_unlock()

    def ba() -> None:
        lb.write_lock()
        la.write_lock()
        done.append("ba")
        la.write_unlock()
        lb.write_unlock()

    t0 = time.monotonic()
    sched.run([("ab", ab), ("ba", ba)], join_timeout=JOIN)
    assert time.monotonic() - t0 < 5
    assert done == []
    assert la.writer == "ab" and lb.writer == "ba"
    dl = rec.of("DEADLOCK")
    assert len(dl) == 1
    msg = dl[0].message
    assert _waits_at(msg, "ab", "mmu_lock.write_lock.wait"), msg
    assert _waits_at(msg, "ba", "mmu_lock.write_lock.wait"), msg
    assert sched.divergence is None
    assert all(t.finished for t in sched.threads)


def test_no_deadlock_when_order_is_consistent():
    """The same two locks taken in one order never deadlock under any random schedule."""
    for seed in range(10):
        sched, rec = new_sched(RandomStrategy(random.Random(seed)))
        la, lb = MmuLock(sched, rec), MmuLock(sched, rec)

        def body() -> None:
            la.write_lock()
            lb.write_lock()
            lb.write_unlock()
            la.write_unlock()
        sched.run([("x", body), ("y", body)], join_timeout=JOIN)
        assert rec.findings == [] and not sched.aborting


# ------------------------------------------------------------------------ 4. HANG
def test_hang_livelocked_cmpxchg_loop():
    """A cmpxchg retry loop that can never succeed ends as a HANG naming the thread."""
    sched, rec = new_sched(RandomStrategy(random.Random(5)), max_steps=2000)
    sp = KvmMmuPage(sched, rec, 0x3000, 1, 0, True)
    sp.write(0, 5)
    tries = [0]

    def spinner() -> None:
        while True:                      # planted livelock: the value is never 7
            tries[0] += 1
            ok, _ = sp.cmpxchg(0, 7, 8)
            if ok:
                return

    def bystander() -> None:
        for i in range(10):
            sp.read(i)

    t0 = time.monotonic()
    sched.run([("bystander", bystander), ("spinner", spinner)], join_timeout=JOIN)
    assert time.monotonic() - t0 < 5
    hangs = rec.of("HANG")
    assert len(hangs) == 1
    assert "spinner" in hangs[0].message
    assert _waits_at(hangs[0].message, "spinner", "spte.cmpxchg")
    assert hangs[0].thread == "spinner"
    assert rec.kinds() == {"HANG"}
    assert sched.step == 2000
    assert 1900 < tries[0] <= 2000
    assert sp.spt[0] == 5
    assert all(t.finished for t in sched.threads)


def test_no_hang_below_max_steps():
    """A run that ends before max_steps records no HANG."""
    sched, rec = new_sched(RandomStrategy(random.Random(5)), max_steps=2000)
    sp = KvmMmuPage(sched, rec, 0x3000, 1, 0, True)
    sched.run([("a", lambda: [sp.read(i) for i in range(50)]),
               ("b", lambda: [sp.read(i) for i in range(50)])], join_timeout=JOIN)
    assert rec.findings == [] and sched.step == 100 and not sched.aborting


# ------------------------------------------------------------------------ 5. one at a time
class _Exclusive:
    """A scheduler wrapper counting threads inside an operation's step at once."""

    def __init__(self, inner: ControlledScheduler) -> None:
        self.inner = inner
        self.inside = 0
        self.max_inside = 0
        self.ops = 0
        self._guard = threading.Lock()

    @property
    def step(self) -> int:
        return self.inner.step

    def op(self, label, arg, fn, ready=None):
        def wrapped():
            with self._guard:
                self.inside += 1
                self.ops += 1
                self.max_inside = max(self.max_inside, self.inside)
            try:
                time.sleep(0.0002)       # widen the window another thread could use
                return fn()
            finally:
                with self._guard:
                    self.inside -= 1
        return self.inner.op(label, arg, wrapped, ready)


def test_only_one_thread_runs_at_a_time():
    """Under the controlled scheduler no two threads are ever inside an operation at once."""
    sched, rec = new_sched(RandomStrategy(random.Random(11)))
    ex = _Exclusive(sched)
    threads, value = workload(ex, rec, incs=4, rounds=5)
    sched.run(threads, join_timeout=JOIN)
    assert not sched.aborting, sched.abort_reason
    assert value() == expected_total(4, 5)
    assert ex.ops == sched.step > 100
    switches = sum(1 for a, b in pairwise(sched.steps) if a.thread != b.thread)
    assert switches > 20                 # threads really were interleaved
    assert ex.max_inside == 1


# ------------------------------------------------------------------------ 6. PCT depth 1
def _independent(sched, rec: Recorder, n: int = 4, ops: int = 15) -> Threads:
    sps = [KvmMmuPage(sched, rec, 0x3000 + i, 1, 0, True) for i in range(n)]

    def body(i: int) -> Callable[[], None]:
        def run() -> None:
            for k in range(ops):
                sps[i].write(k, k)
                sps[i].read(k)
        return run
    return [(f"t{i}", body(i)) for i in range(n)]


def _runs(threads: list[int]) -> list[int]:
    out: list[int] = []
    for t in threads:
        if not out or out[-1] != t:
            out.append(t)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_pct_depth1_runs_whole_threads_by_priority(seed):
    """PCT depth 1 with non-blocking threads: each thread runs whole, highest priority first."""
    strategy = PCTStrategy(random.Random(seed), depth=1, horizon=1000)
    assert strategy.change_points == []
    sched, rec = new_sched(strategy)
    sched.run(_independent(sched, rec), join_timeout=JOIN)
    assert not sched.aborting
    order = [s.thread for s in sched.steps]
    assert len(order) == 4 * 15 * 2
    runs = _runs(order)
    assert sorted(runs) == [0, 1, 2, 3]          # one contiguous run per thread
    by_priority = sorted(range(4), key=lambda i: -strategy.priorities[i])
    assert runs == by_priority
    assert _runs(sched.schedule) == by_priority   # no decision ever picked a lower one


def test_pct_depth1_counts_no_preemptions():
    """A depth-1 PCT run of whole-thread runs has no preemption (switches only at exits)."""
    strategy = PCTStrategy(random.Random(1), depth=1, horizon=1000)
    sched, rec = new_sched(strategy)
    sched.run(_independent(sched, rec), join_timeout=JOIN)
    assert len(_runs([s.thread for s in sched.steps])) == 4
    assert sched.preemptions == 0


def test_pct_depth3_preempts():
    """Control: PCT depth 3 with change points inside the run does switch mid-thread."""
    found = False
    for seed in range(1, 11):
        strategy = PCTStrategy(random.Random(seed), depth=3, horizon=100)
        sched, rec = new_sched(strategy)
        sched.run(_independent(sched, rec), join_timeout=JOIN)
        if len(_runs([s.thread for s in sched.steps])) > 4:
            assert sched.preemptions > 0
            found = True
            break
    assert found


@pytest.mark.scripted
def test_script_strategy_runs_threads_in_index_order_after_script():
    """After its script, ScriptStrategy runs the threads to the end in index order."""
    sched, rec = new_sched(ScriptStrategy([("steps", "b", 2)]))
    sp = KvmMmuPage(sched, rec, 0x3000, 1, 0, True)
    names: list[str] = []

    def body() -> None:
        for i in range(3):
            sp.read(i)
            names.append(current().name)
    sched.run([("a", body), ("b", body), ("c", body)], join_timeout=JOIN)
    # "steps b 2": b starts, then takes one read; then a, then the rest of b, then c
    assert names == ["b", "a", "a", "a", "b", "b", "c", "c", "c"]


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_a_thread_blocked_outside_any_operation_is_a_hang_not_a_clean_run():
    import random
    import threading

    from core.findings import Recorder
    from stress.controlled import ControlledScheduler
    from stress.strategies import RandomStrategy
    real = threading.Lock()
    real.acquire()                       # never released: thread a blocks on it for real
    rec = Recorder()
    s = ControlledScheduler(RandomStrategy(random.Random(1)), recorder=rec)

    def a():
        s.op("a.step", None, lambda: None)
        real.acquire()

    def b():
        s.op("b.step", None, lambda: None)
    s.run([("a", a), ("b", b)], join_timeout=1.0)
    [f] = rec.findings
    assert f.kind == "HANG" and f.where == "outside_operation"
    assert "a (after its step" in f.message and "real.acquire()" in f.message
    assert s.aborting and s.abort_reason


@pytest.mark.unit
@pytest.mark.timeout(30)
def test_a_deadlock_report_names_the_lock_and_who_holds_it():
    from core.mmu_lock import MmuLock
    rec = Recorder()
    s = ControlledScheduler(RandomStrategy(random.Random(3)), recorder=rec)
    lock = MmuLock(s, rec)

    def holder():
        lock.write_lock()
        s.op("wait_forever", "the event", lambda: None, lambda: False)

    def waiter():
        s.op("start", None, lambda: None)
        s.op("start2", None, lambda: None)
        lock.write_lock()
    s.run([("holder", holder), ("waiter", waiter)], join_timeout=10)
    [f] = rec.of("DEADLOCK")
    first = f.message.splitlines()[0]
    assert "waiter waits at mmu_lock.write_lock.wait" in first, first
    assert "(mmu_lock held for write by holder)" in first, first
    assert "holder waits at wait_forever 'the event'" in first, first
    assert "mmu_lock=write" in f.message           # the holder's own line says it
    assert "test_controlled.py" in f.message       # frames of the program, not /core/ only


def test_a_run_keeps_its_threads_on_one_cpu_and_gives_the_caller_its_cpus_back():
    """The model threads of a controlled run, and the caller while it runs, keep to one
    CPU (a handoff to a thread parked on another CPU waits for that CPU to wake); the
    caller's own CPUs are back afterwards, so nothing it starts later is pinned."""
    import os

    from stress.controlled import model_cpu, set_model_cpu
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("one CPU allowed: nothing to pin")
    seen: dict[str, set[int]] = {}
    sched = ControlledScheduler(RandomStrategy(random.Random(1)), record_steps=False)

    def body(name):
        def fn():
            for _ in range(3):
                sched.op("x", None, lambda: None)
            seen[name] = os.sched_getaffinity(0)
        return fn
    cpu = model_cpu()
    sched.run([("a", body("a")), ("b", body("b"))])
    assert seen == {"a": {cpu}, "b": {cpu}}
    assert os.sched_getaffinity(0) == before
    # a chosen CPU (the test suite's workers choose one each) is the one used
    other = max(before - {cpu})
    set_model_cpu(other)
    try:
        sched = ControlledScheduler(RandomStrategy(random.Random(1)), record_steps=False)
        sched.run([("a", body("a"))])
        assert seen["a"] == {other} and os.sched_getaffinity(0) == before
    finally:
        set_model_cpu(cpu)


def test_campaign_workers_claim_cpus_no_other_process_holds(tmp_path):
    """claim_cpu(): one CPU per process across the machine (a lock file each, in the
    temp directory), given back when the process dies, even by SIGKILL; with every CPU
    claimed the answer is None (the worker then shares)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=root)
    code = ("import sys\nfrom stress.controlled import claim_cpu\n"
            "print(claim_cpu([7, 8]), flush=True)\nsys.stdin.read()\n")

    def claimer():
        p = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return p, p.stdout.readline().strip()
    procs = []
    try:
        a, got_a = claimer()
        procs.append(a)
        b, got_b = claimer()
        procs.append(b)
        c, got_c = claimer()
        procs.append(c)
        assert (got_a, got_b, got_c) == ("7", "8", "None")
        a.kill()
        a.wait(10)
        d, got_d = claimer()
        procs.append(d)
        assert got_d == "7"
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


class _View:
    """A stand-in for a SchedulerView: what the strategies read of one."""

    def __init__(self, nthreads: int) -> None:
        self.nthreads = nthreads
        self.current: int | None = None
        self.current_label = ""


def test_random_strategy_draws_what_random_choice_draws():
    """RandomStrategy writes random.Random.choice() out (a frame less at every decision);
    the threads it picks must be the ones choice() picks from the same generator, or
    every recorded seed of a random run would mean another run."""
    for seed in range(20):
        mine, ref = RandomStrategy(random.Random(seed)), random.Random(seed)
        view = _View(9)
        for n in (1, 2, 3, 4, 5, 7, 8, 9, 2, 3) * 30:
            runnable = list(range(0, 2 * n, 2))
            assert mine.choose(view, runnable) == (runnable[0] if n == 1
                                                   else ref.choice(runnable)), (seed, n)


def test_pct_picks_the_first_highest_priority_runnable_thread():
    """PCT keeps its threads sorted by priority; its pick must still be max(runnable, key
    priority), the first highest in index order, through change points that demote the
    running thread and through ties."""
    rng = random.Random(5)
    for seed in range(40):
        s = PCTStrategy(random.Random(seed), depth=4, horizon=30, sync=lambda label: True)
        view = _View(5)
        for step in range(200):
            runnable = sorted(rng.sample(range(5), rng.randint(1, 5)))
            if step == 0:
                runnable = list(range(5))
            view.current = None if step == 0 else rng.choice(range(5))
            view.current_label = "op"
            if step == 100:                 # a tie: the lower index must win
                s.priorities[1] = s.priorities[3] = 9.0
                s._sort()
            got = s.choose(view, runnable)
            if s._burst:
                continue
            want = max(runnable, key=s.priorities.__getitem__)
            assert got == want, (seed, step, runnable, s.priorities)
