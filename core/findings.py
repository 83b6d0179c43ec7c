"""Findings: what the simulated kernel reports when something goes wrong.

``KVM_BUG_ON``, ``TDX_BUG_ON``, ``WARN``, ``BUG``, lockdep failures and invariant
violations each become a :class:`Finding` with a stable signature (no addresses, steps or
thread names in it, so the same bug found by two seeds dedupes), a kind, the scenario row
and hunt path it belongs to, a message, and the context of the thread that hit it.

**The first bug is the finding.**  ``KVM_BUG_ON()`` and ``TDX_BUG_ON()`` warn only while
the VM is not yet bugged (include/linux/kvm_host.h, ``KVM_BUG_ON``:
``WARN_ON_ONCE(__ret && !(kvm)->vm_bugged)``), and a broken invariant means the machine
is in a state no correct kernel reaches.  So the first report of a run that bugs the VM
(``KVM_BUG_ON``, ``TDX_BUG_ON``, ``BUG``) or breaks an invariant becomes the run's *root*
finding, and everything reported after it in that run (more BUG_ONs, invariant breaks,
a use-after-free at teardown, a hang) is kept inside the root as its ``consequences``,
not as findings of its own: what a bugged VM does next is not a second bug.  The same
holds one level down for lockdep: the assertions nested inside one SPTE change that
already failed one (``tdh_do_no_vcpus`` and ``tdx_track`` inside a removal under the
read lock) are consequences of the first.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Callable

from .sched import ThreadCtx
from .variants import PATH_OF_ROW

# GUEST: a correct guest (a Linux TD) died or lost memory because of the host: a failed
# TDG.MEM.PAGE.ACCEPT it cannot retry (core.guest.LinuxTdGuest)
KINDS = ("KVM_BUG_ON", "TDX_BUG_ON", "WARN", "BUG", "LOCKDEP", "INVARIANT", "DEADLOCK", "HANG",
         "GUEST")
# Kinds after which the VM is bugged (or the machine broken): the run's root finding.
ROOT_KINDS = frozenset({"KVM_BUG_ON", "TDX_BUG_ON", "BUG", "INVARIANT"})
MAX_CONSEQUENCES = 50      # kept per root finding; ``consequences_total`` counts them all


@dataclass
class Finding:
    kind: str
    where: str            # the kernel/TDX function (and SEAMCALL, error) that reported it
    message: str
    row: int | None = None
    path: str | None = None
    step: int = 0
    thread: str = ""
    context: dict = field(default_factory=dict)
    # what the run reported after this, its root finding (see the module docstring):
    # {kind, where, message, step, thread, signature}, at most MAX_CONSEQUENCES of them
    consequences: list[dict] = field(default_factory=list)
    consequences_total: int = 0

    def add_consequence(self, f: "Finding", same_change: bool) -> None:
        """Keep ``f`` as a consequence; ``same_change``: it was reported by the same
        thread inside the same top-level SPTE change as this finding (the failure
        that this finding is the first report of, e.g. the KVM_BUG_ON in
        handle_changed_spte() that follows a TDX_BUG_ON in the hook it called)."""
        self.consequences_total += 1
        if len(self.consequences) < MAX_CONSEQUENCES:
            self.consequences.append({"kind": f.kind, "where": f.where, "row": f.row,
                                      "path": f.path, "message": f.message, "step": f.step,
                                      "thread": f.thread, "signature": f.signature,
                                      "same_change": same_change})

    @property
    def signature(self) -> str:
        """Stable identity: kind, place, row and path; never steps, names or values."""
        return f"{self.kind}:{self.where}:row={self.row or '-'}:path={self.path or '-'}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["signature"] = self.signature
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        """The inverse of :meth:`to_dict` (the signature is derived, not read)."""
        return cls(d["kind"], d["where"], d["message"], d.get("row"), d.get("path"),
                   d.get("step", 0), d.get("thread", ""), d.get("context", {}),
                   d.get("consequences", []), d.get("consequences_total", 0))


class Recorder:
    """Collects findings; listeners (a scheduler that stops on the first one) are told.

    Thread-safe: findings can be reported from any model thread in free mode.
    """

    def __init__(self, step_of: Callable[[], int] = lambda: 0) -> None:
        self.findings: list[Finding] = []      # the first finding of each signature
        self.counts: dict[str, int] = {}       # every occurrence, by signature
        self._lock = threading.Lock()
        self._step_of = step_of
        self.listeners: list[Callable[[Finding], None]] = []
        self.closed = False   # the run was stopped: later reports are unwinding noise
        self.root: Finding | None = None      # the run's first bug (module docstring)

    def use_clock(self, step_of: Callable[[], int]) -> None:
        """Take step numbers from ``step_of`` (the scheduler running the machine: it owns
        the clock, and binds it when it is made)."""
        self._step_of = step_of

    def report(self, kind: str, where: str, message: str, ctx: ThreadCtx,
               row: int | None = None, path: str | None = None) -> Finding:
        assert kind in KINDS, kind
        if self.closed and kind not in ("DEADLOCK", "HANG"):
            return Finding(kind, where, message)    # not recorded
        if row is None and ctx.row_stack:
            row = ctx.row_stack[0]
        if path is None and row is not None:
            path = PATH_OF_ROW.get(row)   # the row a hunt's path opens
        f = Finding(kind=kind, where=where, message=message, row=row, path=path,
                    step=ctx.last_step or self._step_of(), thread=ctx.name,
                    context={"mmu_lock": ctx.lock_mode, "rcu_depth": ctx.rcu_depth,
                             "op": ctx.op, "rows": list(ctx.row_stack)})
        with self._lock:
            parent = self.root
            if parent is None and kind == "LOCKDEP" and ctx.row_stack:
                parent = ctx.lockdep_open
            if parent is not None:
                parent.add_consequence(f, bool(ctx.row_stack) and ctx.change_root is parent)
                added = parent
            else:
                added = None
        if added is not None:
            for listener in list(self.listeners):
                listener(added)
            return f
        with self._lock:
            sig = f.signature
            n = self.counts.get(sig, 0)
            self.counts[sig] = n + 1
            if n == 0:
                self.findings.append(f)
            else:
                # the same signature again (a LOCKDEP of the same path in a later SPTE
                # change): count it, keep the first record
                f = next(x for x in self.findings if x.signature == sig)
            if kind in ROOT_KINDS:
                self.root = f
                if ctx.row_stack:
                    ctx.change_root = f
            elif kind == "LOCKDEP" and ctx.row_stack:
                ctx.lockdep_open = f
        for listener in list(self.listeners):
            listener(f)
        return f

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def signatures(self) -> set[str]:
        return {f.signature for f in self.findings}

    def of(self, kind: str, path: str | None = None) -> list[Finding]:
        return [f for f in self.findings
                if f.kind == kind and (path is None or f.path == path)]

