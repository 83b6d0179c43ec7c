"""One execution of a ported program under the controlled scheduler, and what it showed.

:func:`execute` runs the program's threads under a :class:`ControlledScheduler` with
the given strategy and reads the outcome the way a campaign does: an assertion that
failed in a thread is what ``run()`` raises; a deadlock and a hang are the scheduler's
DEADLOCK and HANG findings in the run's :class:`Recorder`.  A run that returns with a
thread not finished and none of these is reported as UNFINISHED: the scheduler should
never return that as clean (issue 14, point 5).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from core.findings import Recorder
from stress.controlled import ControlledScheduler
from stress.strategies import Strategy

from .common import Program


@dataclass
class Outcome:
    """What one execution showed.  ``kind``: None (clean), ``"assert"``,
    ``"deadlock"``, ``"hang"`` or ``"unfinished"``; ``decisions``: scheduling decisions
    made after the first (what PCT counts as its steps)."""
    kind: str | None
    detail: str
    steps: int
    decisions: int
    preemptions: int

    def shows(self, program: Program) -> bool:
        """This execution shows ``program``'s bug (a fixed program's: anything)."""
        if program.bug is None:
            return self.kind is not None
        return self.kind == program.bug


def execute(program: Program, strategy: Strategy, *, max_steps: int = 100_000,
            join_timeout: float = 10.0) -> Outcome:
    st = program.fresh()
    rec = Recorder()
    sched = ControlledScheduler(strategy, max_steps=max_steps, recorder=rec,
                                record_steps=False)
    kind: str | None = None
    detail = ""
    try:
        sched.run([(name, partial(fn, st, sched)) for name, fn in program.threads],
                  join_timeout=join_timeout)
    except RuntimeError as e:
        if not isinstance(e.__cause__, AssertionError):
            raise
        kind, detail = "assert", f"{e}: assertion {e.__cause__} failed"
    for f in rec.findings:
        if f.kind in ("DEADLOCK", "HANG") and kind is None:
            kind = f.kind.lower()
            # the scheduler's report names the waiting threads and who holds what
            detail = f.message.splitlines()[0]
    if kind is None:
        left = [n for i, n in enumerate(sched.thread_names()) if not sched.view.finished(i)]
        if left:
            kind = "unfinished"
            detail = (f"run() returned with {', '.join(left)} not finished and no "
                      f"finding (abort reason: {sched.abort_reason!r})")
    return Outcome(kind, detail, sched.step, max(0, len(sched.decisions) - 1),
                   sched.preemptions)
