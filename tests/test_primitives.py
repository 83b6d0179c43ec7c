"""Unit tests of the machine's primitives (MODEL §1, §2, §7.6/7.7): SPTE encoding, the
SPTE store, mmu_lock (sharing, exclusion, FIFO fairness, needbreak/cond_resched),
lockdep assertions and RCU (grace periods, nesting, rcu_barrier, use-after-free)."""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import pytest

from core.findings import Recorder
from core.mmu_lock import MmuLock
from core.rcu import Rcu
from core.sched import PassThrough, ThreadCtx, current, set_current
from core.spte import (
    FROZEN_SPTE,
    PT_PAGE_SIZE_MASK,
    SHADOW_NONPRESENT_VALUE,
    SPTE_MMU_PRESENT_MASK,
    VMX_EPT_RWX_MASK,
    is_frozen_spte,
    is_last_spte,
    is_shadow_present_pte,
    make_nonleaf_spte,
    make_spte,
    spte_to_pfn,
)
from core.store import KvmMmuPage
from stress.controlled import ControlledScheduler
from stress.strategies import ScriptStrategy

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

BIT63 = 1 << 63
JOIN = 10.0


# ------------------------------------------------------------------------ helpers
class _Threads:
    """Real daemon threads that bind their own ThreadCtx first and keep their errors."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def spawn(self, name: str, fn: Callable[[], None]) -> threading.Thread:
        def body() -> None:
            set_current(ThreadCtx(name))
            try:
                fn()
            except BaseException as e:   # noqa: BLE001 - surfaced by join_all
                self.errors.append(e)
        t = threading.Thread(target=body, name=name, daemon=True)
        self.threads.append(t)
        t.start()
        return t

    def join_all(self, timeout: float = JOIN) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"threads did not finish: {alive}"
        assert not self.errors, f"thread errors: {self.errors!r}"


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def queued(lock: MmuLock) -> list[str]:
    return [w.ctx.name for w in list(lock.queue)]


def page(sched, rec: Recorder, pfn: int = 0x2000) -> KvmMmuPage:
    return KvmMmuPage(sched, rec, pfn, 1, 0, True)


def controlled(script: list[tuple], max_steps: int = 5000) -> tuple[ControlledScheduler,
                                                                    Recorder]:
    rec = Recorder()
    sched = ControlledScheduler(ScriptStrategy(script), recorder=rec, max_steps=max_steps)
    return sched, rec


def run_controlled(sched: ControlledScheduler, threads: list[tuple[str, Callable[[], None]]]
                   ) -> None:
    sched.run(threads, join_timeout=JOIN)
    assert sched.divergence is None, sched.divergence
    assert not sched.aborting, sched.abort_reason
    assert all(t.finished for t in sched.threads)


class _LabelLog(PassThrough):
    """PassThrough that also records the label of every operation."""

    def __init__(self) -> None:
        super().__init__(wait_timeout=JOIN)
        self.labels: list[str] = []

    def op(self, label, arg, fn, ready=None):
        self.labels.append(label)
        return super().op(label, arg, fn, ready)


# ------------------------------------------------------------------------ 1. SPTE encoding

def take(lock, mode: str, name: str, order: list):
    """A thread body: take ``lock`` in ``mode``, note ``name`` in ``order``, release."""
    def body() -> None:
        lock.lock(mode)
        order.append(name)
        lock.unlock()
    return body

def test_nonpresent_and_frozen_constants():
    """SHADOW_NONPRESENT_VALUE is 1<<63 and FROZEN_SPTE is (1<<63)|0x5a0, both non-present."""
    assert SHADOW_NONPRESENT_VALUE == 1 << 63
    assert FROZEN_SPTE == (1 << 63) | 0x5A0
    assert not is_shadow_present_pte(SHADOW_NONPRESENT_VALUE)
    assert not is_shadow_present_pte(FROZEN_SPTE)
    assert is_frozen_spte(FROZEN_SPTE)
    assert not is_frozen_spte(SHADOW_NONPRESENT_VALUE)


def test_leaf_4k_encoding():
    """make_spte at 4K: present, last at level 1, not large, not frozen, PFN round-trips."""
    pfn = 0x12345
    x = make_spte(pfn, 1)
    assert is_shadow_present_pte(x)
    assert x & SPTE_MMU_PRESENT_MASK
    assert is_last_spte(x, 1)
    assert not x & PT_PAGE_SIZE_MASK
    assert not is_last_spte(x, 2)        # without bit 7 it would be a link above level 1
    assert not is_frozen_spte(x)
    assert spte_to_pfn(x) == pfn
    assert x & VMX_EPT_RWX_MASK == VMX_EPT_RWX_MASK
    assert not x & BIT63


def test_leaf_2m_encoding():
    """make_spte at 2M sets the large bit, so it is a last SPTE at level 2; PFN round-trips."""
    pfn = 0x40200
    x = make_spte(pfn, 2)
    assert is_shadow_present_pte(x)
    assert x & PT_PAGE_SIZE_MASK
    assert is_last_spte(x, 2)
    assert not is_frozen_spte(x)
    assert spte_to_pfn(x) == pfn
    assert x & VMX_EPT_RWX_MASK == VMX_EPT_RWX_MASK
    assert not x & BIT63


def test_nonleaf_encoding():
    """make_nonleaf_spte: present, RWX, not last above level 1, PFN is the child table."""
    child = 0x7777
    x = make_nonleaf_spte(child)
    assert is_shadow_present_pte(x)
    for level in (2, 3, 4):
        assert not is_last_spte(x, level)
    assert not is_frozen_spte(x)
    assert spte_to_pfn(x) == child
    assert x & VMX_EPT_RWX_MASK == VMX_EPT_RWX_MASK
    assert not x & BIT63


def test_pfn_bits_do_not_touch_flag_bits():
    """The widest PFN (bits 12-51) round-trips and never sets bit 63, 11 or 7 by itself."""
    pfn = (1 << 40) - 1
    for x in (make_spte(pfn, 1), make_nonleaf_spte(pfn)):
        assert spte_to_pfn(x) == pfn
        assert not x & BIT63
        assert not x & PT_PAGE_SIZE_MASK
    assert spte_to_pfn(SHADOW_NONPRESENT_VALUE) == 0


def test_every_nonpresent_value_has_bit63():
    """Every non-present value the model uses carries bit 63; every present one lacks it."""
    values = [SHADOW_NONPRESENT_VALUE, FROZEN_SPTE, make_spte(1, 1), make_spte(0x200, 2),
              make_spte(0x40000, 3), make_nonleaf_spte(5)]
    for v in values:
        if not is_shadow_present_pte(v):
            assert v & BIT63, hex(v)
        else:
            assert not v & BIT63, hex(v)
    assert sum(not is_shadow_present_pte(v) for v in values) == 2


# ------------------------------------------------------------------------ 2. SPTE store
def test_store_read_write_xchg_cmpxchg_semantics():
    """read/write/xchg/cmpxchg return and store what the kernel primitives do."""
    sched, rec = PassThrough(), Recorder()
    sp = page(sched, rec)
    a, b, c = make_spte(0x10, 1), make_spte(0x11, 1), make_spte(0x12, 1)
    assert sp.read(3) == SHADOW_NONPRESENT_VALUE
    assert sp.write(3, a) == SHADOW_NONPRESENT_VALUE
    assert sp.read(3) == a
    assert sp.xchg(3, b) == a
    assert sp.read(3) == b
    assert sp.cmpxchg(3, a, c) == (False, b)      # stale old: fails, reports what it found
    assert sp.read(3) == b
    assert sp.cmpxchg(3, b, c) == (True, b)
    assert sp.read(3) == c
    assert sp.cmpxchg(3, b, FROZEN_SPTE) == (False, c)
    assert sp.read(4) == SHADOW_NONPRESENT_VALUE  # other entries untouched
    assert rec.findings == []


def test_store_each_operation_is_one_yield_point():
    """Each store accessor takes exactly one operation: sched.step advances by one."""
    sched, rec = _LabelLog(), Recorder()
    sp = page(sched, rec)
    calls = [
        ("spte.read", lambda: sp.read(0)),
        ("spte.write", lambda: sp.write(0, make_spte(1, 1))),
        ("spte.xchg", lambda: sp.xchg(0, make_spte(2, 1))),
        ("spte.cmpxchg", lambda: sp.cmpxchg(0, make_spte(2, 1), make_spte(3, 1))),
        ("spte.cmpxchg", lambda: sp.cmpxchg(0, 12345, make_spte(4, 1))),   # failing CAS
    ]
    for label, call in calls:
        before, nlabels = sched.step, len(sched.labels)
        call()
        assert sched.step == before + 1, label
        assert sched.labels[nlabels:] == [label]


def test_store_access_after_free_reports_and_still_happens():
    """Every accessor on a freed page reports BUG KASAN:use-after-free; the access happens."""
    sched, rec = PassThrough(), Recorder()
    sp = page(sched, rec)
    sp.freed = True
    assert sp.write(0, 7) == SHADOW_NONPRESENT_VALUE
    assert sp.xchg(0, 8) == 7
    assert sp.cmpxchg(0, 8, 9) == (True, 8)
    assert sp.read(0) == 9
    bugs = rec.of("BUG")
    assert [f.where for f in bugs] == ["KASAN:use-after-free"]
    # the first is the finding; the three accesses after it are its consequences
    assert rec.counts[bugs[0].signature] == 1
    assert bugs[0].consequences_total == 3
    assert {c["where"] for c in bugs[0].consequences} == {"KASAN:use-after-free"}


# ------------------------------------------------------------------------ 3. real threads
def test_cas_increment_on_real_threads_loses_no_update():
    """6 real threads CAS-incrementing one SPTE under PassThrough lose no update."""
    nthreads, iters = 6, 400
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    sp = page(sched, rec)
    sp.write(0, 0)
    failed = [0] * nthreads
    start = threading.Barrier(nthreads, timeout=JOIN)

    def worker(k: int) -> Callable[[], None]:
        def body() -> None:
            start.wait()
            for _ in range(iters):
                while True:
                    cur = sp.read(0)
                    time.sleep(0)      # let another thread in between read and CAS
                    ok, _ = sp.cmpxchg(0, cur, cur + 1)
                    if ok:
                        break
                    failed[k] += 1
        return body

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        th = _Threads()
        for k in range(nthreads):
            th.spawn(f"inc{k}", worker(k))
        th.join_all()
    finally:
        sys.setswitchinterval(old)
    assert sp.read(0) == nthreads * iters
    assert sum(failed) > 0            # the threads really interleaved between read and CAS
    assert rec.findings == []


# ------------------------------------------------------------------------ 4. mmu_lock
def test_mmu_lock_readers_share():
    """Two readers hold mmu_lock at the same time (both inside before either leaves)."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    both_in = threading.Barrier(2, timeout=5)
    seen: list[list[str]] = []

    def reader() -> None:
        lock.read_lock()
        assert current().lock_mode == "read"
        both_in.wait()                 # breaks (raises) if the other reader cannot enter
        seen.append(sorted(lock.readers))
        both_in.wait()
        lock.read_unlock()

    th = _Threads()
    th.spawn("r1", reader)
    th.spawn("r2", reader)
    th.join_all()
    assert seen == [["r1", "r2"], ["r1", "r2"]]
    assert lock.readers == [] and lock.writer is None and not lock.queue


def test_mmu_lock_writer_excludes():
    """While a writer holds mmu_lock, readers and writers queue; they enter after it leaves."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    lock.write_lock()                          # the main thread is the writer
    assert lock.writer == "main"
    order: list[str] = []

    reader = take(lock, "read", "r", order)

    writer = take(lock, "write", "w2", order)

    th = _Threads()
    th.spawn("r", reader)
    wait_until(lambda: queued(lock) == ["r"], "r to queue")
    th.spawn("w2", writer)
    wait_until(lambda: queued(lock) == ["r", "w2"], "w2 to queue")
    time.sleep(0.02)
    assert order == [] and lock.readers == [] and lock.writer == "main"
    lock.write_unlock()
    th.join_all()
    assert order == ["r", "w2"]
    assert lock.writer is None and lock.readers == [] and not lock.queue


def test_mmu_lock_writer_not_starved_by_reader_chain():
    """Fairness (a): a reader arriving after a queued writer waits behind it (PassThrough)."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    order: list[str] = []
    lock.read_lock()                           # main is r1
    order.append("r1")

    w = take(lock, "write", "w", order)

    r2 = take(lock, "read", "r2", order)

    th = _Threads()
    th.spawn("w", w)
    wait_until(lambda: queued(lock) == ["w"], "w to queue")
    th.spawn("r2", r2)
    wait_until(lambda: len(lock.queue) == 2 or "r2" in lock.readers, "r2 to arrive")
    assert lock.readers == ["main"], "r2 entered past a queued writer"
    assert queued(lock) == ["w", "r2"]
    lock.read_unlock()
    th.join_all()
    assert order == ["r1", "w", "r2"]


def test_mmu_lock_writer_gets_in_during_reader_stream():
    """Fairness (a): a writer gets in while overlapping readers keep taking the read lock."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    stop = threading.Event()
    rounds = [0, 0, 0]
    writer_in = threading.Event()

    leave = threading.Lock()

    def reader(k: int) -> Callable[[], None]:
        # A reader leaves only while another reader is still in (or after 20 ms alone), so
        # the read side never empties while readers can still enter: only newcomers
        # queueing behind the waiting writer let it in.
        def body() -> None:
            while not stop.is_set():
                lock.read_lock()
                rounds[k] += 1
                lock.needbreak()               # an operation while holding it
                deadline = time.monotonic() + 0.02
                while True:
                    with leave:
                        if len(lock.readers) >= 2 or time.monotonic() > deadline:
                            lock.read_unlock()
                            break
                    time.sleep(0.0001)
        return body

    def writer() -> None:
        wait_until(lambda: min(rounds) > 20, "readers to stream")
        lock.write_lock()
        assert lock.readers == []
        writer_in.set()
        lock.write_unlock()

    th = _Threads()
    for k in range(3):
        th.spawn(f"r{k}", reader(k))
    th.spawn("w", writer)
    got_in = writer_in.wait(5)
    stop.set()
    th.join_all()
    assert got_in, "writer starved by a stream of readers"


def test_mmu_lock_readers_not_starved_by_writer_chain():
    """Fairness (b): readers queued behind writer w1 enter before a later writer w2."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    order: list[str] = []
    lock.write_lock()                          # main is w1
    order.append("w1")

    def r(name: str) -> Callable[[], None]:
        def body() -> None:
            lock.read_lock()
            order.append(name)
            both.wait()                        # both readers are in together
            lock.read_unlock()
        return body

    w2 = take(lock, "write", "w2", order)

    both = threading.Barrier(2, timeout=5)
    th = _Threads()
    th.spawn("ra", r("ra"))
    wait_until(lambda: queued(lock) == ["ra"], "ra to queue")
    th.spawn("rb", r("rb"))
    wait_until(lambda: queued(lock) == ["ra", "rb"], "rb to queue")
    th.spawn("w2", w2)
    wait_until(lambda: queued(lock) == ["ra", "rb", "w2"], "w2 to queue")
    lock.write_unlock()
    th.join_all()
    assert order[0] == "w1"
    assert sorted(order[1:3]) == ["ra", "rb"]
    assert order[3] == "w2"


def test_mmu_lock_reader_gets_in_during_writer_stream():
    """Fairness (b): a reader gets in while writers keep taking the write lock."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    stop = threading.Event()
    rounds = [0, 0, 0]
    reader_in = threading.Event()

    def writer(k: int) -> Callable[[], None]:
        def body() -> None:
            while not stop.is_set():
                lock.write_lock()
                rounds[k] += 1
                lock.needbreak()
                lock.write_unlock()
        return body

    def reader() -> None:
        wait_until(lambda: min(rounds) > 20, "writers to stream")
        lock.read_lock()
        assert lock.writer is None
        reader_in.set()
        lock.read_unlock()

    th = _Threads()
    for k in range(3):
        th.spawn(f"w{k}", writer(k))
    th.spawn("r", reader)
    got_in = reader_in.wait(5)
    stop.set()
    th.join_all()
    assert got_in, "reader starved by a stream of writers"


@pytest.mark.scripted
@pytest.mark.parametrize("holder,first,second,snap_want,order_want", [
    # (a) r1 holds, w queues, then r2 must queue behind w, not enter.  r2 has a lower
    # index than w: if r2 could enter past w, it would go first after r1.
    (("r1", "read"), ("w", "write"), ("r2", "read"),
     {"readers": ["r1"], "writer": None, "waiters": ["w(write)", "r2(read)"]},
     ["r1", "w", "r2"]),
    # (b) w1 holds, r queues, then w2 queues behind r; r enters first.  After the script
    # the lowest-index runnable thread goes: w2 before r, so a lock that let w2 overtake
    # the queued reader would show in the order.
    (("w1", "write"), ("r", "read"), ("w2", "write"),
     {"readers": [], "writer": "w1", "waiters": ["r(read)", "w2(write)"]},
     ["w1", "r", "w2"]),
], ids=["reader_queues_behind_writer", "writer_queues_behind_reader"])
def test_mmu_lock_fairness_controlled(holder, first, second, snap_want, order_want):
    """Fairness, scripted: whoever queued first enters first after the holder leaves."""
    label = {"read": "mmu_lock.read_lock", "write": "mmu_lock.write_lock"}
    sched, rec = controlled([
        ("through", holder[0], label[holder[1]]),
        ("through", first[0], label[first[1]]),
        ("through", second[0], label[second[1]]),
        ("through", holder[0], "probe"),
        ("finish", holder[0]),
    ])
    lock = MmuLock(sched, rec)
    order: list[str] = []
    snap: dict = {}

    def body(name: str, mode: str, probe: bool):
        def run() -> None:
            lock.lock(mode)
            order.append(name)
            if probe:
                def look() -> None:
                    snap.update(readers=list(lock.readers), writer=lock.writer,
                                waiters=lock.describe_waiters())
                sched.op("probe", None, look)
            lock.unlock()
        return run

    threads = [(holder[0], body(*holder, True)), (second[0], body(*second, False)),
               (first[0], body(*first, False))]
    run_controlled(sched, threads)
    assert snap == snap_want
    assert order == order_want


def test_needbreak_true_while_someone_waits():
    """needbreak() is false with nobody waiting and true while a thread waits for the lock."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    lock.read_lock()
    assert lock.needbreak() is False
    th = _Threads()
    th.spawn("w", lambda: (lock.write_lock(), lock.write_unlock()))
    wait_until(lambda: queued(lock) == ["w"], "w to queue")
    assert lock.needbreak() is True
    lock.read_unlock()
    th.join_all()
    assert lock.needbreak() is False


def test_cond_resched_drops_and_retakes():
    """cond_resched() with a waiter drops the lock (the waiter runs) and retakes the mode."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    order: list[str] = []
    lock.read_lock()
    assert lock.cond_resched() is False        # nobody waits: keeps the lock
    assert current().lock_mode == "read" and lock.readers == ["main"]

    w = take(lock, "write", "w in", order)

    th = _Threads()
    th.spawn("w", w)
    wait_until(lambda: queued(lock) == ["w"], "w to queue")
    assert lock.cond_resched() is True
    order.append("main back")
    assert current().lock_mode == "read" and lock.readers == ["main"]
    th.join_all()
    assert order == ["w in", "main back"]
    lock.read_unlock()
    assert lock.readers == [] and lock.writer is None


def test_cond_resched_write_mode_retakes_write():
    """cond_resched() under the write lock lets a queued reader in, then retakes for write."""
    sched, rec = PassThrough(wait_timeout=JOIN), Recorder()
    lock = MmuLock(sched, rec)
    order: list[str] = []
    lock.write_lock()

    r = take(lock, "read", "r in", order)

    th = _Threads()
    th.spawn("r", r)
    wait_until(lambda: queued(lock) == ["r"], "r to queue")
    assert lock.cond_resched() is True
    assert current().lock_mode == "write" and lock.writer == "main"
    th.join_all()
    assert order == ["r in"]
    lock.write_unlock()


# ------------------------------------------------------------------------ 5. lockdep
def test_lockdep_assertions_without_lock():
    """With mmu_lock not held, every lockdep assertion records a LOCKDEP finding."""
    rec = Recorder()
    lock = MmuLock(PassThrough(), rec)
    assert current().lock_mode is None
    assert lock.lockdep_assert_held("f_held") is False
    assert lock.lockdep_assert_held_read("f_read") is False
    assert lock.lockdep_assert_held_write("f_write") is False
    assert [(f.kind, f.where) for f in rec.findings] == [
        ("LOCKDEP", "f_held"), ("LOCKDEP", "f_read"), ("LOCKDEP", "f_write")]
    assert all(f.thread == "main" for f in rec.findings)


def test_lockdep_assertions_under_read_lock():
    """Under the read lock: held and held_read pass silently, held_write records LOCKDEP."""
    rec = Recorder()
    lock = MmuLock(PassThrough(), rec)
    lock.read_lock()
    assert current().lock_mode == "read"
    assert lock.lockdep_assert_held("g_held") is True
    assert lock.lockdep_assert_held_read("g_read") is True
    assert rec.findings == []
    assert lock.lockdep_assert_held_write("g_write") is False
    assert [(f.kind, f.where) for f in rec.findings] == [("LOCKDEP", "g_write")]
    assert rec.findings[0].context["mmu_lock"] == "read"
    lock.read_unlock()
    assert current().lock_mode is None


def test_lockdep_assertions_under_write_lock():
    """Under the write lock: held and held_write pass silently, held_read records LOCKDEP."""
    rec = Recorder()
    lock = MmuLock(PassThrough(), rec)
    lock.write_lock()
    assert current().lock_mode == "write"
    assert lock.lockdep_assert_held("h_held") is True
    assert lock.lockdep_assert_held_write("h_write") is True
    assert rec.findings == []
    assert lock.lockdep_assert_held_read("h_read") is False
    assert [(f.kind, f.where) for f in rec.findings] == [("LOCKDEP", "h_read")]
    lock.write_unlock()
    assert current().lock_mode is None


def test_lock_mode_follows_lock_and_unlock():
    """ctx.lock_mode tracks read_lock/write_lock/lock(mode) and every unlock."""
    lock = MmuLock(PassThrough(), Recorder())
    ctx = current()
    seq = []
    for take, drop in ((lock.read_lock, lock.read_unlock), (lock.write_lock, lock.write_unlock),
                       (lambda: lock.lock("read"), lock.unlock),
                       (lambda: lock.lock("write"), lock.unlock)):
        take()
        seq.append(ctx.lock_mode)
        drop()
        seq.append(ctx.lock_mode)
    assert seq == ["read", None, "write", None, "read", None, "write", None]
    assert lock.readers == [] and lock.writer is None


def test_lock_mode_is_per_thread():
    """Each thread has its own lock_mode: a holder's mode is not seen by another thread."""
    sched = PassThrough(wait_timeout=JOIN)
    lock = MmuLock(sched, Recorder())
    lock.read_lock()
    other: list = []
    th = _Threads()
    th.spawn("t", lambda: other.append(current().lock_mode))
    th.join_all()
    assert other == [None]
    assert current().lock_mode == "read"
    lock.read_unlock()


# ------------------------------------------------------------------------ 6. RCU
@pytest.mark.scripted
def test_call_rcu_waits_for_every_reader_at_call_time():
    """call_rcu's callback runs only once every reader inside at call time has left."""
    sched, rec = controlled([
        ("through", "r1", "rcu_read_lock"),
        ("through", "r2", "rcu_read_lock"),
        ("through", "u", "call_rcu"),
        ("through", "late", "rcu_read_lock"),   # enters after call_rcu: must not delay it
        ("through", "r1", "rcu_read_unlock"),
        ("through", "r2", "probe"),
        ("through", "r2", "rcu_read_unlock"),
        ("through", "late", "probe"),
        ("finish", "late"),
    ])
    rcu = Rcu(sched, rec)
    log: list[str] = []

    def reader(name: str) -> Callable[[], None]:
        def body() -> None:
            rcu.rcu_read_lock()
            sched.op("probe", None, lambda: log.append(f"{name} inside"))
            rcu.rcu_read_unlock()
            log.append(f"{name} left")
        return body

    def updater() -> None:
        rcu.call_rcu(lambda: log.append("callback"), "test")
        log.append("called")

    run_controlled(sched, [("r1", reader("r1")), ("r2", reader("r2")), ("u", updater),
                           ("late", reader("late"))])
    assert log.index("called") < log.index("r1 left") < log.index("r2 inside")
    # the callback ran in r2's unlock: after r2 was last inside, before r2 went on
    assert log.index("r2 inside") < log.index("callback") < log.index("r2 left")
    assert log.index("callback") < log.index("late left")     # late was still inside
    assert log.count("callback") == 1
    assert rcu.grace_periods == 1 and rcu.pending == []


@pytest.mark.scripted
def test_call_rcu_not_run_while_reader_inside():
    """A callback queued while a reader is inside stays pending until that reader leaves."""
    sched, rec = controlled([
        ("through", "r", "rcu_read_lock"),
        ("finish", "u"),
        ("through", "r", "probe"),
        ("through", "r", "rcu_read_unlock"),
    ])
    rcu = Rcu(sched, rec)
    ran: list[str] = []
    seen: dict = {}

    def r() -> None:
        rcu.rcu_read_lock()
        sched.op("probe", None, lambda: seen.update(ran=list(ran), pending=len(rcu.pending)))
        rcu.rcu_read_unlock()
        seen["after"] = list(ran)

    def u() -> None:
        rcu.call_rcu(lambda: ran.append("cb"), "test")
        seen["barrier"] = rcu.rcu_barrier()     # reader still inside: one remains

    run_controlled(sched, [("r", r), ("u", u)])
    assert seen == {"ran": [], "pending": 1, "barrier": 1, "after": ["cb"]}


def test_call_rcu_without_readers_runs_at_once():
    """With no thread in a read section, call_rcu's grace period is already over."""
    sched = PassThrough()
    rcu = Rcu(sched, Recorder())
    ran: list[int] = []
    rcu.call_rcu(lambda: ran.append(1), "x")
    assert ran == [1] and rcu.pending == [] and rcu.grace_periods == 1


@pytest.mark.scripted
def test_rcu_nested_read_sections():
    """Nested rcu_read_lock: only the outermost lock/unlock is an operation and ends a GP."""
    sched, rec = controlled([
        ("through", "r", "rcu_read_lock"),
        ("finish", "u"),
        ("through", "r", "probe1"),            # inner unlock done, outer still held
        ("through", "r", "rcu_read_unlock"),
    ])
    rcu = Rcu(sched, rec)
    ran: list[str] = []
    seen: dict = {}

    def r() -> None:
        ctx = current()
        rcu.rcu_read_lock()
        rcu.rcu_read_lock()
        seen["depth"] = ctx.rcu_depth
        seen["sections"] = ctx.rcu_sections
        rcu.rcu_read_unlock()
        sched.op("probe1", None, lambda: seen.update(inner=list(ran), depth1=ctx.rcu_depth))
        rcu.rcu_read_unlock()
        seen["outer"] = list(ran)
        seen["depth0"] = ctx.rcu_depth

    def u() -> None:
        rcu.call_rcu(lambda: ran.append("cb"), "test")

    run_controlled(sched, [("r", r), ("u", u)])
    assert seen == {"depth": 2, "sections": 1, "inner": [], "depth1": 1, "outer": ["cb"],
                    "depth0": 0}
    r_labels = [s.label for s in sched.steps if s.thread == 0]
    assert r_labels.count("rcu_read_lock") == 1
    assert r_labels.count("rcu_read_unlock") == 1


def test_rcu_nested_step_count_single_thread():
    """On one thread, nested lock/unlock pairs take exactly two operations in total."""
    sched = PassThrough()
    rcu = Rcu(sched, Recorder())
    rcu.rcu_read_lock()
    rcu.rcu_read_lock()
    rcu.rcu_read_lock()
    rcu.rcu_read_unlock()
    rcu.rcu_read_unlock()
    assert sched.step == 1 and current().rcu_depth == 1
    rcu.rcu_read_unlock()
    assert sched.step == 2 and current().rcu_depth == 0


@pytest.mark.scripted
def test_rcu_barrier_runs_ended_callbacks_and_counts_the_rest():
    """rcu_barrier returns how many callbacks still wait; zero once all readers left."""
    sched, rec = controlled([
        ("through", "r", "rcu_read_lock"),
        ("through", "u", "call_rcu"),
        ("through", "u", "call_rcu"),
        ("through", "u", "rcu_barrier"),
        ("through", "r", "rcu_read_unlock"),
        ("finish", "u"),
    ])
    rcu = Rcu(sched, rec)
    ran: list[str] = []
    counts: list[int] = []

    def r() -> None:
        rcu.rcu_read_lock()
        rcu.rcu_read_unlock()

    def u() -> None:
        rcu.call_rcu(lambda: ran.append("a"), "a")
        rcu.call_rcu(lambda: ran.append("b"), "b")
        counts.append(rcu.rcu_barrier())
        counts.append(len(ran))
        counts.append(rcu.rcu_barrier())

    run_controlled(sched, [("r", r), ("u", u)])
    assert counts == [2, 0, 0]
    assert ran == ["a", "b"]
    assert rcu.grace_periods == 2


@pytest.mark.scripted
def test_rcu_freed_page_read_is_use_after_free():
    """A page freed by an RCU callback: reads inside the section are fine, after it BUG."""
    sched, rec = controlled([
        ("through", "walker", "rcu_read_lock"),
        ("through", "walker", "spte.read"),       # first read, in the section
        ("finish", "zapper"),                      # unlinks and call_rcu()s the page
        ("through", "walker", "probe"),
        ("through", "walker", "spte.read"),       # second read, still in the section
        ("through", "walker", "rcu_read_unlock"),  # grace period ends: the page is freed
        ("finish", "walker"),
    ])
    rcu = Rcu(sched, rec)
    sp = page(sched, rec)
    sp.write(5, make_spte(0x99, 1))                # setup on the main thread
    vals: list[int] = []
    seen: dict = {}

    def tdp_mmu_free_sp_rcu_callback() -> None:
        sp.freed = True
        sp.free_count += 1

    def walker() -> None:
        rcu.rcu_read_lock()
        vals.append(sp.read(5))
        sched.op("probe", None, lambda: seen.update(freed=sp.freed, bugs=len(rec.findings),
                                                   pending=len(rcu.pending)))
        vals.append(sp.read(5))
        seen["freed_in_section"] = sp.freed
        seen["bugs_in_section"] = len(rec.findings)
        rcu.rcu_read_unlock()
        vals.append(sp.read(5))                    # stale pointer after the section

    def zapper() -> None:
        rcu.call_rcu(tdp_mmu_free_sp_rcu_callback, "tdp_mmu_free_sp_rcu_callback")

    run_controlled(sched, [("walker", walker), ("zapper", zapper)])
    assert seen == {"freed": False, "bugs": 0, "pending": 1, "freed_in_section": False,
                    "bugs_in_section": 0}
    assert vals == [make_spte(0x99, 1)] * 3
    assert sp.freed and sp.free_count == 1
    bugs = rec.of("BUG")
    assert len(bugs) == 1 and rec.findings == bugs
    assert bugs[0].where == "KASAN:use-after-free"
    assert bugs[0].thread == "walker"
    assert rec.counts[bugs[0].signature] == 1
