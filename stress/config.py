"""The configuration of a run and the seed streams it draws from; the one home of the
settings' checks (the CLI's argparse types and the pytest plugin's options are thin
adapters over the validators here), of the base seed's precedence and of the run
directory's default.

One seed decides everything.  It is split into named streams (workload, schedule, busy
injection, free-mode stalls), each a ``random.Random`` seeded from a string, which Python
hashes with SHA-512: the same on every run, process and machine, and independent of
``PYTHONHASHSEED``.  Nothing reads the wall clock, ``id()`` or the global ``random``.
"""
from __future__ import annotations

import datetime as _dt
import os
import random
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from core.variants import get_variant

MODES = ("controlled", "free")
# The guest a run models (core.guest) and who converts memory: the guest itself with
# MapGPA on its vCPU thread ("mapgpa"), or userspace on its own threads ("async": legal,
# more adversarial: a Linux TD dies when it touches memory taken from under it).
GUESTS = ("linux", "ve-accept")
CONVERSIONS = ("mapgpa", "async")
# controlled-mode strategies; "portfolio" runs PCT on even seeds and random on odd ones
# (strategy_of), as Coyote's portfolio runs several strategies side by side: PCT's
# priorities give its bound and find bugs of few ordering points, random's fine-grained
# switching finds those of many (a Linux TD's hunt-b: four ordering points)
STRATEGIES = ("portfolio", "pct", "random", "bounded")


def default_conversions(guest: str) -> str:
    """Who converts memory unless told: a Linux TD asks with MapGPA; the ``ve-accept``
    guest makes no TDVMCALL, so userspace converts on its own."""
    return "mapgpa" if guest == "linux" else "async"


class ConfigError(ValueError):
    """A configuration that makes no sense; the message is one sentence for the user."""


SEED_ENV = "TDX_STRESS_SEED"


def whole(value: str | int) -> int:
    """A whole number (``--depth``): a decimal string, or an int (not a bool)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not a whole number")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a whole number") from None


def positive_int(value: str | int) -> int:
    """A whole number of at least 1 (``--seeds``, ``--workers``)."""
    v = whole(value)
    if v < 1:
        raise ConfigError(f"{value!r} must be at least 1")
    return v


def non_negative_int(value: str | int) -> int:
    """A whole number of at least 0 (``--lanes``)."""
    v = whole(value)
    if v < 0:
        raise ConfigError(f"{value!r} must not be negative")
    return v


def seconds(value: str | float) -> float:
    """A positive, finite number of seconds (``--duration``, ``--checkpoint``): a string,
    or a number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{value!r} is not a number of seconds")
    try:
        v = float(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a number of seconds") from None
    if not v > 0 or v != v or v == float("inf"):
        raise ConfigError(f"{value!r} must be a positive number of seconds")
    return v


def seed_value(value: str | int) -> int:
    """A base seed: a whole number of at least 0."""
    v = whole(value)
    if v < 0:
        raise ConfigError(f"{value!r} must not be negative")
    return v


def shard(text: str) -> tuple[int, int]:
    """``i/N``: slice i of N of a campaign."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"{text!r} is not of the form i/N") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard {text!r} needs N >= 1 and 0 <= i < N")
    return i, n


def resolve_seed(flag: str | None) -> tuple[int, str]:
    """The base seed and where it came from: the flag, then ``$TDX_STRESS_SEED``, then a
    fresh one (one documented precedence, docs/contract.md)."""
    for source, text in (("--seed", flag), (f"${SEED_ENV}", os.environ.get(SEED_ENV) or None)):
        if text is None:          # an empty $TDX_STRESS_SEED (a CI input left blank) is unset
            continue
        try:
            v = int(text, 0)
        except ValueError:
            raise ConfigError(f"the seed from {source} ({text!r}) is not an integer") from None
        if v < 0:
            raise ConfigError(f"the seed from {source} ({text!r}) must not be negative")
        return v, source
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF, "fresh"


def output_file(text: str, what: str) -> Path:
    """A file the command will write at its end (``--junit``, ``shrink -o X.json``),
    checked before any work starts: not a directory, its directory made, writable."""
    if not text:
        raise ConfigError(f"{what} is empty; give a file")
    path = Path(text)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write {what} {path}: {e.strerror or e}") from None
    return path


def make_out_dir(flag: str | None) -> Path:
    """The run directory: ``flag``, else ``./tdx-stress-runs/<UTC stamp>``; made and
    checked writable."""
    if flag == "":
        raise ConfigError("--out is empty; give a directory")
    if flag is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path("tdx-stress-runs") / stamp
        n = 1
        while out.exists():
            out = Path("tdx-stress-runs") / f"{stamp}-{n}"
            n += 1
    else:
        out = Path(flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot use {out} as the run directory: {e.strerror or e}") from None
    return out


@dataclass(frozen=True)
class RunConfig:
    """Everything that shapes one run except its seed."""
    variant: str = "hugepage-rfc"
    mode: str = "controlled"
    strategy: str = "portfolio"
    depth: int = 3
    preemptions: int = 2        # bounded: every schedule with at most this many
    # PCT's horizons (SEAMCALL windows): the lengths of calibration runs of this
    # configuration, each run drawing its k among them (stress.runner.learned_pct_ks);
    # empty: learn them.  A campaign learns them once and records them here.
    pct_ks: tuple[int, ...] = ()
    vcpus: int = 2
    zappers: int = 2
    ops: int = 10               # zapper operations per zapper; guest program length scales
    busy_rate: float = 0.0
    max_steps: int = 200_000    # a run past this without ending is a HANG
    stall_rate: float = 0.05    # free mode: chance of a short stall at a yield point
    # chance, per turn of a retry loop (tdx_handle_ept_violation, kvm_tdp_map_page), that
    # a signal is pending for the thread (signal_pending(current)): rare, seeded
    signal_rate: float = 0.0002
    # a Linux TD (core.guest.LinuxTdGuest); "" conversions: the guest's own flow
    # (default_conversions)
    guest: str = "linux"
    conversions: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.pct_ks, tuple):          # a list, read back from JSON
            object.__setattr__(self, "pct_ks", tuple(self.pct_ks))
        if not self.conversions:
            object.__setattr__(self, "conversions", default_conversions(self.guest))

    def validate(self) -> "RunConfig":
        get_variant(self.variant)   # raises UnknownVariant with the list of valid ones
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; valid strategies: "
                              f"{', '.join(STRATEGIES)}")
        if self.guest not in GUESTS:
            raise ConfigError(f"unknown guest {self.guest!r}; valid guests: {', '.join(GUESTS)}")
        if self.conversions not in CONVERSIONS:
            raise ConfigError(f"unknown conversion flow {self.conversions!r}; valid flows: "
                              f"{', '.join(CONVERSIONS)}")
        if self.conversions == "mapgpa" and self.guest != "linux":
            raise ConfigError("--conversions mapgpa needs --guest linux (only a Linux TD "
                              "makes MapGPA calls)")
        checks = [
            (1 <= self.depth <= 20, "--depth must be between 1 and 20"),
            (0 <= self.preemptions <= 10, "--preemptions must be between 0 and 10"),
            (len(self.pct_ks) <= 64 and all(isinstance(k, int) and 1 <= k <= 10_000_000
                                             for k in self.pct_ks),
             "PCT's horizons must be at most 64 whole numbers between 1 and 1e7"),
            (self.strategy != "bounded" or self.mode == "controlled",
             "--strategy bounded needs --mode controlled"),
            (1 <= self.vcpus <= 16, "--vcpus must be between 1 and 16"),
            (0 <= self.zappers <= 16, "--zappers must be between 0 and 16"),
            (1 <= self.ops <= 10_000, "--ops must be between 1 and 10000"),
            (0.0 <= self.busy_rate < 1.0, "--busy-rate must be at least 0 and below 1"),
            (100 <= self.max_steps <= 100_000_000, "--max-steps must be between 100 and 1e8"),
            (0.0 <= self.stall_rate <= 1.0, "the stall rate must be between 0 and 1"),
            (0.0 <= self.signal_rate < 1.0, "the signal rate must be at least 0 and below 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def strategy_of(self, seed: int) -> str:
        """The strategy seed ``seed`` runs with: the portfolio's PCT on even seeds,
        random on odd ones; otherwise the one configured."""
        if self.strategy == "portfolio":
            return "pct" if seed % 2 == 0 else "random"
        return self.strategy

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Read a configuration back.  One written before the guest and conversion flow
        were choices ran the ``ve-accept`` guest with ``async`` conversions: it replays
        as that."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown configuration keys {sorted(unknown)}")
        d = dict(d)
        if "guest" not in d:
            d.setdefault("guest", "ve-accept")
            d.setdefault("conversions", "async")
        return cls(**d).validate()

    def with_(self, **kw: object) -> "RunConfig":
        return replace(self, **kw)  # type: ignore[arg-type]


class Streams:
    """Named random streams split from one seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def get(self, name: str) -> random.Random:
        return random.Random(f"tdx-stress:{self.seed}:{name}")
