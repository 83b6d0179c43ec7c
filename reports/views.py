"""What the renderings share: the figures and phrases that report.md, report.html, the
plots and the text summary all show the same way (the one home of each)."""
from __future__ import annotations

import datetime as _dt
import shlex
from pathlib import Path

from core.tdx_module import PHASES

from .rundir import SUMMARY


def timelines(s: dict) -> dict[str, list[dict]]:
    """The progress samples by shard (one unnamed entry for a single run)."""
    if s.get("shard_timelines"):
        return {k: v for k, v in s["shard_timelines"].items() if v}
    return {"": s["timeline"]} if s.get("timeline") else {}


def with_rates(tl: list[dict]) -> list[dict]:
    """Each sample with ``rate``: runs per second since the previous one (the first
    since the start of the run)."""
    out = []
    prev_t, prev_runs = 0.0, 0
    for p in tl:
        dt = p["elapsed_s"] - prev_t
        rate = (p["runs"] - prev_runs) / dt if dt > 0 else 0.0
        out.append(dict(p, rate=rate))
        prev_t, prev_runs = p["elapsed_s"], p["runs"]
    return out


def thin(xs: list, n: int) -> list:
    """At most ``n`` evenly spaced items of ``xs``, the last always kept."""
    if len(xs) <= n:
        return list(xs)
    idx = sorted({round(i * (len(xs) - 1) / (n - 1)) for i in range(n)})
    return [xs[i] for i in idx]


def seeds_text(s: dict) -> str:
    rngs = s.get("seeds") or []
    n = sum(b - a + 1 for a, b in rngs)
    parts = [f"{a}" if a == b else f"{a}–{b}" for a, b in rngs[:6]]
    more = f", … ({len(rngs) - 6} more ranges)" if len(rngs) > 6 else ""
    return f"base seed {s['base_seed']}; {n:,} seeds run: " \
           f"{', '.join(parts) or 'none'}{more}"


def command_text(s: dict) -> str:
    argv = s.get("argv") or []
    return shlex.join(str(a) for a in argv) if argv else "(not recorded)"


def when_text(s: dict, out: Path) -> str:
    """When the run happened: the summary's start time if it records one, else the time
    its summary.json was written."""
    for key in ("started_utc", "started_at"):
        if s.get(key):
            return f"started {s[key]}"
    try:
        mtime = (out / SUMMARY).stat().st_mtime
    except OSError:
        return ""
    t = _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc)
    return f"summary written {t.strftime('%Y-%m-%d %H:%M:%S UTC')}"


def replay_command(f: dict, out: Path) -> str:
    return f"tdx-stress replay {shlex.quote(str(out / f['repro']))}"


def rate(s: dict) -> float:
    return s["runs"] / s["elapsed_s"] if s.get("elapsed_s") else 0.0


def seamcall_table(s: dict) -> tuple[list[str], list[list[object]]]:
    """SEAMCALLs (and the guest's TDCALLs) by TD phase, then the rows of the scenario
    table that each phase hit: (head, rows) for Markdown and HTML alike."""
    phases = PHASES
    calls = s.get("seamcalls") or {}
    names = sorted({n for c in calls.values() for n in c})
    head = ["SEAMCALL"] + list(phases)
    rows: list[list[object]] = [[n, *(f"{calls.get(p, {}).get(n, 0):,}" for p in phases)]
                                for n in names]
    rbp = s.get("rows_by_phase") or {}
    for i in range(1, 15):
        hits = [rbp.get(p, {}).get(str(i), 0) for p in phases]
        if any(hits):
            rows.append([f"row {i}", *(f"{h:,}" for h in hits)])
    return head, rows or [["none", *(["0"] * len(phases))]]
