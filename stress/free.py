"""Free mode: the threads really contend.

The GIL switch interval is lowered and short seeded stalls are injected at yield points
(as KCSAN's delays and rr's chaos mode do), so the OS and the interpreter decide the
interleaving.  Each operation still runs atomically under one machine-wide condition and
takes a global sequence number *inside* that atomic section, so the run leaves a
linearised trace: the thread that took every step, in order.  A failing free run is
replayed exactly by the controlled scheduler following that trace
(:class:`stress.strategies.TraceStrategy`).

Waiting is real here (a condition wait), and a deadlock is still exact, not a time-out:
when every live thread waits on an operation that is not ready, nobody can make one
ready again.
"""
from __future__ import annotations

import random
import sys
import threading
import time
from typing import Callable, Sequence, TypeVar

from core.findings import Recorder
from core.sched import Abort, ThreadCtx, current, mix, set_current

from .controlled import CUT_SHORT, Step

T = TypeVar("T")


class FreeScheduler:
    """Real contention, linearised trace; same ``op`` interface as the others."""

    def __init__(self, *, stall_rate: float = 0.05, seed: int = 0, max_steps: int = 100_000,
                 recorder: Recorder | None = None, switch_interval: float = 1e-5,
                 record_labels: bool = True, record_trace: bool = True,
                 deadline: float | None = None) -> None:
        self.stall_rate = stall_rate
        self.seed = seed
        self.max_steps = max_steps
        self.rec = recorder
        self.switch_interval = switch_interval
        self.record_labels = record_labels
        self.record_trace = record_trace
        self.deadline = deadline          # as the controlled scheduler's
        self.step = 0
        self.trace: list[int] = []          # thread index of every step
        self.trace_hash = 0
        self.labels: list[str] = []
        self.aborting = False
        self.abort_reason = ""
        self._cv = threading.Condition(threading.Lock())
        # thread index -> (label, ready) of the operation it waits at
        self._waiting: dict[int, tuple[str, Callable[[], bool]]] = {}
        self._live = 0
        self._workers: dict[int, ThreadCtx] = {}
        self._stalls: dict[int, random.Random] = {}
        self.names: list[str] = []
        self.errors: list[tuple[str, BaseException]] = []
        # what a controlled run also reports, for one interface: free runs are neither
        # diverged nor preempted by a strategy, and have no decision items
        self.divergence = None
        self.preemptions = 0
        self.items: list[int] = []
        if recorder is not None:
            recorder.use_clock(lambda: self.step)

    @property
    def decisions(self) -> list[int]:
        """What replays this run: the linearised trace (thread of every step)."""
        return self.trace

    @property
    def steps(self) -> list[Step]:
        """The step log, from the trace and its labels (no arguments or results)."""
        return [Step(i + 1, t, lbl, None)
                for i, (t, lbl) in enumerate(zip(self.trace, self.labels, strict=False))]

    def thread_contexts(self) -> list[ThreadCtx]:
        return list(self._workers.values())

    def run(self, threads: Sequence[tuple[str, Callable[[], None]]],
            join_timeout: float = 120.0) -> None:
        self.names = [n for n, _ in threads]
        self._live = len(threads)
        ts = []
        for i, (name, fn) in enumerate(threads):
            ctx = ThreadCtx(name, i)
            self._stalls[i] = random.Random(f"tdx-stress:{self.seed}:stall:{i}")
            t = threading.Thread(target=self._body, args=(ctx, fn), name=name, daemon=True)
            ts.append(t)
        old = sys.getswitchinterval()
        sys.setswitchinterval(self.switch_interval)
        try:
            for t in ts:
                t.start()
            deadline = time.monotonic() + join_timeout
            for t in ts:
                t.join(max(0.0, deadline - time.monotonic()))
        finally:
            sys.setswitchinterval(old)
        if self.errors:
            name, err = self.errors[0]
            raise RuntimeError(f"model thread {name} raised") from err

    def _body(self, ctx: ThreadCtx, fn: Callable[[], None]) -> None:
        set_current(ctx)
        self._workers[threading.get_ident()] = ctx
        try:
            fn()
        except Abort:
            pass
        except BaseException as e:
            self.errors.append((ctx.name, e))
            self.abort(f"{ctx.name} raised {type(e).__name__}: {e}")
        finally:
            with self._cv:
                self._live -= 1
                self._check_deadlock()
                self._cv.notify_all()

    def abort(self, reason: str) -> None:
        with self._cv:
            if not self.aborting:
                self.aborting = True
                self.abort_reason = reason
                if self.rec is not None:
                    self.rec.closed = True
            self._cv.notify_all()

    def _check_deadlock(self) -> None:
        # called with the condition held
        # A waiter that was notified but has not re-checked yet is still listed, so a
        # deadlock is: every live thread listed *and* no listed condition true now.
        if not self._live or len(self._waiting) != self._live or self.aborting:
            return
        if any(ready() for _, ready in self._waiting.values()):
            return
        names = ", ".join(f"{self.names[i]} waits at {lbl}"
                          for i, (lbl, _) in sorted(self._waiting.items()))
        if self.rec is not None:
            ctx = next(iter(self._workers.values()), ThreadCtx("scheduler"))
            self.rec.report("DEADLOCK", "scheduler", f"no runnable thread: {names}", ctx)
        self.aborting = True
        self.abort_reason = f"deadlock: {names}"
        self._cv.notify_all()

    def op(self, label: str, arg: object, fn: Callable[[], T],
           ready: Callable[[], bool] | None = None) -> T:
        ctx = self._workers.get(threading.get_ident())
        if ctx is None:                      # setup or teardown on the main thread
            with self._cv:
                self.step += 1
                current().last_step = self.step
                return fn()
        if self.aborting:
            raise Abort()
        rng = self._stalls[ctx.index]
        if self.stall_rate and rng.random() < self.stall_rate:
            # a short stall: give the other threads the interpreter for a while
            for _ in range(rng.randrange(1, 4)):
                time.sleep(0)
        with self._cv:
            if ready is not None and not ready():
                self._waiting[ctx.index] = (label, ready)
                self._check_deadlock()
                while not self.aborting and not ready():
                    self._cv.wait()
                self._waiting.pop(ctx.index, None)
            if self.aborting:
                raise Abort()
            self.step += 1
            ctx.last_step = self.step
            ctx.op = label
            if self.record_trace:
                self.trace.append(ctx.index)
                self.trace_hash = mix(self.trace_hash, ctx.index, label)
                if self.record_labels:
                    self.labels.append(label)
            result = fn()
            if self._waiting:
                self._cv.notify_all()
            if self.deadline is not None and not self.step & 1023 and not self.aborting \
                    and time.monotonic() > self.deadline:
                self.aborting = True
                self.abort_reason = CUT_SHORT
                if self.rec is not None:
                    self.rec.closed = True
                self._cv.notify_all()
            if self.step >= self.max_steps:
                if self.rec is not None:
                    self.rec.report("HANG", "scheduler",
                                    f"no end after {self.step} steps in free mode", ctx)
                self.aborting = True
                self.abort_reason = f"hang after {self.step} steps"
                self._cv.notify_all()
            return result
