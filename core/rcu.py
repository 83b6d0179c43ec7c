"""RCU: read sections, ``call_rcu`` and grace periods.

A grace period for a callback ends when every thread that was inside a read section at
``call_rcu`` time has left that section.  Callbacks run in the atomic step of the
``rcu_read_unlock`` that ends their grace period, or in ``rcu_barrier``.  The model's
table pages are freed this way, so a walker that still holds a page after its section
ended touches freed memory and the store reports it.
"""
from __future__ import annotations

from typing import Callable

from .findings import Recorder
from .sched import Scheduler, ThreadCtx, current


class _Callback:
    __slots__ = ("waiting", "fn", "what")

    def __init__(self, waiting: dict[str, tuple[ThreadCtx, int]], fn: Callable[[], None],
                 what: str) -> None:
        self.waiting = waiting
        self.fn = fn
        self.what = what


class Rcu:
    def __init__(self, sched: Scheduler, rec: Recorder) -> None:
        self._sched = sched
        self._rec = rec
        self.readers: dict[str, ThreadCtx] = {}
        self.pending: list[_Callback] = []
        self.grace_periods = 0

    def rcu_read_lock(self) -> None:
        """rcu_read_lock(): nests; only the outermost one is an operation."""
        ctx = current()
        if ctx.rcu_depth == 0:
            def enter() -> None:
                ctx.rcu_sections += 1
                self.readers[ctx.name] = ctx
            self._sched.op("rcu_read_lock", None, enter)
        ctx.rcu_depth += 1

    def rcu_read_unlock(self) -> None:
        """rcu_read_unlock(): leaving the outermost section may end grace periods."""
        ctx = current()
        if ctx.rcu_depth <= 0:
            self._rec.report("WARN", "rcu_read_unlock", "unbalanced rcu_read_unlock", ctx)
            return
        ctx.rcu_depth -= 1
        if ctx.rcu_depth == 0:
            def leave() -> None:
                self.readers.pop(ctx.name, None)
                self._advance()
            self._sched.op("rcu_read_unlock", None, leave)

    def call_rcu(self, fn: Callable[[], None], what: str) -> None:
        """call_rcu(): run ``fn`` once every current reader has left its section."""
        def queue() -> None:
            waiting = {name: (c, c.rcu_sections) for name, c in self.readers.items()}
            self.pending.append(_Callback(waiting, fn, what))
            self._advance()
        self._sched.op("call_rcu", what, queue)

    def rcu_barrier(self) -> int:
        """rcu_barrier(): run every callback whose grace period has ended; how many remain."""
        def barrier() -> int:
            self._advance()
            return len(self.pending)
        return self._sched.op("rcu_barrier", None, barrier)

    def _advance(self) -> None:
        # Runs inside an atomic step.  A reader has moved on when it left its section or
        # entered a later one.
        if not self.pending:
            return
        still: list[_Callback] = []
        ready: list[_Callback] = []
        for cb in self.pending:
            done = all(name not in self.readers or c.rcu_sections != section
                       for name, (c, section) in cb.waiting.items())
            (ready if done else still).append(cb)
        self.pending = still
        for cb in ready:
            self.grace_periods += 1
            cb.fn()
