"""What the SCTBench ports are written with: shared variables, pthread mutexes and
``assert``, each access a yield point of :mod:`core.sched`.

* :class:`Var` is a shared global of the C program: every read and every write is one
  ``sched.op``.  (Globals that ``main`` sets before it creates the threads and no thread
  writes, like account's ``x, y, z``, are plain constants: no thread can race on them.)
* :class:`Mutex` is a ``pthread_mutex_t``: ``lock`` is an operation that is ready only
  while the mutex is free, so a controlled scheduler never blocks for real and sees a
  deadlock as "no runnable thread"; ``unlock`` is an operation.  The mutex remembers its
  owner, so a deadlock can be told with who holds what (:func:`holders`).
* :func:`check` is C's ``assert``: it raises :class:`AssertionError` in the thread, which
  stops the run (the controlled scheduler keeps it and ``run()`` raises it).

The same thread functions run under a peer tool (bench/bench_sctbench.py) with
:class:`Direct` in place of the scheduler and :class:`RealMutex` in place of
:class:`Mutex`: there every access is plain Python (``Var.get``/``Var.set`` are an
attribute load and store, which bytecode-level tools see) and a mutex is a real
``threading.Lock`` (which they patch).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from core.sched import Scheduler, current


class Var:
    """One shared variable of the C program; :func:`rd` and :func:`wr` access it."""
    __slots__ = ("name", "v", "read_label", "write_label")

    def __init__(self, name: str, v: Any = 0) -> None:
        self.name = name
        self.v = v
        self.read_label = f"read {name}"
        self.write_label = f"write {name}"

    def get(self) -> Any:
        return self.v

    def set(self, v: Any) -> None:
        self.v = v

    def __repr__(self) -> str:
        return f"{self.name}={self.v!r}"


def rd(s: Scheduler, var: Var) -> Any:
    """Read ``var``: one yield point."""
    return s.op(var.read_label, None, var.get)


def wr(s: Scheduler, var: Var, value: Any) -> None:
    """Write ``value`` to ``var``: one yield point."""
    s.op(var.write_label, value, lambda: var.set(value))


class _Free:
    """A mutex's lock step is ready when the mutex is free; ``holder()`` names who has
    it, for the scheduler's deadlock report."""
    __slots__ = ("m",)

    def __init__(self, m: "Mutex") -> None:
        self.m = m

    def __call__(self) -> bool:
        return self.m.free()

    def holder(self) -> str:
        return f"{self.m.name} held by {self.m.owner}"


class Mutex:
    """A ``pthread_mutex_t`` (non-recursive, default kind) as two operations."""
    __slots__ = ("name", "owner", "lock_label", "unlock_label")

    def __init__(self, name: str) -> None:
        self.name = name
        self.owner: str | None = None
        self.lock_label = f"pthread_mutex_lock(&{name})"
        self.unlock_label = f"pthread_mutex_unlock(&{name})"

    def free(self) -> bool:
        return self.owner is None

    def lock(self, s: Scheduler) -> None:
        me = current().name

        def take() -> None:
            self.owner = me
        s.op(self.lock_label, self.name, take, ready=_Free(self))

    def unlock(self, s: Scheduler) -> None:
        def give() -> None:
            self.owner = None
        s.op(self.unlock_label, self.name, give)

    def __repr__(self) -> str:
        return f"Mutex({self.name}, owner={self.owner})"


class RealMutex:
    """The same interface on a real ``threading.Lock``, for peer tools that patch it."""
    __slots__ = ("name", "_lock")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()

    def lock(self, s: Scheduler) -> None:
        self._lock.acquire()

    def unlock(self, s: Scheduler) -> None:
        self._lock.release()


class Direct:
    """A scheduler that is none: every operation just runs (for peer tools, which
    interleave the Python code themselves)."""
    step = 0

    def op(self, label: str, arg: object, fn: Callable[[], Any],
           ready: Callable[[], bool] | None = None) -> Any:
        return fn()


class State:
    """The globals of one execution; a program's factory fills it in."""

    def __init__(self) -> None:
        self.bug: str | None = None       # the failed assertion, when one failed

    def __repr__(self) -> str:
        return "State(" + ", ".join(f"{v!r}" for v in vars(self).values()
                                    if isinstance(v, (Var, Mutex))) + ")"


def check(st: State, cond: bool, what: str) -> None:
    """C's ``assert(cond)``: on failure note it in the state and raise in the thread."""
    if not cond:
        st.bug = what
        raise AssertionError(what)


def holders(st: State) -> str:
    """Who holds each mutex of ``st`` (what a deadlock report should say)."""
    held = [f"{m.name} held by {m.owner}" for m in vars(st).values()
            if isinstance(m, Mutex) and m.owner is not None]
    return ", ".join(held) or "no mutex held"


Thread = Callable[[Any, Scheduler], None]


@dataclass(frozen=True)
class Program:
    """One SCTBench program, ported.

    ``fresh(mutex)`` makes the globals of one execution (``mutex`` is the mutex class:
    :class:`Mutex`, or :class:`RealMutex` for a peer); ``threads`` are the pthreads in
    the order ``main`` creates them, each a function of (state, scheduler); ``bug`` is
    what a found bug is: ``"assert"`` (an assertion fails) or ``"deadlock"``; a fixed
    program has ``bug=None`` and must never show either.

    ``preemptions`` is the fewest preemptions of a schedule that shows the bug and
    ``depth`` its PCT depth (Burckhardt et al.: the ordering constraints a schedule must
    meet), both in this port, where ``main`` is not a thread.  ``sct_threads`` and
    ``sct_steps`` are what SCTBench's benchmarks/buggy.txt lists for the C program (its
    threads, ``main`` included, and its longest run in scheduling points).
    """
    name: str
    source: str
    fresh: Callable[..., Any]
    threads: tuple[tuple[str, Thread], ...]
    bug: str | None
    preemptions: int | None = None
    depth: int | None = None
    sct_threads: int | None = None
    sct_steps: int | None = None
    note: str = ""
    witness: tuple = field(default=())   # a ScriptStrategy script that shows the bug

    @property
    def n(self) -> int:
        return len(self.threads)
