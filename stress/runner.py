"""One seed: build the VM, run its threads under a scheduler, tear down, check.

A run is a pure function of (configuration, seed) in controlled mode: the workload, the
schedule and the injected BUSY all come from the seed's streams, so running it twice
gives the same schedule and the same trace hash.  In free mode the run leaves the trace
that the controlled scheduler can follow (``trace=``) to replay it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from core.findings import Finding, Recorder
from core.invariants import report_invariants
from core.sched import ThreadCtx, current, set_current
from core.tdx_module import PHASES
from core.variants import get_variant

from .config import RunConfig, Streams
from .controlled import CUT_SHORT, ControlledScheduler, ScheduleDiverged, Step
from .free import FreeScheduler
from .strategies import (
    PCTStrategy,
    RandomStrategy,
    ReplayStrategy,
    Strategy,
    TraceStrategy,
    is_sync,
    pct_horizon,
)
from .workload import Running, Workload, generate, new_vm, vcpu_role, zapper_role

if TYPE_CHECKING:
    from .bounded import Exploration

StopOn = Callable[[Finding], bool]


@dataclass
class RunResult:
    seed: int
    config: RunConfig
    findings: list[Finding]
    counts: dict[str, int]
    rows: list[int]
    attr_changes: int
    busy: dict[str, int]
    steps: int
    schedule: list[int]              # controlled: the decisions; free: the trace
    trace_hash: str
    threads: list[str]
    step_log: list[Step] = field(default_factory=list)
    abort_reason: str = ""
    divergence: str | None = None
    workload: Workload | None = None
    vm_bugged: bool = False
    preemptions: int = 0
    zero_step_arms: int = 0
    pct_k: int = 0                   # PCT: the horizon its change points were drawn over
    sync_steps: int = 0              # PCT: the steps of this run that count towards k
    decision_items: list[int] = field(default_factory=list)  # record_steps: see shrink.py
    vcpu_stats: list[dict] = field(default_factory=list)
    vm_killed: str | None = None     # kvm_vm_dead() without a bug (the guest's or VMM's doing)
    seamcalls: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> name -> n
    rows_by_phase: dict[str, list[int]] = field(default_factory=dict)   # phase -> rows

    @property
    def failed(self) -> bool:
        return bool(self.findings)

    @property
    def cut_short(self) -> bool:
        """The campaign's time ran out in the middle of this run."""
        return self.abort_reason == CUT_SHORT


def hunt_stop(variant: str) -> StopOn:
    """The finding a hunt variant is after (docs/model.md §6), for --stop-on-first."""
    v = get_variant(variant)
    if v.as_designed:
        return lambda f: f.kind not in ("LOCKDEP",)
    return v.hunt_hit


def run_seed(cfg: RunConfig, seed: int, *, stop_on: StopOn | None = None,
             schedule: list[int] | None = None, trace: list[int] | None = None,
             workload: Workload | None = None, lenient: bool = False,
             strategy: Strategy | None = None, step_limit: int | None = None,
             record_steps: bool = True, teardown: bool = True,
             deadline: float | None = None) -> RunResult:
    """Run one seed.  ``schedule`` replays a controlled run's decisions (``lenient``:
    decisions that cannot be followed fall back instead of diverging); ``trace`` follows
    a free run's linearised trace under the controlled scheduler; ``workload`` replaces
    the one the seed would generate (a shrunk repro carries its own)."""
    streams = Streams(seed)
    if workload is None:
        workload = generate(cfg, streams.get("workload"))
    rec = Recorder()
    sched: ControlledScheduler | FreeScheduler
    if cfg.mode == "free" and schedule is None and trace is None:
        sched = FreeScheduler(stall_rate=cfg.stall_rate, seed=seed, max_steps=cfg.max_steps,
                              recorder=rec, record_labels=record_steps, deadline=deadline)
    else:
        if strategy is not None:
            pass
        elif trace is not None:
            strategy = TraceStrategy(trace)
        elif schedule is not None:
            strategy = ReplayStrategy(schedule, lenient=lenient)
        elif cfg.strategy == "bounded":
            raise ValueError("a bounded configuration runs through explore_seed()")
        elif cfg.strategy_of(seed) == "random":
            strategy = RandomStrategy(streams.get("schedule"))
        else:
            strategy = PCTStrategy(streams.get("schedule"), cfg.depth,
                                   horizon=pct_horizon(cfg.ops * (cfg.vcpus + cfg.zappers)),
                                   sync=is_sync)
        sched = ControlledScheduler(strategy, max_steps=step_limit or cfg.max_steps,
                                    recorder=rec, record_steps=record_steps,
                                    deadline=deadline)
    if stop_on is not None:
        def listener(f: Finding) -> None:
            if stop_on(f):
                sched.abort(f"stop on {f.signature}")
        rec.listeners.append(listener)

    main_ctx = current()
    setup_ctx = ThreadCtx("setup")      # building the TD links tables: rows count too
    set_current(setup_ctx)
    try:
        kvm = new_vm(cfg, sched, rec, streams.get("busy"), len(workload.programs),
                     streams.get("signal"))
        kvm.build(workload.initial)
        max_trips = 3000  # entries without progress before a vCPU is called livelocked
        running = Running(len(workload.zaps))
        threads = [(f"vcpu{i}", vcpu_role(kvm, i, prog, max_trips, running))
                   for i, prog in enumerate(workload.programs)]
        threads += [(f"zapper{j}", zapper_role(kvm, script, running))
                    for j, script in enumerate(workload.zaps)]
        sched.run(threads)
        workers = sched.thread_contexts()
        stopped = sched.aborting
        set_current(ThreadCtx("teardown"))
        teardown_ctx = current()
        if not stopped:
            report_invariants(kvm)
            if teardown:
                kvm.kvm_destroy_vm()
                report_invariants(kvm, final=True)
    finally:
        set_current(main_ctx)

    rows = [0] * 15
    attr = 0
    rows_by_phase = {p: [0] * 15 for p in PHASES}
    for phase, ctxs in zip(PHASES, ([setup_ctx], workers, [teardown_ctx]), strict=True):
        for ctx in ctxs:
            for i in range(15):
                rows[i] += ctx.rows[i]
                rows_by_phase[phase][i] += ctx.rows[i]
            attr += ctx.attr_changes
    divergence = str(sched.divergence) if sched.divergence else None
    return RunResult(
        seed=seed, config=cfg, findings=list(rec.findings), counts=dict(rec.counts),
        rows=rows, attr_changes=attr, busy=dict(kvm.module.busy), steps=sched.step,
        zero_step_arms=kvm.module.zero_step_arms,
        vcpu_stats=[dict(v.stats) for v in kvm.vcpus], vm_killed=kvm.vm_killed,
        seamcalls={p: dict(c) for p, c in kvm.module.calls_by_phase.items()},
        rows_by_phase=rows_by_phase,
        schedule=list(sched.decisions), trace_hash=f"{sched.trace_hash:016x}",
        threads=[n for n, _ in threads], step_log=sched.steps if record_steps else [],
        abort_reason=sched.abort_reason, divergence=divergence, workload=workload,
        vm_bugged=kvm.vm_bugged,
        preemptions=sched.preemptions,
        pct_k=strategy.horizon if isinstance(strategy, PCTStrategy) else 0,
        sync_steps=strategy.sync_steps if isinstance(strategy, PCTStrategy) else 0,
        decision_items=list(sched.items),
    )


# the most executions one seed's bounded walk may take; past it the walk is incomplete
BOUNDED_CAP = 200_000


def explore_seed(cfg: RunConfig, seed: int, *, stop_on: StopOn | None = None,
                 deadline: float | None = None, max_executions: int = BOUNDED_CAP,
                 progress: Callable | None = None) -> tuple[RunResult | None, list[RunResult], "Exploration"]:
    """``--strategy bounded``: every schedule of seed ``seed``'s workload with at most
    ``cfg.preemptions`` preemptions (:mod:`stress.bounded`).  Returns the executions that
    brought a new finding (each replays from its own schedule) and what the walk did,
    after the first execution (None if none ran)."""
    from .bounded import explore
    kept: list[RunResult] = []
    first: list[RunResult] = []
    seen: set[str] = set()

    def execute(strategy: Strategy) -> tuple[list[Finding], list[int]]:
        r = run_seed(cfg, seed, strategy=strategy, record_steps=False, deadline=deadline)
        if not first:
            first.append(r)
        if any(f.signature not in seen for f in r.findings):
            seen.update(f.signature for f in r.findings)
            kept.append(r)
        return r.findings, r.schedule
    e = explore(execute, cfg.preemptions, stop_on=stop_on, deadline=deadline,
                max_executions=max_executions, progress=progress)
    return (first[0] if first else None), kept, e


__all__ = ["RunResult", "run_seed", "explore_seed", "hunt_stop", "ScheduleDiverged"]
