"""The controlled scheduler: real OS threads, one running at a time.

Each model thread is a real ``threading.Thread`` that parks on its own lock (its baton).
At every yield point (``op``) the running thread stops, the strategy picks the next
thread among those whose pending operation is ready, and the baton passes; the picked
thread performs its step and runs on to its next yield point.  Waiting is modelled: a
thread whose operation is not ready is not runnable.  No runnable thread left while some
have not finished is a DEADLOCK; running past ``max_steps`` is a HANG.

Strategies are small objects with ``choose(sched, runnable) -> thread index`` (Shuttle's
split of runtime and strategy): :class:`RandomStrategy`, :class:`PCTStrategy`,
:class:`ReplayStrategy` (follow a recorded schedule, report divergence) and
:class:`ScriptStrategy` (tests decide the interleaving).

Example::

    sched = ControlledScheduler(PCTStrategy(random.Random(7), depth=3, max_steps=10_000))
    kvm = Kvm("hugepage-rfc", sched)
    sched.run([("vcpu0", lambda: ...), ("zapper0", lambda: ...)])
"""
from __future__ import annotations

import random
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from core.findings import Recorder
from core.sched import YIELD_HINTS, Abort, ThreadCtx, mix, set_current

T = TypeVar("T")


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


class _Thread:
    __slots__ = ("index", "name", "fn", "ctx", "baton", "thread", "label", "arg", "ready",
                 "finished", "error", "started")

    def __init__(self, index: int, name: str, fn: Callable[[], None]) -> None:
        self.index = index
        self.name = name
        self.fn = fn
        self.ctx = ThreadCtx(name, index)
        self.baton = threading.Lock()
        self.baton.acquire()
        self.thread: threading.Thread | None = None
        self.label = "start"
        self.arg: object = None
        self.ready: Callable[[], bool] | None = None
        self.finished = False
        self.error: BaseException | None = None
        self.started = False


class ControlledScheduler:
    """Runs model threads one at a time under a strategy; see the module docstring."""

    def __init__(self, strategy: "Strategy", *, max_steps: int = 200_000,
                 recorder: Recorder | None = None, record_steps: bool = True,
                 stop_on: Callable[[object], bool] | None = None) -> None:
        self.strategy = strategy
        self.max_steps = max_steps
        self.rec = recorder
        self.record_steps = record_steps
        self.step = 0
        self.schedule: list[int] = []       # the thread chosen at every decision
        self.items: list[int] = []          # with record_steps: the chosen thread's ctx.item
        self.steps: list[Step] = []
        self.threads: list[_Thread] = []
        self.current: _Thread | None = None
        self.aborting = False
        self.abort_reason = ""
        self._all_done = threading.Event()
        self._stop_on = stop_on
        self.divergence: ScheduleDiverged | None = None
        self.preemptions = 0                # switches away from a thread that could go on
        self.trace_hash = 0                 # running hash of (thread, label) of every step

    # ------------------------------------------------------------------ running
    def run(self, threads: Sequence[tuple[str, Callable[[], None]]],
            join_timeout: float = 60.0) -> None:
        """Run the threads to the end (or to an abort) and join them all."""
        self.threads = [_Thread(i, name, fn) for i, (name, fn) in enumerate(threads)]
        for t in self.threads:
            t.thread = threading.Thread(target=self._body, args=(t,), name=t.name,
                                        daemon=True)
            t.thread.start()
        if self.threads:
            self._dispatch(None)
            self._all_done.wait(join_timeout)
        for t in self.threads:
            assert t.thread is not None
            t.thread.join(1.0)
        errors = [t for t in self.threads if t.error is not None]
        if errors:
            t = errors[0]
            raise RuntimeError(f"model thread {t.name} raised") from t.error

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
        self._dispatch(t)

    def _runnable(self) -> list[_Thread]:
        return [t for t in self.threads
                if not t.finished and (t.ready is None or t.ready())]

    def _dispatch(self, me: _Thread | None) -> _Thread | None:
        """Pick the next thread and hand it the baton; return it.  ``me`` is the thread
        giving the baton up (None at start); it must park unless it was picked."""
        if self.aborting:
            nxt = next((t for t in self.threads if not t.finished), None)
        else:
            runnable = self._runnable()
            if not runnable:
                if all(t.finished for t in self.threads):
                    nxt = None
                else:
                    self._deadlock()
                    nxt = next((t for t in self.threads if not t.finished), None)
            else:
                try:
                    idx = self.strategy.choose(self, [t.index for t in runnable])
                except ScheduleDiverged as d:
                    self.divergence = d
                    self._abort(str(d))
                    idx = runnable[0].index
                self.schedule.append(idx)
                nxt = self.threads[idx]
                if self.record_steps:
                    self.items.append(nxt.ctx.item if nxt.started else -1)
                if me is not None and nxt is not me and me.label not in YIELD_HINTS \
                        and any(t is me for t in runnable):
                    # a switch at a spin hint is the thread yielding, not a preemption
                    self.preemptions += 1
        if nxt is None:
            self.current = None
            self._all_done.set()
            return None
        self.current = nxt
        if nxt is not me:
            nxt.baton.release()
        return nxt

    # ------------------------------------------------------------------ yield point
    def op(self, label: str, arg: object, fn: Callable[[], T],
           ready: Callable[[], bool] | None = None) -> T:
        me = self.current
        if me is None or threading.current_thread() is not me.thread:
            # A thread the scheduler does not own (setup code on the main thread):
            # nothing to interleave with, just take the step.
            self.step += 1
            return fn()
        me.label, me.arg, me.ready = label, arg, ready
        me.ctx.pending = label
        # Park unless we picked ourselves.  Decide from what *this* dispatch chose, never
        # from self.current: the thread we woke may already have handed the baton back.
        if self._dispatch(me) is not me:
            me.baton.acquire()
        if self.aborting:
            raise Abort()
        me.ready = None
        me.ctx.pending = ""
        me.ctx.op = label
        self.step += 1
        me.ctx.last_step = self.step
        self.trace_hash = mix(self.trace_hash, me.index, label)
        result = fn()
        if self.record_steps:
            self.steps.append(Step(self.step, me.index, label, arg, result))
        if self.step >= self.max_steps and not self.aborting:
            self._hang()
            raise Abort()
        return result

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
        frames = sys._current_frames()
        out = []
        for t in self.threads:
            state = "finished" if t.finished else f"at {t.label}"
            waits = ""
            if not t.finished and t.ready is not None and not t.ready():
                waits = f" waiting ({t.ctx.pending or t.label})"
            stack = ""
            if t.thread is not None and t.thread.ident in frames and not t.finished:
                lines = traceback.format_stack(frames[t.thread.ident])
                model = [ln for ln in lines if "/core/" in ln]
                stack = "".join(model[-6:])
            out.append(f"{t.name} [{state}{waits}; mmu_lock={t.ctx.lock_mode}]\n{stack}")
        return out

    def _deadlock(self) -> None:
        blocked = [t for t in self.threads if not t.finished]
        names = ", ".join(f"{t.name} waits at {t.label}" for t in blocked)
        detail = "\n".join(self.describe_threads())
        if self.rec is not None:
            ctx = blocked[0].ctx if blocked else ThreadCtx("scheduler")
            self.rec.report("DEADLOCK", "scheduler", f"no runnable thread: {names}\n{detail}",
                            ctx)
        self._abort(f"deadlock: {names}")

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


class Strategy:
    def choose(self, sched: ControlledScheduler, runnable: list[int]) -> int:
        raise NotImplementedError


class RandomStrategy(Strategy):
    """Uniform random walk over the runnable threads."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, sched: ControlledScheduler, runnable: list[int]) -> int:
        return runnable[0] if len(runnable) == 1 else self.rng.choice(runnable)


def is_sync(label: str) -> bool:
    """Where PCT may place a priority change: the second step of a SEAMCALL or TDCALL,
    i.e. the thread holds the module's locks and is about to apply the effect.

    Every BUSY of the TDX module comes from a thread parked in such a window, so these
    are the preemptions that expose the races the tool hunts; counting only them keeps
    PCT's k (and so its bound 1/(n*k^(d-1))) small.  Plain SPTE reads, the bulk of the
    steps, would dilute the change points without exposing anything new.
    """
    return label.startswith(("TDH.", "TDG.")) and not label.endswith(":lock")


BURST = 64   # most steps another thread gets at a spin hint


class PCTStrategy(Strategy):
    """Probabilistic Concurrency Testing (Burckhardt et al., ASPLOS 2010).

    Threads get distinct random priorities; the highest-priority runnable thread runs.
    ``depth - 1`` change points are drawn uniformly over the first ``max_steps``
    SEAMCALL windows (:func:`is_sync`); at each, the thread about to finish that
    SEAMCALL drops below every other, holding the module's locks.  (``sync`` chooses
    which steps count; None counts every step, the textbook algorithm.)  A bug of
    depth d in a run of k such steps with n threads is found with probability at
    least 1/(n * k^(d-1)).  At a spin hint (``cpu_relax``/``cond_resched``) a random
    other thread gets a burst of up to 64 steps, so a spin-wait cannot starve the thread
    it waits for.
    """

    def __init__(self, rng: random.Random, depth: int = 3, max_steps: int = 10_000,
                 sync: Callable[[str], bool] | None = None) -> None:
        self.rng = rng
        self.sync = sync
        self.depth = depth
        self.max_steps = max_steps
        self.priorities: dict[int, float] = {}
        self.change_points = sorted(rng.randrange(1, max(2, max_steps))
                                    for _ in range(max(0, depth - 1)))
        self.sync_steps = 0
        self._low = 0.0
        self._burst = 0          # steps left in a spin hint's burst
        self._burst_to = -1

    def choose(self, sched: ControlledScheduler, runnable: list[int]) -> int:
        for i in runnable:
            if i not in self.priorities:
                # fresh threads get a random priority above every changed one
                self.priorities[i] = 1.0 + self.rng.random()
        cur = sched.current
        if cur is not None and (self.sync is None or self.sync(cur.label)):
            self.sync_steps += 1
            while self.change_points and self.sync_steps >= self.change_points[0]:
                self.change_points.pop(0)
                if cur.index in self.priorities:
                    self._demote(cur.index)
        if self._burst and self._burst_to in runnable:
            self._burst -= 1
            return self._burst_to
        self._burst = 0
        if cur is not None and cur.label in YIELD_HINTS and len(runnable) > 1:
            # A spinning thread waits for others.  Give a random other thread a burst of
            # steps, then come back: the spinner keeps its priority (so it really spins,
            # as a vCPU bouncing off an invalid memslot does until zero-step arms), and
            # the others progress as they would on other CPUs (so no spin livelocks).
            others = [i for i in runnable if i != cur.index]
            self._burst_to = others[0] if len(others) == 1 else self.rng.choice(others)
            self._burst = self.rng.randrange(0, BURST)
            return self._burst_to
        return max(runnable, key=lambda i: self.priorities[i])

    def _demote(self, index: int) -> None:
        self._low -= 1.0
        self.priorities[index] = self._low


def keep_running(sched: ControlledScheduler, runnable: list[int]) -> int:
    """Lenient replay's choice where the schedule says nothing (it ended, or names a
    thread that cannot run): no preemption, so the running thread goes on; but a thread
    at a spin hint yields to the next runnable thread in index order, as a spinning CPU
    lets the others progress.  (Keeping a spinner would livelock it into a false HANG
    after thousands of steps, the shrinker's commonest waste.)"""
    cur = sched.current
    if cur is None or cur.index not in runnable:
        return runnable[0]
    if cur.label in YIELD_HINTS and len(runnable) > 1:
        later = [i for i in runnable if i > cur.index]
        return later[0] if later else runnable[0]
    return cur.index


class ReplayStrategy(Strategy):
    """Follow a recorded schedule exactly; diverge loudly if it cannot be followed.

    With ``lenient=True`` (the shrinker's mode) a decision that cannot be followed takes
    the thread that ran last if it can go on, else the lowest runnable one, so that any
    edited schedule is a valid one; ``followed`` counts the decisions taken as written.
    """

    def __init__(self, schedule: Sequence[int], then: Strategy | None = None,
                 lenient: bool = False) -> None:
        self.schedule = list(schedule)
        self.pos = 0
        self.then = then
        self.lenient = lenient
        self.followed = 0

    def choose(self, sched: ControlledScheduler, runnable: list[int]) -> int:
        if self.pos >= len(self.schedule):
            if self.then is not None:
                return self.then.choose(sched, runnable)
            if self.lenient:
                return keep_running(sched, runnable)
            cur = sched.current
            return cur.index if cur is not None and cur.index in runnable else runnable[0]
        want = self.schedule[self.pos]
        self.pos += 1
        if want not in runnable and self.lenient:
            return keep_running(sched, runnable)
        if want in runnable:
            self.followed += 1
        if want not in runnable:
            names = sched.thread_names()
            who = names[want] if want < len(names) else f"#{want}"
            raise ScheduleDiverged(sched.step, f"schedule wants {who}, which is not runnable "
                                   f"(runnable: {[names[i] for i in runnable]})")
        return want


class RunReplayStrategy(Strategy):
    """Lenient replay by runs: the schedule read as "give thread T its next n steps".

    An edited workload changes how many steps a thread takes; positional replay then
    shifts every later decision of every thread, while replay by runs keeps the other
    threads' runs where they were.  A run whose thread cannot go on is cut short.  The
    shrinker's first try for a candidate.
    """

    def __init__(self, schedule: Sequence[int]) -> None:
        runs = rle(schedule)
        self.runs = runs
        self.i = 0
        self.left = runs[0][1] if runs else 0

    def choose(self, sched: ControlledScheduler, runnable: list[int]) -> int:
        while self.i < len(self.runs):
            t = self.runs[self.i][0]
            if self.left > 0 and t in runnable:
                self.left -= 1
                return t
            self.i += 1
            if self.i < len(self.runs):
                self.left = self.runs[self.i][1]
        return keep_running(sched, runnable)


class ScriptStrategy(Strategy):
    """A test decides the interleaving, step by step (Trio's Sequencer, for threads).

    ``script`` is a list of directives, each a tuple:

    * ``("until", name, label)``: run ``name`` until its next operation is ``label``
      (that operation is not taken yet);
    * ``("through", name, label)``: run ``name`` until it has taken ``label``;
    * ``("steps", name, n)``: run ``name`` for ``n`` operations;
    * ``("finish", name)``: run ``name`` until it ends.

    After the script, threads run to the end in order of their index.  A directive that
    names a thread which cannot run raises :class:`ScheduleDiverged`, unless ``strict`` is
    false: then the lowest-index runnable thread goes until the named one can run (so one
    script can be applied to variants where a lock makes that thread wait).
    """

    def __init__(self, script: Sequence[tuple], strict: bool = True) -> None:
        self.strict = strict
        self.script = list(script)
        self.pos = 0
        self.count = 0
        self._taken_label: str | None = None

    def choose(self, sched: ControlledScheduler, runnable: list[int]) -> int:
        names = sched.thread_names()
        while self.pos < len(self.script):
            d = self.script[self.pos]
            kind, name = d[0], d[1]
            idx = names.index(name)
            t = sched.threads[idx]
            done = False
            if kind == "until":
                done = t.finished or t.label == d[2]
            elif kind == "through":
                done = t.finished or (t.ctx.op == d[2] and self.count > 0)
            elif kind == "steps":
                done = self.count >= d[2] or t.finished
            elif kind == "finish":
                done = t.finished
            else:
                raise ValueError(f"unknown directive {d!r}")
            if done:
                self.pos += 1
                self.count = 0
                continue
            if idx not in runnable:
                if not self.strict:
                    return runnable[0]
                raise ScheduleDiverged(sched.step, f"script directive {d!r}: {name} is not "
                                       f"runnable (at {t.label})")
            self.count += 1
            return idx
        return runnable[0]
