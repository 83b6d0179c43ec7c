"""The ``tdx-stress`` command line (docs/contract.md: the contract).

Every error a user can cause is one sentence on stderr and exit code 2; an internal
error is one sentence and exit 3 (the traceback goes to the run's log, not the screen);
exit codes live in :class:`ExitCode` and are mapped here only.  ``main`` returns an int.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import traceback
from dataclasses import replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Callable, NoReturn

from core import __version__
from core.variants import AS_DESIGNED, VARIANTS, UnknownVariant, Variant, get_variant
from reports.markdown import text_summary
from reports.rundir import JUNIT, LOG, SUMMARY, ReportError

from .config import (
    CONVERSIONS,
    GUESTS,
    MODES,
    SEED_ENV,
    STRATEGIES,
    ConfigError,
    RunConfig,
    make_out_dir,
    non_negative_int,
    output_file,
    positive_int,
    resolve_seed,
    seconds,
    shard,
)
from .repro import ReproError


class ExitCode(IntEnum):
    OK = 0
    FINDING = 1
    USAGE = 2
    INTERNAL = 3
    DIVERGED = 4
    INTERRUPTED = 130


class UsageError(Exception):
    """Bad usage or bad input: one sentence, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one sentence, exit 2, no traceback
        self.exit(ExitCode.USAGE, f"tdx-stress: {message}\n")


def _arg(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type over one of :mod:`stress.config`'s validators."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


_positive_int, _seconds, _shard = _arg(positive_int), _arg(seconds), _arg(shard)
_D = RunConfig()        # the defaults of every run option are RunConfig's


def _add_campaign_args(p: argparse.ArgumentParser, duration: float) -> None:
    g = p.add_argument_group("what to run")
    g.add_argument("--variant", default=_D.variant,
                   help=f"kernel variant (default {_D.variant}): {', '.join(VARIANTS)}")
    g.add_argument("--mode", default=_D.mode, choices=MODES)
    g.add_argument("--strategy", default=_D.strategy, choices=STRATEGIES,
                   help="controlled mode: pct, random, or portfolio (default: pct on even "
                        "seeds, random on odd ones); bounded: every schedule of each "
                        "seed's workload with at most --preemptions preemptions (for small "
                        "workloads: --vcpus 1 --zappers 1 --ops 2)")
    g.add_argument("--depth", type=int, default=_D.depth, help=f"PCT depth (default {_D.depth})")
    g.add_argument("--preemptions", type=int, default=_D.preemptions,
                   help=f"bounded: the preemption bound P (default {_D.preemptions})")
    g.add_argument("--seed", default=None,
                   help=f"base seed (else ${SEED_ENV}, else a fresh one, printed)")
    b = g.add_mutually_exclusive_group()
    b.add_argument("--seeds", type=_positive_int, default=None, help="run this many seeds")
    b.add_argument("--duration", type=_seconds, default=None,
                   help=f"run for this many seconds (default {duration:g})")
    g.add_argument("--vcpus", type=int, default=_D.vcpus)
    g.add_argument("--zappers", type=int, default=_D.zappers)
    g.add_argument("--ops", type=int, default=_D.ops, help="zapper operations per zapper")
    g.add_argument("--busy-rate", type=float, default=_D.busy_rate,
                   help="extra random BUSY on top of the modelled contention (0..1)")
    g.add_argument("--max-steps", type=int, default=_D.max_steps)
    g.add_argument("--guest", default=_D.guest, choices=GUESTS,
                   help="the guest: a Linux TD (default) or one that accepts on #VE "
                        "(ve-accept, a what-if)")
    g.add_argument("--conversions", default=None, choices=CONVERSIONS,
                   help="who converts memory: the guest with MapGPA (default for a Linux "
                        "TD) or userspace on its own (async; the default otherwise)")
    o = p.add_argument_group("how")
    o.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    o.add_argument("--shard", type=_shard, default=(0, 1),
                   help="run slice i of N of the campaign (CI matrices)")
    o.add_argument("--stop-on-first", action="store_true",
                   help="stop at the first finding (in a hunt: the one the hunt is after)")
    o.add_argument("--shrink", action="store_true", help="shrink each distinct finding")
    o.add_argument("--out", default=None, help="run directory (default ./tdx-stress-runs/<UTC>)")
    o.add_argument("--junit", default=None, help="also write JUnit XML here")
    o.add_argument("--checkpoint", type=_seconds, default=60.0,
                   help="write the summary every S seconds (default 60)")
    o.add_argument("--heartbeat", type=_seconds, default=10.0,
                   help="progress line every S seconds when stdout is not a terminal")
    o.add_argument("-q", "--quiet", action="store_true")
    o.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(default_duration=duration)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tdx-stress",
                description="Concurrency stress tester for KVM's TDP MMU mirror page tables "
                            "against a simulated TDX module.")
    p.add_argument("--version", action="version", version=f"tdx-stress {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    _add_campaign_args(sub.add_parser("run", help="one campaign: many seeds of one variant"),
                       30.0)
    _add_campaign_args(sub.add_parser("soak", help="a long run with resource monitoring"),
                       3600.0)
    r = sub.add_parser("replay", help="replay a repro file exactly")
    r.add_argument("file")
    r.add_argument("--times", type=_positive_int, default=1,
                   help="check it reproduces N of N")
    r.add_argument("--lanes", type=_arg(non_negative_int), default=40,
                   help="steps of the swim-lane diagram to print (0: none)")
    s = sub.add_parser("shrink", help="minimise a repro while the same finding fires")
    s.add_argument("file")
    s.add_argument("-o", "--out", required=True, help="where to write the shrunk repro")
    s.add_argument("--max-runs", type=_positive_int, default=3000,
                   help="runs to spend at most (default 3000)")
    rp = sub.add_parser("report", help="render (and merge) run directories")
    rp.add_argument("dirs", nargs="+", metavar="DIR")
    rp.add_argument("-o", "--out", default=None,
                    help="write the merged run directory here (several DIRs)")
    rp.add_argument("--junit", default=None)
    t = sub.add_parser("table", help="seed 002's scenario table, as observed")
    t.add_argument("--duration", type=_seconds, default=8.0,
                   help="seconds per as-designed variant; hunts stop at their bug "
                        "(default 8, hunts at most 6x that)")
    t.add_argument("--workers", type=_positive_int, default=2)
    t.add_argument("--seed", default=None)
    t.add_argument("--variant", action="append", default=[], metavar="PATCH",
                   help="also run this patch (PATH.py, module:Name) beside the built-in "
                        "variants; repeatable")
    n = sub.add_parser("nightly", help="CI job: as-designed variants must stay clean, a "
                                       "canary hunt must be caught")
    n.add_argument("--variants", type=_variant_list, default=",".join(AS_DESIGNED),
                   help=f"as-designed variants to run (default {','.join(AS_DESIGNED)})")
    n.add_argument("--canary", default="hunt-d",
                   help="a variant whose bug the job must catch, or 'none' (default hunt-d)")
    nb = n.add_mutually_exclusive_group()
    nb.add_argument("--duration", type=_seconds, default=None,
                    help="seconds per as-designed variant (default 120)")
    nb.add_argument("--seeds", type=_positive_int, default=None,
                    help="seeds per as-designed variant instead of a duration")
    n.add_argument("--canary-duration", type=_seconds, default=120.0,
                   help="at most this many seconds to catch the canary (default 120)")
    n.add_argument("--seed", default=None,
                   help=f"base seed (else ${SEED_ENV}, else a fresh one, printed)")
    n.add_argument("--strategy", default=_D.strategy, choices=STRATEGIES)
    n.add_argument("--depth", type=int, default=_D.depth)
    n.add_argument("--busy-rate", type=float, default=_D.busy_rate)
    n.add_argument("--guest", default=_D.guest, choices=GUESTS,
                   help="the guest of every campaign (linux: with MapGPA conversions)")
    n.add_argument("--workers", type=_positive_int, default=1)
    n.add_argument("--out", default=None,
                   help="job directory (default ./tdx-stress-runs/<UTC>); keep it as the "
                        "CI artifact")
    n.add_argument("--junit", default=None, help="also write the job's JUnit XML here")
    n.add_argument("-q", "--quiet", action="store_true")
    n.add_argument("-v", "--verbose", action="store_true")
    vp = sub.add_parser("variants", help="list the kernel variants and what each opens; "
                        "with patch files, what each overrides")
    vp.add_argument("patches", nargs="*", help="patch files (PATH.py) to list too")
    vp.add_argument("--show", default=None, metavar="NAME|PATH",
                    help="print a patch's functions beside its base's")
    return p


def _variant_list(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one variant")
    for x in names:
        try:
            get_variant(x)
        except UnknownVariant as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return names


# ---------------------------------------------------------------------- helpers
def setup_logging(out: Path | None, quiet: bool, verbose: bool, rotate: bool):
    from loguru import logger
    logger.remove()
    level = "WARNING" if quiet else ("DEBUG" if verbose else "INFO")
    logger.add(sys.stderr, level=level, format="<level>{message}</level>", colorize=None)
    if out is not None:
        rotation, retention = ("20 MB", 5) if rotate else (None, None)
        logger.add(out / LOG, level="DEBUG",
                   format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level:<7} {message}",
                   rotation=rotation, retention=retention)
        logger.add(out / "log.jsonl", level="DEBUG", serialize=True, rotation=rotation,
                   retention=retention)
    return logger


def _config_from(args: argparse.Namespace) -> RunConfig:
    return RunConfig(variant=args.variant, mode=args.mode, strategy=args.strategy,
                     depth=args.depth, preemptions=args.preemptions, vcpus=args.vcpus,
                     zappers=args.zappers, ops=args.ops,
                     busy_rate=args.busy_rate, max_steps=args.max_steps, guest=args.guest,
                     conversions=args.conversions or "").validate()


# ---------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from .campaign import Campaign, CampaignSpec
    cfg = _config_from(args)
    seed, source = resolve_seed(args.seed)
    duration = args.duration if args.seeds is None else None
    if args.seeds is None and duration is None:
        duration = args.default_duration
    junit = output_file(args.junit, "--junit") if args.junit is not None else None
    out = _run_dir(make_out_dir(args.out))
    from reports.rundir import claim
    claim(out)                  # before its log: another run's directory is not touched
    soak = args.command == "soak"
    log = setup_logging(out, args.quiet, args.verbose, rotate=soak)
    tty = sys.stdout.isatty()
    spec = CampaignSpec(config=cfg, base_seed=seed, seeds=args.seeds, duration=duration,
                        workers=args.workers, shard=args.shard,
                        stop_on_first=args.stop_on_first, shrink=args.shrink,
                        checkpoint=args.checkpoint, heartbeat=1.0 if tty else args.heartbeat,
                        soak=soak)
    bound = f"{args.seeds} seeds" if args.seeds else f"{duration:g} s"
    log.info(f"tdx-stress {__version__}: {args.command} {cfg.variant} ({cfg.mode}, "
             f"{cfg.strategy}, depth {cfg.depth}), base seed {seed} ({source}), {bound}, "
             f"{args.workers} worker(s), shard {args.shard[0]}/{args.shard[1]} -> {out}")

    if cfg.strategy == "bounded" and cfg.ops * (cfg.vcpus + cfg.zappers) > 8:
        log.info(f"bounded: {cfg.vcpus} vCPUs and {cfg.zappers} zappers of {cfg.ops} "
                 "operations is a large workload for an exhaustive walk; the summary says "
                 "whether each walk completed (small: --vcpus 1 --zappers 1 --ops 2)")

    def progress(line: str) -> None:
        if tty:
            sys.stdout.write("\r" + line)
            sys.stdout.flush()
        else:
            log.info(f"heartbeat {line}")
    camp = Campaign(spec, out, argv, log=lambda m: log.warning(m) if "finding" in m
                    else log.info(m), progress=None if args.quiet else progress)
    camp.run()
    if tty and not args.quiet:
        sys.stdout.write("\n")
    summary = camp.summary()
    from reports.render import write_reports
    write_reports(summary, out, junit=junit)
    if not args.quiet:
        print(text_summary(summary, out))
    if camp.interrupted:
        return ExitCode.INTERRUPTED
    if summary["errors"]:
        log.error(f"internal error: {len(summary['errors'])} batch(es) failed; first: "
                  f"{summary['errors'][0]} (all in {out / SUMMARY})")
        return ExitCode.INTERNAL
    return ExitCode.FINDING if summary["findings"] else ExitCode.OK


def cmd_nightly(args: argparse.Namespace, argv: list[str]) -> int:
    from .nightly import NightlySpec, run_nightly
    canary = None if args.canary == "none" else args.canary
    if canary is not None:
        try:
            get_variant(canary)
        except UnknownVariant:
            raise UsageError(f"unknown canary variant {canary!r}; valid variants: "
                             f"{', '.join(VARIANTS)}, a patch file, or none") from None
    shared = RunConfig(strategy=args.strategy, depth=args.depth, busy_rate=args.busy_rate,
                       guest=args.guest).validate()   # bad values: one sentence, before any run
    seed, source = resolve_seed(args.seed)
    duration = None if args.seeds else (args.duration or 120.0)
    if args.out is not None and (Path(args.out) / "nightly.json").exists():
        raise UsageError(f"{args.out} already holds a nightly job; give a new --out")
    junit = output_file(args.junit, "--junit") if args.junit is not None else None
    out = _run_dir(make_out_dir(args.out))
    log = setup_logging(out, args.quiet, args.verbose, rotate=False)
    spec = NightlySpec(base_seed=seed, variants=args.variants, canary=canary,
                       duration=duration, seeds=args.seeds,
                       canary_duration=args.canary_duration, workers=args.workers,
                       config=shared)
    budget = f"{args.seeds} seeds" if args.seeds else f"{duration:g} s"
    log.info(f"tdx-stress {__version__}: nightly over {', '.join(args.variants)} ({budget} "
             f"each), canary {canary or 'none'} (at most {args.canary_duration:g} s), base "
             f"seed {seed} ({source}) -> {out}")
    canary_on = [False]      # the canary's findings are expected: log them as info

    def on_campaign(role: str) -> None:
        canary_on[0] = role == "canary"
    passed, interrupted, entries = run_nightly(
        spec, out, argv,
        log=lambda m: log.warning(m) if "finding" in m and not canary_on[0] else log.info(m),
        progress=None if args.quiet else (lambda line: log.info(f"heartbeat {line}")),
        on_campaign=on_campaign)
    if junit is not None:
        junit.write_text((out / JUNIT).read_text())
    for e in entries:
        print(f"{e.role:>11} {e.variant:<14} {e.summary['runs']:>7} runs "
              f"{e.summary['elapsed_s']:>7.1f} s  {'ok  ' if e.ok else 'FAIL'} {e.verdict}")
        if e.role == "as-designed":
            for f in e.summary["findings"]:
                print(f"{'':>12}replay: tdx-stress replay {e.out / f['repro']}")
    verdict = "PASSED" if passed else ("INTERRUPTED" if interrupted else "FAILED")
    print(f"nightly {verdict}; job directory {out} (nightly.md, junit.xml)")
    if interrupted:
        return ExitCode.INTERRUPTED
    if any(e.summary["errors"] for e in entries):
        return ExitCode.INTERNAL
    return ExitCode.OK if passed else ExitCode.FINDING


def cmd_replay(args: argparse.Namespace) -> int:
    from reports.swimlane import render

    from .replay import replay
    from .repro import load_repro
    rp = load_repro(args.file)
    ok = 0
    last = None
    for i in range(args.times):
        _raise_if_signalled()          # a signal Python swallowed stops a long --times too
        got = replay(rp)
        last = got
        r = got.run
        if r.divergence:
            print(f"replay {i + 1}/{args.times} diverged: {r.divergence}")
            return ExitCode.DIVERGED
        if got.hit is None:
            print(f"replay {i + 1}/{args.times} did not reproduce {rp.signature} "
                  f"(expected at step {rp.step}; findings: "
                  f"{[f.signature for f in r.findings] or 'none'})")
            return ExitCode.DIVERGED
        if not got.same_step:
            print(f"replay {i + 1}/{args.times} fired {rp.signature} at step "
                  f"{got.hit.step}, not at step {rp.step}")
            return ExitCode.DIVERGED
        ok += 1
    assert last is not None and last.hit is not None
    if args.lanes:
        print(render(last.run.step_log, last.run.threads, last.hit, last=args.lanes))
    print(f"reproduced {rp.signature} at step {rp.step}: {ok} of {args.times}")
    return ExitCode.FINDING


def cmd_shrink(args: argparse.Namespace) -> int:
    from .repro import load_repro, write_repro
    from .shrink import shrink_repro
    rp = load_repro(args.file)
    dest = Path(args.out)
    to_file = dest.suffix == ".json" or (dest.exists() and not dest.is_dir())
    # where it goes is checked before the shrinking, not after it
    dest = output_file(args.out, "-o") if to_file else make_out_dir(args.out)
    try:
        out, before, after, runs = shrink_repro(rp, max_runs=args.max_runs,
                                                check=_raise_if_signalled)
    except ValueError as e:
        print(f"tdx-stress: {e}", file=sys.stderr)
        return ExitCode.DIVERGED
    if to_file:
        try:
            dest.write_text(json.dumps(out, indent=1, sort_keys=True))
        except OSError as e:
            raise UsageError(f"cannot write {dest}: {e.strerror or e}") from None
        path = dest
    else:
        path = write_repro(dest, out)
    print(f"shrunk {rp.signature} in {runs} runs")
    print(f"  before: {before.as_dict()}")
    print(f"  after:  {after.as_dict()}")
    print(f"  wrote {path}; replay: tdx-stress replay {path}")
    return ExitCode.OK


def cmd_report(args: argparse.Namespace) -> int:
    from reports.render import write_reports
    from reports.rundir import copy_findings, load_summary
    from reports.summary import merge_summaries
    junit = output_file(args.junit, "--junit") if args.junit is not None else None
    summaries = [load_summary(Path(d)) for d in args.dirs]
    out = Path(args.out) if args.out else Path(args.dirs[0])
    # -o names a directory of its own (a merge, or a copy of one run with its reports):
    # it is claimed like a run's, never written into another run's; without -o (or -o
    # naming the one input) a run's own reports are drawn again in place
    in_place = len(summaries) == 1 and (args.out is None or (
        out.exists() and out.resolve() == Path(args.dirs[0]).resolve()))
    merged = merge_summaries(summaries) if not in_place else summaries[0]
    if not in_place:
        if args.out is None:
            raise UsageError("merging several run directories needs -o DIR")
        out = _run_dir(make_out_dir(args.out))
        from reports.rundir import claim, write_summary
        claim(out)
        try:
            copy_findings([Path(d) for d in args.dirs], merged, out)
            write_summary(out, merged)
            write_reports(merged, out, junit=junit)
            _raise_if_signalled()
        except KeyboardInterrupt as e:
            # a merge cut short (Ctrl-C, SIGTERM, SIGHUP): its directory is not left
            # looking complete; its summary says so (findings, reports may be missing)
            sig = e.args[0] if e.args else "SIGINT"
            write_summary(out, dict(merged, interrupted=True, stop_reason=f"signal {sig}",
                                    findings=[{k: v for k, v in f.items() if k != "_dir"}
                                              for f in merged["findings"]]))
            raise
    else:
        write_reports(merged, out, junit=junit)
    print(text_summary(merged, out))
    return ExitCode.FINDING if merged["findings"] else ExitCode.OK


def cmd_table(args: argparse.Namespace) -> int:
    from .table import observe, render_table
    seed, _ = resolve_seed(args.seed if args.seed is not None else "0")
    patches = tuple(get_variant(p).name for p in args.variant)   # refused here if bad
    obs = observe(args.duration, workers=args.workers, base_seed=seed, patches=patches)
    text, disagreements = render_table(obs)
    print(text)
    return ExitCode.FINDING if disagreements else ExitCode.OK


def _overridden(v: Variant) -> list[tuple[type, str]]:
    """(model class, function) pairs a patch overrides, in source order."""
    from .patches import PATCHABLE
    out = []
    for o in v.overrides:
        model = next(c for c in PATCHABLE if issubclass(o, c))
        out += [(model, a) for a, f in vars(o).items()
                if callable(f) and not a.startswith("__") and not a.startswith("patch_")]
    return out


def cmd_variants(args: argparse.Namespace) -> int:
    if args.show:
        v = get_variant(args.show)
        if v.overrides:
            print(f"# {v.name}: {v.summary} (over {v.base})")
            _show_beside(get_variant(v.base or ""), v, _overridden(v))
            return ExitCode.OK
        if not v.patches:
            raise UsageError(f"{args.show} is the model itself, not a patch: nothing to show "
                             f"beside a base")
        base = _built_in_base(v)
        print(f"# {v.name}: {v.summary} (over {base.name})")
        for i in range(len(base.patches), len(v.patches)):
            below = replace(v, name=f"{v.name}~{i}", patches=v.patches[:i])
            above = replace(v, name=f"{v.name}~{i + 1}", patches=v.patches[:i + 1])
            print(f"\n# the patch {v.patches[i]}")
            _show_beside(below, above, _patch_functions(v.patches[i]), below_name=base.name
                         if i == len(base.patches) else f"{base.name} with "
                         f"{', '.join(v.patches[len(base.patches):i])}", above_name=v.name
                         if i + 1 == len(v.patches) else v.patches[i])
        return ExitCode.OK
    from .patches import installed_patches
    given = [get_variant(p) for p in [*installed_patches(), *args.patches]]
    width = max(len(n) for n in [*VARIANTS, *(v.name for v in given)])
    for v in [*VARIANTS.values(), *given]:
        if v.overrides:
            kind = f"patch over {v.base}" + (f", finds {v.finds[0]}" if v.finds else "")
        else:
            kind = ("as designed" if v.as_designed
                    else f"hunt {v.hunt} (row {v.opens_row}, {v.hunt_kind})")
        print(f"{v.name:<{width}}  {kind}\n{'':<{width}}  {v.summary}")
        if v.overrides:
            print(f"{'':<{width}}  overrides "
                  + ", ".join(f"{m.__name__}.{a}" for m, a in _overridden(v)))
        if v.patches:
            print(f"{'':<{width}}  v6.19 with, bottom first (+ a function the patch adds):")
        for name in v.patches:
            print(f"{'':<{width}}    {name}: "
                  + ", ".join(("" if hasattr(m, a) else "+") + f"{m.__name__}.{a}"
                              for m, a in _patch_functions(name)))
    return ExitCode.OK


def _built_in_base(v: Variant) -> Variant:
    """The built-in variant a built-in variant is a patch over: the one whose patches are
    the longest proper prefix of its own."""
    below = [b for b in VARIANTS.values()
             if len(b.patches) < len(v.patches) and v.patches[:len(b.patches)] == b.patches]
    return max(below, key=lambda b: len(b.patches))


def _show_beside(below: Variant, above: Variant, functions: list[tuple[type, str]],
                 below_name: str = "", above_name: str = "") -> None:
    """Print each function as ``below`` composes it, then as ``above`` does (a function
    that ``below`` does not have is shown as new)."""
    import inspect
    for model, attr in functions:
        old = getattr(below.compose(model), attr, None)
        print(f"\n## {model.__name__}.{attr}, in {below_name or below.name}:\n")
        print(inspect.getsource(old).rstrip() if old is not None
              else "(none: the patch adds it)")
        print(f"\n## {model.__name__}.{attr}, in {above_name or above.name}:\n")
        print(inspect.getsource(getattr(above.compose(model), attr)).rstrip())


def _patch_functions(module: str) -> list[tuple[type, str]]:
    """(model class, function) pairs a built-in patch module overrides."""
    import importlib

    from .patches import PATCHABLE
    m = importlib.import_module(module)
    out = []
    for c in vars(m).values():
        if isinstance(c, type) and c.__module__ == m.__name__:
            model = next(p for p in PATCHABLE if issubclass(c, p))
            out += [(model, a) for a, f in vars(c).items()
                    if callable(f) and not a.startswith("__")]
    return out


class _Guarded:
    """A text stream whose writes and flushes never raise: on a pipe whose reader is gone
    or a full disk the output is lost, never the exit code (which must say what the run
    found whatever happened to its output).  ``lost`` says why, once it happened."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.lost = ""

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self._stream.write(text)
            except (OSError, ValueError) as e:
                self.lost = getattr(e, "strerror", None) or str(e)
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except (OSError, ValueError) as e:
                self.lost = getattr(e, "strerror", None) or str(e)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_SIGNALLED: list[str] = []      # the signals _stop was called for, first first


def _stop(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    _SIGNALLED.append(name)
    raise KeyboardInterrupt(name)


def _raise_if_signalled() -> None:
    """Raise again the KeyboardInterrupt of a signal Python swallowed: one that lands in a
    weakref or import-lock callback (matplotlib's import, say) is printed as "Exception
    ignored in ..." and the code goes on as if it never came."""
    if _SIGNALLED:
        raise KeyboardInterrupt(_SIGNALLED[0])


def main(argv: list[str] | None = None) -> int:
    """The command line; its exit code is the command's, even when its output is lost
    (said on stderr if that still works).  SIGTERM and SIGHUP stop every command as
    Ctrl-C does (exit 130; a campaign writes its summary, marked interrupted)."""
    _SIGNALLED.clear()
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(s) in (signal.SIG_DFL, None):
                signal.signal(s, _stop)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _stop)    # Ctrl-C as Python's own, but recorded
    real = sys.stdout, sys.stderr
    out, err = _Guarded(real[0]), _Guarded(real[1])
    sys.stdout, sys.stderr = out, err           # type: ignore[assignment]
    try:
        try:
            code = _main(argv)
        except SystemExit as e:                 # argparse: --help, --version, bad usage
            code = e.code if isinstance(e.code, int) else ExitCode.USAGE
        out.flush()
        err.flush()
        if out.lost and not err.lost:
            print(f"tdx-stress: standard output was lost ({out.lost}); the exit code is "
                  f"the command's ({int(code)})", file=err)
            err.flush()
    finally:
        sys.stdout, sys.stderr = real
    for g, stream in ((out, real[0]), (err, real[1])):
        if g.lost:
            # what is still buffered for it can reach nobody: let the interpreter's last
            # flush go to /dev/null instead of failing (and changing the exit code)
            try:
                fd = os.open(os.devnull, os.O_WRONLY)
                os.dup2(fd, stream.fileno())
                os.close(fd)
            except (OSError, ValueError):
                pass
    if argv is None:            # the program (sys.argv), not a caller in this process
        exit_watchdog(int(code))
    return int(code)


EXIT_GRACE = 30.0   # seconds the interpreter gets to exit once the command has ended


def exit_watchdog(code: int, grace: float = EXIT_GRACE) -> threading.Timer:
    """Bound the interpreter's exit: once the command has ended (its output written and
    flushed, its exit code known), what is left is Python's shutdown (joining threads,
    atexit handlers: multiprocessing's, concurrent.futures' executor threads).  CI once
    saw ``run --stop-on-first`` write every file of its run directory within 2 s and
    then not exit for 240 s.  If the exit takes longer than ``grace``, every thread's
    stack goes to stderr (what hung) and the process ends with the command's code."""
    def fire() -> None:
        try:
            sys.stderr.write(f"tdx-stress: the process had not exited {grace:g} s after the "
                             f"command ended (its output is written); ending it with the "
                             f"command's exit code ({code}).  Its threads:\n")
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        finally:
            os._exit(code)
    t = threading.Timer(grace, fire)
    t.daemon = True
    t.start()
    return t


# the run directory of the command running, once it has one: where an internal error's
# traceback goes (else the current directory)
_RUN_DIR: list[Path | None] = [None]


def _run_dir(out: Path) -> Path:
    _RUN_DIR[0] = out
    return out


def _main(argv: list[str] | None) -> int:
    _RUN_DIR[0] = None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        code = _command(args, argv)
        _raise_if_signalled()       # a signal Python swallowed on the way: still 130
        return code
    except (UsageError, ConfigError, UnknownVariant, ReproError, ReportError) as e:
        print(f"tdx-stress: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("tdx-stress: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as e:
        where = (_RUN_DIR[0] or Path(".")) / "tdx-stress-internal-error.txt"
        try:
            where.write_text(traceback.format_exc())
            detail = f"; traceback in {where}"
        except OSError:
            detail = ""
        print(f"tdx-stress: internal error: {type(e).__name__}: {e}{detail}", file=sys.stderr)
        return ExitCode.INTERNAL


def _command(args: argparse.Namespace, argv: list[str]) -> int:
    """The command ``args`` names, run."""
    if args.command in ("run", "soak"):
        return cmd_run(args, ["tdx-stress"] + argv)
    if args.command == "replay":
        return cmd_replay(args)
    if args.command == "shrink":
        return cmd_shrink(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "table":
        return cmd_table(args)
    if args.command == "nightly":
        return cmd_nightly(args, ["tdx-stress"] + argv)
    print(f"tdx-stress {__version__}")
    return cmd_variants(args)


if __name__ == "__main__":
    sys.exit(main())
