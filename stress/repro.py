"""Repro files: everything needed to replay a finding exactly (JSON, never pickle).

``"schema": "tdx-stress/repro/1"`` with the tool version, a hash of the model (the
sources that decide what a schedule means), the variant, the full configuration, the
seed, the mode, the workload, the schedule (controlled: the thread chosen at every
decision) or the trace (free: the thread of every step), both run-length encoded, and
the finding it reproduces.  Reading one checks all of that and says in one sentence
what is wrong with a file that does not fit.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from core import __version__
from core.findings import Finding
from core.variants import get_variant
from reports.rundir import REPRO_SCHEMA

from .config import ConfigError, RunConfig
from .controlled import rle
from .workload import Workload, workload_from_json, workload_to_json

SCHEMA = REPRO_SCHEMA
_MODEL_FILES = ("core", "stress/workload.py", "stress/controlled.py", "stress/strategies.py")


class ReproError(ValueError):
    """A repro file that cannot be used; the message is one sentence for the user."""


def model_hash() -> str:
    """A hash of the sources that give a schedule its meaning: the machine and its
    built-in patches, the workload roles, the controlled scheduler and its strategies."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.blake2b(digest_size=10)
    for f in model_files():
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def model_files() -> list[Path]:
    """The files :func:`model_hash` covers."""
    root = Path(__file__).resolve().parent.parent
    files: list[Path] = []
    for name in _MODEL_FILES:
        p = root / name
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return files


def unrle(runs: list) -> list[int]:
    out: list[int] = []
    for run in runs:
        if (not isinstance(run, list) or len(run) != 2 or not all(isinstance(v, int) for v in run)
                or run[1] < 1 or run[0] < 0):
            raise ReproError("the schedule in the repro file is malformed")
        out.extend([run[0]] * run[1])
    return out


@dataclass
class Size:
    """How big a repro is, the one measure of it (the repro's ``size``, the shrinker's
    goal, smallest first in the order of :meth:`key`): threads, operations (guest
    instructions, zapper operations and PAGE.ADD pages), preemptions, steps."""
    preemptions: int
    threads: int
    operations: int
    steps: int

    def key(self) -> tuple[int, int, int, int]:
        return (self.threads, self.operations, self.preemptions, self.steps)

    def as_dict(self) -> dict:
        return {"preemptions": self.preemptions, "threads": self.threads,
                "operations": self.operations, "steps": self.steps}


def repro_size(w: Workload, steps: int, preemptions: int) -> Size:
    """The :class:`Size` of workload ``w`` run for ``steps`` with ``preemptions``."""
    return Size(preemptions, len(w.programs) + len(w.zaps),
                sum(map(len, w.programs)) + sum(map(len, w.zaps)) + len(w.initial), steps)


def make_repro(cfg: RunConfig, seed: int, workload: Workload, finding: Finding, *,
               schedule: list[int] | None = None, trace: list[int] | None = None,
               threads: list[str] | None = None, steps: int = 0, preemptions: int = 0,
               shrunk_from: dict | None = None) -> dict:
    d = {
        "schema": SCHEMA,
        "tool_version": __version__,
        "model_hash": model_hash(),
        "variant": cfg.variant,
        # a patch variant: the hash of its source, which the schedule's meaning hangs on
        "patch_hash": get_variant(cfg.variant).patch_hash,
        "config": cfg.to_dict(),
        "seed": seed,
        "mode": "free" if trace is not None else "controlled",
        "threads": threads or [],
        "workload": workload_to_json(workload),
        "finding": finding.to_dict(),
        "size": repro_size(workload, steps, preemptions).as_dict(),
    }
    if trace is not None:
        d["trace"] = rle(trace)
    else:
        d["schedule"] = rle(schedule or [])
    if shrunk_from is not None:
        d["shrunk_from"] = shrunk_from
    return d


def write_repro(directory: Path, repro: dict) -> Path:
    """Write a repro race-free (exclusive create); never overwrite another one."""
    directory.mkdir(parents=True, exist_ok=True)
    sig = repro["finding"]["signature"]
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in sig).strip("-")[:80]
    text = json.dumps(repro, indent=1, sort_keys=True)
    for n in range(1000):
        path = directory / (f"{stem}.json" if n == 0 else f"{stem}-{n}.json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return path
    raise OSError(f"no free file name for {stem} in {directory}")


class Repro:
    """A validated repro file."""

    def __init__(self, d: dict, path: str = "") -> None:
        self.raw = d
        self.path = path
        self.config = RunConfig.from_dict(d["config"])
        self.seed: int = d["seed"]
        self.mode: str = d["mode"]
        self.workload = workload_from_json(d["workload"])
        self.finding: dict = d["finding"]
        self.signature: str = self.finding["signature"]
        self.step: int = self.finding.get("step", 0)
        self.schedule = unrle(d["schedule"]) if "schedule" in d else None
        self.trace = unrle(d["trace"]) if "trace" in d else None


def load_repro(path: str | Path, *, check_version: bool = True) -> Repro:
    """Read and validate a repro file; :class:`ReproError` says what is wrong."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ReproError(f"repro file {p} does not exist") from None
    except IsADirectoryError:
        raise ReproError(f"{p} is a directory, not a repro file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReproError(f"cannot read repro file {p}: {e}") from None
    if not text.strip():
        raise ReproError(f"repro file {p} is empty")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        kind = "truncated" if e.pos >= len(text.rstrip()) - 1 else "not valid JSON"
        raise ReproError(f"repro file {p} is {kind} ({e.msg} at line {e.lineno})") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        got = d.get("schema") if isinstance(d, dict) else type(d).__name__
        raise ReproError(f"{p} is not a tdx-stress repro file (schema {got!r}, expected "
                         f"{SCHEMA!r})")
    if check_version:
        if d.get("tool_version") != __version__:
            raise ReproError(f"{p} was written by tdx-stress {d.get('tool_version')}, this is "
                             f"{__version__}; replay it with that version")
        if d.get("model_hash") != model_hash():
            raise ReproError(f"{p} was recorded against another model (hash "
                             f"{d.get('model_hash')}, this model is {model_hash()}); its "
                             "schedule would not mean the same here")
        if d.get("patch_hash"):
            from .patches import patch_source_hash
            now = patch_source_hash(str(d.get("variant")))
            if not now:
                raise ReproError(f"{p} was recorded against the patch {d.get('variant')}, "
                                 f"which is not there")
            if now != d["patch_hash"]:
                raise ReproError(f"{p} was recorded against another version of the patch "
                                 f"{d.get('variant')} (hash {d['patch_hash']}, the file now "
                                 f"{now}); its schedule would not mean the same here")
    missing = [k for k in ("variant", "config", "seed", "mode", "workload", "finding")
               if k not in d]
    if missing or ("schedule" not in d and "trace" not in d):
        what = ", ".join(missing) or "schedule or trace"
        raise ReproError(f"repro file {p} lacks {what}")
    try:
        return Repro(d, str(p))
    except ConfigError as e:
        raise ReproError(f"repro file {p} has a bad configuration: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ReproError):
            raise
        raise ReproError(f"repro file {p} is malformed ({type(e).__name__}: {e})") from None
