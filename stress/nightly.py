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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree as ET

from core import __version__
from core.variants import AS_DESIGNED

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
    config: dict = field(default_factory=dict)   # RunConfig fields shared by every campaign


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
        cfg = RunConfig(**dict(spec.config, variant=variant)).validate()
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
    tmp = out / "nightly.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, out / "nightly.json")
    (out / "nightly.md").write_text(nightly_markdown(doc, entries))
    (out / "junit.xml").write_text(nightly_junit(entries))


def nightly_markdown(doc: dict, entries: list[Entry]) -> str:
    from reports.confidence import confidence_text
    verdict = "PASSED" if doc["passed"] else ("INTERRUPTED" if doc["interrupted"] else "FAILED")
    lines = [f"# tdx-stress nightly: {verdict}", "",
             f"* tool version {doc['tool_version']}, base seed {doc['base_seed']}",
             f"* command: `{' '.join(doc['argv'])}`", "",
             "| campaign | variant | runs | seconds | findings | verdict | report |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        s = e.summary
        lines.append(f"| {e.role} | {e.variant} | {s['runs']} | {s['elapsed_s']:.1f} | "
                     f"{len(s['findings'])} | {'ok' if e.ok else '**FAIL**'}: {e.verdict} | "
                     f"[{e.out.name}/report.md]({e.out.name}/report.md) |")
    for e in entries:
        if e.role == "as-designed" and e.summary["findings"]:
            lines += ["", f"## Findings in {e.variant}", ""]
            for f in e.summary["findings"]:
                lines.append(f"* {f['kind']} `{f['signature']}` in {f['count']} run(s), first "
                             f"seed {f['first_seed']}: `tdx-stress replay "
                             f"{e.out / f['repro']}`")
    for e in entries:
        if e.role == "as-designed" and not e.summary["findings"]:
            lines += ["", f"## What a clean {e.variant} means", ""]
            lines += confidence_text(e.summary)
    return "\n".join(lines) + "\n"


def nightly_junit(entries: list[Entry]) -> str:
    """One suite per as-designed campaign (as ``tdx-stress run`` writes it) and a canary
    suite whose one case passes only if the canary's hunt was caught."""
    from reports.junit import junit_suite
    root = ET.Element("testsuites", name="tdx-stress nightly")
    for e in entries:
        if e.role == "as-designed":
            root.append(junit_suite(e.summary, e.out))
            continue
        suite = ET.SubElement(root, "testsuite", name=f"tdx-stress.canary.{e.variant}",
                              tests="1", failures="0" if e.ok else "1", errors="0",
                              skipped="0", time=f"{e.summary['elapsed_s']:.3f}")
        case = ET.SubElement(suite, "testcase", classname="tdx-stress.canary",
                             name=f"{e.variant} is caught", time=f"{e.summary['elapsed_s']:.3f}")
        if not e.ok:
            ET.SubElement(case, "failure", message=e.verdict, type="CANARY").text = e.verdict
        else:
            first = e.summary["findings"][0] if e.summary["findings"] else None
            ET.SubElement(case, "system-out").text = (
                e.verdict + (f"; first: {first['signature']}" if first else "") + "\n")
    tests = sum(int(s.get("tests", 0)) for s in root)
    failures = sum(int(s.get("failures", 0)) for s in root)
    root.set("tests", str(tests))
    root.set("failures", str(failures))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


__all__ = ["NightlySpec", "run_nightly", "NIGHTLY_SCHEMA"]
