"""The run directory: the one home of its layout, its atomic writes and reading it back.

A run directory (``--out``) holds::

    summary.json          tdx-stress/summary/1: the campaign's totals, rows, findings
    events.jsonl          one JSON object a line: findings and checkpoints as they happen
    findings/X.json       tdx-stress/repro/1: one repro per finding signature
    findings/X.lane.txt   the swim lane of that finding, drawn from its replay
    report.md, report.html, junit.xml

The campaign writes it, ``tdx-stress report`` merges and renders it, the pytest plugin
and the nightly job read it; all of them take the names from here.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SUMMARY_SCHEMA = "tdx-stress/summary/1"
REPRO_SCHEMA = "tdx-stress/repro/1"

SUMMARY = "summary.json"
EVENTS = "events.jsonl"
FINDINGS = "findings"
LANE_SUFFIX = ".lane.txt"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
JUNIT = "junit.xml"
LOG = "log.txt"


class ReportError(ValueError):
    """A run directory that cannot be read, or be used; the message is one sentence."""


# A run directory belongs to one run: this marker, made exclusively when the run claims
# it, says so (and stays, with the run's files)
MARKER = ".tdx-stress-run"
_CLAIMED: set[Path] = set()


def claim(out: Path) -> None:
    """Make ``out`` this run's, or refuse: a directory that holds another run's summary
    or events, or that another run has claimed (even one going on right now), is never
    written into again.  Claiming twice in one process is a no-op."""
    key = out.resolve()
    if key in _CLAIMED:
        return
    for name in (SUMMARY, EVENTS):
        if (out / name).exists():
            raise ReportError(f"{out} already holds a run ({name}); give a new --out")
    try:
        fd = os.open(out / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ReportError(f"{out} belongs to another run; give a new --out") from None
    except OSError as e:
        raise ReportError(f"cannot use {out} as a run directory: {e.strerror or e}") from None
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    _CLAIMED.add(key)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one,
    never half of it (a temporary file beside it, fsynced, then renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_summary(out: Path, summary: dict) -> None:
    """``summary.json`` of the run directory ``out``, atomically."""
    write_atomic(out / SUMMARY, json.dumps(summary, indent=1, sort_keys=True))


def load_summary(d: Path) -> dict:
    """The summary of run directory ``d`` (or of a summary file), with ``_dir`` set to
    where it came from; :class:`ReportError` says what is wrong."""
    p = d / SUMMARY if d.is_dir() else d
    if not d.exists():
        raise ReportError(f"run directory {d} does not exist")
    try:
        s = json.loads(p.read_text())
    except FileNotFoundError:
        raise ReportError(f"{d} has no {SUMMARY} (not a tdx-stress run directory)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read {p}: {e}") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(s, dict) or s.get("schema") != SUMMARY_SCHEMA:
        raise ReportError(f"{p} is not a tdx-stress summary (schema "
                          f"{s.get('schema') if isinstance(s, dict) else None!r})")
    s["_dir"] = str(d)
    return s


def lane_path(repro: str) -> str:
    """Where the swim lane of the finding whose repro is ``repro`` lives (both relative
    to the run directory): ``findings/X.json`` -> ``findings/X.lane.txt``."""
    p = Path(repro)
    return str(p.with_name(p.stem + LANE_SUFFIX))


def write_lane(out: Path, repro: str, lane: str) -> None:
    """Store the swim lane of the finding whose repro is ``repro``."""
    write_atomic(out / lane_path(repro), lane + "\n")


# ---------------------------------------------------------------------- reading it back
def copy_findings(dirs: list[Path], merged: dict, out: Path) -> None:
    (out / FINDINGS).mkdir(parents=True, exist_ok=True)
    for f in merged["findings"]:
        src = Path(f.pop("_dir")) / f["repro"]
        dst = out / FINDINGS / src.name
        if src.exists() and src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
            lane = src.with_name(src.stem + LANE_SUFFIX)
            if lane.exists():
                shutil.copyfile(lane, dst.with_name(dst.stem + LANE_SUFFIX))
        f["repro"] = str(Path(FINDINGS) / src.name)


def read_lanes(s: dict, out: Path, lanes: dict[str, str] | None = None) -> dict[str, str]:
    """The swim lane of each finding that has one: ``lanes`` first, then the lane file
    beside the repro (in the finding's own shard directory while merging)."""
    got: dict[str, str] = {}
    for f in s.get("findings", []):
        sig = f["signature"]
        if lanes and lanes.get(sig):
            got[sig] = lanes[sig]
            continue
        if not f.get("repro"):
            continue
        base = Path(f["_dir"]) if f.get("_dir") else out
        try:
            text = (base / f.get("lane", lane_path(f["repro"]))).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            got[sig] = text
    return {k: "\n".join(line.rstrip() for line in v.strip("\n").splitlines())
            for k, v in got.items()}


def read_resources(out: Path, limit: int = 2000) -> list[dict]:
    """A soak's ``{"event": "resources"}`` samples from ``events.jsonl`` (every
    ``n``-th one when there are more than ``limit``)."""
    samples: list[dict] = []
    try:
        with open(out / EVENTS, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"resources"' not in line:
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue        # a line cut short by SIGKILL
                if isinstance(d, dict) and d.get("event") == "resources" \
                        and isinstance(d.get("elapsed_s"), (int, float)):
                    samples.append(d)
    except OSError:
        return []
    if len(samples) > limit:
        step = -(-len(samples) // limit)
        samples = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    return samples
