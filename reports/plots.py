"""The plots of ``report.html``, as inline SVG (matplotlib, the ``plot`` extra).

Only this module imports matplotlib, lazily, and only its object API (``Figure`` and
``savefig``): no pyplot, no global backend switch, nothing changed in a host process
(the pytest plugin renders inside the user's pytest).  Without matplotlib :func:`draw`
raises ImportError and the report stays complete as tables.
"""
from __future__ import annotations

import io
import re
from typing import Any, NamedTuple

from .views import timelines, with_rates

KIND_COLOURS = {"KVM_BUG_ON": "#c62828", "TDX_BUG_ON": "#ef6c00", "BUG": "#6a1b9a",
                "WARN": "#f9a825", "LOCKDEP": "#3949ab", "INVARIANT": "#00838f",
                "DEADLOCK": "#4e342e", "HANG": "#546e7a"}
SHARD_COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]
FIRST_MAX = 40           # signatures in the time-to-first-finding plot
RC: dict[Any, Any] = {
    "svg.fonttype": "none",              # real text: small, selectable, crisp
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False}


class Plot(NamedTuple):
    key: str          # an id for the HTML (and the SVG's id salt)
    title: str
    svg: str          # the <svg> element, no XML prologue
    caption: str
    wide: bool = False   # spans the width of the page


def draw(s: dict, resources: list[dict]) -> list[Plot]:
    """Every plot the summary has data for: progress (runs per second and findings over
    time), time to first finding per signature, RSS over time."""
    import matplotlib  # noqa: F401 - ImportError here means "no plots"; see module doc
    from matplotlib import rc_context
    plots: list[Plot] = []
    with rc_context(RC):
        for make in (_progress, _rss, _first_findings):
            p = make(s, resources)
            if p is not None:
                plots.append(p)
    return plots


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), layout="constrained")


def _svg(fig: Any, key: str) -> str:
    from matplotlib import rc_context
    buf = io.StringIO()
    # a salt of its own per plot: the ids of clip paths never collide in one page, and
    # the same summary gives the same bytes
    with rc_context({"svg.hashsalt": f"tdx-stress-{key}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # matplotlib numbers its element ids per figure (axes_1, line2d_1, ...): prefix them
    # and every reference to them, so several plots make one valid page
    text = re.sub(r'\bid="([^"]+)"', rf'id="{key}-\1"', text)
    return re.sub(r'((?:xlink:)?href="|url\()#([^")]+)', rf"\1#{key}-\2", text)


def _progress(s: dict, resources: list[dict]) -> Plot | None:
    tls = timelines(s)
    if not tls:
        return None
    fig = _figure(6.4, 3.6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    end = 0.0
    for n, (name, tl) in enumerate(tls.items()):
        pts = with_rates(tl)
        xs = [0.0] + [p["elapsed_s"] for p in pts]
        ys = [pts[0]["rate"]] + [p["rate"] for p in pts]
        ax1.step(xs, ys, where="pre", color=SHARD_COLOURS[n % len(SHARD_COLOURS)],
                 label=f"shard {name}" if name else None)
        end = max(end, xs[-1])
    if len(tls) > 1:
        ax1.legend(loc="lower right")
    ax1.set_ylabel("runs / s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("Throughput")
    firsts = sorted(f["first_elapsed_s"] for f in s["findings"])
    end = max([end, s.get("elapsed_s", 0.0)] + firsts)
    xs = [0.0] + firsts + [end]
    ys = [0] + list(range(1, len(firsts) + 1)) + [len(firsts)]
    ax2.step(xs, ys, where="post", color="#c62828")
    ax2.set_ylabel("distinct findings")
    ax2.set_xlabel("seconds since the start" + (" of each shard" if len(tls) > 1 else ""))
    ax2.set_ylim(bottom=0, top=max(1, len(firsts)) * 1.1)
    ax2.set_xlim(left=0, right=max(end, 1e-3))
    ax2.set_title("Findings over time")
    n = sum(len(tl) for tl in tls.values())
    return Plot("progress", "Runs per second and findings over time", _svg(fig, "progress"),
                f"Runs per second between progress samples ({n} sample"
                f"{'s' if n != 1 else ''}, about one every 2 s) and the number of distinct "
                f"findings, stepping up when each was first seen.")


def _short(sig: str, n: int = 90) -> str:
    return sig if len(sig) <= n else sig[:n // 2 - 1] + "…" + sig[-(n // 2 - 1):]


def _first_findings(s: dict, resources: list[dict]) -> Plot | None:
    fs = sorted(s["findings"], key=lambda f: (f["first_elapsed_s"], f["first_seed"]))
    if not fs:
        return None
    shown = fs[:FIRST_MAX]
    fig = _figure(10.0, 1.1 + 0.22 * len(shown))
    ax = fig.subplots()
    ys = list(range(len(shown)))[::-1]
    xs = [f["first_elapsed_s"] for f in shown]
    colours = [KIND_COLOURS.get(f["kind"], "#333333") for f in shown]
    ax.hlines(ys, 0, xs, colors=colours, linewidth=1.5, alpha=0.5)
    ax.scatter(xs, ys, c=colours, s=22, zorder=3)
    ax.set_yticks(ys, [f"{_short(f['signature'])}  (seed {f['first_seed']})"
                       for f in shown], fontsize=8, family="monospace")
    ax.set_xlabel("seconds since the start until first seen")
    ax.set_xlim(left=0, right=max(max(xs) * 1.08, 0.1))
    ax.grid(axis="y", visible=False)
    kinds = list(dict.fromkeys(f["kind"] for f in shown))
    from matplotlib.lines import Line2D
    fig.legend([Line2D([], [], marker="o", linestyle="", color=KIND_COLOURS.get(k, "#333"))
                for k in kinds], kinds, loc="outside upper center", ncols=len(kinds))
    more = f" The {len(fs) - FIRST_MAX} later ones are in the table." \
        if len(fs) > FIRST_MAX else ""
    return Plot("first", "Time to first finding", _svg(fig, "first"),
                "When each distinct finding was first seen, earliest at the top, with the "
                "seed that first fired it." + more, wide=True)


def _rss(s: dict, resources: list[dict]) -> Plot | None:
    if resources:
        fig = _figure(6.4, 3.6)
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        xs = [r["elapsed_s"] for r in resources]
        ax1.plot(xs, [r.get("rss_mb", 0) for r in resources], color="#1f77b4")
        ax1.set_ylabel("RSS MiB")
        ax1.set_ylim(bottom=0)
        ax1.set_title("Memory (all processes of the campaign)")
        for key, label, colour in (("threads", "threads", "#2ca02c"),
                                   ("open_files", "open files", "#9467bd"),
                                   ("processes", "processes", "#8c564b")):
            ax2.plot(xs, [r.get(key, 0) for r in resources], label=label, color=colour)
        ax2.set_ylim(bottom=0)
        ax2.set_xlabel("seconds since the start")
        ax2.legend(loc="lower right", ncols=3)
        ax2.set_title("Threads, open files, processes")
        return Plot("rss", "Resources over the soak", _svg(fig, "rss"),
                    f"The soak's resource samples ({len(resources)} shown): a leak shows "
                    f"as a line that keeps climbing.")
    tls = {k: v for k, v in timelines(s).items() if len(v) >= 2}
    if not tls:
        return None          # one sample is no curve: the peak is in the header
    fig = _figure(6.4, 2.4)
    ax = fig.subplots()
    for n, (name, tl) in enumerate(tls.items()):
        ax.plot([p["elapsed_s"] for p in tl], [p.get("rss_mb", 0) for p in tl],
                marker="o" if len(tl) < 3 else None, markersize=3,
                color=SHARD_COLOURS[n % len(SHARD_COLOURS)],
                label=f"shard {name}" if name else None)
    if len(tls) > 1:
        ax.legend(loc="lower right")
    ax.set_ylabel("RSS MiB")
    ax.set_xlabel("seconds since the start")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.set_title("Memory (all processes of the campaign)")
    return Plot("rss", "RSS over time", _svg(fig, "rss"),
                "Resident memory of the campaign's processes at each progress sample.")
