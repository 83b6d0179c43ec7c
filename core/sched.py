"""The yield-point interface between the simulated machine and whoever schedules it.

Every access the simulated machine makes to shared state is one *operation*: a yield
point followed by one atomic step.  The machine calls ``sched.op(label, arg, fn, ready)``
and never touches shared state outside ``fn``.  Whoever implements :class:`Scheduler`
decides what happens at the yield point:

* :class:`PassThrough` (the default) lets real threads run free and only makes each
  step atomic;
* the controlled scheduler of ``stress`` runs one thread at a time and picks, at every
  yield point, which thread performs its step next;
* free mode lets threads contend for real and numbers every step inside its atomic
  section, leaving a linearised trace.

``ready`` models waiting: an operation whose ``ready()`` is false cannot take its step
(a taken lock, a kick not yet acknowledged).  A controlled scheduler treats such a thread
as not runnable instead of blocking for real while it holds the baton, which is what lets
it detect a deadlock and name every thread involved.

Example::

    value = sched.op("spte.read", (sp.pfn, i), lambda: sp.spt[i])
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Protocol, TypeVar

T = TypeVar("T")


class ThreadCtx:
    """What the simulated kernel knows about the thread running it (its ``current``).

    Holds the per-thread records that lockdep and RCU need, so that assertions can be
    checked without any global lookups, plus the scenario-row stack the oracle uses to
    attribute a finding to the top-level SPTE change it happened under.
    """

    __slots__ = (
        "name", "index", "lock_mode", "rcu_depth", "rcu_sections", "row_stack",
        "rows", "attr_changes", "vcpu", "op", "pending", "last_step", "item", "lockdep_open",
        "change_root",
    )

    def __init__(self, name: str, index: int = 0) -> None:
        self.name = name
        self.index = index
        self.lock_mode: str | None = None   # None, "read" or "write": the mmu_lock held
        self.rcu_depth = 0                  # nesting of rcu_read_lock()
        self.rcu_sections = 0               # read sections entered so far (grace periods)
        self.row_stack: list[int] = []      # scenario rows being handled, outermost first
        self.rows = [0] * 15                # per-thread row counters (index 1..14)
        self.attr_changes = 0               # present->present changes with the same PFN
        self.vcpu: object | None = None     # the vCPU this thread plays, if any
        self.op: str = ""                   # label of the last operation taken
        self.pending: str = ""              # label of the operation it is waiting at
        self.last_step = 0                  # global step number of its last operation
        self.item = -1                      # workload item it works on (guest RIP, zap op)
        self.lockdep_open: Any = None       # LOCKDEP finding of the SPTE change in hand
        self.change_root: Any = None        # root finding reported in the change in hand

    def __repr__(self) -> str:
        return f"ThreadCtx({self.name!r})"


class _Current(threading.local):
    """Each thread's ``current``: made on the thread's first use (threading.local runs
    ``__init__`` once in every thread that touches it)."""

    def __init__(self) -> None:
        self.ctx = ThreadCtx(threading.current_thread().name)


_tls = _Current()

# current(): the calling thread's context (the model's ``current``), made on first use.
# A partial of getattr rather than a function: the model asks for it thousands of times a
# run, and this call runs no Python frame.
current: Callable[[], ThreadCtx] = functools.partial(getattr, _tls, "ctx")


def set_current(ctx: ThreadCtx) -> None:
    """Bind ``ctx`` to the calling thread; runners call this first thing in each thread."""
    _tls.ctx = ctx


class Scheduler(Protocol):
    """What the machine needs from a scheduler: one method and a step counter."""

    step: int

    def op(self, label: str, arg: object, fn: Callable[[], T],
           ready: Callable[[], bool] | None = None) -> T:
        """Yield, then run ``fn()`` atomically once ``ready()`` holds; return its result."""
        ...


class PassThrough:
    """Real threads run free; each operation is atomic under one machine-wide condition.

    A waiting operation really blocks on the condition and is woken by any later
    operation (operations are cheap and waits are rare, so a broadcast is simpler and
    safe).  ``wait_timeout`` bounds a wait so a model bug cannot hang a test forever.
    """

    def __init__(self, wait_timeout: float | None = None) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._waiters = 0
        self._wait_timeout = wait_timeout
        self.step = 0

    def op(self, label: str, arg: object, fn: Callable[[], T],
           ready: Callable[[], bool] | None = None) -> T:
        with self._cv:
            if ready is not None and not ready():
                self._waiters += 1
                try:
                    while not ready():
                        if not self._cv.wait(self._wait_timeout):
                            raise TimeoutError(f"{current().name} waited too long at {label}")
                finally:
                    self._waiters -= 1
            self.step += 1
            current().last_step = self.step
            result = fn()
            if self._waiters:
                self._cv.notify_all()
            return result


YIELD_HINTS = frozenset({"cond_resched", "cpu_relax"})


def _nothing() -> None:
    return None


def cpu_relax(sched: Scheduler, label: str = "cpu_relax") -> None:
    """A spin-wait hint (cpu_relax() / cond_resched()): an operation with no effect whose
    label tells a priority-based strategy that this thread is waiting for others, so it
    must not keep the CPU (a strict-priority scheduler would otherwise livelock)."""
    sched.op(label, None, _nothing)


_LABEL_CODES: dict[str, int] = {}


def label_code(label: str) -> int:
    """A stable number for an operation label (CRC-32; ``hash(str)`` varies by process)."""
    code = _LABEL_CODES.get(label)
    if code is None:
        import zlib
        code = _LABEL_CODES[label] = zlib.crc32(label.encode())
    return code


def mix(h: int, thread: int, label: str) -> int:
    """Fold one step (who, what) into a running 64-bit trace hash."""
    return (h * 1000003 + thread * 7919 + label_code(label)) & 0xFFFFFFFFFFFFFFFF


class Abort(BaseException):
    """Raised inside a model thread by a scheduler that ends the run early.

    A ``BaseException`` so that the model's own ``except Exception`` handlers (there are
    none on purpose, but a planted bug might add one) cannot swallow it.
    """
