"""Exhaustive bounded exploration: every schedule with at most P preemptions.

Random and PCT search sample schedules; they can never say "there is no bug".  For a
small workload :class:`BoundedStrategy` runs *every* schedule whose number of
preemptions is at most ``P`` (CHESS's preemption bounding: Musuvathi and Qadeer,
"Iterative context bounding for systematic testing of multithreaded programs", PLDI
2007), one execution after another, by a depth-first walk of the decision tree that
replays the prefix it shares with the last execution and takes the next untried choice
at the deepest decision that has one.  A clean, complete walk is a statement no
probabilistic campaign can make: "all N schedules of this workload with at most P
preemptions were run (or cut as equivalent to one that was), and none fires".

**Preemptions.**  At a decision the *default* choice is the thread that gave up the
baton, if it can go on and is not at a spin hint (``cpu_relax``/``cond_resched``);
at a spin hint it is the next runnable thread after it in index order (a spinning CPU
lets the others run); if it finished or waits (a lock, a kick) there is no default.
Taking anything but an existing default costs one preemption; choices where there is no
default are free, so they are all explored.

**Free choices, deepening.**  Free choices multiply: ``n`` threads that run to their
end without a preemption can end in ``n!`` orders, and a depth-first walk meets a
preemption near the start of a run only after every order below it.  So an iterative
walk (:func:`walks`) first takes the *round-robin* choice at every free decision (the
next runnable thread after the one that stopped, in index order, as a non-preemptive
round-robin scheduler would), then allows one other choice, then any: walks with
``free=0``, ``free=1``, ``free=None``, each over the preemption bounds 0..P.  A walk
that never had to refuse a free choice for its ``free`` budget has run every schedule
of its preemption bound, and the larger budgets skip that bound.  The last walk is an
ordinary complete one; the earlier ones only make a bug with few preemptions and few
free deviations show first (SCTBench's reorder_10: after a few dozen schedules instead
of more than 10! orders of its ten threads).

**Pruning.**  Two schedules that differ only in the order of *independent* steps reach
the same state (Mazurkiewicz traces; the model is deterministic).  Each execution keeps
a hash of its happens-before graph (every step with its conflicting predecessors, a
sum over steps, so the order of independent steps does not change it); a decision
reached with a graph already seen, at no greater preemption cost, cannot lead anywhere
the earlier visit did not, and the execution stops there ("pruned").  That is
happens-before graph caching, as CHESS does it (Musuvathi et al., "Finding and
reproducing Heisenbugs in concurrent programs", OSDI 2008), rather than sleep sets:
sleep sets combined with a preemption bound are unsound (Coons, Musuvathi, McKinley,
"Bounded partial-order reduction", OOPSLA 2013), while a cached graph carries its own
cost.  Costs differ after the first decision only by who ran last, so a graph seen
with the same thread running last prunes at equal cost and one seen with another
prunes at one more preemption.

**Independence is conservative.**  Only the operations :func:`model_footprint` lists
declare what they touch (an SPTE, the mmu_lock, one vCPU's mode and requests, a
thread's own RCU/SRCU section, a flag); two of them commute when they touch different
objects or both only read.  Every other operation (SEAMCALLs, the guest's TDCALLs,
RCU callbacks, requests to all vCPUs, thread start and exit) conflicts with every
operation.  A wrong "independent" could prune a schedule that matters; a missing one
only costs time.  ``tests/test_bounded.py`` checks that pruning loses no outcome on
the hunts' workloads.

Example::

    >>> from stress.bounded import BoundedStrategy
    >>> b = BoundedStrategy(preemptions=1)
    >>> b.preemptions, b.complete
    (1, False)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Callable, Hashable, Iterator

from core.findings import Finding
from core.sched import YIELD_HINTS, label_code

from .controlled import EndOfSchedule, SchedulerView
from .strategies import Strategy

MASK = (1 << 64) - 1
_GLOBAL = ("*",)         # the object every undeclared operation writes and every SPTE
                         # access reads: it orders them against everything
PRUNED = "pruned: equivalent to a schedule already explored"
# the most happens-before graphs one walk keeps for pruning (about 150 bytes each once
# seen, 600 seen twice): a walk of a large workload reaches a new graph at nearly every
# decision, several hundred an execution
CACHE_CAP = 1_000_000


class NonDeterminism(RuntimeError):
    """Replaying a prefix did not reach the same decision: the program under test
    depends on something besides the schedule (time, hash order, a global RNG)."""


# What the declared operations touch: label -> (object of the argument, writes).  Each
# was read for what its step does and for every other step that writes the same state
# (all of them declared here or undeclared); see the module docstring.
_PER_VCPU_READS = ("guest.irq_pending", "kvm_check_request",
                   "kvm_test_request(KVM_REQ_VM_DEAD)")
_FLAGS = {
    # flag read -> written only by undeclared steps (kvm_vm_bugged, kvm_vm_dead,
    # vmm_stop_vm) or by the declared writer beside it
    "READ(kvm_run->immediate_exit)": (("vmm_stopped",), False),
    "READ(vm_dead)": (("vm_dead",), False),
    "READ_ONCE(wait_for_sept_zap)": (("wait_for_sept_zap",), False),
    "WRITE_ONCE(wait_for_sept_zap)": (("wait_for_sept_zap",), True),
    "mmu_lock.needbreak": (("mmu_lock",), False),
}


def model_footprint(thread: int, label: str, arg: object) -> tuple[Hashable, bool] | None:
    """What one operation of the model touches, ``(object, writes)``, or None for
    "everything" (the default, always safe).

    * ``spte.*``: the entry ``sp.spt[i]`` (the step also reads ``sp.freed``, which only
      a table-freeing path writes, under an undeclared step); a read only reads;
    * ``mmu_lock.*``: the lock (readers, writer, queue: its wait steps are ready or not
      by that state alone); ``needbreak`` reads it;
    * ``vcpu->mode``: that vCPU's mode, IPI flag and exit count; ``guest.irq_pending``,
      ``kvm_check_request`` and ``kvm_test_request`` read that vCPU's requests and IPI
      flag (requests are posted only by undeclared steps);
    * ``srcu_read_lock``/``unlock``: the thread's own SRCU nesting; ``rcu_read_lock``: the
      thread's own RCU section (``rcu_read_unlock`` may run callbacks: undeclared);
    * the flags of ``_FLAGS``.
    """
    if label.startswith("spte."):
        if isinstance(arg, tuple) and len(arg) >= 2:
            sp, i = arg[0], arg[1]
            pfn = getattr(sp, "pfn", None)
            if pfn is not None:
                return (("spte", pfn, sp.level, sp.is_mirror, i), label != "spte.read")
        return None
    if label.startswith("mmu_lock."):
        return (("mmu_lock",), label != "mmu_lock.needbreak")
    if label == "vcpu->mode" and isinstance(arg, tuple):
        return (("vcpu", arg[0]), True)
    if label in _PER_VCPU_READS and isinstance(arg, int):
        return (("vcpu", arg), False)
    if label in ("srcu_read_lock", "srcu_read_unlock"):
        return (("srcu", arg), True)
    if label == "rcu_read_lock":
        return (("rcu", thread), True)
    return _FLAGS.get(label)


class _Node:
    """One decision of the walk: what could run, what each choice costs (preemptions or
    delays, and free deviations), what is chosen and what is left to try."""
    __slots__ = ("runnable", "prices", "fprices", "chosen", "todo")

    def __init__(self, runnable: list[int], prices: dict[int, int],
                 fprices: dict[int, int] | None) -> None:
        self.runnable = runnable
        self.prices = prices
        self.fprices = fprices
        self.chosen = -1
        self.todo: list[int] = []


class BoundedStrategy(Strategy):
    """Depth-first exploration of every schedule with at most ``preemptions``
    preemptions, one execution per :meth:`next_execution`; see the module docstring.

    Use::

        b = BoundedStrategy(2)
        while b.next_execution():
            run the program once with ``b`` as its strategy
        b.complete   # True: every schedule was run or pruned
    """

    def __init__(self, preemptions: int, *,
                 footprint: Callable[[int, str, object], tuple[Hashable, bool] | None]
                 = model_footprint, prune: bool = True, exit_conflicts: bool = True,
                 bound: str = "preemptions", free: int | None = None) -> None:
        # exit_conflicts: a thread's end conflicts with everything (the model's threads
        # update shared bookkeeping just before they end: the running-zapper count);
        # a program whose threads end without touching anything may say False
        self.exit_conflicts = exit_conflicts
        if bound not in ("preemptions", "delays"):
            raise ValueError(f"unknown bound {bound!r}: preemptions or delays")
        self.bound = bound
        self.preemptions = preemptions      # the budget, in preemptions or delays
        if free is not None and (bound != "preemptions" or free < 0):
            raise ValueError("a free-choice budget goes with a preemption bound, >= 0")
        self.free = free                    # deviations from round robin at free choices
        self.cut = False                    # a free choice was refused for that budget
        self._slack = 1
        self.footprint = footprint
        self.prune = prune
        self.path: list[_Node] = []
        # happens-before hash -> the costs it was reached at (see _seen): one visit is
        # kept as a (thread, preemptions, free) tuple, a fifth of a dict of lists
        self.cache: dict[int, tuple[int, int, int] | dict[int, list[tuple[int, int]]]] = {}
        self.cache_full = False      # CACHE_CAP reached: later graphs are not kept
        self.executions = 0          # executions started
        self.pruned = 0              # of them, stopped as equivalent to an earlier one
        self.complete = False
        self.max_depth = 0
        self._started = False
        self._reset()

    # ------------------------------------------------------------- per execution
    def _reset(self) -> None:
        self.pos = 0
        self.cost = 0
        self.fcost = 0
        self.hb = 0
        self.events: dict[int, int] = {}             # thread -> steps taken
        self.objects: dict[Hashable, tuple[tuple[int, int], list]] = {}
        self.exited: set[int] = set()
        self.was_pruned = False

    def next_execution(self) -> bool:
        """Prepare the next execution; False once every schedule has been explored."""
        if not self._started:
            self._started = True
            self.executions += 1
            return True
        self.max_depth = max(self.max_depth, self.pos)
        if self.pos < len(self.path):
            raise NonDeterminism(
                f"an execution ended after {self.pos} decisions while replaying a prefix "
                f"of {len(self.path)}: the program depends on something besides the "
                "schedule")
        while self.path:
            node = self.path[-1]
            if node.todo:
                node.chosen = node.todo.pop(0)
                break
            self.path.pop()
        if not self.path:
            self.complete = True
            return False
        self._reset()
        self.executions += 1
        return True

    @property
    def schedules(self) -> int:
        """Executions that ran to their end (not pruned)."""
        return self.executions - self.pruned

    # ------------------------------------------------------------- the choice
    def choose(self, view: SchedulerView, runnable: list[int]) -> int:
        if self.bound == "delays" and self._slack < len(view.names) - 1:
            self._slack = len(view.names) - 1
        cur = view.current
        if cur is not None and cur not in self.exited and view.finished(cur):
            self.exited.add(cur)
            self._fold(cur, "exit", None)
        if self.pos < len(self.path):
            node = self.path[self.pos]
            if node.runnable != runnable:
                names = view.names
                raise NonDeterminism(
                    f"replaying decision {self.pos} found {[names[i] for i in runnable]} "
                    f"runnable, the first execution found {[names[i] for i in node.runnable]}"
                    ": the program depends on something besides the schedule")
        else:
            if self.prune and self._seen(cur):
                self.was_pruned = True
                self.pruned += 1
                raise EndOfSchedule(PRUNED)
            node = self._new_node(view, cur, runnable)
            self.path.append(node)
        choice = node.chosen
        self.cost += node.prices[choice]
        if node.fprices is not None:
            self.fcost += node.fprices[choice]
        self.pos += 1
        if view.started(choice):
            self._fold(choice, view.label(choice), view.arg(choice))
        else:
            self._fold(choice, "start", None)
        return choice

    def _new_node(self, view: SchedulerView, cur: int | None, runnable: list[int]) -> _Node:
        yielding = cur is not None and view.current_label in YIELD_HINTS and len(runnable) > 1
        if self.bound == "delays":
            # Emmi, Qadeer, Rakamarić, "Delay-bounded scheduling" (POPL 2011): a
            # round-robin scheduler (the running thread goes on unless it waits, ends or
            # spins); skipping j runnable threads in its order costs j delays
            start = 0 if cur is None else (cur if cur in runnable and not yielding
                                           else cur + 1)
            rr = sorted(runnable, key=lambda i: (i < start, i))
            prices = {t: j for j, t in enumerate(rr)}
        else:
            default: int | None = None
            if cur is not None and cur in runnable:
                if yielding:
                    later = [i for i in runnable if i > cur]
                    default = later[0] if later else next(i for i in runnable if i != cur)
                else:
                    default = cur
            prices = {t: 0 if default is None or t == default else 1 for t in runnable}
        fprices: dict[int, int] | None = None
        if self.free is not None:
            fprices = dict.fromkeys(runnable, 0)
            if self.bound == "preemptions" and (cur is None or cur not in runnable):
                # a free choice: round robin goes to the next runnable thread after the
                # one that stopped; any other costs one free deviation
                after = -1 if cur is None else cur
                rr = min(runnable, key=lambda i: (i <= after, i))
                fprices = {t: 0 if t == rr else 1 for t in runnable}
        node = _Node(list(runnable), prices, fprices)
        if fprices is None:
            order = sorted(runnable, key=lambda i: (prices[i], i))
            allowed = [i for i in order if self.cost + prices[i] <= self.preemptions]
        else:
            order = sorted(runnable, key=lambda i: (prices[i], fprices[i], i))
            allowed = [i for i in order if self.cost + prices[i] <= self.preemptions]
            within = [i for i in allowed if self.fcost + fprices[i] <= self.free]
            if len(within) < len(allowed):
                self.cut = True
            allowed = within
        node.chosen = allowed[0]
        node.todo = allowed[1:]
        return node

    def _seen(self, cur: int | None) -> bool:
        """Has this happens-before graph been reached before at no greater cost (see the
        module docstring)?  Records this visit otherwise.  A cost is a pair (preemptions
        or delays, free deviations): a visit prunes another whose costs are both at
        least its own."""
        who = -1 if cur is None else cur
        p, f = self.cost, self.fcost
        entry = self.cache.get(self.hb)
        if entry is None:
            # A graph not kept only costs pruning, never soundness: the schedules it
            # would have pruned run instead.  The cap bounds a long walk's memory.
            if len(self.cache) < CACHE_CAP:
                self.cache[self.hb] = (who, p, f)
            else:
                self.cache_full = True
            return False
        if type(entry) is tuple:
            w0, p0, f0 = entry
            entry = self.cache[self.hb] = {w0: [(p0, f0)], -2: [(p0, f0)]}
        mine = entry.get(who)
        if mine is not None and any(p0 <= p and f0 <= f for p0, f0 in mine):
            return True
        # after the first decision the current thread is the same: costs can differ by
        # that decision's price only (one preemption, or up to threads - 1 delays, and
        # one free deviation)
        fs = 0 if self.free is None else 1
        if any(p0 + self._slack <= p and f0 + fs <= f for p0, f0 in entry[-2]):
            return True
        for key in (who, -2):
            kept = [(p0, f0) for p0, f0 in entry.get(key, ()) if p0 < p or f0 < f]
            kept.append((p, f))
            entry[key] = kept
        return False

    def _fold(self, thread: int, label: str, arg: object) -> None:
        """Add one step to the happens-before hash: the step (thread, its ordinal, its
        label) with its conflicting predecessors on every object it touches."""
        k = self.events.get(thread, 0)
        self.events[thread] = k + 1
        me = (thread, k)
        if label == "start":
            # a thread's code before its first operation reads only what setup made
            touched: list = [(_GLOBAL, False)]
        else:
            if label == "exit":
                fp = None if self.exit_conflicts else (("exit", thread), True)
            else:
                fp = self.footprint(thread, label, arg)
            touched = [(_GLOBAL, True)] if fp is None else [(_GLOBAL, False), fp]
        preds: list = []
        for obj, writes in touched:
            last, readers = self.objects.get(obj, ((-1, -1), []))
            if writes:
                preds.append((last, tuple(sorted(readers))))
                self.objects[obj] = (me, [])
            else:
                preds.append(last)
                if obj in self.objects:
                    readers.append(me)
                else:
                    self.objects[obj] = (last, [me])
        # a real hash of the step's description: sums of Python's structured tuple
        # hashes collide for mirror-image steps (measured: 9 collisions in 18 runs)
        digest = blake2b(repr((thread, k, label_code(label), preds)).encode(),
                         digest_size=8).digest()
        self.hb = (self.hb + int.from_bytes(digest, "little")) & MASK


# ---------------------------------------------------------------------- exploring
@dataclass
class Exploration:
    """What a bounded exploration did: how many schedules ran, how many were pruned,
    whether it was complete, and the first schedule of each finding."""
    preemptions: int
    bound: int = 0                      # the bound of the last walk (iterative: 0..P)
    free: int | None = None             # its free-choice budget, when that cut it
    executions_total: int = 0           # executions of every walk
    schedules: int = 0
    pruned: int = 0
    complete: bool = False
    stopped: str = ""                   # why it stopped before the end, if it did
    max_depth: int = 0
    elapsed_s: float = 0.0
    findings: list[tuple[Finding, list[int]]] = field(default_factory=list)
    first_finding_at: int | None = None  # executions run when the first finding came

    def statement(self) -> str:
        """The completeness statement, one sentence."""
        free = ("" if self.free is None else
                " and round-robin free choices" if self.free == 0 else
                f" and at most {self.free} other free choice{'s' if self.free != 1 else ''}")
        what = (f"{self.schedules:,} schedules with at most {self.bound} "
                f"preemption{'s' if self.bound != 1 else ''}{free} run to the end, "
                f"{self.pruned:,} more cut as equivalent to one of them")
        if self.complete:
            verdict = ("none fires" if not self.findings else
                       f"{len(self.findings)} distinct finding(s)")
            return f"complete: all {what}; {verdict}."
        return f"incomplete ({self.stopped}): {what} so far."

    def to_dict(self) -> dict:
        return {"preemptions": self.preemptions, "bound": self.bound, "free": self.free,
                "executions_total": self.executions_total, "schedules": self.schedules,
                "pruned": self.pruned, "complete": self.complete, "stopped": self.stopped,
                "max_depth": self.max_depth, "elapsed_s": round(self.elapsed_s, 3),
                "first_finding_at": self.first_finding_at}


def walks(preemptions: int, *, iterative: bool = True, **kw) -> Iterator[BoundedStrategy]:
    """The walks of a bounded exploration, in order, each a fresh
    :class:`BoundedStrategy` to run until its ``next_execution()`` says False (or until
    the caller stops).  Not ``iterative``: one walk of every schedule with at most
    ``preemptions`` preemptions.  ``iterative``: the bounds 0..P with round-robin free
    choices (``free=0``), again with one other free choice allowed, again with any; a
    bound whose walk refused no free choice is complete and skipped after.  Keywords go
    to :class:`BoundedStrategy` (with ``bound="delays"`` the walks are the bounds 0..P:
    delay bounding prices every choice already)."""
    bounds = range(preemptions + 1) if iterative else (preemptions,)
    frees: tuple[int | None, ...] = (None,)
    if iterative and kw.get("bound", "preemptions") == "preemptions":
        frees = (0, 1, None)
    done: set[int] = set()
    for free in frees:
        for p in bounds:
            if p in done:
                continue
            b = BoundedStrategy(p, free=free, **kw)
            yield b
            if b.complete and not b.cut:
                done.add(p)


def explore(execute: Callable[[BoundedStrategy], tuple[list[Finding], list[int]]],
            preemptions: int, *, max_executions: int | None = None,
            stop_on: Callable[[Finding], bool] | None = None,
            deadline: float | None = None, prune: bool = True, iterative: bool = True,
            footprint: Callable[[int, str, object], tuple[Hashable, bool] | None]
            = model_footprint,
            progress: Callable[[BoundedStrategy, int], None] | None = None) -> Exploration:
    """Run ``execute(strategy)`` once per schedule until every schedule with at most
    ``preemptions`` preemptions is explored (or ``max_executions`` in all, ``deadline``
    or a finding ``stop_on`` accepts ends it first).

    ``iterative`` (CHESS's iterative context bounding) walks the bounds 0, 1, ..., P in
    turn, first with round-robin free choices (see :func:`walks`), so a bug that needs
    few preemptions is met after few executions; the figures of the statement are the
    last walk's, ``executions_total`` counts every walk.

    ``execute`` builds the program afresh, runs it under the strategy and returns its
    findings and its decisions (the schedule that replays it).  Findings are kept by
    signature, first schedule first."""
    out = Exploration(preemptions)
    seen: set[str] = set()
    t0 = time.monotonic()
    total = 0
    for b in walks(preemptions, iterative=iterative, prune=prune, footprint=footprint):
        bound = b.preemptions
        hit = False
        while True:
            if max_executions is not None and total >= max_executions:
                out.stopped = f"the cap of {max_executions:,} executions"
                break
            if deadline is not None and time.monotonic() > deadline:
                out.stopped = "out of time"
                break
            if not b.next_execution():
                break
            total += 1
            findings, schedule = execute(b)
            for f in findings:
                if f.signature not in seen:
                    seen.add(f.signature)
                    out.findings.append((f, list(schedule)))
                    if out.first_finding_at is None:
                        out.first_finding_at = total
                if stop_on is not None and stop_on(f):
                    hit = True
            if progress is not None:
                progress(b, total)
            if hit:
                out.stopped = "stop on the finding"
                break
        out.bound, out.free = bound, (b.free if b.cut else None)
        out.schedules, out.pruned = b.schedules, b.pruned
        out.complete = b.complete and bound == preemptions and out.free is None
        out.max_depth = max(out.max_depth, b.max_depth)
        if out.stopped:
            break
    out.executions_total = total
    out.elapsed_s = time.monotonic() - t0
    return out


__all__ = ["BoundedStrategy", "Exploration", "explore", "walks", "model_footprint",
           "NonDeterminism", "PRUNED"]
