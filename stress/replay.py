"""Replaying a repro: the one home of it, for ``tdx-stress replay``, the shrinker, the
swim lanes of a campaign, the pytest plugin and the tests.

A repro is replayed *exactly* first: a free run's trace followed by the controlled
scheduler, else the controlled run's schedule, with the repro's own workload, stopping
at its finding.  When the exact replay diverges (the schedule no longer fits the model,
for instance after a fix elsewhere shifted the steps) and ``lenient`` is asked for, it is
replayed again *by runs* ("give thread T its next n steps", the shrinker's lenient
replay): if the bug is still there it usually still fires, and a regression test must
not pass merely because the steps moved.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.findings import Finding

from .repro import Repro
from .runner import RunResult, run_seed
from .strategies import RunReplayStrategy


@dataclass
class ReplayResult:
    """How a replay went: the run it ended with, the repro's finding if it fired there,
    and how it was replayed (``"exact replay"`` or ``"lenient replay"``)."""
    repro: Repro
    run: RunResult
    hit: Finding | None
    how: str
    exact_divergence: str | None   # why the exact replay diverged, if it did

    @property
    def fired(self) -> bool:
        return self.hit is not None

    @property
    def same_step(self) -> bool:
        """The finding fired exactly where the repro says (an exact reproduction)."""
        return self.hit is not None and self.hit.step == self.repro.step

    @property
    def reason(self) -> str:
        """What happened, when it was not a plain exact reproduction: why the replay did
        not fire the finding, or that only the lenient replay did ("" otherwise)."""
        if self.how == "exact replay" and self.hit is not None:
            return ""
        if self.exact_divergence is None:
            return f"the exact replay ran {self.run.steps} steps to its end without it"
        kind = "trace" if self.repro.trace is not None else "schedule"
        exact = f"the exact {kind} diverged ({self.exact_divergence})"
        if self.how != "lenient replay":
            return exact
        return f"{exact}; a lenient replay by runs " + (
            "fired it" if self.hit is not None else f"ran {self.run.steps} steps without it")


def replay(rp: Repro, *, variant: str | None = None, lenient: bool = False,
           record_steps: bool = True) -> ReplayResult:
    """Replay ``rp`` (against ``variant`` instead of its own, if given): exactly, then,
    if ``lenient`` and the exact replay diverged without firing, by runs."""
    cfg = rp.config if variant is None else rp.config.with_(variant=variant).validate()
    ctl = cfg.with_(mode="controlled")

    def stop(f: Finding) -> bool:
        return f.signature == rp.signature

    if rp.trace is not None:
        r = run_seed(ctl, rp.seed, trace=rp.trace, workload=rp.workload, stop_on=stop,
                     record_steps=record_steps)
    else:
        r = run_seed(ctl, rp.seed, schedule=rp.schedule, workload=rp.workload, stop_on=stop,
                     record_steps=record_steps)
    hit = _hit(r, rp)
    out = ReplayResult(rp, r, hit, "exact replay", r.divergence)
    if hit is None and r.divergence and lenient:
        recorded = rp.trace if rp.trace is not None else rp.schedule
        r = run_seed(ctl, rp.seed, strategy=RunReplayStrategy(recorded or []),
                     workload=rp.workload, stop_on=stop, record_steps=record_steps)
        out = ReplayResult(rp, r, _hit(r, rp), "lenient replay", out.exact_divergence)
    return out


def _hit(r: RunResult, rp: Repro) -> Finding | None:
    return next((f for f in r.findings if f.signature == rp.signature), None)


def lane_for_repro(repro: dict, last: int = 40) -> str | None:
    """The swim lane of a repro (a ``tdx-stress/repro/1`` dict), or None when its replay
    diverges or does not fire the finding."""
    from reports.swimlane import render
    rp = Repro(repro)
    got = replay(rp)
    if got.run.divergence or got.hit is None:
        return None
    return render(got.run.step_log, got.run.threads, got.hit, last=last,
                  consequences=rp.finding.get("consequences") or [])


__all__ = ["ReplayResult", "replay", "lane_for_repro"]
