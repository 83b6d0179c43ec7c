"""Campaigns: many seeds of one variant, in worker processes, with a run directory.

Seeds run in ``--workers`` spawned processes (never fork: the parent is multi-threaded);
the parent only hands out seeds, records results, samples resources from outside the
stressed processes, writes the run directory as it goes and handles signals.  So:

* every finding is in ``events.jsonl`` (flushed and fsynced) and ``findings/`` the moment
  its seed's result reaches the parent: SIGKILL loses only seeds still running;
* SIGINT/SIGTERM stop handing out seeds, abandon the running ones, write the summary and
  exit 130;
* ``--shard i/N`` takes every N-th seed of the campaign, so shards on several machines
  cover it exactly once, and ``report`` merges their directories.

Which seed is "first" for a signature is the smallest seed that fired it, so with
``--seeds`` the result does not depend on how workers raced.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core import __version__
from core.findings import Finding
from reports import rundir
from reports.summary import FindingAgg, Totals

from .config import RunConfig
from .controlled import claim_cpu
from .repro import Repro, make_repro, write_repro
from .runner import (
    CalibrationCut,
    RunResult,
    explore_seed,
    hunt_stop,
    run_seed,
    with_learned_pct_ks,
)

BUG_KINDS = ("KVM_BUG_ON", "TDX_BUG_ON")
# past --duration, how long the runs in flight get to reach a yield point and stop
DEADLINE_GRACE = 3.0


# ---------------------------------------------------------------------- worker side
_EXECUTIONS = None       # a worker's shared counter of bounded executions (progress)


def _worker_init(slot=None, executions=None) -> None:
    global _EXECUTIONS
    _EXECUTIONS = executions
    # Ctrl-C (and a hang-up) goes to the whole process group: the parent decides,
    # workers carry on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # One CPU per worker: a seed passes its baton between threads thousands of times,
    # and a handoff costs about half as much when both threads share one CPU (measured).
    # A CPU no other worker on this machine has claimed (claim_cpu()); when each is
    # claimed, the next in turn among this pool's workers.
    if slot is not None and hasattr(os, "sched_setaffinity"):
        try:
            cpus = sorted(os.sched_getaffinity(0))
            with slot.get_lock():
                turn = slot.value
                slot.value += 1
            mine = claim_cpu(cpus[turn % len(cpus):] + cpus[:turn % len(cpus)])
            os.sched_setaffinity(0, {cpus[turn % len(cpus)] if mine is None else mine})
        except (OSError, ValueError):
            pass
    # and if the parent is killed outright, workers must not live on as orphans
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
            if os.getppid() == 1:              # the parent died before prctl took effect
                os._exit(0)
        except OSError:
            pass


def worker_pool(ctx, workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` set up as a campaign's (:func:`_worker_init`: interrupts
    left to the parent, a CPU each, an end when the parent is killed outright), for the
    work around a campaign: swim lanes, shrinking, ``table``."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(ctx.Value("i", 0),))


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (one per parent process, else started
    with its first semaphore) deaf to SIGHUP, before any worker pool.  It ignores SIGINT
    and SIGTERM by itself but not SIGHUP, so a hang-up to the process group (a closed
    terminal, ``timeout -s HUP``) killed it, and the parent then warned of leaked
    semaphores, with tracebacks.  SIGHUP is blocked while it is spawned: a blocked signal
    stays blocked across exec, and the parent gets its own once unblocked.  A tracker
    already running is left as it is."""
    from multiprocessing import resource_tracker
    if not hasattr(signal, "pthread_sigmask"):
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def seed_summary(cfg: RunConfig, r: RunResult) -> dict:
    """What the parent needs of one seed (JSON-able, small)."""
    repros = {}
    for f in r.findings:
        if cfg.mode == "free":
            d = make_repro(cfg, r.seed, r.workload, f, trace=r.schedule,  # type: ignore[arg-type]
                           threads=r.threads, steps=r.steps)
        else:
            d = make_repro(cfg, r.seed, r.workload, f, schedule=r.schedule,  # type: ignore[arg-type]
                           threads=r.threads, steps=r.steps, preemptions=r.preemptions)
        repros[f.signature] = d
    return {
        "seed": r.seed, "steps": r.steps, "rows": r.rows, "attr_changes": r.attr_changes,
        "busy": r.busy, "findings": [f.to_dict() for f in r.findings], "counts": r.counts,
        "repros": repros, "zero_step_arms": r.zero_step_arms, "vm_bugged": r.vm_bugged,
        "threads": len(r.threads), "pct_k": r.pct_k, "sync_steps": r.sync_steps,
        "seamcalls": r.seamcalls, "rows_by_phase": r.rows_by_phase,
        "vm_killed": r.vm_killed,
        "map_gpa": sum(v.get("map_gpa", 0) for v in r.vcpu_stats),
        "cut_short": r.cut_short,
    }


def run_batch(cfg_dict: dict, seeds: list[int], stop_first: bool,
              deadline: float | None = None) -> list[dict]:
    """Worker entry point: run ``seeds`` one after another, none started after
    ``deadline`` (``time.monotonic()``, the campaign's end), the one running then cut
    short at its next yield point."""
    cfg = RunConfig.from_dict(cfg_dict)
    stop = hunt_stop(cfg.variant) if stop_first else None
    out = []
    for seed in seeds:
        if deadline is not None and time.monotonic() > deadline:
            break
        if cfg.strategy == "bounded":
            b = bounded_summary(cfg, seed, stop, deadline)
            if b is not None:
                out.append(b)
            continue
        r = run_seed(cfg, seed, stop_on=stop, record_steps=False, deadline=deadline,
                     trace_hash=False)
        out.append(seed_summary(cfg, r))
    return out


def bounded_summary(cfg: RunConfig, seed: int, stop, deadline: float | None) -> dict | None:
    """One seed's bounded walk as one seed summary: the counters of its first execution
    (its workload), every distinct finding with the schedule that found it, and the
    walk's figures under ``"bounded"``."""
    def progress(b, total: int) -> None:
        if _EXECUTIONS is not None and not total % 16:
            with _EXECUTIONS.get_lock():
                _EXECUTIONS.value += 16
    first, kept, e = explore_seed(cfg, seed, stop_on=stop, deadline=deadline,
                                  progress=progress)
    if first is None:       # out of time before the first execution: nothing to count
        return None
    s = seed_summary(cfg, first)
    findings: dict[str, dict] = {}
    repros: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for r in kept:
        part = seed_summary(cfg, r)
        for fd in part["findings"]:
            sig = Finding.from_dict(fd).signature
            if sig not in findings:
                findings[sig] = fd
                repros[sig] = part["repros"][sig]
                counts[sig] = part["counts"].get(sig, 1)
    s.update(findings=list(findings.values()), repros=repros, counts=counts,
             cut_short=e.stopped == "out of time", bounded=e.to_dict())
    return s


def lane_task(repro: dict) -> str | None:
    """Worker entry point: the swim lane of one kept repro (for the reports)."""
    from .replay import lane_for_repro
    return lane_for_repro(repro)


def shrink_task(repro: dict, max_runs: int) -> dict:
    from .shrink import shrink_repro
    out, _, _, _ = shrink_repro(Repro(repro), max_runs=max_runs)
    return out


# ---------------------------------------------------------------------- parent side
TIMELINE_MAX = 720
@dataclass
class CampaignSpec:
    config: RunConfig
    base_seed: int = 0
    seeds: int | None = None           # total seeds of the campaign (across shards)
    duration: float | None = 30.0      # wall-time bound in seconds
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    stop_on_first: bool = False
    shrink: bool = False
    shrink_runs: int = 300
    checkpoint: float = 60.0
    heartbeat: float = 10.0
    soak: bool = False
    batch: int = 8


class Campaign:
    def __init__(self, spec: CampaignSpec, out: Path, argv: list[str],
                 log: Callable[[str], None] = lambda s: None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.out = out
        self.argv = argv
        self.log = log
        self.progress = progress
        self.totals = Totals()
        self.findings: dict[str, FindingAgg] = {}
        self.repros: dict[str, dict] = {}
        self.stop_reason = ""
        self.interrupted = False
        self.hunted = False
        self.t0 = 0.0
        self.peak_rss = 0
        self.cpu_s = 0.0
        self.samples: list[dict] = []
        # (elapsed, runs, findings, rss) every 2 s, for the report's plots; halved
        # (every other point dropped) whenever it reaches TIMELINE_MAX points
        self.timeline: list[dict] = []
        self.errors: list[str] = []
        self.worker_restarts = 0
        self.executions = None
        self.calibration_cut = False    # the time ran out (or a signal came) while PCT's
                                        # k was being learned: no run was made
        rundir.claim(out)
        (out / rundir.FINDINGS).mkdir(parents=True, exist_ok=True)
        self._events = open(out / rundir.EVENTS, "a", buffering=1)

    # -------------------------------------------------------------- files
    def event(self, d: dict) -> None:
        self._events.write(json.dumps(d, sort_keys=True) + "\n")
        self._events.flush()
        os.fsync(self._events.fileno())

    def summary(self) -> dict:
        cfg = self.spec.config
        t = self.totals
        return {
            "schema": rundir.SUMMARY_SCHEMA,
            "tool_version": __version__,
            "argv": self.argv,
            "variant": cfg.variant, "mode": cfg.mode, "strategy": cfg.strategy,
            "depth": cfg.depth, "base_seed": self.spec.base_seed,
            "config": cfg.to_dict(),
            "shard": f"{self.spec.shard[0]}/{self.spec.shard[1]}",
            "elapsed_s": round(time.monotonic() - self.t0, 3),
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
            "guest": cfg.guest, "conversions": cfg.conversions,
            **t.to_summary(depth=cfg.depth),
            "timeline": self.timeline,
            "findings": [f.to_dict() for f in sorted(self.findings.values(),
                                                     key=lambda f: f.first_seed)],
            "errors": self.errors,
            "pct_calibration_cut": self.calibration_cut,
            "worker_restarts": self.worker_restarts,
            "resources": {"peak_rss_mb": round(self.peak_rss / 2**20, 1),
                          "cpu_s": round(self.cpu_s, 2)},
        }

    def write_summary(self) -> None:
        rundir.write_summary(self.out, self.summary())

    # -------------------------------------------------------------- results
    def record(self, s: dict) -> None:
        t = self.totals
        t.add_run(s)
        stop = hunt_stop(self.spec.config.variant)
        elapsed = time.monotonic() - self.t0
        for fd in s["findings"]:
            f = Finding.from_dict(fd)
            sig = f.signature
            if f.kind in BUG_KINDS and f.row:
                t.bug_rows[f.row] += 1
            agg = self.findings.get(sig)
            new = agg is None
            if agg is None:
                agg = self.findings[sig] = FindingAgg(sig, f.kind, f.path, f.row,
                                                      f.message.splitlines()[0],
                                                      first_elapsed_s=elapsed, where=f.where)
            agg.count += 1
            agg.occurrences += s["counts"].get(sig, 1)
            if new or s["seed"] < agg.first_seed:
                self._keep_repro(agg, s["repros"][sig], s["seed"])
                agg.consequences = f.consequences
                agg.consequences_total = f.consequences_total
            self.event({"event": "finding", "seed": s["seed"], "signature": sig,
                        "kind": f.kind, "path": f.path, "row": f.row, "step": f.step,
                        "elapsed_s": round(elapsed, 3), "new": new, "repro": agg.repro,
                        "message": f.message.splitlines()[0],
                        "consequences": [c["signature"] for c in f.consequences]})
            if new:
                self.log(f"finding {sig} in seed {s['seed']} at step {f.step}: "
                         f"{f.message.splitlines()[0]}")
            if self.spec.stop_on_first and stop(f):
                self.hunted = True

    def _keep_repro(self, agg: FindingAgg, repro: dict, seed: int) -> None:
        old = agg.repro
        path = write_repro(self.out / rundir.FINDINGS, repro)
        agg.repro = str(path.relative_to(self.out))
        agg.first_seed = seed
        self.repros[agg.signature] = repro
        if old:
            self._unlink_repro(old)

    # -------------------------------------------------------------- the loop
    def _seeds(self):
        spec = self.spec
        i, n = spec.shard
        k = 0
        while spec.seeds is None or k < spec.seeds:
            if k % n == i:
                yield spec.base_seed + k
            k += 1

    def _sample(self, procs: list) -> None:
        import psutil
        rss = threads = fds = 0
        cpu = 0.0
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    ct = p.cpu_times()
                    # children_*: workers already recycled and reaped by this process
                    cpu += ct.user + ct.system + ct.children_user + ct.children_system
                    threads += p.num_threads()
                    fds += p.num_fds()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.cpu_s = max(self.cpu_s, cpu)
        self.timeline.append({"elapsed_s": round(time.monotonic() - self.t0, 1),
                              "runs": self.totals.runs, "findings": len(self.findings),
                              "rss_mb": round(rss / 2**20, 1), "cpu_s": round(cpu, 2)})
        if len(self.timeline) >= TIMELINE_MAX:
            self.timeline = self.timeline[::2]
        if self.spec.soak:
            sample = {"event": "resources", "elapsed_s": round(time.monotonic() - self.t0, 1),
                      "rss_mb": round(rss / 2**20, 1), "cpu_s": round(cpu, 2),
                      "threads": threads, "open_files": fds, "processes": len(procs),
                      "runs": self.totals.runs}
            self.samples.append(sample)
            self.event(sample)

    def run(self) -> None:
        spec = self.spec
        self.t0 = time.monotonic()
        stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {sig: signal.getsignal(sig) for sig in stops}

        def on_signal(signum, frame):  # noqa: ARG001
            self.interrupted = True
            self.stop_reason = f"signal {signal.Signals(signum).name}"
        for sig in stops:
            signal.signal(sig, on_signal)
        ctx = multiprocessing.get_context("spawn")
        start_resource_tracker()        # before the first semaphore
        slot = ctx.Value("i", 0)
        self.executions = ctx.Value("q", 0)     # bounded walks' executions, for progress

        def new_pool() -> ProcessPoolExecutor:
            return ProcessPoolExecutor(max_workers=spec.workers, mp_context=ctx,
                                       initializer=_worker_init,
                                       initargs=(slot, self.executions),
                                       max_tasks_per_child=256)
        pool = new_pool()
        import psutil
        me = psutil.Process()
        seeds = self._seeds()
        pending: set[Future] = set()
        inflight: dict[Future, list[int]] = {}
        retry: list[list[int]] = []
        restarts = 0
        exhausted = False
        last_ckpt = last_beat = last_sample = time.monotonic()
        deadline = self.t0 + spec.duration if spec.duration is not None else None
        calibrated = True
        try:
            # PCT's k: learned here, once, and handed to every worker in the config
            ks_were = spec.config.pct_ks
            spec.config = with_learned_pct_ks(spec.config, deadline,
                                              stop=lambda: self.interrupted)
            if spec.config.pct_ks != ks_were:
                self.log(f"PCT's horizons learned from calibration runs: "
                         f"{list(spec.config.pct_ks)} SEAMCALL windows")
        except CalibrationCut:
            calibrated = False
            self.calibration_cut = True
            self.log("stopped while learning PCT's k: no run was made")
        out_of_time = not calibrated and not self.interrupted
        cfg_dict = spec.config.to_dict()
        try:
            while calibrated:
                now = time.monotonic()
                out_of_time = spec.duration is not None and now - self.t0 >= spec.duration
                stopping = self.interrupted or self.hunted or out_of_time
                while not stopping and len(pending) < 2 * spec.workers:
                    if retry:
                        batch = retry.pop()
                    elif not exhausted:
                        batch = [s for _, s in zip(range(spec.batch), seeds, strict=False)]
                    else:
                        break
                    if not batch:
                        exhausted = True
                        break
                    fut = pool.submit(run_batch, cfg_dict, batch, spec.stop_on_first,
                                      deadline)
                    pending.add(fut)
                    inflight[fut] = batch
                if not pending:
                    break
                if stopping and (self.interrupted or self.hunted):
                    break          # abandon the seeds still running
                if out_of_time and deadline is not None and now > deadline + DEADLINE_GRACE:
                    break          # a run that does not reach a yield point: abandon it
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    batch = inflight.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool as e:
                        # a worker was killed (OOM, a signal): run its seeds again in a
                        # new pool; only a third death in a row is an error of the run
                        broken = True
                        self.event({"event": "worker_died", "seeds": batch, "error": str(e)})
                        if restarts < 3:
                            retry.append(batch)
                        else:
                            self.errors.append(f"workers keep dying (seeds {batch}): {e}")
                        continue
                    except Exception as e:    # the model raised: a bug of the tool
                        self.errors.append(f"seeds {batch}: {type(e).__name__}: {e}")
                        self.event({"event": "error", "seeds": batch,
                                    "error": f"{type(e).__name__}: {e}"})
                        self.log(f"internal error in seeds {batch}: {type(e).__name__}: {e}")
                        continue
                    for s in results:
                        self.record(s)
                if broken:
                    # the pool is unusable: every batch still in it is lost, run it again
                    restarts += 1
                    for fut in pending:
                        if restarts <= 3:
                            retry.append(inflight.pop(fut))
                    pending = set()
                    inflight.clear()
                    _shutdown(pool)
                    pool = new_pool()
                    self.worker_restarts = restarts
                    self.log(f"a worker process died; restarted the pool ({restarts})")
                now = time.monotonic()
                if now - last_sample >= 2.0:
                    last_sample = now
                    self._sample([me] + me.children(recursive=True))
                if now - last_ckpt >= spec.checkpoint:
                    last_ckpt = now
                    self.write_summary()
                    self.event({"event": "checkpoint", "elapsed_s": round(now - self.t0, 3),
                                "runs": self.totals.runs, "findings": len(self.findings)})
                if self.progress is not None and now - last_beat >= spec.heartbeat:
                    last_beat = now
                    self.progress(self.status_line())
            if self.hunted:
                self.stop_reason = "stop-on-first"
            elif out_of_time and not self.interrupted:
                self.stop_reason = "duration"
            elif not self.interrupted:
                self.stop_reason = "seeds"
            self._sample([me] + me.children(recursive=True))
        finally:
            _shutdown(pool)
            for sig in stops:
                signal.signal(sig, old[sig])
        if spec.shrink and self.repros and not self.interrupted:
            self._shrink_all(ctx)
        if self.repros and not self.interrupted:
            self._lanes_all(ctx)
        self.write_summary()
        self.event({"event": "end", "elapsed_s": round(time.monotonic() - self.t0, 3),
                    "runs": self.totals.runs, "findings": len(self.findings),
                    "interrupted": self.interrupted, "stop_reason": self.stop_reason})
        self._events.close()

    def _lanes_all(self, ctx) -> None:
        """Draw each kept finding's swim lane beside its repro (``X.lane.txt``), so the
        reports can show it without running the machine (15 replays: about 0.2 s)."""
        with worker_pool(ctx, self.spec.workers) as pool:
            futs = {sig: pool.submit(lane_task, d) for sig, d in self.repros.items()}
            for sig, fut in futs.items():
                try:
                    lane = fut.result()
                except Exception as e:      # the report then points to the replay line
                    self.log(f"could not draw the swim lane of {sig}: {e}")
                    continue
                if lane is None:
                    self.log(f"the repro of {sig} did not replay; no swim lane stored")
                    continue
                rundir.write_lane(self.out, self.findings[sig].repro, lane)

    def _unlink_repro(self, rel: str) -> None:
        for p in (self.out / rel, self.out / rundir.lane_path(rel)):
            try:
                p.unlink()
            except OSError:
                pass

    def _shrink_all(self, ctx) -> None:
        with worker_pool(ctx, self.spec.workers) as pool:
            futs = {sig: pool.submit(shrink_task, d, self.spec.shrink_runs)
                    for sig, d in self.repros.items()}
            for sig, fut in futs.items():
                try:
                    shrunk = fut.result()
                except Exception as e:      # a repro that no longer shrinks: keep it
                    self.log(f"could not shrink {sig}: {e}")
                    continue
                agg = self.findings[sig]
                old = agg.repro
                path = write_repro(self.out / rundir.FINDINGS, shrunk)
                agg.repro = str(path.relative_to(self.out))
                self.repros[sig] = shrunk
                if (self.out / old).resolve() != path.resolve():
                    self._unlink_repro(old)
                size = shrunk.get("size", {})
                self.log(f"shrunk {sig}: {shrunk.get('shrunk_from')} -> {size}")

    def status_line(self) -> str:
        t = self.totals
        el = time.monotonic() - self.t0
        rate = t.runs / el if el > 0 else 0.0
        walks = ""
        if self.spec.config.strategy == "bounded" and self.executions is not None:
            walks = f"  executions ~{self.executions.value:,} (workloads walked: {t.runs})"
        return (f"{el:7.1f}s  runs {t.runs}  ({rate:.1f}/s)  steps {t.steps}  "
                f"findings {len(self.findings)}{walks}  rss {self.peak_rss / 2**20:.0f} MiB")


def _shutdown(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now: cancel what has not started, kill what runs."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)


__all__ = ["Campaign", "CampaignSpec", "run_batch", "seed_summary",
           "start_resource_tracker"]
