"""The configuration of a run and the seed streams it draws from.

One seed decides everything.  It is split into named streams (workload, schedule, busy
injection, free-mode stalls), each a ``random.Random`` seeded from a string, which Python
hashes with SHA-512: the same on every run, process and machine, and independent of
``PYTHONHASHSEED``.  Nothing reads the wall clock, ``id()`` or the global ``random``.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace

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
STRATEGIES = ("portfolio", "pct", "random")


def default_conversions(guest: str) -> str:
    """Who converts memory unless told: a Linux TD asks with MapGPA; the ``ve-accept``
    guest makes no TDVMCALL, so userspace converts on its own."""
    return "mapgpa" if guest == "linux" else "async"


class ConfigError(ValueError):
    """A configuration that makes no sense; the message is one sentence for the user."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that shapes one run except its seed."""
    variant: str = "hugepage-rfc"
    mode: str = "controlled"
    strategy: str = "portfolio"
    depth: int = 3
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
