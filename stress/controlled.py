"""The controlled scheduler: real OS threads, one running at a time.

Each model thread is a real ``threading.Thread`` that parks on its own lock (its baton).
At every yield point (``op``) the running thread stops, the strategy picks the next
thread among those whose pending operation is ready, and the baton passes; the picked
thread performs its step and runs on to its next yield point.  Waiting is modelled: a
thread whose operation is not ready is not runnable.  No runnable thread left while some
have not finished is a DEADLOCK; running past ``max_steps`` is a HANG.

Who runs next is a strategy's choice (:mod:`stress.strategies`: Shuttle's split of
runtime and strategy), made through a read-only :class:`SchedulerView`.  What a run
leaves besides its decisions (the trace hash, the step log, the preemption count, the
decision items) is kept by instruments (:class:`Instrument`, after Trio's), told of every
decision and every step; they never change what runs.

Example::

    sched = ControlledScheduler(PCTStrategy(random.Random(7), depth=3, horizon=100))
    kvm = Kvm("hugepage-rfc", sched)
    sched.run([("vcpu0", lambda: ...), ("zapper0", lambda: ...)])
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from _thread import get_ident
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

from core.findings import Recorder
from core.sched import YIELD_HINTS, Abort, ThreadCtx, label_code, mix, set_current

if TYPE_CHECKING:
    from .strategies import Strategy

T = TypeVar("T")


def _sched_getcpu() -> Callable[[], int] | None:
    """libc's sched_getcpu() (the CPU the calling thread is on), where there is one."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        import ctypes
        f = ctypes.CDLL(None, use_errno=True).sched_getcpu
        f.restype = ctypes.c_int
        f.argtypes = []
        if f() < 0:
            return None
        return f
    except (OSError, AttributeError):
        return None


_getcpu = _sched_getcpu()


_model_cpu: int | None = None      # this process's choice (model_cpu(), set_model_cpu())
_claimed: list[object] = []         # the lock file of the CPU this process claimed


def claim_cpu(cpus: Sequence[int]) -> int | None:
    """Claim one of ``cpus`` that no other process of this user has claimed, for as long
    as this process lives: a lock file per CPU in the temp directory, locked with
    flock(), so that a crash or SIGKILL releases it.  Campaign workers call this, so
    that two campaigns on one machine (shards side by side, tests) spread over the
    CPUs instead of each putting its first worker on the first CPU.  None: every one is
    claimed (or locking is not possible here); the caller then shares."""
    if _claimed:
        return None
    try:
        import fcntl
        import tempfile
        d = os.path.join(tempfile.gettempdir(), f"tdx-stress-cpus-{os.getuid()}")
        os.makedirs(d, exist_ok=True)
    except (ImportError, OSError, AttributeError):
        return None
    for cpu in cpus:
        try:
            f = open(os.path.join(d, f"{cpu}.lock"), "a")      # noqa: SIM115 (held)
        except OSError:
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _claimed.append(f)
        return cpu
    return None


def set_model_cpu(cpu: int | None) -> None:
    """Choose the CPU this process's controlled runs keep to (None: choose again at the
    next run).  For processes that share a machine by plan (the test suite's workers,
    one CPU each); a campaign's workers are each on one CPU already."""
    global _model_cpu
    _model_cpu = cpu


def model_cpu() -> int | None:
    """The CPU a controlled run keeps to: this process's choice, made at its first run
    (the CPU it was on then) unless :func:`set_model_cpu` made it.  The choice sticks,
    so that two processes that started on different CPUs stay apart.  None: the caller
    is on one CPU already, or the platform cannot pin."""
    global _model_cpu
    if _getcpu is None:
        return None
    try:
        allowed = os.sched_getaffinity(0)
        if len(allowed) <= 1:
            return None
        if _model_cpu is None or _model_cpu not in allowed:
            cpu = _getcpu()
            if cpu < 0:
                return None
            _model_cpu = cpu
    except OSError:
        return None
    return _model_cpu


@contextlib.contextmanager
def one_cpu() -> Iterator[int | None]:
    """Keep the calling thread, and the threads it starts, on this process's CPU
    (:func:`model_cpu`), and give it back its CPUs after.  One thread of a controlled
    run runs at a time and the baton passes thousands of times a run: a thread woken on
    another CPU waits for that CPU to wake up.  On the 2-CPU VM this was measured on,
    20 default runs in one process (medians of 4 rounds): 3.10 s free to move, 2.20 s
    with the model threads on one CPU, 1.65 s with the caller (setup, teardown,
    invariants) on it too.  Campaign workers are on one CPU each already (nothing to
    do then)."""
    cpu = model_cpu()
    if cpu is None:
        yield None
        return
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})          # the calling thread only (Linux)
    except OSError:
        yield None
        return
    try:
        yield cpu
    finally:
        try:
            os.sched_setaffinity(0, mine)
        except OSError:
            pass


class ScheduleDiverged(Exception):
    """A replayed or scripted schedule asked for a thread that cannot run."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(f"step {step}: {message}")
        self.step = step


@dataclass
class Step:
    """One executed operation: who, what, on what, with what result."""
    step: int
    thread: int
    label: str
    arg: object
    result: object = None


CUT_SHORT = "cut short: the campaign's time ran out"


class EndOfSchedule(Exception):
    """Raised by a strategy that has nothing more to run (a free run's trace is used up):
    the run ends there, with this as its reason."""


class _Thread:
    __slots__ = ("index", "name", "fn", "ctx", "baton", "thread", "ident", "label", "arg",
                 "ready", "finished", "error", "started", "mixes")

    def __init__(self, index: int, name: str, fn: Callable[[], None]) -> None:
        self.index = index
        self.name = name
        self.fn = fn
        self.ctx = ThreadCtx(name, index)
        self.baton = threading.Lock()
        self.baton.acquire()
        self.thread: threading.Thread | None = None
        self.ident: int | None = None          # the OS thread's identifier, once started
        self.label = "start"
        self.arg: object = None
        self.ready: Callable[[], bool] | None = None
        self.finished = False
        self.error: BaseException | None = None
        self.started = False
        # label -> what a step of this thread with that label adds to the trace hash
        # (mix()'s index * 7919 + label_code(label)), made once per label
        self.mixes: dict[str, int] = {}


class SchedulerView:
    """What a strategy may read of a controlled run, and nothing it could change.

    ``current``: the thread giving up the baton (None at the start); ``current_label``:
    the operation it is about to take ("" at the start).  These two are read at nearly
    every decision, so they are plain attributes that the scheduler sets before it asks
    the strategy (in :meth:`ControlledScheduler.op` and ``_dispatch``) rather than
    properties."""
    __slots__ = ("_s", "current", "current_label")

    def __init__(self, sched: "ControlledScheduler") -> None:
        self._s = sched
        self.current: int | None = None
        self.current_label = ""

    @property
    def step(self) -> int:
        return self._s.step

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._s.threads]

    @property
    def nthreads(self) -> int:
        """How many threads the run has (finished ones included)."""
        return len(self._s.threads)

    def label(self, i: int) -> str:
        """Thread ``i``'s next operation."""
        return self._s.threads[i].label

    def arg(self, i: int) -> object:
        """The argument of thread ``i``'s next operation (what it works on: for an SPTE
        access, ``(page, index, ...)``); None before it started."""
        return self._s.threads[i].arg

    def last_op(self, i: int) -> str:
        """The operation thread ``i`` took last."""
        return self._s.threads[i].ctx.op

    def started(self, i: int) -> bool:
        return self._s.threads[i].started

    def finished(self, i: int) -> bool:
        return self._s.threads[i].finished


class Instrument:
    """An observer of a controlled run (Trio's ``Instrument``): told of every decision and
    every step taken, it keeps what it is for and never changes what runs."""

    def decided(self, current: int | None, yielding: bool, chosen: int,
                runnable: list[int], item: int) -> None:
        """``chosen`` was picked among ``runnable`` when ``current`` gave up the baton
        (None at the start; ``yielding``: at a spin hint); ``item`` is the chosen
        thread's ``ctx.item`` (the workload item it is in, -1 before it started)."""

    def step_taken(self, step: int, thread: int, label: str, arg: object,
                   result: object) -> None:
        """Thread ``thread`` took operation ``label`` as step ``step``."""


class TraceHash(Instrument):
    """A running hash of (thread, operation) of every step: two runs with the same hash
    took the same steps in the same order."""

    def __init__(self) -> None:
        self.value = 0

    def step_taken(self, step: int, thread: int, label: str, arg: object,
                   result: object) -> None:
        self.value = mix(self.value, thread, label)


class StepLog(Instrument):
    """Every step (:class:`Step`), for swim lanes and the shrinker."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def step_taken(self, step: int, thread: int, label: str, arg: object,
                   result: object) -> None:
        self.steps.append(Step(step, thread, label, arg, result))


class Preemptions(Instrument):
    """Switches away from a thread that could have gone on (a switch at a spin hint is
    the thread yielding, not a preemption)."""

    def __init__(self) -> None:
        self.count = 0

    def decided(self, current: int | None, yielding: bool, chosen: int,
                runnable: list[int], item: int) -> None:
        if current is not None and chosen != current and not yielding \
                and current in runnable:
            self.count += 1


class DecisionItems(Instrument):
    """The workload item the chosen thread was in at every decision (the shrinker maps
    decisions back to operations with it)."""

    def __init__(self) -> None:
        self.items: list[int] = []

    def decided(self, current: int | None, yielding: bool, chosen: int,
                runnable: list[int], item: int) -> None:
        self.items.append(item)


def _index_of(t: _Thread) -> int:
    return t.index


# frames of the scheduler and of the thread machinery, left out of a thread's stack
_MACHINERY = ("stress/controlled.py", "core/sched.py", "/threading.py")


def waits_for(t: "_Thread") -> str:
    """What a waiting thread waits for: the operation and its argument, and who holds it
    when the operation's ``ready`` has a ``holder()`` (a lock's wait does: "held for
    write by zapper0")."""
    what = t.label
    if t.arg is not None:
        what += f" {t.arg!r}"
    holder = getattr(t.ready, "holder", None)
    if callable(holder):
        what += f" ({holder()})"
    return what


class ControlledScheduler:
    """Runs model threads one at a time under a strategy; see the module docstring.
    ``record_steps`` adds the step log and the decision items to the instruments that
    every run has (trace hash, preemptions); ``instruments`` adds others.  The two that
    every run has are kept inline by :meth:`op` and :meth:`_dispatch` (what
    :class:`TraceHash` and :class:`Preemptions` keep, without a call per step).
    ``trace_hash=False`` keeps no trace hash (:attr:`trace_hash` is None): a campaign's
    workers, which report none, save its sum at every step."""

    def __init__(self, strategy: Strategy, *, max_steps: int = 200_000,
                 recorder: Recorder | None = None, record_steps: bool = True,
                 instruments: Sequence[Instrument] = (), deadline: float | None = None,
                 trace_hash: bool = True) -> None:
        self.strategy = strategy
        self.max_steps = max_steps
        # a campaign's wall-clock end (time.monotonic()): past it the run is cut short at
        # its next yield point.  A budget, not a decision: nothing is chosen by the clock.
        self.deadline = deadline
        self.rec = recorder
        self.step = 0
        self.schedule: list[int] = []       # the thread chosen at every decision
        self.threads: list[_Thread] = []
        self.current: _Thread | None = None
        self.aborting = False
        self.abort_reason = ""
        self._all_done = threading.Event()
        self.divergence: ScheduleDiverged | None = None
        self.strategy_error: Exception | None = None
        self.view = SchedulerView(self)
        self._live: list[_Thread] = []      # the threads not finished, in index order
        self._live_indexes: list[int] = []  # ... and their indexes
        self._live_but: dict[int, list[int]] = {}   # index -> _live_indexes without it
        self._waiting = 0                   # threads parked at an operation with ready()
        self._waiters: list[_Thread] = []   # ... those threads, in index order
        self._trace = 0                     # TraceHash's value, kept by op()
        self._hashing = trace_hash          # ... if it is kept at all
        self._check_at = min(1024, max_steps)   # the step op() next calls _budget() at
        self._preemptions = 0               # Preemptions' count, kept by _dispatch()
        self._log = StepLog() if record_steps else None
        self._items = DecisionItems() if record_steps else None
        self.instruments: list[Instrument] = [
            i for i in (self._log, self._items, *instruments) if i is not None]
        self._on_decide = [i for i in self.instruments
                           if type(i).decided is not Instrument.decided]
        self._on_step = [i for i in self.instruments
                         if type(i).step_taken is not Instrument.step_taken]
        if recorder is not None:
            recorder.use_clock(lambda: self.step)

    # what the built-in instruments kept
    @property
    def trace_hash(self) -> int | None:
        return self._trace if self._hashing else None

    @property
    def preemptions(self) -> int:
        return self._preemptions

    @property
    def steps(self) -> list[Step]:
        return self._log.steps if self._log is not None else []

    @property
    def items(self) -> list[int]:
        return self._items.items if self._items is not None else []

    @property
    def decisions(self) -> list[int]:
        """What replays this run: the thread chosen at every decision."""
        return self.schedule

    def thread_contexts(self) -> list[ThreadCtx]:
        return [t.ctx for t in self.threads]

    # ------------------------------------------------------------------ running
    def run(self, threads: Sequence[tuple[str, Callable[[], None]]],
            join_timeout: float = 60.0) -> None:
        """Run the threads to the end (or to an abort) and join them all, on one CPU
        (:func:`one_cpu`)."""
        with one_cpu():
            self._run(threads, join_timeout)

    def _run(self, threads: Sequence[tuple[str, Callable[[], None]]],
             join_timeout: float) -> None:
        self.threads = [_Thread(i, name, fn) for i, (name, fn) in enumerate(threads)]
        self._live = list(self.threads)
        self._set_live([t.index for t in self.threads])
        self._waiting = 0
        self._waiters = []
        for t in self.threads:
            t.thread = threading.Thread(target=self._body, args=(t,), name=t.name,
                                        daemon=True)
            t.thread.start()
            t.ident = t.thread.ident
        if self.threads:
            self._dispatch(None)
            self._all_done.wait(join_timeout)
        for t in self.threads:
            assert t.thread is not None
            t.thread.join(1.0)
        if self.strategy_error is not None:
            raise self.strategy_error
        errors = [t for t in self.threads if t.error is not None]
        if errors:
            t = errors[0]
            raise RuntimeError(f"model thread {t.name} raised") from t.error
        stuck = [t for t in self.threads if not t.finished]
        if stuck:
            # a thread blocked outside any operation (a real lock, a sleep): the run did
            # not end, so it is a HANG, never a clean run
            self._stuck(stuck, join_timeout)

    def _body(self, t: _Thread) -> None:
        t.baton.acquire()                      # wait for the first turn
        set_current(t.ctx)
        try:
            if self.aborting:
                raise Abort()
            t.started = True
            t.fn()
        except Abort:
            pass
        except BaseException as e:             # a model bug: keep it, stop the run
            t.error = e
            self.aborting = True
            self.abort_reason = f"{t.name} raised {type(e).__name__}: {e}"
        t.finished = True
        t.label = "exit"
        self._live.remove(t)
        # a new list, never one changed in place: op() hands the strategy this list
        # itself when no thread waits, and a strategy may keep what it was given
        self._set_live([i for i in self._live_indexes if i != t.index])
        self._dispatch(t)

    def _set_live(self, indexes: list[int]) -> None:
        """The live threads' indexes are now ``indexes`` (a new list: the old one may
        be held by a strategy), and each of them left out (for op()'s one waiter)."""
        self._live_indexes = indexes
        self._live_but = {i: [j for j in indexes if j != i] for i in indexes}

    def _runnable(self) -> list[_Thread]:
        return [t for t in self._live if t.ready is None or t.ready()]

    def _runnable_indexes(self) -> list[int]:
        """The indexes of the live threads that can take their step, while some wait at
        an operation with ready() (``[t.index for t in self._live if t.ready is None or
        t.ready()]``, asking only the waiting threads, in index order as that does)."""
        indexes = self._live_indexes[:]
        for t in self._waiters:
            if not t.ready():           # type: ignore[misc]
                indexes.remove(t.index)
        return indexes

    def _dispatch(self, me: _Thread | None) -> _Thread | None:
        """Pick the next thread and hand it the baton; return it.  ``me`` is the thread
        giving the baton up (None at start); it must park unless it was picked."""
        live = self._live
        if self.aborting:
            nxt = live[0] if live else None
        else:
            # every live thread is runnable unless one waits at an operation with ready()
            indexes = self._runnable_indexes() if self._waiting else self._live_indexes
            if not indexes:
                if not live:
                    nxt = None
                else:
                    return self._no_runnable(me)
            else:
                view = self.view
                if me is None:
                    view.current, view.current_label = None, ""
                else:
                    view.current, view.current_label = me.index, me.label
                try:
                    idx = self.strategy.choose(view, indexes)
                except Exception as e:         # noqa: BLE001 (see _strategy_stopped)
                    idx = self._strategy_stopped(e, indexes)
                self.schedule.append(idx)
                nxt = self.threads[idx]
                # Preemptions.decided(), inline
                if me is not None and idx != me.index and me.label not in YIELD_HINTS \
                        and me.index in indexes:
                    self._preemptions += 1
                if self._on_decide:
                    self._tell_decided(me, idx, indexes)
        return self._hand_to(nxt, me)

    def _no_runnable(self, me: _Thread | None) -> _Thread | None:
        """No live thread can take its step: a DEADLOCK; the first live thread gets the
        baton (from ``me``) to unwind.  Returns it."""
        self._deadlock()
        return self._hand_to(self._live[0] if self._live else None, me)

    def _hand_to(self, nxt: _Thread | None, me: _Thread | None) -> _Thread | None:
        """Give the baton to ``nxt`` (from ``me``); None: the run is over."""
        if nxt is None:
            self.current = None
            self._all_done.set()
            return None
        self.current = nxt
        # the view's current thread is the one with the baton: op() leaves it as it
        # is, and every handoff (here and in op()) sets it
        self.view.current = nxt.index
        if nxt is not me:
            nxt.baton.release()
        return nxt

    def _strategy_stopped(self, e: Exception, indexes: list[int]) -> int:
        """The strategy raised instead of choosing: end the run (a divergence is kept;
        any other error than a divergence or the end of a schedule is a broken strategy,
        which run() raises once the threads have unwound); the lowest runnable thread
        goes on to unwind."""
        if isinstance(e, ScheduleDiverged):
            self.divergence = e
            self._abort(str(e))
        elif isinstance(e, EndOfSchedule):
            self._abort(str(e))
        else:
            self.strategy_error = e
            self._abort(f"the strategy raised {type(e).__name__}: {e}")
        return indexes[0]

    def _tell_decided(self, me: _Thread | None, idx: int, indexes: list[int]) -> None:
        """Tell the instruments that watch decisions (not the built-in ones)."""
        nxt = self.threads[idx]
        item = nxt.ctx.item if nxt.started else -1
        if me is None:
            for ins in self._on_decide:
                ins.decided(None, False, idx, indexes, item)
        else:
            yielding = me.label in YIELD_HINTS
            for ins in self._on_decide:
                ins.decided(me.index, yielding, idx, indexes, item)

    # ------------------------------------------------------------------ yield point
    def op(self, label: str, arg: object, fn: Callable[[], T],
           ready: Callable[[], bool] | None = None) -> T:
        me = self.current
        if me is None or me.ident != get_ident():
            # A thread the scheduler does not own (setup code on the main thread):
            # nothing to interleave with, just take the step.
            self.step += 1
            return fn()
        me.label = label
        me.arg = arg
        if ready is not None:           # (me.ready is None between operations)
            me.ready = ready
            self._waiting += 1
            waiters = self._waiters
            waiters.append(me)
            if len(waiters) > 1:
                waiters.sort(key=_index_of)
        # Park unless we picked ourselves.  Decide from what *this* decision chose, never
        # from self.current: the thread we woke may already have handed the baton back.
        if self.aborting:
            if self._dispatch(me) is not me:
                me.baton.acquire()
        else:
            # _dispatch(me), inline: this thread is live, so the run cannot be over
            if self._waiting:
                # self._runnable_indexes(), inline; one waiter (the common case: a vCPU
                # spinning while another accepts) takes a list made once
                waiters = self._waiters
                if len(waiters) == 1:
                    t = waiters[0]
                    can = t.ready()                 # type: ignore[misc]
                    indexes = self._live_indexes if can else self._live_but[t.index]
                else:
                    indexes = self._live_indexes[:]
                    for t in waiters:
                        if not t.ready():       # type: ignore[misc]
                            indexes.remove(t.index)
                if not indexes:
                    if self._no_runnable(me) is not me:
                        me.baton.acquire()
                    raise Abort()           # (a deadlock aborts the run)
            else:
                indexes = self._live_indexes    # never changed in place (see _body)
            view = self.view
            view.current_label = label      # (view.current is me.index: see _hand_to)
            index = me.index
            try:
                idx = self.strategy.choose(view, indexes)
            except Exception as e:         # noqa: BLE001 (see _strategy_stopped)
                idx = self._strategy_stopped(e, indexes)
            self.schedule.append(idx)
            if idx != index:
                # Preemptions.decided(), inline
                if label not in YIELD_HINTS and index in indexes:
                    self._preemptions += 1
                if self._on_decide:
                    self._tell_decided(me, idx, indexes)
                nxt = self.current = self.threads[idx]
                view.current = idx
                nxt.baton.release()
                me.baton.acquire()
            elif self._on_decide:
                self._tell_decided(me, idx, indexes)
        if self.aborting:
            raise Abort()
        if ready is not None:
            me.ready = None
            self._waiting -= 1
            self._waiters.remove(me)
        ctx = me.ctx
        ctx.op = label
        self.step = ctx.last_step = self.step + 1
        result = fn()
        if self._hashing:
            # TraceHash.step_taken(), inline: mix(value, thread, label), the thread's
            # part and the label's made once per label
            try:
                add = me.mixes[label]
            except KeyError:
                add = me.mixes[label] = me.index * 7919 + label_code(label)
            self._trace = (self._trace * 1000003 + add) & 0xFFFFFFFFFFFFFFFF
        if self._on_step:
            for ins in self._on_step:
                ins.step_taken(self.step, me.index, label, arg, result)
        if self.step >= self._check_at:
            self._budget()
        return result

    def _budget(self) -> None:
        """At every 1024th step and past ``max_steps`` (``_check_at`` is the next of
        these): the campaign's time (cut short) and the step limit (a HANG) end the run
        here."""
        self._check_at = min(((self.step >> 10) + 1) << 10, self.max_steps)
        if self.deadline is not None and not self.step & 1023 and not self.aborting \
                and time.monotonic() > self.deadline:
            self._abort(CUT_SHORT)
            raise Abort()
        if self.step >= self.max_steps and not self.aborting:
            self._hang()
            raise Abort()

    # ------------------------------------------------------------------ ends
    def abort(self, reason: str) -> None:
        """End the run at the next yield point of every thread (e.g. stop-on-first)."""
        self._abort(reason)

    def _abort(self, reason: str) -> None:
        if not self.aborting:
            self.aborting = True
            self.abort_reason = reason
            if self.rec is not None:
                # what unwinding threads run into after this is an artifact of stopping
                self.rec.closed = True

    def describe_threads(self) -> list[str]:
        """Each thread: where it is, what it waits for and who holds that (when the
        operation's ``ready`` can say: see :func:`waits_for`), the mmu_lock it holds
        (if any), and the last frames of its own code (the scheduler's and the thread
        machinery's left out)."""
        frames = sys._current_frames()
        out = []
        for t in self.threads:
            state = "finished" if t.finished else f"at {t.label}"
            if not t.finished and t.ready is not None and not t.ready():
                state = f"waits at {waits_for(t)}"
            held = f"; mmu_lock={t.ctx.lock_mode}" if t.ctx.lock_mode else ""
            stack = ""
            if t.thread is not None and t.thread.ident in frames and not t.finished:
                lines = traceback.format_stack(frames[t.thread.ident])
                own = [ln for ln in lines if not any(m in ln for m in _MACHINERY)]
                stack = "".join(own[-6:])
            out.append(f"{t.name} [{state}{held}]\n{stack}")
        return out

    def _deadlock(self) -> None:
        blocked = [t for t in self.threads if not t.finished]
        names = ", ".join(f"{t.name} waits at {waits_for(t)}" for t in blocked)
        detail = "\n".join(self.describe_threads())
        if self.rec is not None:
            ctx = blocked[0].ctx if blocked else ThreadCtx("scheduler")
            self.rec.report("DEADLOCK", "scheduler", f"no runnable thread: {names}\n{detail}",
                            ctx)
        self._abort(f"deadlock: {names}")

    def _stuck(self, stuck: list[_Thread], waited: float) -> None:
        frames = sys._current_frames()
        where = []
        for t in stuck:
            frame = frames.get(t.thread.ident) if t.thread is not None else None
            last = traceback.format_stack(frame)[-1].strip() if frame is not None else "?"
            where.append(f"{t.name} (after its step {t.ctx.last_step}, last at "
                         f"{t.ctx.op or t.label}) is blocked outside any operation: {last}")
        message = (f"threads did not finish within {waited:g} s and wait outside the "
                   "scheduler's operations:\n" + "\n".join(where))
        if self.rec is not None:
            self.rec.report("HANG", "outside_operation", message, stuck[0].ctx)
        self.aborting = True
        self.abort_reason = message.splitlines()[0]

    def _hang(self) -> None:
        live = [t for t in self.threads if not t.finished]
        names = ", ".join(f"{t.name} at {t.label}" for t in live)
        if self.rec is not None:
            ctx = self.current.ctx if self.current else ThreadCtx("scheduler")
            self.rec.report("HANG", "scheduler",
                            f"no end after {self.step} steps: {names}\n"
                            + "\n".join(self.describe_threads()), ctx)
        self._abort(f"hang after {self.step} steps")

    def thread_names(self) -> list[str]:
        return [t.name for t in self.threads]


# ---------------------------------------------------------------------- strategies
def rle(xs: Sequence[int]) -> list[list[int]]:
    """A schedule as runs: [thread, how many decisions in a row]."""
    out: list[list[int]] = []
    for x in xs:
        if out and out[-1][0] == x:
            out[-1][1] += 1
        else:
            out.append([x, 1])
    return out


