"""The nightly CI stress job: a bounded campaign over the as-designed variants plus a canary.

A green night must mean two things: the as-designed kernels stayed clean for the budget
spent, and the tool was able to find a real bug on the same machine that night.  The
second is the *canary*: a hunt variant (default ``hunt-d``) run with stop-on-first; if
its hunt is not caught within its budget the job fails, because a stress job that
cannot find a planted bug proves nothing by staying quiet (a broken scheduler, a wrong
install or a too-small budget all look like "clean" otherwise).

Layout of ``OUT``::

    nightly.json   schema tdx-stress/nightly/1: seed, budgets, one entry per campaign, verdict
    nightly.md     one table: variant, runs, findings, verdict; the canary; the PCT bound
    junit.xml      one <testsuite> per as-designed variant, one for the canary
    <variant>/     an ordinary run directory per variant (summary, findings, reports)
    canary-<variant>/

Example (what ``tox -e stress`` runs)::

    tdx-stress nightly --duration 120 --out nightly/
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core import __version__
from core.variants import AS_DESIGNED
from reports.nightly import nightly_junit, nightly_markdown
from reports.rundir import JUNIT, write_atomic

from .campaign import Campaign, CampaignSpec
from .config import RunConfig
from .runner import hunt_stop

NIGHTLY_SCHEMA = "tdx-stress/nightly/1"


@dataclass
class NightlySpec:
    base_seed: int
    variants: tuple[str, ...] = AS_DESIGNED
    canary: str | None = "hunt-d"
    duration: float | None = 120.0        # per as-designed variant
    seeds: int | None = None              # instead of duration
    canary_duration: float = 120.0        # the canary stops at its hunt's finding
    workers: int = 1
    # what every campaign shares (its variant is each campaign's own)
    config: RunConfig = field(default_factory=RunConfig)


@dataclass
class Entry:
    variant: str
    role: str                  # "as-designed" | "canary"
    out: Path
    summary: dict
    ok: bool
    verdict: str


def dir_name(variant: str) -> str:
    """A variant's directory in the job directory: its name, or for a patch (a path or
    ``module:Name``) one path component that still says which."""
    return variant.replace("/", "_").replace(":", "_").replace("\\", "_")


def run_nightly(spec: NightlySpec, out: Path, argv: list[str],
                log: Callable[[str], None] = lambda s: None,
                progress: Callable[[str], None] | None = None,
                on_campaign: Callable[[str], None] = lambda role: None,
                ) -> tuple[bool, bool, list[Entry]]:
    """Run every campaign; returns (passed, interrupted, entries)."""
    from reports.render import write_reports
    entries: list[Entry] = []
    plan = [(v, "as-designed") for v in spec.variants]
    if spec.canary:
        plan.append((spec.canary, "canary"))
    interrupted = False
    for variant, role in plan:
        canary = role == "canary"
        cfg = spec.config.with_(variant=variant).validate()
        d = out / (f"canary-{dir_name(variant)}" if canary else dir_name(variant))
        d.mkdir(parents=True, exist_ok=True)
        cspec = CampaignSpec(config=cfg, base_seed=spec.base_seed,
                             seeds=None if canary else spec.seeds,
                             duration=spec.canary_duration if canary else
                             (None if spec.seeds else spec.duration),
                             workers=spec.workers, stop_on_first=canary)
        on_campaign(role)
        log(f"nightly: {role} {variant} -> {d}")
        camp = Campaign(cspec, d, argv + [f"# {role} {variant}"], log=log, progress=progress)
        camp.run()
        s = camp.summary()
        write_reports(s, d)
        if canary:
            stop = hunt_stop(variant)
            caught = camp.hunted or any(_is_hunted(stop, f) for f in s["findings"])
            ok = caught
            verdict = (f"caught in {s['runs']} runs, {s['elapsed_s']:.1f} s" if caught else
                       f"NOT caught in {s['runs']} runs, {s['elapsed_s']:.1f} s: the tool "
                       f"could not find the planted bug of {variant}")
        elif camp.interrupted:
            # nothing is clean that did not run to its end
            ok = False
            verdict = f"interrupted after {s['runs']} runs: not checked"
        else:
            ok = not s["findings"] and not s["errors"]
            verdict = ("clean" if ok else
                       f"{len(s['findings'])} finding(s)" if s["findings"] else
                       f"internal errors: {s['errors'][0]}")
        entries.append(Entry(variant, role, d, s, ok, verdict))
        log(f"nightly: {role} {variant}: {verdict}")
        if camp.interrupted:
            interrupted = True
            break
    passed = not interrupted and all(e.ok for e in entries)
    _write(spec, out, argv, entries, passed, interrupted)
    return passed, interrupted, entries


def _is_hunted(stop, f: dict) -> bool:
    return bool(stop(f))


def _write(spec: NightlySpec, out: Path, argv: list[str], entries: list[Entry], passed: bool,
           interrupted: bool) -> None:
    doc = {"schema": NIGHTLY_SCHEMA, "tool_version": __version__, "argv": argv,
           "base_seed": spec.base_seed, "duration_per_variant": spec.duration,
           "seeds_per_variant": spec.seeds, "canary": spec.canary,
           "canary_duration": spec.canary_duration, "passed": passed,
           "interrupted": interrupted,
           "campaigns": [{"variant": e.variant, "role": e.role, "dir": e.out.name,
                          "runs": e.summary["runs"], "elapsed_s": e.summary["elapsed_s"],
                          "findings": len(e.summary["findings"]), "ok": e.ok,
                          "verdict": e.verdict} for e in entries]}
    write_atomic(out / "nightly.json", json.dumps(doc, indent=1, sort_keys=True))
    write_atomic(out / "nightly.md", nightly_markdown(doc, entries))
    write_atomic(out / JUNIT, nightly_junit(entries))


__all__ = ["NightlySpec", "run_nightly", "NIGHTLY_SCHEMA"]
