"""Strategies of the controlled scheduler: who runs next, and nothing else.

A strategy is ``choose(view, runnable) -> thread index`` (Shuttle's
``Scheduler::next_task(runnable, current, ...)``): it sees the run only through a
read-only :class:`~stress.controlled.SchedulerView` (the step, the thread giving up the
baton and the operation it is about to take, each thread's next and last operation),
never the scheduler itself; it ends a run by raising :class:`EndOfSchedule`, and a
schedule it cannot follow by raising :class:`ScheduleDiverged`.

* :class:`RandomStrategy`, :class:`PCTStrategy`: search;
* :class:`ReplayStrategy` (a recorded schedule, exactly or leniently),
  :class:`RunReplayStrategy` (by runs, the shrinker's and the plugin's lenient replay),
  :class:`TraceStrategy` (a free run's trace): replay;
* :class:`ScriptStrategy`: a test decides the interleaving.
"""
from __future__ import annotations

import random
from typing import Callable, Sequence

from core.sched import YIELD_HINTS

from .controlled import EndOfSchedule, ScheduleDiverged, SchedulerView, rle


class Strategy:
    """Picks the next thread: ``choose(view, runnable)`` returns one of ``runnable`` (thread
    indexes).  It reads the run through ``view`` (a :class:`SchedulerView`) only, and
    ends the run by raising :class:`EndOfSchedule`."""

    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        raise NotImplementedError


class RandomStrategy(Strategy):
    """Uniform random walk over the runnable threads."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # (another kind of generator may draw its choice() otherwise: it gets choice())
        self._getrandbits = rng.getrandbits if type(rng) is random.Random else None

    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        n = len(runnable)
        if n == 1:
            return runnable[0]
        if self._getrandbits is None:
            return self.rng.choice(runnable)
        # self.rng.choice(runnable), written out: CPython's Random.choice() is
        # seq[_randbelow(len(seq))], _randbelow_with_getrandbits() for random.Random
        # (tests/test_controlled.py checks that the draws are the same)
        k = n.bit_length()
        r = self._getrandbits(k)
        while r >= n:
            r = self._getrandbits(k)
        return runnable[r]


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


def pct_horizon(operations: int) -> int:
    """A first guess of PCT's k for a run of ``operations`` zapper operations and guest
    instructions (three SEAMCALL windows an operation, at least 20): what calibration
    (:func:`learn_horizon`) starts from, and the shrinker's horizon."""
    return max(20, 3 * operations)


def learn_horizon(samples: Sequence[int]) -> int:
    """PCT's k learned from the lengths (in the steps PCT counts) of runs of one
    configuration, as Shuttle's PCT learns its step bound from the executions it made:
    the longest, so that the bound 1/(n*k^(d-1)) holds for every run as long as it
    (the runs longer than k that come later are counted and reported).  A quantile
    would give a smaller k, but the model's runs are bimodal (hugepage-rfc with a Linux
    guest: two thirds near 40 SEAMCALL windows, a third near 2,100 where a 2M range is
    accepted 4K page by 4K page), so any k below the long mode leaves a third of the
    runs uncovered.

    >>> learn_horizon([30, 40, 50, 60, 2000])
    2000
    """
    if not samples:
        raise ValueError("learn_horizon needs at least one sample")
    return max(2, max(samples))


class HorizonLearner:
    """Learns k across executions for a program run many times (Shuttle's PCT): start
    from ``initial``, then ``k`` is :func:`learn_horizon` of every run seen so far (and
    never less than ``initial``).

    Use: ``s = PCTStrategy(rng, depth, horizon=learner.k)``; run;
    ``learner.observe(s.sync_steps)``."""

    def __init__(self, initial: int) -> None:
        self.samples: list[int] = []
        self.initial = initial

    @property
    def k(self) -> int:
        return max(self.initial, learn_horizon(self.samples)) if self.samples else self.initial

    def observe(self, steps: int) -> None:
        self.samples.append(steps)


class PCTStrategy(Strategy):
    """Probabilistic Concurrency Testing (Burckhardt et al., ASPLOS 2010).

    Threads get distinct random priorities; the highest-priority runnable thread runs.
    ``depth - 1`` change points are drawn uniformly over the first ``horizon`` (k)
    SEAMCALL windows (:func:`is_sync`); at each, the thread about to finish that
    SEAMCALL drops below every other, holding the module's locks.  (``sync`` chooses
    which steps count; None counts every step, the textbook algorithm.)  A bug of
    depth d in a run of k such steps with n threads is found with probability at
    least 1/(n * k^(d-1)).  At a spin hint (``cpu_relax``/``cond_resched``) a random
    other thread gets a burst of up to 64 steps, so a spin-wait cannot starve the thread
    it waits for.

    ``horizon`` has no default: a k far above a run's length puts the change points
    past its end (a fixed 10,000 took reorder_3's hit rate from 1 in 30 to 1 in
    10,000); learn it (:func:`learn_horizon`, :class:`HorizonLearner`).  Change points
    are drawn over 1..k inclusive.
    """

    def __init__(self, rng: random.Random, depth: int = 3, *, horizon: int,
                 sync: Callable[[str], bool] | None = None) -> None:
        if horizon < 1:
            raise ValueError(f"PCT's horizon must be at least 1, not {horizon}")
        self.rng = rng
        self.sync = sync
        self.depth = depth
        self.horizon = horizon
        self.priorities: dict[int, float] = {}
        self.change_points = sorted(rng.randrange(1, horizon + 1)
                                    for _ in range(max(0, depth - 1)))
        self.sync_steps = 0
        self._low = 0.0
        self._burst = 0          # steps left in a spin hint's burst
        self._burst_to = -1
        self._sync_of: dict[str, bool] = {}  # label -> sync(label), asked once a label
        self._fresh = True       # some thread may have no priority yet
        self._order: list[int] = []   # the threads by priority, highest first (_sort)

    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        priorities = self.priorities
        if self._fresh:
            for i in runnable:
                if i not in priorities:
                    # fresh threads get a random priority above every changed one
                    priorities[i] = 1.0 + self.rng.random()
            # every thread is runnable at a run's first decision: this is done once
            self._fresh = len(priorities) < view.nthreads
            self._sort()
        cur, label = view.current, view.current_label
        if cur is not None and label != "exit":
            # self.sync(label), asked once per label (sync is a function of the label)
            try:
                counts = self._sync_of[label]
            except KeyError:
                counts = self._sync_of[label] = self.sync is None or bool(self.sync(label))
            if counts:
                self.sync_steps += 1
                while self.change_points and self.sync_steps >= self.change_points[0]:
                    self.change_points.pop(0)
                    if cur in priorities:
                        self._demote(cur)
        if self._burst:
            if self._burst_to in runnable:
                self._burst -= 1
                return self._burst_to
            self._burst = 0
        if len(runnable) == 1:
            # max() over one thread (a spin hint needs another to give the burst to)
            return runnable[0]
        if cur is not None and label in YIELD_HINTS:
            # A spinning thread waits for others.  Give a random other thread a burst of
            # steps, then come back: the spinner keeps its priority (so it really spins,
            # as a vCPU bouncing off an invalid memslot does until zero-step arms), and
            # the others progress as they would on other CPUs (so no spin livelocks).
            others = [i for i in runnable if i != cur]
            self._burst_to = others[0] if len(others) == 1 else self.rng.choice(others)
            self._burst = self.rng.randrange(0, BURST)
            return self._burst_to
        # max(runnable, key=priorities.__getitem__): the first highest in ``runnable``
        # (index order), i.e. the first of _order that is runnable
        for i in self._order:
            if i in runnable:
                return i
        raise AssertionError(f"no priority for any of {runnable}")   # (none fresh)

    def _demote(self, index: int) -> None:
        self._low -= 1.0
        self.priorities[index] = self._low
        self._sort()

    def _sort(self) -> None:
        """The threads by priority, highest first (ties: lowest index first)."""
        priorities = self.priorities
        self._order = sorted(priorities, key=lambda i: (-priorities[i], i))


def keep_running(view: SchedulerView, runnable: list[int]) -> int:
    """Lenient replay's choice where the schedule says nothing (it ended, or names a
    thread that cannot run): no preemption, so the running thread goes on; but a thread
    at a spin hint yields to the next runnable thread in index order, as a spinning CPU
    lets the others progress.  (Keeping a spinner would livelock it into a false HANG
    after thousands of steps, the shrinker's commonest waste.)"""
    cur = view.current
    if cur is None or cur not in runnable:
        return runnable[0]
    if view.current_label in YIELD_HINTS and len(runnable) > 1:
        later = [i for i in runnable if i > cur]
        return later[0] if later else runnable[0]
    return cur


class ReplayStrategy(Strategy):
    """Follow a recorded schedule exactly; diverge loudly if it cannot be followed.

    With ``lenient=True`` (the shrinker's mode) a decision that cannot be followed takes
    the thread that ran last if it can go on, else the lowest runnable one
    (:func:`keep_running`), so that any edited schedule is a valid one.
    """

    def __init__(self, schedule: Sequence[int], lenient: bool = False) -> None:
        self.schedule = list(schedule)
        self.pos = 0
        self.lenient = lenient

    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        if self.pos >= len(self.schedule):
            if self.lenient:
                return keep_running(view, runnable)
            cur = view.current
            return cur if cur is not None and cur in runnable else runnable[0]
        want = self.schedule[self.pos]
        self.pos += 1
        if want in runnable:
            return want
        if self.lenient:
            return keep_running(view, runnable)
        names = view.names
        who = names[want] if want < len(names) else f"#{want}"
        raise ScheduleDiverged(view.step, f"schedule wants {who}, which is not runnable "
                               f"(runnable: {[names[i] for i in runnable]})")


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

    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        while self.i < len(self.runs):
            t = self.runs[self.i][0]
            if self.left > 0 and t in runnable:
                self.left -= 1
                return t
            self.i += 1
            if self.i < len(self.runs):
                self.left = self.runs[self.i][1]
        return keep_running(view, runnable)


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

    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        names = view.names
        while self.pos < len(self.script):
            d = self.script[self.pos]
            kind, name = d[0], d[1]
            idx = names.index(name)
            finished = view.finished(idx)
            done = False
            if kind == "until":
                done = finished or view.label(idx) == d[2]
            elif kind == "through":
                done = finished or (view.last_op(idx) == d[2] and self.count > 0)
            elif kind == "steps":
                done = self.count >= d[2] or finished
            elif kind == "finish":
                done = finished
            else:
                raise ValueError(f"unknown directive {d!r}")
            if done:
                self.pos += 1
                self.count = 0
                continue
            if idx not in runnable:
                if not self.strict:
                    return runnable[0]
                raise ScheduleDiverged(view.step, f"script directive {d!r}: {name} is not "
                                       f"runnable (at {view.label(idx)})")
            self.count += 1
            return idx
        return runnable[0]


class TraceStrategy(Strategy):
    """Make the controlled scheduler follow a free run's linearised trace.

    The trace names the thread of every step.  A decision that starts a thread which has
    not taken a step yet does not consume the trace (starting is not an operation); when
    the trace is used up the run is over (the free run ended there too).
    """

    def __init__(self, trace: Sequence[int]) -> None:
        self.trace = list(trace)
        self.pos = 0

    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        if self.pos >= len(self.trace):
            raise EndOfSchedule("end of the free-mode trace")
        want = self.trace[self.pos]
        names = view.names
        if want >= len(names) or want not in runnable:
            who = names[want] if want < len(names) else f"#{want}"
            raise ScheduleDiverged(view.step, f"trace wants {who} for step {self.pos + 1}, "
                                   f"which cannot run there (runnable: "
                                   f"{[names[i] for i in runnable]})")
        if view.started(want):
            self.pos += 1
        return want
