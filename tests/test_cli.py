"""The command line, as a user and CI use it: exit codes, run directories, bad input,
interruption, SIGKILL, shards, workers, replay, shrink, report, table."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stress import cli
from stress.repro import load_repro

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parent.parent


def tdx(*args, cwd=None, env=None, timeout=240):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "stress", *map(str, args)], cwd=cwd,
                          env=e, capture_output=True, text=True, timeout=timeout)


def spawn(*args, cwd=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "stress", *map(str, args)], cwd=cwd,
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary(d):
    return json.loads((Path(d) / "summary.json").read_text())


def test_clean_run_exit_0_and_run_directory(tmp_path):
    out = tmp_path / "run"
    r = tdx("run", "--seeds", 4, "--seed", 3, "--out", out, "--junit", tmp_path / "j.xml")
    assert r.returncode == 0, r.stderr
    s = summary(out)
    assert s["schema"] == "tdx-stress/summary/1" and s["runs"] == 4 and not s["interrupted"]
    assert set(s["rows"]) == {str(i) for i in range(1, 15)}
    assert s["rows"]["1"]["hits"] > 0 and s["findings"] == []
    for name in ("events.jsonl", "log.txt", "report.md", "junit.xml"):
        assert (out / name).exists(), name
    assert "no findings" in r.stdout
    assert (tmp_path / "j.xml").read_text().startswith("<?xml")


def test_hunt_stop_on_first_exit_1_then_replay_and_shrink(tmp_path):
    out = tmp_path / "run"
    r = tdx("run", "--variant", "hunt-d", "--stop-on-first", "--seed", 0, "--out", out, "-q")
    assert r.returncode == 1
    s = summary(out)
    assert s["stop_reason"] == "stop-on-first"
    hunted = [f for f in s["findings"] if f["kind"] == "KVM_BUG_ON" and f["path"] == "d"]
    assert hunted, s["findings"]
    repro = out / hunted[0]["repro"]
    r = tdx("replay", repro, "--times", 3)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 of 3" in r.stdout and "KVM_BUG_ON" in r.stdout
    r = tdx("shrink", repro, "-o", tmp_path / "small.json")
    assert r.returncode == 0, r.stdout + r.stderr
    small = load_repro(tmp_path / "small.json")
    assert small.signature == hunted[0]["signature"]
    assert small.raw["size"]["steps"] <= small.raw["shrunk_from"]["steps"]
    assert tdx("replay", tmp_path / "small.json", "--lanes", 0).returncode == 1


BAD = [
    (["run", "--variant", "nope"], "unknown variant"),
    (["run", "--depth", "0", "--seeds", "1"], "--depth"),
    (["run", "--seeds", "0"], "at least 1"),
    (["run", "--duration", "-1"], "positive"),
    (["run", "--busy-rate", "1.5", "--seeds", "1"], "busy-rate"),
    (["run", "--vcpus", "99", "--seeds", "1"], "vcpus"),
    (["run", "--seed", "x1", "--seeds", "1"], "not an integer"),
    (["run", "--shard", "2/2", "--seeds", "1"], "shard"),
    (["run", "--mode", "chaos"], "invalid choice"),
    (["replay", "/no/such/file.json"], "does not exist"),
    (["report", "/no/such/dir"], "does not exist"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_usage_is_one_sentence_exit_2(argv, words):
    r = tdx(*argv)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0], r.stderr


def _good_repro(tmp_path):
    out = tmp_path / "seedrun"
    tdx("run", "--variant", "hunt-c", "--stop-on-first", "--seed", 0, "--out", out, "-q")
    s = summary(out)
    f = next(f for f in s["findings"] if f["kind"] == "TDX_BUG_ON")
    return json.loads((out / f["repro"]).read_text())


def test_bad_repro_files_exit_2(tmp_path):
    good = _good_repro(tmp_path)
    cases = {
        "truncated": json.dumps(good)[:200],
        "not-json": "this is not json",
        "foreign": json.dumps({"schema": "other-tool/2", "x": 1}),
        "old-version": json.dumps(dict(good, tool_version="0.0.0")),
        "other-model": json.dumps(dict(good, model_hash="ffffffff")),
        "missing-keys": json.dumps({k: v for k, v in good.items() if k != "workload"}),
        "bad-config": json.dumps(dict(good, config=dict(good["config"], variant="nope"))),
        "bad-schedule": json.dumps(dict(good, schedule=[["a", 1]])),
    }
    for name, text in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        r = tdx("replay", p)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, name


def test_replay_that_diverges_or_does_not_reproduce_exit_4(tmp_path):
    good = _good_repro(tmp_path)
    runs = [list(x) for x in good["schedule"]]
    last = len(good["workload"]["programs"]) + len(good["workload"]["zaps"]) - 1
    # the last thread (a zapper) first, for far more steps than its script takes: the
    # schedule goes on naming it once it has finished
    p = tmp_path / "diverge.json"
    p.write_text(json.dumps(dict(good, schedule=[[last, 50_000]] + runs)))
    r = tdx("replay", p)
    assert r.returncode == 4 and "diverged" in r.stdout and "step" in r.stdout
    runs[len(runs) // 2][0] = 7            # a thread that does not exist: refused up front
    p.write_text(json.dumps(dict(good, schedule=runs)))
    r = tdx("replay", p)
    assert r.returncode == 2 and "names a thread the workload does not have" in r.stderr
    other = dict(good, finding=dict(good["finding"], signature="KVM_BUG_ON:nowhere:row=-:path=-"))
    p = tmp_path / "nope.json"
    p.write_text(json.dumps(other))
    r = tdx("replay", p)
    assert r.returncode == 4 and "did not reproduce" in r.stdout


@pytest.mark.unit
def test_internal_error_exit_3_no_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("planted")
    monkeypatch.setattr(cli, "cmd_variants", boom)
    assert cli.main(["variants"]) == cli.ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" not in err
    assert "planted" in (tmp_path / "tdx-stress-internal-error.txt").read_text()


def test_sigint_exit_130_with_summary(tmp_path):
    out = tmp_path / "run"
    p = spawn("run", "--duration", 120, "--seed", 1, "--out", out, "--heartbeat", 1)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "events.jsonl").exists():
        time.sleep(0.2)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    s = summary(out)
    assert s["interrupted"] and s["stop_reason"] == "signal SIGINT"
    assert s["runs"] >= 1
    assert "Traceback" not in err


def test_sigterm_exit_130(tmp_path):
    out = tmp_path / "run"
    p = spawn("soak", "--duration", 120, "--seed", 1, "--out", out)
    time.sleep(4)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == 130
    assert summary(out)["interrupted"]


def test_sigkill_loses_no_reported_finding(tmp_path):
    out = tmp_path / "run"
    p = spawn("run", "--variant", "hunt-c", "--duration", 120, "--seed", 0, "--out", out)
    ev = out / "events.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline:
        if ev.exists() and ev.read_text().count('"finding"') >= 3:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    lines = [json.loads(ln) for ln in ev.read_text().splitlines() if ln.strip()]
    found = [e for e in lines if e["event"] == "finding"]
    assert len(found) >= 3
    for e in found:
        assert (out / e["repro"]).exists() or any(
            x["signature"] == e["signature"] and (out / x["repro"]).exists() for x in found)
    for e in found:
        if e["new"]:
            rp = load_repro(out / next(x["repro"] for x in reversed(found)
                                       if x["signature"] == e["signature"]))
            assert rp.signature == e["signature"]


def test_shards_cover_the_campaign_once_and_merge(tmp_path):
    a, b, whole, merged = (tmp_path / n for n in ("a", "b", "whole", "merged"))
    common = ["--variant", "hunt-c", "--seeds", 8, "--seed", 100]
    assert tdx("run", *common, "--shard", "0/2", "--out", a, "-q").returncode == 1
    assert tdx("run", *common, "--shard", "1/2", "--out", b, "-q").returncode == 1
    assert tdx("run", *common, "--out", whole, "-q", "--workers", 2).returncode == 1
    sa, sb, sw = summary(a), summary(b), summary(whole)
    seeds = lambda s: {x for lo, hi in s["seeds"] for x in range(lo, hi + 1)}  # noqa: E731
    assert seeds(sa) & seeds(sb) == set() and seeds(sa) | seeds(sb) == set(range(100, 108))
    r = tdx("report", a, b, "-o", merged)
    assert r.returncode == 1, r.stdout + r.stderr
    sm = summary(merged)
    assert sm["runs"] == 8 == sw["runs"]
    assert {i: v["hits"] for i, v in sm["rows"].items()} == \
        {i: v["hits"] for i, v in sw["rows"].items()}
    assert sm["busy"] == sw["busy"]
    assert {f["signature"]: f["first_seed"] for f in sm["findings"]} == \
        {f["signature"]: f["first_seed"] for f in sw["findings"]}
    for f in sm["findings"]:
        assert load_repro(merged / f["repro"]).signature == f["signature"]
    assert (merged / "report.md").exists() and (merged / "junit.xml").exists()


def test_soak_samples_resources(tmp_path):
    out = tmp_path / "soak"
    r = tdx("soak", "--duration", 6, "--seed", 2, "--out", out, "--heartbeat", 1)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()]
    res = [e for e in lines if e["event"] == "resources"]
    assert res and all(e["rss_mb"] > 0 and e["threads"] > 0 and e["open_files"] > 0
                       for e in res)
    assert "heartbeat" in r.stderr
    assert summary(out)["resources"]["peak_rss_mb"] > 0


def test_help_on_every_command():
    for c in ("run", "soak", "replay", "shrink", "report", "table", "variants"):
        r = tdx(c, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout


@pytest.mark.unit
def test_defaults_are_the_documented_ones():
    args = cli.build_parser().parse_args(["run"])
    assert (args.variant, args.mode, args.strategy, args.depth) == \
        ("hugepage-rfc", "controlled", "portfolio", 3)
    assert args.default_duration == 30.0 and args.seeds is None
    assert (args.guest, args.conversions) == ("linux", None)        # None: the guest's own flow


@pytest.mark.unit
def test_seed_precedence(monkeypatch):
    monkeypatch.setenv(cli.SEED_ENV, "17")
    assert cli.resolve_seed("5") == (5, "--seed")
    assert cli.resolve_seed(None) == (17, f"${cli.SEED_ENV}")
    monkeypatch.delenv(cli.SEED_ENV)
    assert cli.resolve_seed(None)[1] == "fresh"


@pytest.mark.unit
def test_table_disagreements_are_marked(table_observation):
    from stress.table import render_table
    obs = table_observation(("v6.19", "refactor-2026", "hugepage-rfc", "hunt-a1",
                             "hunt-a2", "hunt-b", "hunt-c", "hunt-d"))
    per = obs["variants"]
    text, bad = render_table(obs)
    assert bad == [] and "no disagreement" in text
    per["hugepage-rfc"]["rows"][2] = 1                  # not allowed, seen as designed
    per["hunt-c"]["bugs"]["KVM_BUG_ON|12|-"] = 1        # KVM_BUG_ON in a non-hittable row
    del per["hunt-b"]["bugs"]["KVM_BUG_ON|9|b"]         # a hittable row never fired
    per["hugepage-rfc"]["rows"][8] = 0                  # an allowed row never seen
    text, bad = render_table(obs)
    assert len(bad) == 4 and text.count("DISAGREES") == 4


@pytest.mark.quality
def test_table_reproduces_seed_002(tmp_path):
    r = tdx("table", "--duration", 6, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "no disagreement" in r.stdout


def test_a_killed_worker_is_replaced_and_its_seeds_rerun(tmp_path):
    """SIGKILL one worker once the campaign has logged a run; the campaign replaces it,
    reruns the seeds it held and still accounts for every seed. The campaign is long
    enough (a few seconds on a quiet machine) that a worker is alive to be killed; a
    worker that ends between the listing and the kill is skipped, not an error."""
    import psutil
    out = tmp_path / "run"
    n = 400     # v6.19: the fastest runs (about 50 a second a worker), so the test is short
    p = spawn("run", "--variant", "v6.19", "--seeds", n, "--seed", 5, "--out", out, "-q")
    me = psutil.Process(p.pid)
    deadline = time.time() + 60
    killed = False
    while time.time() < deadline and not killed and p.poll() is None:
        if (out / "events.jsonl").exists():
            for c in me.children(recursive=True):
                try:
                    if "spawn_main" in " ".join(c.cmdline()):
                        c.kill()
                        killed = True
                        break
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.05)
    assert killed, "no worker was alive to kill"
    p.communicate(timeout=200)
    assert p.returncode == 0
    s = summary(out)
    assert s["worker_restarts"] >= 1 and s["errors"] == []
    assert s["runs"] == n and s["seeds"] == [[5, 5 + n - 1]]


def test_run_shrink_flag_keeps_a_shrunk_first_repro(tmp_path):
    out = tmp_path / "run"
    r = tdx("run", "--variant", "hunt-d", "--stop-on-first", "--seed", 0, "--shrink",
            "--out", out, "-q")
    assert r.returncode == 1
    s = summary(out)
    f = next(f for f in s["findings"] if f["kind"] == "KVM_BUG_ON" and f["path"] == "d")
    rp = load_repro(out / f["repro"])
    assert "shrunk_from" in rp.raw
    assert rp.raw["size"]["steps"] <= rp.raw["shrunk_from"]["steps"]
    assert tdx("replay", out / f["repro"], "--lanes", 0).returncode == 1


def test_run_stores_each_findings_swim_lane_for_the_reports(tmp_path):
    """The campaign draws every kept finding's lane beside its repro; report.html and
    report.md show it without running the machine themselves."""
    out = tmp_path / "run"
    r = tdx("run", "--variant", "hunt-d", "--seeds", 24, "--seed", 0, "--out", out, "-q")
    assert r.returncode == 1, r.stderr
    s = summary(out)
    assert s["findings"]
    html = (out / "report.html").read_text()
    for f in s["findings"]:
        lane = (out / f["repro"]).with_suffix(".lane.txt")
        text = lane.read_text()
        marked = [ln for ln in text.splitlines() if ln.startswith(">")]
        assert marked and f["kind"] in text, text
        assert marked[0].split("|")[0].strip("> ").strip() in html
    assert "No swim lane stored" not in html


def test_run_says_which_guest_and_conversion_flow_it_modelled(tmp_path):
    """--guest linux defaults to MapGPA conversions; summary.json and report.md say which
    guest and flow ran; a flow the guest cannot make is one sentence and exit 2."""
    out = tmp_path / "run"
    r = tdx("run", "--guest", "linux", "--variant", "v6.19", "--seeds", 6, "--seed", 3,
            "--out", out, "-q")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    s = summary(out)
    assert (s["guest"], s["conversions"], s["config"]["guest"]) == ("linux", "mapgpa", "linux")
    assert s["vm_killed_runs"] == 0 and s["map_gpa_exits"] > 0
    assert "guest linux, conversions mapgpa" in (out / "report.md").read_text()
    bad = tdx("run", "--guest", "ve-accept", "--conversions", "mapgpa", "--seeds", 1)
    assert bad.returncode == 2 and "needs --guest linux" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
