"""Findings: what the simulated kernel reports when something goes wrong.

``KVM_BUG_ON``, ``TDX_BUG_ON``, ``WARN``, ``BUG``, lockdep failures and invariant
violations each become a :class:`Finding` with a stable signature (no addresses, steps or
thread names in it, so the same bug found by two seeds dedupes), a kind, the scenario row
and hunt path it belongs to, a message, and the context of the thread that hit it.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Callable

from .sched import ThreadCtx

KINDS = ("KVM_BUG_ON", "TDX_BUG_ON", "WARN", "BUG", "LOCKDEP", "INVARIANT", "DEADLOCK", "HANG")

# MODEL §5: the row a hunt path opens; the path label of a finding comes from its row.
ROW_PATH = {2: "a1", 4: "a2", 9: "b", 11: "c", 13: "d"}


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

    @property
    def signature(self) -> str:
        """Stable identity: kind, place, row and path; never steps, names or values."""
        return f"{self.kind}:{self.where}:row={self.row or '-'}:path={self.path or '-'}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["signature"] = self.signature
        return d


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

    def report(self, kind: str, where: str, message: str, ctx: ThreadCtx,
               row: int | None = None, path: str | None = None) -> Finding:
        assert kind in KINDS, kind
        if self.closed and kind not in ("DEADLOCK", "HANG"):
            return Finding(kind, where, message)    # not recorded
        if row is None and ctx.row_stack:
            row = ctx.row_stack[0]
        if path is None and row is not None:
            path = ROW_PATH.get(row)
        f = Finding(kind=kind, where=where, message=message, row=row, path=path,
                    step=ctx.last_step or self._step_of(), thread=ctx.name,
                    context={"mmu_lock": ctx.lock_mode, "rcu_depth": ctx.rcu_depth,
                             "op": ctx.op, "rows": list(ctx.row_stack)})
        with self._lock:
            sig = f.signature
            n = self.counts.get(sig, 0)
            self.counts[sig] = n + 1
            if n == 0:
                self.findings.append(f)
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
