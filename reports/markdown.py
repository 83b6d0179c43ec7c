"""``report.md`` and the text summary ``tdx-stress run`` prints at its end."""
from __future__ import annotations

from pathlib import Path

from core.oracle import EXPECTED, ROW_TEXT

from .confidence import confidence_text
from .rundir import read_lanes
from .views import (
    command_text,
    rate,
    replay_command,
    seamcall_table,
    seeds_text,
    thin,
    timelines,
    when_text,
    with_rates,
)


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
              "Observed hits and bug hits, beside the expected values (docs/model.md §5).", ""]
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


def text_summary(s: dict, out: Path) -> str:
    """What ``tdx-stress run`` prints at its end: rates, rows hit, BUSY by source, each
    finding with its replay line."""
    lines = [f"{s['variant']}: {s['runs']} runs, {s['steps']} steps in {s['elapsed_s']:.1f} s "
             f"({s['runs'] / max(s['elapsed_s'], 1e-9):.1f} runs/s), stopped by "
             f"{s['stop_reason'] or 'end'}"]
    if s.get("bounded"):
        from .confidence import bounded_text
        # a "run" of a bounded campaign is one workload walked; say what the walks did
        lines += [ln for ln in bounded_text(s) if ln]
    rows = [f"{i}:{r['hits']}" + (f"(bug {r['bug_hits']})" if r["bug_hits"] else "")
            for i, r in s["rows"].items() if r["hits"] or r["bug_hits"]]
    lines.append("rows hit: " + (" ".join(rows) or "none"))
    lines.append("BUSY by source: " + (", ".join(f"{k} {v}" for k, v in s["busy"].items())
                                       or "none"))
    if not s["findings"]:
        lines.append("no findings")
    for f in s["findings"]:
        lines.append(f"FINDING {f['kind']} path={f['path'] or '-'} row={f['row'] or '-'} "
                     f"in {f['count']} run(s), first seed {f['first_seed']}: {f['message']}")
        lines.append(f"  replay: tdx-stress replay {out / f['repro']}")
    lines.append(f"run directory: {out}")
    return "\n".join(lines)
