"""Helpers that force one chosen interleaving of the simulated machine.

Every race the tool finds can become a deterministic regression test with these: build
a VM under a :class:`~stress.controlled.ScriptStrategy`, prepare its state single-threaded
(setup calls on the main thread take their steps at once), then run the threads under the
script.

Example::

    seq = Sequencer("hunt-a1", [("through", "vcpu0", "TDH.VP.ENTER:lock"),
                                ("finish", "mapper")])
    seq.kvm.build()
    seq.run(vcpu0=seq.vcpu_trips(0, ProgramGuest((("touch", 7),))),
            mapper=lambda: seq.kvm.kvm_prefault(7))
    assert seq.found("KVM_BUG_ON", "a1")
"""
from __future__ import annotations

from typing import Callable, Sequence

from core.findings import Finding, Recorder
from core.guest import ProgramGuest
from core.invariants import report_invariants
from core.kvm import Kvm
from core.sched import current

from .controlled import ControlledScheduler
from .strategies import ScriptStrategy, Strategy


class Sequencer:
    """A VM whose threads follow ``script`` (see :class:`ScriptStrategy`), or any
    ``strategy``.

    Strict by default, as Trio's Sequencer: a directive naming a thread that cannot run
    fails the run.  ``strict=False`` lets the lowest-index runnable thread go until the
    named one can run, so one script can serve a variant where a lock makes it wait.
    """

    def __init__(self, variant: str, script: Sequence[tuple] = (), *, strict: bool = True,
                 nr_vcpus: int = 1, max_steps: int = 100_000,
                 strategy: Strategy | None = None, **kvm_kw: object) -> None:
        self.rec = Recorder()
        # ``strategy`` replaces the script (a bounded exploration drives the same setup)
        self.strategy = strategy if strategy is not None else ScriptStrategy(script,
                                                                             strict=strict)
        self.sched = ControlledScheduler(self.strategy, recorder=self.rec, max_steps=max_steps)
        self.kvm = Kvm(variant, self.sched, nr_vcpus=nr_vcpus, recorder=self.rec,
                       **kvm_kw)  # type: ignore[arg-type]

    def vcpu_trips(self, vcpu_id: int, guest: ProgramGuest, trips: int = 20) -> Callable[[], None]:
        """A vCPU thread body: enter the guest until its program is done (or ``trips``)."""
        kvm = self.kvm

        def body() -> None:
            v = kvm.vcpus[vcpu_id]
            current().vcpu = v
            for _ in range(trips):
                if not kvm.vcpu_enter_guest(v, guest) or guest.done:
                    return
        return body

    def arm_zero_step(self, vcpu_id: int, gfn: int, rip: int = 0) -> None:
        """Seven EPT violations at one RIP: the first six count, the seventh records the
        GPA and the module starts zero-step mitigation (td_exit_epf_stepping_log())."""
        for _ in range(7):
            self.kvm.module.td_exit(vcpu_id, gfn, rip)

    def run(self, **threads: Callable[[], None]) -> None:
        """Run the threads under the script; a strict script that no longer matches (a
        directive names a thread that cannot run) raises its :class:`ScheduleDiverged`."""
        self.sched.run(list(threads.items()))
        if self.sched.divergence is not None:
            raise self.sched.divergence

    def check(self) -> int:
        """Check the invariants now (a quiescent point); report violations."""
        return report_invariants(self.kvm)

    def found(self, kind: str, path: str | None = None) -> list[Finding]:
        return self.rec.of(kind, path)
