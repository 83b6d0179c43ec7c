"""Reading, merging and rendering run directories (never runs the machine).

``summary.json`` (schema ``tdx-stress/summary/1``) is the input; :func:`write_reports`
writes every rendering of it (``report.md``, ``report.html``, ``junit.xml``) into a run
directory.  Merging shard directories sums the counters and keeps, for each finding
signature, the smallest first seed and its repro.

Swim lanes need a replay, and ``reports/`` never runs the machine: the diagram of a
finding is read from ``findings/<repro stem>.lane.txt`` beside its repro (written by the
campaign, see :func:`lane_path`), or passed in as ``lanes={signature: text}``.
"""
from __future__ import annotations

import datetime as _dt
import json
import shlex
import shutil
from pathlib import Path

from core.oracle import EXPECTED, ROW_TEXT
from core.tdx_module import PHASES

SUMMARY_SCHEMA = "tdx-stress/summary/1"
PLOT_HINT = "pip install 'tdx-stress[plot]'"
LANE_SUFFIX = ".lane.txt"


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
    for k in ("vm_killed_runs", "map_gpa_exits"):
        m[k] = sum(s.get(k, 0) for s in summaries)
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
    calls: dict[str, dict[str, int]] = {}
    by_phase: dict[str, dict[str, int]] = {}
    for s in summaries:
        for phase, c in s.get("seamcalls", {}).items():
            into = calls.setdefault(phase, {})
            for k, v in c.items():
                into[k] = into.get(k, 0) + v
        for phase, r in s.get("rows_by_phase", {}).items():
            into = by_phase.setdefault(phase, {})
            for k, v in r.items():
                into[k] = into.get(k, 0) + v
    m["seamcalls"] = {p: dict(sorted(c.items())) for p, c in calls.items()}
    m["rows_by_phase"] = by_phase
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
    pcts = [(s["pct"], s["pct"].get("runs", s["runs"])) for s in summaries if s.get("pct")]
    if pcts:
        m["pct"] = {"k": max(p["k"] for p, _ in pcts), "depth": pcts[0][0]["depth"],
                    "runs": sum(r for _, r in pcts),
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


def lane_path(repro: str) -> str:
    """Where the swim lane of the finding whose repro is ``repro`` lives (both relative
    to the run directory): ``findings/X.json`` -> ``findings/X.lane.txt``."""
    p = Path(repro)
    return str(p.with_name(p.stem + LANE_SUFFIX))


def copy_findings(dirs: list[Path], merged: dict, out: Path) -> None:
    (out / "findings").mkdir(parents=True, exist_ok=True)
    for f in merged["findings"]:
        src = Path(f.pop("_dir")) / f["repro"]
        dst = out / "findings" / src.name
        if src.exists() and src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
            lane = src.with_name(src.stem + LANE_SUFFIX)
            if lane.exists():
                shutil.copyfile(lane, dst.with_name(dst.stem + LANE_SUFFIX))
        f["repro"] = str(Path("findings") / src.name)


# ---------------------------------------------------------------------- what both need
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
        with open(out / "events.jsonl", encoding="utf-8", errors="replace") as fh:
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
        mtime = (out / "summary.json").stat().st_mtime
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


# ---------------------------------------------------------------------- Markdown
def _cell(x: object) -> str:
    text = str(x).replace("|", "\\|").replace("\n", " ")
    return text + " " if text.endswith("\\") else text


def _code(x: str) -> str:
    """An inline code span that survives backticks in ``x``."""
    ticks = "`"
    while ticks in x:
        ticks += "`"
    pad = " " if x.startswith("`") or x.endswith("`") else ""
    return f"{ticks}{pad}{x}{pad}{ticks}"


def _fence(text: str) -> list[str]:
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence + "text", text, fence]


def _table(head: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def render_markdown(summaries: list[dict], out: Path, *,
                    lanes: dict[str, str] | None = None, resources: list[dict] | None = None,
                    plots_note: str = "") -> str:
    s = summaries[0]
    lanes = read_lanes(s, out) if lanes is None else lanes
    merged = bool(s.get("shard_timelines"))
    when = when_text(s, out)
    lines = [f"# tdx-stress report: {s['variant']}", "",
             f"* tool version {s['tool_version']}; mode {s['mode']}, strategy "
             f"{s['strategy']}, depth {s['depth']}; shard {s.get('shard')}",
             f"* guest {s.get('guest', 've-accept')}, conversions "
             f"{s.get('conversions', 'async')}: {s.get('map_gpa_exits', 0):,} MapGPA exits; "
             f"{s.get('vm_killed_runs', 0):,} runs whose VM KVM killed without a bug",
             f"* {seeds_text(s)}",
             f"* {s['runs']:,} runs, {s['steps']:,} steps, {s['elapsed_s']:.1f} s "
             f"({rate(s):.1f} runs/s), stopped by {s.get('stop_reason') or 'end'}"
             + (" (interrupted)" if s["interrupted"] else "") + (f"; {when}" if when else ""),
             f"* peak RSS {s['resources']['peak_rss_mb']} MiB, CPU "
             f"{s['resources']['cpu_s']} s",
             f"* command{' (of the first shard)' if merged else ''}: {_code(command_text(s))}"]
    if s.get("errors"):
        lines += ["", "## Internal errors", ""] + [f"* {_cell(e)}" for e in s["errors"]]
    lines += ["", "## Findings", ""]
    if s["findings"]:
        lines += _table(["#", "kind", "path", "row", "runs", "first seed", "first after",
                         "signature"],
                        [[n, f["kind"], f["path"] or "-", f["row"] or "-", f["count"],
                          f["first_seed"], f"{f['first_elapsed_s']:.2f} s",
                          _code(f["signature"])]
                         for n, f in enumerate(s["findings"], 1)])
    else:
        lines.append("None.")
    lines += ["", "## Scenario rows (seed 002's table)", "",
              "Observed hits and bug hits, beside the expected values (MODEL §5).", ""]
    rows = []
    for i in range(1, 15):
        r = s["rows"][str(i)]
        old, new, shared = ROW_TEXT[i]
        allowed, hittable = EXPECTED[i]
        hits = f"{r['hits']:,}" if r["hits"] else "**never reached**"
        bug = f"**{r['bug_hits']:,}**" if r["bug_hits"] else "0"
        rows.append([i, old, new, shared, hits, bug, allowed, hittable])
    lines += _table(["#", "old", "new", "shared", "hits", "bug hits",
                     "expected: mirror allowed", "expected: KVM_BUG_ON hittable"], rows)
    lines += ["", "## BUSY by source", ""]
    lines += _table(["source", "count"], [[k, f"{v:,}"] for k, v in s["busy"].items()]
                    or [["none", 0]])
    lines += ["", "## SEAMCALLs by TD phase", ""]
    lines += _table(*seamcall_table(s))
    lines += ["", "## Timeline", ""]
    if plots_note:
        lines += [plots_note, ""]
    tls = timelines(s)
    if tls:
        head = (["shard"] if merged else []) + ["elapsed", "runs", "runs/s", "findings",
                                                 "RSS MiB", "CPU s"]
        trows: list[list[object]] = []
        for name, tl in tls.items():
            for p in thin(with_rates(tl), 24 if not merged else 12):
                trows.append(([name] if merged else []) + [
                    f"{p['elapsed_s']:.1f} s", f"{p['runs']:,}", f"{p['rate']:.1f}",
                    p["findings"], p.get("rss_mb", "-"), p.get("cpu_s", "-")])
        lines += _table(head, trows)
    else:
        lines.append("No progress samples in the summary.")
    if resources:
        lines += ["", "### Resources (soak samples)", ""]
        lines += _table(["elapsed", "RSS MiB", "CPU s", "threads", "open files", "processes",
                         "runs"],
                        [[f"{r['elapsed_s']:.0f} s", r.get("rss_mb", "-"),
                          r.get("cpu_s", "-"), r.get("threads", "-"),
                          r.get("open_files", "-"), r.get("processes", "-"),
                          r.get("runs", "-")] for r in thin(resources, 24)])
    from .confidence import confidence_text
    lines += ["", "## Confidence", ""] + confidence_text(s)
    lines += ["", "## Finding details", ""]
    if not s["findings"]:
        lines.append("None.")
    for n, f in enumerate(s["findings"], 1):
        lines += [f"### {n}. {f['kind']} {_code(f['signature'])}", "",
                  f"* kind {f['kind']}, path {f['path'] or '-'}, row {f['row'] or '-'}, "
                  f"in {f['count']:,} run(s) ({f.get('occurrences', f['count']):,} times), "
                  f"first seed {f['first_seed']} after {f['first_elapsed_s']:.2f} s",
                  f"* {f['message']}",
                  f"* replay: {_code(replay_command(f, out))}", ""]
        cons = f.get("consequences") or []
        if cons:
            lines += [f"Then, as its consequences (the VM was bugged; "
                      f"{f.get('consequences_total', len(cons)):,} in all):", ""]
            lines += [f"* step {c['step']:,} {c['thread']}: {c['kind']} {_code(c['where'])}: "
                      f"{_cell(c['message'].splitlines()[0])}" for c in cons[:20]]
            lines.append("")
        lane = lanes.get(f["signature"])
        if lane:
            lines += _fence(lane) + [""]
        else:
            lines += ["No swim lane stored; the replay command above draws it.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------- all of them
def write_reports(summary: dict, out: Path, junit: Path | None = None, *,
                  lanes: dict[str, str] | None = None) -> None:
    """Write ``report.md``, ``report.html`` and ``junit.xml`` for ``summary`` into the
    run directory ``out`` (and the JUnit file also to ``junit`` when given).  The one
    place the CLI, the pytest plugin and ``tdx-stress report`` render a run.

    ``lanes`` maps a finding's signature to its swim-lane text; findings without one
    there use ``findings/<repro stem>.lane.txt`` when it exists.  Plots are drawn when
    matplotlib is installed; any error drawing them leaves the report as tables."""
    from .html import render_html
    from .junit import junit_xml
    out = Path(out)
    got = read_lanes(summary, out, lanes)
    resources = read_resources(out)
    plots, note = draw_plots(summary, resources)
    (out / "report.md").write_text(render_markdown(
        [summary], out, lanes=got, resources=resources,
        plots_note=note or ("The plots of this timeline are in report.html." if plots
                            else "")))
    (out / "report.html").write_text(render_html(summary, out, lanes=got,
                                                 resources=resources, plots=plots,
                                                 plots_note=note))
    text = junit_xml(summary, out)
    (out / "junit.xml").write_text(text)
    if junit is not None:
        Path(junit).write_text(text)


def draw_plots(summary: dict, resources: list[dict]) -> tuple[list, str]:
    """The plots (``reports.plots.Plot``) and, when there are none, why not."""
    try:
        from .plots import draw
        return draw(summary, resources), ""
    except ImportError:
        return [], f"Plots need matplotlib: {PLOT_HINT}. The tables hold the same data."
    except Exception as e:  # noqa: BLE001 - a plot must never fail a campaign
        return [], (f"The plots could not be drawn ({type(e).__name__}: {e}); the tables "
                    f"hold the same data.")
