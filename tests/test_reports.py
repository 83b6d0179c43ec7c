"""Reports: report.md and report.html of a real run with findings (the matrix, BUSY,
every finding with its replay line and swim lane, plots or tables), merged shards, a
soak's resources, escaping, life without matplotlib, and the page in headless Chromium."""
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from core.oracle import EXPECTED
from reports import rundir
from reports.render import PLOT_HINT, PLOTS_ENV, write_reports
from reports.rundir import copy_findings, lane_path, load_summary
from reports.summary import merge_summaries

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "screenshot_report.py"
sys.path.insert(0, str(SCRIPT.parent))
from screenshot_report import dump_dom, find_chromium  # noqa: E402

pytestmark = pytest.mark.integration
CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium; CI "
                             "installs it): the report cannot be opened in a real browser")


@pytest.fixture(scope="module", autouse=True)
def with_plots():
    """The suite leaves plots out (tests/conftest.py); here they are the subject."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(PLOTS_ENV, raising=False)
        yield


def write_lanes(d: Path) -> int:
    """What the campaign is to do after a run: replay each kept repro with steps
    recorded and store its swim lane beside it (tests may run the machine)."""
    from reports.swimlane import render as lane
    from stress.replay import replay
    from stress.repro import load_repro
    n = 0
    for f in json.loads((d / "summary.json").read_text())["findings"]:
        # the model may be edited while the suite runs: this is about reports, not repros
        got = replay(load_repro(d / f["repro"], check_version=False))
        assert got.hit is not None
        (d / lane_path(f["repro"])).write_text(lane(got.run.step_log, got.run.threads,
                                                    got.hit, last=40))
        n += 1
    return n


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real campaign with findings (hunt-d, 40 seeds: the read-lock LOCKDEP and the
    first bug of each run), its lanes, and its reports."""
    d = tmp_path_factory.mktemp("reports") / "run"
    r = subprocess.run([sys.executable, "-m", "stress", "run", "--variant", "hunt-d",
                        "--seeds", "40", "--seed", "0", "--out", str(d), "-q"],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert (d / "report.html").exists()      # the CLI writes it after every run
    assert write_lanes(d) >= 2
    write_reports(load_summary(d), d)
    return d


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def summary_of(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())


def md_tables(text: str) -> list[list[str]]:
    tables: list[list[str]] = []
    cur: list[str] = []
    fenced = False
    for line in text.splitlines() + [""]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def md_cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line.strip())) - 2


# ---------------------------------------------------------------------- a real run
@pytest.mark.timeout(120)
def test_header_names_the_run(run_dir):
    s = summary_of(run_dir)
    md = (run_dir / "report.md").read_text()
    page = html.unescape((run_dir / "report.html").read_text())
    cmd = "tdx-stress run --variant hunt-d --seeds 40 --seed 0 --out " + str(run_dir) + " -q"
    for text in (md, page):
        assert "hunt-d" in text and "controlled" in text and "portfolio" in text
        assert "base seed 0; 40 seeds run: 0–39" in text
        assert s["tool_version"] in text and cmd in text
        assert f"{s['elapsed_s']:.1f} s" in text


@pytest.mark.timeout(120)
def test_matrix_marks_never_reached_rows_bug_hits_and_expected_values(run_dir):
    s = summary_of(run_dir)
    page = (run_dir / "report.html").read_text()
    table = page[page.index('<table id="matrix">'):]
    table = table[:table.index("</table>")]
    rows = re.findall(r'<tr class="([^"]*)" id="row-(\d+)">(.*?)</tr>', table)
    assert [int(i) for _, i, _ in rows] == list(range(1, 15))
    for cls, i, cells in rows:
        r = s["rows"][i]
        assert ("never" in cls.split()) == (r["hits"] == 0)
        assert ("never reached" in cells) == (r["hits"] == 0)
        assert ('class="num bug"' in cells) == (r["bug_hits"] > 0)
        allowed, hittable = EXPECTED[int(i)]
        assert f'<td class="exp">{html.escape(allowed)}</td>' in cells
        assert f'<td class="exp">{html.escape(hittable)}</td>' in cells
    assert any(r["hits"] == 0 for r in s["rows"].values())      # something to mark
    assert any(r["bug_hits"] for r in s["rows"].values())
    md = (run_dir / "report.md").read_text()
    never = sum(1 for r in s["rows"].values() if not r["hits"])
    assert md.count("**never reached**") == never
    for k, v in s["busy"].items():
        assert f"| {k} | {v:,} |" in md and f'<td class="mono">{k}</td>' in page


@pytest.mark.timeout(120)
def test_every_finding_has_replay_line_and_swim_lane(run_dir):
    s = summary_of(run_dir)
    md = (run_dir / "report.md").read_text()
    page = (run_dir / "report.html").read_text()
    assert len(s["findings"]) >= 2
    assert page.count('<section class="finding"') == len(s["findings"])
    assert page.count('<pre class="lane">') == len(s["findings"])
    assert md.count("```text\nstep   | vcpu0") == len(s["findings"])
    for n, f in enumerate(s["findings"], 1):
        path = run_dir / f["repro"]
        assert path.exists()
        line = f"tdx-stress replay {path}"
        assert f"`{line}`" in md and f'<code class="cmd">{html.escape(line)}</code>' in page
        sec = page[page.index(f'<section class="finding" id="f-{n}">'):]
        sec = sec[:sec.index("</section>")]
        for text in (f["kind"], f["signature"], f["message"], f"{f['first_seed']:,}"):
            assert html.escape(text) in sec
        assert f"in {f['count']:,} run(s)" in sec
        lane = (run_dir / lane_path(f["repro"])).read_text()
        assert html.escape(lane.splitlines()[-1].strip()) in sec   # the finding's line
        assert '<span class="hit">' in sec


@pytest.mark.timeout(120)
def test_markdown_tables_are_well_formed(run_dir):
    md = (run_dir / "report.md").read_text()
    tables = md_tables(md)
    assert len(tables) >= 5       # findings, rows, BUSY, timeline, confidence
    for t in tables:
        assert re.fullmatch(r"\|(---\|)+", t[1]), t[:2]
        widths = {md_cells(line) for line in t}
        assert len(widths) == 1, t
    rows = next(t for t in tables if t[0].startswith("| # | old |"))
    assert len(rows) == 2 + 14
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return
    out = MarkdownIt("commonmark").enable("table").render(md)
    assert out.count("<table>") == len(tables)
    assert out.count('<pre><code class="language-text">') == len(summary_of(run_dir)["findings"])


@pytest.mark.timeout(120)
def test_plots_are_inline_svg_and_the_page_fetches_nothing(run_dir):
    page = (run_dir / "report.html").read_text()
    for key in ("progress", "first"):
        assert f'<figure id="plot-{key}"' in page
    # a run of about 2 s has one or two samples (every 2 s): one is no curve of RSS
    rss = len(summary_of(run_dir)["timeline"]) >= 2
    assert ('<figure id="plot-rss"' in page) == rss
    assert page.count("<svg") == 2 + rss and "<?xml" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page)
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", page)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "duplicate ids across the inline SVGs"
    refs = set(re.findall(r'(?:href="|url\()#([^")]+)', page))
    assert refs and refs <= set(ids), refs - set(ids)
    assert "<details><summary>Timeline as a table" in page    # collapsed beside plots


# ---------------------------------------------------------------------- variations
@pytest.mark.timeout(120)
def test_without_matplotlib_the_report_is_complete_as_tables(run_dir, tmp_path,
                                                            monkeypatch):
    d = copy_run(run_dir, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    write_reports(load_summary(d), d)
    page = (d / "report.html").read_text()
    md = (d / "report.md").read_text()
    assert "<svg" not in page and "<figure" not in page
    assert PLOT_HINT in html.unescape(page) and PLOT_HINT in md
    assert "<details open><summary>Timeline as a table" in page
    assert '<table id="timeline">' in page and '<table id="matrix">' in page
    n = len(summary_of(d)["findings"])
    assert page.count('<section class="finding"') == n
    assert page.count('<pre class="lane">') == n


@pytest.mark.timeout(120)
def test_plots_left_out_on_request_say_so(run_dir, tmp_path, monkeypatch):
    d = copy_run(run_dir, tmp_path / "run")
    monkeypatch.setenv(PLOTS_ENV, "0")
    write_reports(load_summary(d), d)
    page = (d / "report.html").read_text()
    assert "<svg" not in page and '<table id="timeline">' in page
    assert f"${PLOTS_ENV}=0" in page and f"${PLOTS_ENV}=0" in (d / "report.md").read_text()


@pytest.mark.timeout(120)
def test_an_error_drawing_plots_falls_back_to_tables(run_dir, tmp_path, monkeypatch):
    d = copy_run(run_dir, tmp_path / "run")
    import reports.plots

    def boom(s, resources):
        raise RuntimeError("no <display>")
    monkeypatch.setattr(reports.plots, "draw", boom)
    write_reports(load_summary(d), d)
    page = (d / "report.html").read_text()
    assert "<svg" not in page and '<table id="timeline">' in page
    assert "RuntimeError: no &lt;display&gt;" in page
    assert "RuntimeError" in (d / "report.md").read_text()


@pytest.mark.timeout(120)
def test_lanes_passed_in_win_and_a_missing_lane_says_how_to_draw_it(run_dir, tmp_path):
    d = copy_run(run_dir, tmp_path / "run")
    for p in (d / "findings").glob("*.lane.txt"):
        p.unlink()
    s = load_summary(d)
    first = s["findings"][0]["signature"]
    write_reports(s, d, lanes={first: "step | vcpu0\n>  7 | <KVM_BUG_ON & co>\n"})
    page = (d / "report.html").read_text()
    md = (d / "report.md").read_text()
    assert page.count('<pre class="lane">') == 1
    assert "&lt;KVM_BUG_ON &amp; co&gt;" in page and "<KVM_BUG_ON" not in page
    missing = len(s["findings"]) - 1
    assert page.count("No swim lane stored") == missing
    assert md.count("No swim lane stored") == missing


@pytest.mark.timeout(120)
def test_text_from_the_summary_is_escaped(run_dir, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    s = summary_of(run_dir)
    evil = '<script>alert("x")</script>'
    s["argv"] = ["tdx-stress", "run", "--out", f'"><img src=x onerror=alert(1)>{evil}']
    s["variant"] = f"hunt-d{evil}"
    s["busy"] = {f"<b>{evil}": 3}
    s["errors"] = [f"seeds [1]: {evil}"]
    f = dict(s["findings"][0], signature=f"KVM_BUG_ON:{evil}|x", message=f"m {evil} | y",
             repro="findings/x.json")
    s["findings"] = [f]
    (d / "findings").mkdir()
    (d / "findings" / "x.lane.txt").write_text(f"step | t\n> 1 | {evil}\n")
    write_reports(s, d)
    page = (d / "report.html").read_text()
    assert "<script" not in page and "<img" not in page and "<b><script" not in page
    assert html.escape(evil) in page
    md = (d / "report.md").read_text()
    for t in md_tables(md):
        assert len({md_cells(line) for line in t}) == 1, t     # the | in the signature


@pytest.mark.timeout(120)
def test_clean_run_report_states_the_confidence(run_dir, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    s = summary_of(run_dir)
    s["findings"] = []
    for r in s["rows"].values():
        r["bug_hits"] = 0
    write_reports(s, d)
    page = (d / "report.html").read_text()
    assert '<span class="pill ok">clean</span>' in page
    conf = page[page.index('<h2 id="confidence">'):page.index('<h2 id="plots">')]
    assert "<table>" in conf and "<th>depth d</th>" in conf and "PCT bound" in conf
    assert conf.count("<tr>") == 1 + s["pct"]["depth"]
    assert '<figure id="plot-first"' not in page and '<figure id="plot-progress"' in page
    assert "## Findings\n\nNone." in (d / "report.md").read_text()


@pytest.mark.timeout(120)
def test_merged_shards_render_with_their_timelines_and_lanes(run_dir, tmp_path):
    a = copy_run(run_dir, tmp_path / "a")
    b = copy_run(run_dir, tmp_path / "b")
    sa, sb = load_summary(a), load_summary(b)
    sa["shard"], sb["shard"] = "0/2", "1/2"
    sb["seeds"] = [[x + 1000, y + 1000] for x, y in sb["seeds"]]     # shards share no seed
    sb["timeline"] = [dict(p, elapsed_s=p["elapsed_s"] + 1.0) for p in sb["timeline"]] * 2
    merged = merge_summaries([sa, sb])
    out = tmp_path / "merged"
    copy_findings([a, b], merged, out)
    write_reports(merged, out)
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "merged 0/2, 1/2" in page
    assert '<figure id="plot-progress"' in page and "<th>shard</th>" in page
    assert '<figure id="plot-rss"' in page            # shard 1/2 has two samples
    assert "| shard | elapsed |" in md and "| 1/2 |" in md
    n = len(merged["findings"])
    assert page.count('<pre class="lane">') == n          # lanes came along
    assert all((out / lane_path(f["repro"])).exists() for f in merged["findings"])
    assert "command (first shard)" in page


@pytest.mark.timeout(120)
def test_a_soaks_resource_samples_are_plotted_and_tabled(run_dir, tmp_path):
    d = copy_run(run_dir, tmp_path / "run")
    with open(d / "events.jsonl", "a") as fh:
        for i in range(50):
            fh.write(json.dumps({"event": "resources", "elapsed_s": 2.0 * i,
                                 "rss_mb": 80 + i * 0.5, "cpu_s": i * 1.5, "threads": 9,
                                 "open_files": 12 + i % 3, "processes": 3,
                                 "runs": 40 * i}, sort_keys=True) + "\n")
        fh.write('{"event": "resources", "elapsed_s": 10')       # cut short by SIGKILL
    assert len(rundir.read_resources(d)) == 50
    write_reports(load_summary(d), d)
    page = (d / "report.html").read_text()
    fig = page[page.index('<figure id="plot-rss"'):]
    assert "soak" in fig[fig.index("<figcaption>"):fig.index("</figure>")]
    assert '<table id="resources">' in page
    assert "### Resources (soak samples)" in (d / "report.md").read_text()


# ---------------------------------------------------------------------- a real browser
def png_size(p: Path) -> tuple[int, int]:
    head = p.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    w, h = struct.unpack(">II", head[16:24])
    return w, h


@needs_chromium
@pytest.mark.timeout(180)
def test_report_in_headless_chromium_shows_matrix_and_findings(run_dir, tmp_path):
    d = copy_run(run_dir, tmp_path / "run")
    shot = tmp_path / "report.png"
    r = subprocess.run([sys.executable, str(SCRIPT), str(d), str(shot)],
                       capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr
    assert png_size(shot) == (1400, 3000)
    from PIL import Image
    im = Image.open(shot).convert("RGB")
    small = im.resize((140, 300))
    colours = small.getcolors(maxcolors=140 * 300) or []
    assert len(colours) > 50, "the screenshot is (nearly) one colour"
    white = sum(n for n, c in colours if min(c) > 245)
    assert white < 0.85 * 140 * 300, "the screenshot is (nearly) blank"
    # the red of the findings pill, the bug-hit cells and the kind badges is there
    assert any(c[0] > 150 and c[1] < 90 and c[2] < 90 for _, c in colours)

    dom = dump_dom(d / "report.html")
    s = summary_of(d)
    assert '<table id="matrix">' in dom and '<table id="findings-table">' in dom
    matrix = dom[dom.index('<table id="matrix">'):]
    matrix = matrix[:matrix.index("</table>")]
    assert len(re.findall(r'<tr class="[^"]*" id="row-\d+">', matrix)) == 14
    assert dom.count('<section class="finding"') == len(s["findings"])
    assert dom.count("<svg") == 2 + (len(s["timeline"]) >= 2)


@pytest.mark.timeout(120)
def test_a_portfolio_states_the_bound_of_its_pct_runs_only(run_dir):
    """The default portfolio runs PCT on even seeds and random on odd ones; the PCT bound
    counts only the runs PCT scheduled (the old summary would have claimed all 40)."""
    from reports.confidence import confidence_text, pct_bound
    s = summary_of(run_dir)
    assert s["strategy"] == "portfolio" and s["runs"] == 40
    assert s["pct"]["runs"] == 20
    assert pct_bound(s)["runs"] == 20
    assert "for 20 PCT runs (the portfolio's even seeds, of 40)" in confidence_text(s)[0]
    # a second shard of the same size, on seeds of its own
    other = dict(s, _dir=str(run_dir) + "-other",
                 seeds=[[a + 10_000, b + 10_000] for a, b in s["seeds"]])
    merged = merge_summaries([dict(s, _dir=run_dir), other])
    assert merged["pct"]["runs"] == 40 and pct_bound(merged)["runs"] == 40
