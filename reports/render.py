"""Rendering a run directory (never runs the machine): :func:`write_reports` writes every
rendering of ``summary.json`` (schema ``tdx-stress/summary/1``) into it: ``report.md``
(:mod:`reports.markdown`), ``report.html`` (:mod:`reports.html`, with the plots of
:mod:`reports.plots`) and ``junit.xml`` (:mod:`reports.junit`).  Reading and merging
run directories is :mod:`reports.rundir`'s and :mod:`reports.summary`'s.

Swim lanes need a replay, and ``reports/`` never runs the machine: the diagram of a
finding is read from ``findings/<repro stem>.lane.txt`` beside its repro (written by the
campaign, see :func:`reports.rundir.lane_path`), or passed in as ``lanes={signature: text}``.
"""
from __future__ import annotations

import os
from pathlib import Path

from .html import render_html
from .junit import junit_xml
from .markdown import render_markdown
from .rundir import JUNIT, REPORT_HTML, REPORT_MD, read_lanes, read_resources, write_atomic

PLOT_HINT = "pip install 'tdx-stress[plot]'"
# "0" leaves the plots out (a CI job that never opens report.html saves about a second
# per report: importing matplotlib and laying out three figures)
PLOTS_ENV = "TDX_STRESS_PLOTS"


def write_reports(summary: dict, out: Path, junit: Path | None = None, *,
                  lanes: dict[str, str] | None = None) -> None:
    """Write ``report.md``, ``report.html`` and ``junit.xml`` for ``summary`` into the
    run directory ``out`` (and the JUnit file also to ``junit`` when given).  The one
    place the CLI, the pytest plugin and ``tdx-stress report`` render a run.

    ``lanes`` maps a finding's signature to its swim-lane text; findings without one
    there use ``findings/<repro stem>.lane.txt`` when it exists.  Plots are drawn when
    matplotlib is installed; any error drawing them leaves the report as tables."""
    out = Path(out)
    got = read_lanes(summary, out, lanes)
    resources = read_resources(out)
    plots, note = draw_plots(summary, resources)
    write_atomic(out / REPORT_MD, render_markdown(
        [summary], out, lanes=got, resources=resources,
        plots_note=note or ("The plots of this timeline are in report.html." if plots
                            else "")))
    write_atomic(out / REPORT_HTML, render_html(summary, out, lanes=got,
                                                 resources=resources, plots=plots,
                                                 plots_note=note))
    text = junit_xml(summary, out)
    write_atomic(out / JUNIT, text)
    if junit is not None:
        Path(junit).write_text(text)


def draw_plots(summary: dict, resources: list[dict]) -> tuple[list, str]:
    """The plots (``reports.plots.Plot``) and, when there are none, why not."""
    if os.environ.get(PLOTS_ENV, "").strip() == "0":
        return [], f"Plots were left out (${PLOTS_ENV}=0). The tables hold the same data."
    try:
        from .plots import draw
        return draw(summary, resources), ""
    except ImportError:
        return [], f"Plots need matplotlib: {PLOT_HINT}. The tables hold the same data."
    except Exception as e:  # noqa: BLE001 - a plot must never fail a campaign
        return [], (f"The plots could not be drawn ({type(e).__name__}: {e}); the tables "
                    f"hold the same data.")
