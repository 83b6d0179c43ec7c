"""One seed: build the VM, run its threads under a scheduler, tear down, check.

A run is a pure function of (configuration, seed) in controlled mode: the workload, the
schedule and the injected BUSY all come from the seed's streams, so running it twice
gives the same schedule and the same trace hash.  In free mode the run leaves the trace
that the controlled scheduler can follow (``trace=``) to replay it exactly.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from core.findings import Finding, Recorder
from core.invariants import report_invariants
from core.sched import ThreadCtx, current, set_current
from core.tdx_module import PHASES
from core.variants import get_variant

from .config import RunConfig, Streams
from .controlled import CUT_SHORT, ControlledScheduler, ScheduleDiverged, Step, one_cpu
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


# PCT's horizons of a configuration are learned from up to this many PCT runs on seeds of their
# own (CALIBRATION_SEED + 2i), so it depends on the configuration alone: a seed run
# again, alone or in any campaign, gets the same k and the same schedule
CALIBRATION_RUNS = 8
CALIBRATION_SEED = 1 << 40
CALIBRATION_STEPS = 200_000     # calibration takes at most about this many steps in all
_LEARNED: dict[tuple, int] = {}


class CalibrationCut(Exception):
    """The campaign's time ran out while PCT's k was being learned."""


def learned_pct_ks(cfg: RunConfig, deadline: float | None = None,
                   stop: Callable[[], bool] | None = None) -> tuple[int, ...]:
    """PCT's horizons for ``cfg``, the one place they are computed: ``cfg.pct_ks`` if
    set, else learned once per process and configuration: the SEAMCALL windows of
    calibration runs, as Shuttle's PCT learns its step bound from the executions it made,
    kept whole (sorted) rather than reduced to their maximum.  Each run draws its k among
    them (:func:`pct_k_of`): the model's runs are bimodal (hugepage-rfc with a Linux
    guest: two thirds near 40 windows, a third near 2,100 where a 2M range is accepted
    page by page), and one k for all (the longest) would put a short run's change points
    past its end 98 times in 100.  The bound stays true: a run with horizon k finds a bug
    of depth d in its first k windows with probability at least 1/(n*k^(d-1)), so a run
    finds one in its first m windows with at least the mean of that over the horizons
    >= m (reports/confidence.py).  The budget is in steps, never in seconds (k never
    depends on the machine); past ``deadline``, or when ``stop()`` says so (a signal), it
    raises :class:`CalibrationCut`."""
    if cfg.pct_ks:
        return cfg.pct_ks
    key = tuple(sorted(cfg.with_(pct_ks=(), strategy="pct").to_dict().items()))
    ks = _LEARNED.get(key)
    if ks is None:
        ks = _LEARNED[key] = _cached_k(key) or ()
    if not ks:
        guess = pct_horizon(cfg.ops * (cfg.vcpus + cfg.zappers))
        lengths: list[int] = []
        steps = 0
        for i in range(CALIBRATION_RUNS):
            if steps >= CALIBRATION_STEPS:
                break
            if stop is not None and stop():
                raise CalibrationCut("stopped while PCT's k was being learned")
            seed = CALIBRATION_SEED + 2 * i
            strategy = PCTStrategy(Streams(seed).get("schedule"), cfg.depth, horizon=guess,
                                   sync=is_sync)
            r = run_seed(cfg.with_(strategy="pct", pct_ks=(guess,)), seed, strategy=strategy,
                         record_steps=False, deadline=deadline,
                         step_limit=min(cfg.max_steps, CALIBRATION_STEPS // 4))
            if r.cut_short:
                raise CalibrationCut("the time ran out while PCT's k was being learned")
            lengths.append(max(2, r.sync_steps))
            steps += r.steps
        ks = _LEARNED[key] = tuple(sorted(lengths))
        _cache_k(key, list(ks))
    return ks


def pct_k_of(cfg: RunConfig, seed: int) -> int:
    """The horizon seed ``seed`` runs PCT with: one of the configuration's learned
    horizons, drawn from the seed's own stream."""
    ks = learned_pct_ks(cfg)
    return ks[Streams(seed).get("pct_k").randrange(len(ks))]


def _k_cache_file():
    from pathlib import Path
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "tdx-stress" / "pct_ks.json"


def _k_cache_key(key: tuple) -> str:
    """The model's hash and the configuration: k is a function of these alone, so a
    cached k is the one calibration would learn again."""
    from .repro import model_hash
    return f"{model_hash()}:{json.dumps(key)}"


def _cached_k(key: tuple) -> tuple[int, ...] | None:
    try:
        ks = json.loads(_k_cache_file().read_text())[_k_cache_key(key)]
        return tuple(int(k) for k in ks) if ks else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_k(key: tuple, k: list[int]) -> None:
    """Keep a learned k for later processes (best effort: a cache, never required)."""
    f = _k_cache_file()
    try:
        try:
            known = json.loads(f.read_text())
            if not isinstance(known, dict) or len(known) > 1000:
                known = {}
        except (OSError, ValueError):
            known = {}
        known[_k_cache_key(key)] = k
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, f)
    except OSError:
        pass


def with_learned_pct_ks(cfg: RunConfig, deadline: float | None = None,
                        stop: Callable[[], bool] | None = None) -> RunConfig:
    """``cfg`` with PCT's horizons fixed (learned if empty), for a campaign's workers."""
    if cfg.mode != "controlled" or cfg.strategy not in ("pct", "portfolio") or cfg.pct_ks:
        return cfg
    return cfg.with_(pct_ks=learned_pct_ks(cfg, deadline, stop))


def run_seed(cfg: RunConfig, seed: int, *, stop_on: StopOn | None = None,
             schedule: list[int] | None = None, trace: list[int] | None = None,
             workload: Workload | None = None, lenient: bool = False,
             strategy: Strategy | None = None, step_limit: int | None = None,
             record_steps: bool = True, teardown: bool = True,
             deadline: float | None = None, trace_hash: bool = True) -> RunResult:
    """Run one seed.  ``schedule`` replays a controlled run's decisions (``lenient``:
    decisions that cannot be followed fall back instead of diverging); ``trace`` follows
    a free run's linearised trace under the controlled scheduler; ``workload`` replaces
    the one the seed would generate (a shrunk repro carries its own).
    ``trace_hash=False``: a controlled run keeps no trace hash (``trace_hash`` is "";
    a campaign's workers report none)."""
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
                                   horizon=pct_k_of(cfg, seed), sync=is_sync)
        sched = ControlledScheduler(strategy, max_steps=step_limit or cfg.max_steps,
                                    recorder=rec, record_steps=record_steps,
                                    deadline=deadline, trace_hash=trace_hash)
    if stop_on is not None:
        def listener(f: Finding) -> None:
            if stop_on(f):
                sched.abort(f"stop on {f.signature}")
        rec.listeners.append(listener)

    # a controlled run, set-up and teardown too, on the CPU it starts on (one_cpu());
    # free mode's threads stay free to run anywhere
    pinned = one_cpu() if isinstance(sched, ControlledScheduler) else nullcontext()
    with pinned:
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
        schedule=list(sched.decisions),
        trace_hash="" if sched.trace_hash is None else f"{sched.trace_hash:016x}",
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
                 progress: Callable | None = None
                 ) -> tuple[RunResult | None, list[RunResult], "Exploration"]:
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


__all__ = ["RunResult", "run_seed", "learned_pct_ks", "with_learned_pct_ks", "pct_k_of",
           "CalibrationCut", "explore_seed", "hunt_stop", "ScheduleDiverged"]
