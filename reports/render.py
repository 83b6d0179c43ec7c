"""Reading, merging and rendering run directories (never runs the machine).

``summary.json`` (schema ``tdx-stress/summary/1``) is the input; :func:`write_reports`
writes every rendering of it (``report.md``, ``junit.xml``) into a run directory.
Merging shard directories sums the counters and keeps, for each finding signature, the
smallest first seed and its repro.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.oracle import EXPECTED, ROW_TEXT

SUMMARY_SCHEMA = "tdx-stress/summary/1"


class ReportError(ValueError):
    """A run directory that cannot be read; the message is one sentence."""


def load_summary(d: Path) -> dict:
    p = d / "summary.json" if d.is_dir() else d
    if not d.exists():
        raise ReportError(f"run directory {d} does not exist")
    try:
        s = json.loads(p.read_text())
    except FileNotFoundError:
        raise ReportError(f"{d} has no summary.json (not a tdx-stress run directory)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read {p}: {e}") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(s, dict) or s.get("schema") != SUMMARY_SCHEMA:
        raise ReportError(f"{p} is not a tdx-stress summary (schema "
                          f"{s.get('schema') if isinstance(s, dict) else None!r})")
    s["_dir"] = str(d)
    return s


def merge_summaries(summaries: list[dict]) -> dict:
    """Shards of one campaign into one summary."""
    variants = {s["variant"] for s in summaries}
    if len(variants) > 1:
        raise ReportError(f"cannot merge runs of different variants: {sorted(variants)}")
    m = json.loads(json.dumps({k: v for k, v in summaries[0].items() if k != "_dir"}))
    m["shard"] = "merged " + ", ".join(s.get("shard", "?") for s in summaries)
    m["runs"] = sum(s["runs"] for s in summaries)
    m["steps"] = sum(s["steps"] for s in summaries)
    m["elapsed_s"] = max(s["elapsed_s"] for s in summaries)
    m["interrupted"] = any(s["interrupted"] for s in summaries)
    for i in m["rows"]:
        m["rows"][i]["hits"] = sum(s["rows"][i]["hits"] for s in summaries)
        m["rows"][i]["bug_hits"] = sum(s["rows"][i]["bug_hits"] for s in summaries)
    busy: dict[str, int] = {}
    for s in summaries:
        for k, v in s["busy"].items():
            busy[k] = busy.get(k, 0) + v
    m["busy"] = dict(sorted(busy.items()))
    m["seeds"] = sorted(r for s in summaries for r in s.get("seeds", []))
    by_sig: dict[str, dict] = {}
    for s in summaries:
        for f in s["findings"]:
            f = dict(f, _dir=s["_dir"])
            g = by_sig.get(f["signature"])
            if g is None:
                by_sig[f["signature"]] = f
                continue
            g["count"] += f["count"]
            g["occurrences"] = g.get("occurrences", 0) + f.get("occurrences", 0)
            g["first_elapsed_s"] = min(g["first_elapsed_s"], f["first_elapsed_s"])
            if f["first_seed"] < g["first_seed"]:
                g["first_seed"], g["repro"], g["_dir"] = f["first_seed"], f["repro"], f["_dir"]
    m["findings"] = sorted(by_sig.values(), key=lambda f: f["first_seed"])
    m["threads_max"] = max(s.get("threads_max", 0) for s in summaries)
    pcts = [(s["pct"], s["runs"]) for s in summaries if s.get("pct")]
    if pcts:
        m["pct"] = {"k": max(p["k"] for p, _ in pcts), "depth": pcts[0][0]["depth"],
                    "sync_steps_mean": round(sum(p["sync_steps_mean"] * r for p, r in pcts)
                                             / max(1, sum(r for _, r in pcts)), 1),
                    "sync_steps_max": max(p["sync_steps_max"] for p, _ in pcts),
                    "runs_past_k": sum(p["runs_past_k"] for p, _ in pcts)}
    # shards run side by side, each with its own clock: keep each one's timeline
    m["timeline"] = []
    m["shard_timelines"] = {s.get("shard", str(i)): s.get("timeline", [])
                            for i, s in enumerate(summaries)}
    m["resources"] = {"peak_rss_mb": max(s["resources"]["peak_rss_mb"] for s in summaries),
                      "cpu_s": sum(s["resources"]["cpu_s"] for s in summaries)}
    return m


def copy_findings(dirs: list[Path], merged: dict, out: Path) -> None:
    (out / "findings").mkdir(parents=True, exist_ok=True)
    for f in merged["findings"]:
        src = Path(f.pop("_dir")) / f["repro"]
        dst = out / "findings" / src.name
        if src.exists() and src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        f["repro"] = str(Path("findings") / src.name)


def render_markdown(summaries: list[dict], out: Path) -> str:
    s = summaries[0]
    lines = [f"# tdx-stress report: {s['variant']}", "",
             f"* tool version {s['tool_version']}; mode {s['mode']}, strategy "
             f"{s['strategy']}, depth {s['depth']}; base seed {s['base_seed']}; "
             f"shard {s.get('shard')}",
             f"* {s['runs']} runs, {s['steps']} steps, {s['elapsed_s']:.1f} s"
             + (" (interrupted)" if s["interrupted"] else ""),
             f"* command: `{' '.join(s.get('argv', []))}`", "",
             "## Scenario rows (seed 002's table)", "",
             "| # | old | new | shared | hits | bug hits | mirror allowed | KVM_BUG_ON hittable |",
             "|---|---|---|---|---|---|---|---|"]
    for i in range(1, 15):
        r = s["rows"][str(i)]
        old, new, shared = ROW_TEXT[i]
        allowed, hittable = EXPECTED[i]
        hits = str(r["hits"]) if r["hits"] else "never reached"
        lines.append(f"| {i} | {old} | {new} | {shared} | {hits} | {r['bug_hits']} | "
                     f"{allowed} | {hittable} |")
    lines += ["", "## BUSY by source", "", "| source | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["busy"].items()] or ["| none | 0 |"]
    from .confidence import confidence_text
    lines += ["", "## Confidence", ""] + confidence_text(s)
    lines += ["", "## Findings", ""]
    if not s["findings"]:
        lines.append("None.")
    for f in s["findings"]:
        lines += [f"### {f['kind']} {f['signature']}", "",
                  f"* path {f['path'] or '-'}, row {f['row'] or '-'}, in {f['count']} run(s), "
                  f"first seed {f['first_seed']} after {f['first_elapsed_s']:.1f} s",
                  f"* {f['message']}",
                  f"* replay: `tdx-stress replay {out / f['repro']}`", ""]
    return "\n".join(lines) + "\n"


def write_reports(summary: dict, out: Path, junit: Path | None = None) -> None:
    """Write ``report.md`` and ``junit.xml`` for ``summary`` into the run directory
    ``out`` (and the JUnit file also to ``junit`` when given).  The one place the CLI,
    the pytest plugin and ``tdx-stress report`` render a run."""
    from .junit import junit_xml
    (out / "report.md").write_text(render_markdown([summary], out))
    text = junit_xml(summary, out)
    (out / "junit.xml").write_text(text)
    if junit is not None:
        Path(junit).write_text(text)
