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
import stat
from dataclasses import dataclass
from pathlib import Path

from core import __version__
from core.findings import Finding
from core.variants import UnknownVariant, get_variant
from reports.rundir import REPRO_SCHEMA

from .config import ConfigError, RunConfig
from .controlled import rle
from .workload import GFN_LIMIT, Workload, workload_from_json, workload_to_json

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
    text = _read_bounded(p)
    if not text.strip():
        raise ReproError(f"repro file {p} is empty")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        kind = "truncated" if e.pos >= len(text.rstrip()) - 1 else "not valid JSON"
        raise ReproError(f"repro file {p} is {kind} ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ReproError(f"repro file {p} is nested too deeply to be a repro") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        got = d.get("schema") if isinstance(d, dict) else type(d).__name__
        got = got[:80] if isinstance(got, str) else got if got is None else type(got).__name__
        raise ReproError(f"{p} is not a tdx-stress repro file (schema {got!r}, expected "
                         f"{SCHEMA!r})")
    _validate(p, d)
    _check_length(p, d)
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
    try:
        rp = Repro(d, str(p))
    except ConfigError as e:
        raise ReproError(f"repro file {p} has a bad configuration: {e}") from None
    except UnknownVariant as e:
        raise ReproError(f"repro file {p}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ReproError):
            raise
        raise ReproError(f"repro file {p} is malformed ({type(e).__name__}: {e})") from None
    _check_meaning(p, rp)
    return rp


MAX_REPRO_BYTES = 16 << 20      # the largest legitimate repro is far smaller
_SCHEMA_FILE = Path(__file__).resolve().parent.parent / "reports" / "schema" / \
    "repro.schema.json"


def _read_bounded(p: Path) -> str:
    """The text of a repro file: a regular file (not a FIFO, a device or a directory,
    which would hang or never end) of at most MAX_REPRO_BYTES."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ReproError(f"repro file {p} does not exist") from None
    except OSError as e:
        raise ReproError(f"cannot read repro file {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ReproError(f"{p} is a directory, not a repro file")
    if not stat.S_ISREG(st.st_mode):
        raise ReproError(f"{p} is not a regular file (a device or a pipe?); a repro is a file")
    if st.st_size > MAX_REPRO_BYTES:
        raise ReproError(f"repro file {p} is {st.st_size} bytes, more than any repro "
                         f"({MAX_REPRO_BYTES})")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_REPRO_BYTES + 1)
        if len(data) > MAX_REPRO_BYTES:
            raise ReproError(f"repro file {p} is larger than any repro ({MAX_REPRO_BYTES} "
                             f"bytes)")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReproError(f"cannot read repro file {p}: {e}") from None


_VALIDATOR: list = []


def _validate(p: Path, d: dict) -> None:
    """Every field against the repro schema (``reports/schema/repro.schema.json``),
    before anything is built from it; the first problem is named by its field."""
    import jsonschema
    if not _VALIDATOR:
        _VALIDATOR.append(jsonschema.Draft202012Validator(
            json.loads(_SCHEMA_FILE.read_text())))
    err = jsonschema.exceptions.best_match(_VALIDATOR[0].iter_errors(d))
    if err is not None:
        where = "/".join(str(x) for x in err.absolute_path) or "the top level"
        raise ReproError(f"repro file {p}: field {where}: {err.message[:200]}")


def _check_length(p: Path, d: dict) -> None:
    """A schedule no longer than a run of the file's own configuration can take, checked
    before it is expanded (a few bytes of run-length code could ask for gigabytes)."""
    try:
        max_steps = RunConfig.from_dict(d["config"]).max_steps
    except (ConfigError, UnknownVariant, TypeError, ValueError) as e:
        raise ReproError(f"repro file {p} has a bad configuration: {e}") from None
    key = "trace" if "trace" in d else "schedule"
    total = sum(k for _, k in d[key])
    if total > 4 * max_steps + 1000:
        raise ReproError(f"repro file {p}: field {key}: {total} decisions, more than a run "
                         f"of at most {max_steps} steps takes")


def _check_meaning(p: Path, rp: "Repro") -> None:
    """What the schema cannot say: the fields agree with each other and with the
    machine (a thread the run does not have, a GFN outside the VM, a schedule longer
    than any run) and would not make the replay invent a finding or eat memory."""
    d = rp.raw

    def bad(field: str, why: str) -> ReproError:
        return ReproError(f"repro file {p}: field {field}: {why}")
    if d["variant"] != rp.config.variant:
        raise bad("variant", f"{d['variant']!r} disagrees with config/variant "
                             f"{rp.config.variant!r}")
    want = "trace" if rp.mode == "free" else "schedule"
    if want not in d:
        raise bad("mode", f"{rp.mode!r} goes with a {want}")
    w = rp.workload
    n = len(w.programs) + len(w.zaps)
    if not w.programs:
        raise bad("workload/programs", "a run has at least one vCPU")
    if len(d.get("threads") or []) not in (0, n):
        raise bad("threads", f"names {len(d['threads'])} threads, the workload has {n}")
    runs = d[want]
    if any(t >= n for t, _ in runs):
        raise bad(want, f"names a thread the workload does not have (it has {n})")
    if rp.step > rp.config.max_steps:
        raise bad("finding/step", f"{rp.step} is past config/max_steps "
                                  f"({rp.config.max_steps})")
    gfns = [g for g in w.initial] + [i[1] for prog in w.programs for i in prog] + \
        [o[1] + max(o[2], 1) - 1 for z in w.zaps for o in z]
    if any(g >= GFN_LIMIT for g in gfns):
        raise bad("workload", f"a GFN outside the VM (its memory ends at {GFN_LIMIT:#x})")
