"""``report.html``: one self-contained file (inline CSS, plots as inline SVG, no script,
nothing fetched), every piece of text from the summary escaped."""
from __future__ import annotations

import math
import re
from html import escape
from pathlib import Path
from typing import Any

from core.oracle import EXPECTED, ROW_TEXT

from .confidence import confidence_text
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

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa;
        --bad: #b42318; --badbg: #fdecea; --ok: #1a7f37; --okbg: #e6f4ea;
        --warnbg: #fff8e1; --link: #0b57d0; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f4; color: var(--fg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
             "Liberation Sans", sans-serif; }
main { max-width: 1360px; margin: 0 auto; padding: 20px 32px 48px; background: #fff; }
h1 { font-size: 24px; margin: 4px 0 12px; display: flex; align-items: center; gap: 12px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 6px; }
a { color: var(--link); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre, .mono { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas,
                   monospace; font-size: 12.5px; }
.pill { font-size: 13px; font-weight: 600; padding: 2px 10px; border-radius: 12px; }
.pill.bad { background: var(--bad); color: #fff; }
.pill.ok { background: var(--ok); color: #fff; }
.pill.warn { background: #b26a00; color: #fff; }
dl.head { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px;
          margin: 0 0 12px; }
dl.head dt { color: var(--muted); }
dl.head dd { margin: 0; }
.cmd { display: inline-block; background: var(--soft); border: 1px solid var(--line);
       border-radius: 4px; padding: 1px 6px; user-select: all; -webkit-user-select: all;
       word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 4px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px 14px;
        min-width: 120px; }
.card b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: 12px; }
.card.bad { border-color: var(--bad); background: var(--badbg); }
.card.bad b { color: var(--bad); }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: left;
         vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; }
th.group { text-align: center; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums;
                 white-space: nowrap; }
td.exp { background: #f7f9fc; color: #3d4650; }
tr.never td { color: var(--muted); background: repeating-linear-gradient(135deg, #fafbfc,
              #fafbfc 6px, #f0f2f4 6px, #f0f2f4 12px); }
tr.never td.hits { font-style: italic; font-weight: 600; color: #8a5a00; }
td.bug { background: var(--badbg); color: var(--bad); font-weight: 700; }
tr.bugrow td:first-child { box-shadow: inset 4px 0 0 var(--bad); }
.bar { display: inline-block; height: 9px; background: #7aa7d9; border-radius: 2px;
       vertical-align: middle; margin-right: 6px; }
.kind { display: inline-block; font-size: 11.5px; font-weight: 700; padding: 0 6px;
        border-radius: 3px; color: #fff; background: #555; white-space: nowrap; }
.k-KVM_BUG_ON { background: #c62828; } .k-TDX_BUG_ON { background: #ef6c00; }
.k-BUG { background: #6a1b9a; } .k-WARN { background: #a67c00; }
.k-LOCKDEP { background: #3949ab; } .k-INVARIANT { background: #00838f; }
.k-DEADLOCK { background: #4e342e; } .k-HANG { background: #546e7a; }
.note { background: var(--warnbg); border-left: 4px solid #e0a800; padding: 6px 12px;
        margin: 8px 0; }
.errors { background: var(--badbg); border-left: 4px solid var(--bad); padding: 6px 12px; }
.muted { color: var(--muted); }
.two { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 32px;
       align-items: start; }
#matrix td, #matrix th { white-space: nowrap; }
#matrix td.links { white-space: normal; max-width: 220px; }
figure { margin: 8px 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr));
         gap: 16px; }
.plots figure.wide { grid-column: 1 / -1; }
.plots figure.wide svg { max-width: 1100px; }
section.finding { border: 1px solid var(--line); border-left: 5px solid var(--bad);
                  border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
section.finding dl { display: grid; grid-template-columns: max-content 1fr;
                     gap: 2px 14px; margin: 4px 0 8px; }
section.finding dt { color: var(--muted); }
section.finding dd { margin: 0; }
pre.lane { background: var(--soft); border: 1px solid var(--line); border-radius: 4px;
           padding: 8px 10px; margin: 6px 0 0; overflow-x: auto; font-size: 12px;
           line-height: 1.3; }
pre.lane .hit { background: #ffd7d2; color: #8e1b10; font-weight: 700; }
pre.lane .head { color: var(--muted); }
details > summary { cursor: pointer; color: var(--link); margin: 6px 0; }
"""


def e(x: object) -> str:
    return escape(str(x), quote=True)


def _num(x: object) -> str:
    return f"{x:,}" if isinstance(x, int) else e(x)


def _kind(k: str) -> str:
    cls = re.sub(r"[^A-Za-z0-9_]", "", k)
    return f'<span class="kind k-{cls}">{e(k)}</span>'


def _inline(text: str) -> str:
    """Escaped text with Markdown code spans as <code>."""
    parts = re.split(r"(`+)(.+?)\1", text)
    out = []
    for i in range(0, len(parts), 3):
        out.append(e(parts[i]))
        if i + 2 < len(parts):
            out.append(f"<code>{e(parts[i + 2])}</code>")
    return "".join(out)


def md_lines_html(lines: list[str]) -> str:
    """The few Markdown shapes the confidence statement uses: paragraphs and pipe
    tables (first row the header, second the separator)."""
    html: list[str] = []
    para: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if para:
            html.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if table:
            rows = [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip().strip("|"))]
                    for r in table if not re.fullmatch(r"\|?[\s:|-]+\|?", r.strip())]
            head, body = rows[0], rows[1:]
            html.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>"
                                                       for c in head) + "</tr></thead><tbody>")
            for r in body:
                html.append("<tr>" + "".join(
                    f'<td class="num">{_inline(c)}</td>' if re.fullmatch(r"[\d.,e+-]+", c)
                    else f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
            html.append("</tbody></table>")
            table.clear()
    for line in lines:
        if line.startswith("|"):
            if para:
                flush()
            table.append(line)
        elif not line.strip():
            flush()
        else:
            if table:
                flush()
            para.append(line)
    flush()
    return "\n".join(html)


def _lane_html(text: str) -> str:
    out = []
    for i, line in enumerate(text.splitlines()):
        if line.startswith(">") or (line.startswith("        ") and line.strip()):
            out.append(f'<span class="hit">{e(line)}</span>')
        elif i < 2:
            out.append(f'<span class="head">{e(line)}</span>')
        else:
            out.append(e(line))
    return "\n".join(out)


def _header(s: dict, out: Path) -> list[str]:
    n = len(s["findings"])
    if s.get("errors"):
        pill = '<span class="pill warn">internal errors</span>'
    elif n:
        pill = f'<span class="pill bad">{n} finding{"s" if n != 1 else ""}</span>'
    else:
        pill = '<span class="pill ok">clean</span>'
    merged = bool(s.get("shard_timelines"))
    when = when_text(s, out)
    stop = e(s.get("stop_reason") or "end") + (" (interrupted)" if s["interrupted"] else "")
    rows = [("variant", e(s["variant"])),
            ("mode", f"{e(s['mode'])}, strategy {e(s['strategy'])}, depth {e(s['depth'])}"),
            ("seeds", e(seeds_text(s))),
            ("time", f"{s['elapsed_s']:.1f} s, stopped by {stop}"
                     + (f"; {e(when)}" if when else "")),
            ("tool version", f"tdx-stress {e(s['tool_version'])}"),
            ("shard", e(s.get("shard", "-"))),
            ("configuration", e(", ".join(f"{k}={v}" for k, v in
                                          sorted((s.get("config") or {}).items())))),
            ("command" + (" (first shard)" if merged else ""),
             f'<code class="cmd">{e(command_text(s))}</code>')]
    h = [f"<h1>tdx-stress report: {e(s['variant'])} {pill}</h1>", '<dl class="head">']
    h += [f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows]
    h.append("</dl>")
    bugs = sum(r["bug_hits"] for r in s["rows"].values())
    never = sum(1 for r in s["rows"].values() if not r["hits"])
    cards = [(f"{s['runs']:,}", "runs", ""), (f"{s['steps']:,}", "steps", ""),
             (f"{rate(s):.1f}", "runs / s", ""),
             (f"{n}", "distinct findings", "bad" if n else ""),
             (f"{bugs:,}", "bug hits in rows", "bad" if bugs else ""),
             (f"{never}", "rows never reached", ""),
             (f"{s['resources']['peak_rss_mb']}", "peak RSS MiB", ""),
             (f"{s['resources']['cpu_s']}", "CPU s", "")]
    h.append('<div class="cards">' + "".join(
        f'<div class="card {c}"><b>{e(v)}</b><span>{e(t)}</span></div>' for v, t, c in cards)
        + "</div>")
    if s.get("errors"):
        h.append('<div class="errors"><b>Internal errors of the tool</b><ul>'
                 + "".join(f"<li>{e(x)}</li>" for x in s["errors"]) + "</ul></div>")
    return h


def _findings_table(s: dict) -> list[str]:
    h = ['<h2 id="findings">Findings</h2>']
    if not s["findings"]:
        return h + ["<p>None.</p>"]
    h.append('<table id="findings-table"><thead><tr><th>#</th><th>kind</th><th>signature</th>'
             '<th>path</th><th class="num">row</th><th class="num">runs</th>'
             '<th class="num">times</th><th class="num">first seed</th>'
             '<th class="num">first after</th></tr></thead><tbody>')
    for n, f in enumerate(s["findings"], 1):
        h.append(f'<tr><td class="num">{n}</td><td>{_kind(f["kind"])}</td>'
                 f'<td class="mono"><a href="#f-{n}">{e(f["signature"])}</a></td>'
                 f'<td>{e(f["path"] or "-")}</td><td class="num">{e(f["row"] or "-")}</td>'
                 f'<td class="num">{_num(f["count"])}</td>'
                 f'<td class="num">{_num(f.get("occurrences", f["count"]))}</td>'
                 f'<td class="num">{_num(f["first_seed"])}</td>'
                 f'<td class="num">{f["first_elapsed_s"]:.2f} s</td></tr>')
    h.append("</tbody></table>")
    return h


def _matrix(s: dict) -> list[str]:
    by_row: dict[int, list[int]] = {}
    for n, f in enumerate(s["findings"], 1):
        if f.get("row"):
            by_row.setdefault(int(f["row"]), []).append(n)
    top = max([r["hits"] for r in s["rows"].values()] + [1])
    h = ['<h2 id="matrix-title">Scenario rows (seed 002\'s table)</h2>',
         '<table id="matrix"><thead>'
         '<tr><th colspan="4" class="group">transition</th>'
         '<th colspan="3" class="group">observed</th>'
         '<th colspan="2" class="group">expected (docs/model.md §5)</th></tr>'
         '<tr><th>#</th><th>old</th><th>new</th><th>shared</th><th>hits</th>'
         '<th class="num">bug hits</th><th>findings</th>'
         '<th>mirror allowed</th><th>KVM_BUG_ON hittable</th></tr></thead><tbody>']
    for i in range(1, 15):
        r = s["rows"][str(i)]
        old, new, shared = ROW_TEXT[i]
        allowed, hittable = EXPECTED[i]
        cls = ["never"] if not r["hits"] else []
        if r["bug_hits"]:
            cls.append("bugrow")
        if r["hits"]:
            w = max(2, round(90 * math.log1p(r["hits"]) / math.log1p(top)))
            hits = (f'<td class="num hits"><span class="bar" style="width:{w}px"></span>'
                    f'{r["hits"]:,}</td>')
        else:
            hits = '<td class="hits">never reached</td>'
        bug = (f'<td class="num bug">{r["bug_hits"]:,}</td>' if r["bug_hits"]
               else '<td class="num">0</td>')
        links = ", ".join(f'<a href="#f-{n}">#{n}</a>' for n in by_row.get(i, []))
        h.append(f'<tr class="{" ".join(cls)}" id="row-{i}"><td class="num">{i}</td>'
                 f"<td>{e(old)}</td><td>{e(new)}</td><td>{e(shared)}</td>{hits}{bug}"
                 f'<td class="links">{links}</td>'
                 f'<td class="exp">{e(allowed)}</td><td class="exp">{e(hittable)}</td></tr>')
    h.append("</tbody></table>")
    h.append('<p class="muted">Hatched rows were never reached; red cells are KVM_BUG_ON/'
             'TDX_BUG_ON hits in that row. The bar is log-scaled.</p>')
    return h


def _busy(s: dict) -> list[str]:
    h = ['<h2 id="busy">BUSY by source</h2>']
    if not s["busy"]:
        return h + ["<p>No BUSY returned.</p>"]
    top = max(s["busy"].values()) or 1
    total = sum(s["busy"].values())
    h.append('<table id="busy-table"><thead><tr><th>source</th><th class="num">count</th>'
             '<th class="num">share</th></tr></thead><tbody>')
    for k, v in sorted(s["busy"].items(), key=lambda kv: -kv[1]):
        w = max(1, round(160 * v / top))
        h.append(f'<tr><td class="mono">{e(k)}</td><td class="num">{_num(v)}</td>'
                 f'<td class="num"><span class="bar" style="width:{w}px"></span>'
                 f'{100 * v / max(total, 1):.0f}%</td></tr>')
    h.append("</tbody></table>")
    return h


def _seamcalls(s: dict) -> list[str]:
    head, rows = seamcall_table(s)
    h = ['<h2 id="seamcalls">SEAMCALLs by TD phase</h2>',
         '<table id="seamcall-table"><thead><tr>'
         + "".join(f'<th{"" if i == 0 else " class=num"}>{e(c)}</th>'
                   for i, c in enumerate(head)) + "</tr></thead><tbody>"]
    for r in rows:
        h.append("<tr>" + "".join(f'<td class="{"mono" if i == 0 else "num"}">{e(c)}</td>'
                                  for i, c in enumerate(r)) + "</tr>")
    h.append("</tbody></table>")
    return h


def _timeline_tables(s: dict, resources: list[dict]) -> list[str]:
    tls = timelines(s)
    h: list[str] = []
    merged = len(tls) > 1 or bool(s.get("shard_timelines"))
    if tls:
        h.append('<table id="timeline"><thead><tr>' + ("<th>shard</th>" if merged else "")
                 + '<th class="num">elapsed</th><th class="num">runs</th>'
                 '<th class="num">runs/s</th><th class="num">findings</th>'
                 '<th class="num">RSS MiB</th><th class="num">CPU s</th></tr></thead><tbody>')
        for name, tl in tls.items():
            for p in thin(with_rates(tl), 60):
                h.append("<tr>" + (f"<td>{e(name)}</td>" if merged else "")
                         + f'<td class="num">{p["elapsed_s"]:.1f} s</td>'
                         f'<td class="num">{_num(p["runs"])}</td>'
                         f'<td class="num">{p["rate"]:.1f}</td>'
                         f'<td class="num">{_num(p["findings"])}</td>'
                         f'<td class="num">{e(p.get("rss_mb", "-"))}</td>'
                         f'<td class="num">{e(p.get("cpu_s", "-"))}</td></tr>')
        h.append("</tbody></table>")
    else:
        h.append("<p>No progress samples in the summary.</p>")
    if resources:
        h.append('<h3>Resources (soak samples)</h3><table id="resources"><thead><tr>'
                 + "".join(f'<th class="num">{c}</th>' for c in
                           ("elapsed", "RSS MiB", "CPU s", "threads", "open files",
                            "processes", "runs")) + "</tr></thead><tbody>")
        for r in thin(resources, 60):
            h.append("<tr>" + "".join(
                f'<td class="num">{e(v)}</td>' for v in
                (f"{r['elapsed_s']:.0f} s", r.get("rss_mb", "-"), r.get("cpu_s", "-"),
                 r.get("threads", "-"), r.get("open_files", "-"), r.get("processes", "-"),
                 r.get("runs", "-"))) + "</tr>")
        h.append("</tbody></table>")
    return h


def _finding(n: int, f: dict, out: Path, lane: str | None) -> list[str]:
    h = [f'<section class="finding" id="f-{n}">',
         f'<h3>{n}. {_kind(f["kind"])} <span class="mono">{e(f["signature"])}</span></h3>',
         "<dl>",
         f"<dt>kind</dt><dd>{e(f['kind'])}</dd>",
         f"<dt>path</dt><dd>{e(f['path'] or '-')}</dd>",
         f"<dt>row</dt><dd>{e(f['row'] or '-')}</dd>",
         f"<dt>count</dt><dd>in {_num(f['count'])} run(s), "
         f"{_num(f.get('occurrences', f['count']))} time(s)</dd>",
         f"<dt>first seed</dt><dd>{_num(f['first_seed'])}, after "
         f"{f['first_elapsed_s']:.2f} s</dd>",
         f"<dt>message</dt><dd>{e(f['message'])}</dd>",
         f"<dt>repro</dt><dd class=\"mono\">{e(f['repro'])}</dd>",
         f'<dt>replay</dt><dd><code class="cmd">{e(replay_command(f, out))}</code></dd>',
         "</dl>"]
    cons = f.get("consequences") or []
    if cons:
        h.append(f"<p>Then, as its consequences (the VM was bugged; "
                 f"{_num(f.get('consequences_total', len(cons)))} in all):</p><ul>")
        h += [f'<li class="mono">step {_num(c["step"])} {e(c["thread"])}: {e(c["kind"])} '
              f'{e(c["where"])}: {e(c["message"].splitlines()[0])}</li>' for c in cons[:20]]
        h.append("</ul>")
    if lane:
        h.append(f'<pre class="lane">{_lane_html(lane)}</pre>')
    else:
        h.append('<p class="muted">No swim lane stored for this finding; the replay command '
                 "above draws it.</p>")
    h.append("</section>")
    return h


def render_html(s: dict, out: Path, *, lanes: dict[str, str], resources: list[dict],
                plots: list[Any], plots_note: str) -> str:
    body = _header(s, out) + _findings_table(s)
    body += _matrix(s)
    body += _seamcalls(s)
    body += ['<div class="two"><div>'] + _busy(s) + ["</div><div>"]
    body += ['<h2 id="confidence">Confidence</h2>', md_lines_html(confidence_text(s)),
             "</div></div>"]
    body.append('<h2 id="plots">Plots</h2>')
    if plots:
        body.append('<div class="plots">')
        for p in plots:
            wide = ' class="wide"' if p.wide else ""
            body.append(f'<figure id="plot-{e(p.key)}"{wide}>{p.svg}'
                        f"<figcaption><b>{e(p.title)}.</b> {e(p.caption)}</figcaption>"
                        "</figure>")
        body.append("</div>")
    else:
        note = plots_note or "Nothing to plot: the summary has no progress samples."
        body.append(f'<p class="note">{e(note)}</p>')
    body.append(f"<details{'' if plots else ' open'}><summary>Timeline as a table"
                "</summary>")
    body += _timeline_tables(s, resources)
    body.append("</details>")
    body.append('<h2 id="details">Finding details</h2>')
    if not s["findings"]:
        body.append("<p>None.</p>")
    for n, f in enumerate(s["findings"], 1):
        body += _finding(n, f, out, lanes.get(f["signature"]))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>tdx-stress report: {e(s['variant'])}</title>"
            f"<style>{CSS}</style></head><body><main>\n" + "\n".join(body)
            + "\n</main></body></html>\n")
