"""Hostile conditions, as a CI job meets them: the exit code of every command comes from
what it found, whatever happens to its output (a pipe closed early by ``| head`` or
``| true``, a full disk behind ``> file``)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parent.parent


def _cmd(args):
    return [sys.executable, "-m", "stress", *map(str, args)]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def open_output(args, cwd):
    return subprocess.run(_cmd(args), cwd=cwd, env=_env(), capture_output=True,
                          timeout=240).returncode


def closed_output(args, cwd):
    """stdout and stderr are pipes whose reader is gone before the command writes."""
    p = subprocess.Popen(_cmd(args), cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    p.stderr.close()
    return p.wait(timeout=240)


def full_disk_output(args, cwd):
    """stdout is a file on a full disk (every write fails with ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run(_cmd(args), cwd=cwd, env=_env(), stdout=full,
                              stderr=subprocess.DEVNULL, timeout=240).returncode


@pytest.fixture(scope="module")
def hunted(tmp_path_factory):
    """A run directory with findings, a repro that replays (exit 1) and one whose
    schedule was emptied, so that its replay does not reproduce (exit 4)."""
    d = tmp_path_factory.mktemp("hostile")
    out = d / "run"
    r = subprocess.run(_cmd(["run", "--variant", "hunt-d", "--stop-on-first", "--seeds", 50,
                             "--seed", 1, "--out", out, "-q"]), env=_env(),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr
    s = json.loads((out / "summary.json").read_text())
    repro = out / s["findings"][0]["repro"]
    broken = d / "diverged.json"
    doc = json.loads(repro.read_text())
    doc["schedule"] = []
    broken.write_text(json.dumps(doc))
    return {"dir": d, "run": out, "repro": repro, "diverged": broken}


def cases(h):
    d = h["dir"]
    return {
        # seed 1 of hunt-d has findings (a LOCKDEP and a KVM_BUG_ON): exit 1 after one run
        "run with findings": (["run", "--variant", "hunt-d", "--seeds", 1, "--seed", 1,
                               "--out", "{new}"], 1),
        "clean run": (["run", "--variant", "v6.19", "--seeds", 2, "--seed", 1,
                       "--out", "{new}"], 0),
        "replay that reproduces": (["replay", h["repro"], "--times", 2], 1),
        "replay that does not": (["replay", h["diverged"]], 4),
        "report with findings": (["report", h["run"]], 1),
        "shrink": (["shrink", h["repro"], "-o", "{new}.json", "--max-runs", 20], 0),
        "nightly": (["nightly", "--variants", "v6.19", "--seeds", 2, "--canary", "none",
                     "--seed", 1, "--out", "{new}"], 0),
        # 0.3 s per hunt: hunt-a1 never finds its bug that fast (it takes seconds), so
        # the table disagrees with seed 002's: exit 1, whatever the machine's speed
        "table that disagrees": (["table", "--duration", 0.05], 1),
        "table bad usage": (["table", "--variant", "no-such-variant"], 2),
        "bad usage": (["run", "--seeds", "many", "--out", d / "never"], 2),
        "missing repro": (["replay", d / "no-such.json"], 2),
    }


CASES = list(cases({k: Path(k) for k in ("dir", "run", "repro", "diverged")}))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", CASES)
def test_lost_output_never_changes_the_exit_code(hunted, tmp_path, name):
    """The case with its output kept, then with stdout and stderr on a closed pipe, then
    on a full disk: the same exit code all three times (a test per case, so that the
    workers share them)."""
    args, code = cases(hunted)[name]
    args = [str(a).replace("{new}", str(tmp_path / "out")) for a in args]
    assert open_output(args, tmp_path) == code, name     # the code, output kept
    got = {}
    for how in (closed_output, full_disk_output):
        lost = [a.replace(str(tmp_path / "out"), str(tmp_path / how.__name__)) for a in args]
        got[how.__name__] = how(lost, tmp_path)
    assert got == {"closed_output": code, "full_disk_output": code}


def quick(args, cwd):
    r = subprocess.run(_cmd(args), cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stderr


@pytest.mark.parametrize("args, says", [
    (["run", "--seeds", 2, "--junit", "{dir}", "--out", "{tmp}/r"], "is a directory"),
    (["run", "--seeds", 2, "--junit", "/proc/version/j.xml", "--out", "{tmp}/r"],
     "cannot write --junit"),
    (["nightly", "--seeds", 1, "--canary", "none", "--junit", "{dir}", "--out", "{tmp}/r"],
     "is a directory"),
    (["report", "{tmp}/nothing", "--junit", "{dir}"], "is a directory"),
    (["run", "--seeds", 2, "--out", ""], "--out is empty"),
    (["shrink", "{repro}", "-o", "/proc/version/small.json"], "cannot write -o"),
    (["replay", "{repro}", "--lanes", "-5"], "must not be negative"),
], ids=["junit is a dir", "junit cannot be made", "nightly junit", "report junit",
        "empty out", "shrink -o impossible", "negative lanes"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(hunted, tmp_path, args,
                                                                    says):
    """Exit 2 and one sentence at once: not a campaign (or a shrink) that fails at its
    end, nor a run directory left behind."""
    (tmp_path / "adir").mkdir()
    args = [str(a).replace("{dir}", str(tmp_path / "adir")).replace("{tmp}", str(tmp_path))
            .replace("{repro}", str(hunted["repro"])) for a in args]
    code, err = quick(args, tmp_path)
    assert code == 2 and says in err and "Traceback" not in err, (code, err)
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_an_internal_error_leaves_its_traceback_in_the_run_directory(tmp_path, monkeypatch):
    from stress import campaign, cli

    def boom(self):
        raise RuntimeError("a bug of the tool")
    monkeypatch.setattr(campaign.Campaign, "run", boom)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["run", "--seeds", "1", "--out", str(out), "-q"]) == cli.ExitCode.INTERNAL
    assert "RuntimeError: a bug of the tool" in (out / "tdx-stress-internal-error.txt").read_text()
    assert not (tmp_path / "tdx-stress-internal-error.txt").exists()


def test_a_run_directory_belongs_to_one_run(hunted, tmp_path):
    """--out onto an earlier run's directory is refused (its summary, JUnit and findings
    stay as they were); of two runs started into one directory at once, one runs and
    the other is refused."""
    out = hunted["run"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, err = quick(["run", "--seeds", 2, "--out", out], tmp_path)
    assert code == 2 and "already holds a run" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    both = tmp_path / "both"
    ps = [subprocess.Popen(_cmd(["run", "--variant", "v6.19", "--seeds", 20, "--out", both,
                                 "-q"]), env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in ps)
    errs = "".join(p.stderr.read() for p in ps)
    assert codes == [0, 2], (codes, errs)
    assert "belongs to another run" in errs or "already holds a run" in errs


def test_a_merge_neither_overwrites_a_run_nor_counts_a_shard_twice(hunted, tmp_path):
    run = hunted["run"]
    before = (run / "summary.json").read_bytes()
    code, err = quick(["report", run, run, "-o", tmp_path / "m"], tmp_path)
    assert code == 2 and "given twice" in err, err
    shard = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run), str(shard)], check=True)
    code, err = quick(["report", run, shard, "-o", tmp_path / "m2"], tmp_path)
    assert code == 2 and "both ran seed" in err, err
    other = tmp_path / "other"         # a shard of seeds of its own
    quick(["run", "--variant", "hunt-d", "--seeds", 2, "--seed", 900, "--out", other, "-q"],
          tmp_path)
    code, err = quick(["report", other, run, "-o", run], tmp_path)
    assert code == 2 and "already holds a run" in err, err
    assert (run / "summary.json").read_bytes() == before
    # one directory with -o: onto another run's directory is refused, that run's
    # reports untouched; into a new directory, a copy with its reports (not exit 3)
    reports = {n: (other / n).read_bytes() for n in ("report.md", "report.html", "junit.xml")}
    code, err = quick(["report", run, "-o", other], tmp_path)
    assert code == 2 and "already holds a run" in err, err
    assert {n: (other / n).read_bytes() for n in reports} == reports
    code, err = quick(["report", run, "-o", tmp_path / "copy1"], tmp_path)
    assert code == 1 and "Traceback" not in err, err
    assert (tmp_path / "copy1" / "report.md").exists()
    assert (tmp_path / "copy1" / "summary.json").exists()


# ---------------------------------------------------------------------- repro files
def _load(path):
    from stress.repro import ReproError, load_repro
    try:
        return load_repro(path, check_version=False)
    except ReproError as e:
        return e


@pytest.mark.timeout(60)
def test_a_special_file_is_refused_at_once(tmp_path):
    """A FIFO would hang the reader and /dev/zero never ends (one filled 24 GB): only a
    regular file of bounded size is read."""
    from stress import cli
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path, says in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                       (tmp_path, "is a directory")):
        e = _load(path)
        assert says in str(e), e
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(17 << 20)
    assert "more than any repro" in str(_load(big))
    assert cli.main(["replay", str(fifo)]) == cli.ExitCode.USAGE


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(seed="7"), "field seed"),
    (lambda d: d.update(mode="both"), "field mode"),
    (lambda d: d.update(variant="hunt-a1"), "field variant"),
    (lambda d: d.update(mode="free"), "field mode"),
    (lambda d: d["workload"]["programs"][0].append(["touch", 0x100000]), "field workload"),
    (lambda d: d["workload"]["programs"][0].append(["touch", 0x5000]), "outside the VM"),
    (lambda d: d.update(schedule=[[0, 10 ** 8]] * 5), "decisions"),
    (lambda d: d.update(schedule=[[31, 3]]), "names a thread"),
    (lambda d: d["finding"].update(step=10 ** 8), "finding/step"),
    (lambda d: d.update(threads=["a"] * 3), "field threads"),
    (lambda d: d.update(trace=[[0, 1]]), "the top level"),
    (lambda d: d.__setitem__("workload", {"initial": [], "programs": [], "zaps": []}),
     "at least one vCPU"),
], ids=["seed not an integer", "unknown mode", "variant not the config's", "free w/o trace",
        "gfn of no page", "gfn outside the VM", "decisions past any run", "thread out of range",
        "step past max_steps", "threads miscounted", "schedule and trace", "no vCPU"])
def test_a_field_that_makes_no_sense_is_refused_naming_it(hunted, tmp_path, change, field):
    d = json.loads(hunted["repro"].read_text())
    change(d)
    p = tmp_path / "r.json"
    p.write_text(json.dumps(d))
    e = _load(p)
    assert not hasattr(e, "workload") and field in str(e), e


def test_a_deeply_nested_file_is_refused(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in str(_load(p)) or "not a tdx-stress repro" in str(_load(p))


def _json_values():
    from hypothesis import strategies as st
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | \
        st.text(max_size=20)
    return st.recursive(leaves, lambda kids: st.lists(kids, max_size=5)
                        | st.dictionaries(st.text(max_size=10), kids, max_size=5), max_leaves=30)


def test_fuzz_the_repro_loader_with_bytes_and_json(hunted, tmp_path):
    """Any byte string, any JSON value, and a real repro with any one field replaced by
    any JSON value: a Repro or a ReproError (exit 2), never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from stress.repro import Repro, ReproError
    good = json.loads(hunted["repro"].read_text())
    p = tmp_path / "fuzz.json"

    def check(text: bytes) -> None:
        p.write_bytes(text)
        got = _load(p)
        assert isinstance(got, (Repro, ReproError)), got

    some = settings(max_examples=150, deadline=None,
                    suppress_health_check=list(HealthCheck))
    given(st.binary(max_size=3000))(some(check))()
    given(_json_values())(some(lambda v: check(json.dumps(v).encode())))()

    @some
    @given(st.sampled_from(sorted(good)), _json_values())
    def one_field(key, value):
        check(json.dumps(dict(good, **{key: value})).encode())
    one_field()

    @some
    @given(st.lists(st.tuples(st.integers(-3, 40), st.integers(-3, 10 ** 12)).map(list),
                    min_size=1, max_size=4))
    def schedule(runs):
        check(json.dumps(dict(good, schedule=runs)).encode())
    schedule()

    @some
    @given(st.sampled_from(["initial", "programs", "zaps"]), _json_values())
    def workload_field(key, value):
        check(json.dumps(dict(good, workload=dict(good["workload"], **{key: value}))).encode())
    workload_field()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("command", ["replay", "shrink"])
def test_fuzz_the_command_line_with_bad_repro_files(hunted, tmp_path, command):
    """The whole command, as a user runs it, on any byte string, any JSON value or a
    real repro with one field replaced: exit 0, 1, 2 or 4 (never 3, an internal error),
    no traceback, and an end within a minute.  Few examples: each is a process."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    good = json.loads(hunted["repro"].read_text())
    files = st.one_of(
        st.binary(max_size=2000),
        _json_values().map(lambda v: json.dumps(v).encode()),
        st.tuples(st.sampled_from(sorted(good)), _json_values())
        .map(lambda kv: json.dumps(dict(good, **{kv[0]: kv[1]})).encode()))
    p = tmp_path / "fuzz.json"
    extra = {"replay": ["--lanes", 0], "shrink": ["-o", tmp_path / "out", "--max-runs", 5]}

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(files)
    def check(text):
        p.write_bytes(text)
        r = subprocess.run(_cmd([command, p, *extra[command]]), cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode in (0, 1, 2, 4) and "Traceback" not in r.stderr, \
            (r.returncode, r.stderr[-2000:])
    check()


# ---------------------------------------------------------------------- signals
def _spawn(args, cwd, **env):
    # a session of its own: a signal to its process group reaches it and its children
    # (workers, multiprocessing's resource tracker), never pytest
    return subprocess.Popen(_cmd(args), cwd=cwd, env=dict(_env(), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _stopped_by(p, sig, after: float = 2.0, group: bool = False,
                banner: bool = False) -> tuple[int, str, float]:
    """Send ``sig`` to the command ``after`` seconds in (to its whole process group, as a
    terminal's hang-up or ``timeout`` does, when ``group``); its exit code, stderr and
    how long it took to end.  ``banner``: count the seconds from a campaign's banner (its
    first line on stderr) rather than from the start, whose imports took seconds on a
    machine loaded by the rest of the suite."""
    import signal
    import time
    first = p.stderr.readline() if banner else ""
    time.sleep(after)
    assert p.poll() is None, "ended before the signal"
    t0 = time.monotonic()
    if group:
        os.killpg(p.pid, getattr(signal, sig))
    else:
        p.send_signal(getattr(signal, sig))
    try:
        _, err = p.communicate(timeout=15)
    finally:
        p.kill()
    return p.returncode, first + err, time.monotonic() - t0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_replay_and_shrink_stop_on_a_signal_with_130(hunted, tmp_path, sig):
    p = _spawn(["replay", hunted["repro"], "--times", 100_000], tmp_path)
    code, err, took = _stopped_by(p, sig)
    assert code == 130 and "interrupted" in err and took < 5, (code, err, took)
    p = _spawn(["shrink", hunted["repro"], "-o", tmp_path / "s.json", "--max-runs",
                100_000], tmp_path)
    code, err, took = _stopped_by(p, sig, after=1.0)
    assert code == 130 and "interrupted" in err and took < 5, (code, err, took)


@pytest.mark.parametrize("group", [False, True], ids=["the process", "its group"])
@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
def test_a_hang_up_stops_a_run_with_its_summary_marked_interrupted(tmp_path, sig, group):
    """Two workers: the summary is written, marked interrupted, and nothing of
    multiprocessing complains (a leaked semaphore, a resource tracker that died)."""
    out = tmp_path / "run"
    p = _spawn(["run", "--variant", "v6.19", "--duration", 60, "--workers", 2, "--out", out],
               tmp_path)
    code, err, took = _stopped_by(p, sig, after=4.0, group=group)
    assert code == 130 and took < 5, (code, err, took)
    for bad in ("leaked semaphore", "resource_tracker", "Traceback"):
        assert bad not in err, err
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["stop_reason"] == f"signal {sig}"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_soak_stops_on_a_signal_with_its_summary_marked_interrupted(tmp_path, sig):
    out = tmp_path / "soak"
    p = _spawn(["soak", "--variant", "v6.19", "--out", out], tmp_path)
    # 6 s from the banner: learning k (a cold cache), spawning the workers and their
    # first runs took over 3 s once in a clean-clone CI run on a loaded machine (0 runs)
    code, err, took = _stopped_by(p, sig, after=6.0, banner=True)
    assert code == 130 and took < 5 and "Traceback" not in err, (code, err, took)
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["stop_reason"] == f"signal {sig}" and s["runs"] > 0, s
    end = json.loads((out / "events.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "end" and end["interrupted"], end


@pytest.fixture(scope="module")
def many_shards(hunted, tmp_path_factory):
    """300 shards of one campaign (copies of the hunted run, each given seeds of its
    own): merging them takes `report` seconds, long enough to be signalled at work."""
    import shutil
    d = tmp_path_factory.mktemp("shards")
    s = json.loads((hunted["run"] / "summary.json").read_text())
    dirs = []
    for i in range(300):
        shard = d / f"s{i}"
        shutil.copytree(hunted["run"], shard)
        shift = 1000 * (i + 1)
        t = dict(s, shard=f"{i}/300", seeds=[[a + shift, b + shift] for a, b in s["seeds"]],
                 findings=[dict(f, first_seed=f["first_seed"] + shift) for f in s["findings"]])
        (shard / "summary.json").write_text(json.dumps(t))
        dirs.append(shard)
    return dirs


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_report_stops_on_a_signal_with_the_merge_marked_interrupted(many_shards, tmp_path,
                                                                    sig):
    """Signalled once it has claimed its -o directory (while it copies the findings,
    writes the summary or draws the plots): exit 130 within 5 s, and the merged
    directory's summary is on disk marked interrupted, never one that looks complete."""
    import time
    out = tmp_path / "merged"
    # with its plots (the suite leaves them out): drawing them is most of a merge's time,
    # so the signal lands in the merge and not after it
    p = _spawn(["report", *many_shards, "-o", out], tmp_path, TDX_STRESS_PLOTS="1")
    t0 = time.monotonic()
    while not (out / ".tdx-stress-run").exists() and time.monotonic() - t0 < 60:
        assert p.poll() is None, p.communicate()
        time.sleep(0.02)
    code, err, took = _stopped_by(p, sig, after=0.1)
    assert code == 130 and "interrupted" in err and took < 5, (code, err, took)
    assert "Traceback" not in err, err
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["stop_reason"] == f"signal {sig}", s


def test_a_signal_python_swallows_still_interrupts_a_merge(many_shards, tmp_path,
                                                           monkeypatch):
    """A signal that lands in a weakref or import-lock callback (seen in CI: SIGTERM in
    matplotlib's import) raises there, and Python prints "Exception ignored" and goes on;
    the merge must still end as interrupted (exit 130, summary marked), not complete."""
    import signal
    import weakref

    import reports.render
    from stress import cli
    drawn = reports.render.write_reports

    def write_reports_hit_by_a_signal(*a, **kw):
        class Obj:
            pass
        o = Obj()
        ref = weakref.ref(o, lambda _: cli._stop(signal.SIGTERM, None))   # noqa: F841
        del o                                 # the callback raises; Python swallows it
        return drawn(*a, **kw)
    monkeypatch.setattr(reports.render, "write_reports", write_reports_hit_by_a_signal)
    out = tmp_path / "merged"
    code = cli.main(["report", *map(str, many_shards), "-o", str(out)])
    assert code == cli.ExitCode.INTERRUPTED
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] and s["stop_reason"] == "signal SIGTERM", s


def test_a_signal_python_swallows_in_any_command_still_exits_130(monkeypatch, capsys):
    """The same for every command: one that goes on to its end after a swallowed signal
    exits 130, interrupted, not with the code of a run that was never stopped."""
    import signal
    import weakref

    from stress import cli
    listed = cli.cmd_variants

    def variants_hit_by_a_signal(args):
        class Obj:
            pass
        o = Obj()
        ref = weakref.ref(o, lambda _: cli._stop(signal.SIGHUP, None))   # noqa: F841
        del o
        return listed(args)
    monkeypatch.setattr(cli, "cmd_variants", variants_hit_by_a_signal)
    assert cli.main(["variants"]) == cli.ExitCode.INTERRUPTED
    assert "tdx-stress: interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["replay", "shrink"])
def test_a_swallowed_signal_stops_a_long_replay_or_shrink_at_its_next_run(
        hunted, tmp_path, monkeypatch, capsys, command):
    """replay --times N and shrink check for a swallowed signal before every run: they
    stop at the next one with 130, not after the thousands they were asked for."""
    import signal
    import weakref

    from stress import cli
    from stress import replay as replay_mod
    real = replay_mod.replay
    calls = []

    def replay_hit_by_a_signal(rp, *a, **kw):
        calls.append(1)
        if len(calls) == 1:
            class Obj:
                pass
            o = Obj()
            ref = weakref.ref(o, lambda _: cli._stop(signal.SIGTERM, None))  # noqa: F841
            del o
        return real(rp, *a, **kw)
    if command == "replay":
        monkeypatch.setattr(replay_mod, "replay", replay_hit_by_a_signal)
        argv = ["replay", str(hunted["repro"]), "--times", "1000"]
    else:
        # the shrinker's first step is a replay of the repro: the signal lands there;
        # then no candidate may run
        import stress.shrink as shrink_mod
        monkeypatch.setattr(shrink_mod, "replay", replay_hit_by_a_signal)
        real_run = shrink_mod.run_seed

        def run_seed(*a, **kw):
            calls.append(2)
            return real_run(*a, **kw)
        monkeypatch.setattr(shrink_mod, "run_seed", run_seed)
        argv = ["shrink", str(hunted["repro"]), "-o", str(tmp_path / "s.json"),
                "--max-runs", "50"]
    assert cli.main(argv) == cli.ExitCode.INTERRUPTED
    assert "tdx-stress: interrupted" in capsys.readouterr().err
    assert calls == [1]


def test_an_interrupted_nightly_reports_nothing_clean(tmp_path):
    out = tmp_path / "job"
    p = _spawn(["nightly", "--variants", "v6.19", "--duration", 60, "--canary", "none",
                "--out", out], tmp_path)
    code, err, took = _stopped_by(p, "SIGTERM", after=4.0)
    assert code == 130 and took < 5, (code, err, took)
    doc = json.loads((out / "nightly.json").read_text())
    assert not doc["passed"] and doc["interrupted"]
    assert all(not c["ok"] and "interrupted" in c["verdict"] for c in doc["campaigns"]), doc
    from xml.etree import ElementTree as ET

    from reports.junit import validate
    text = (out / "junit.xml").read_text()
    validate(text)
    root = ET.fromstring(text)
    assert int(root.get("failures")) >= 1
    assert any("interrupted" in (f.get("message") or "") for f in root.iter("failure"))


@pytest.mark.parametrize("sig, group", [("SIGINT", False), ("SIGHUP", True)],
                         ids=["ctrl-c to the process", "hang-up to its group"])
def test_table_stops_on_ctrl_c(tmp_path, sig, group):
    p = _spawn(["table", "--duration", 30], tmp_path)
    code, err, took = _stopped_by(p, sig, after=4.0, group=group)
    assert code == 130 and took < 5, (code, err, took)
    for bad in ("leaked semaphore", "resource_tracker", "Traceback"):
        assert bad not in err, err


# ---------------------------------------------------------------------- bounds
@pytest.mark.parametrize("extra", [["--strategy", "random"], ["--mode", "free"],
                                   ["--workers", 2, "--strategy", "random"], []],
                         ids=["controlled", "free", "two workers", "learning k"])
def test_duration_bounds_the_campaign_with_the_run_in_flight(tmp_path, extra):
    """--duration D ends a campaign within D + 5 s even when one run would take minutes
    (that run is cut short at a yield point and counted as such); with PCT, learning
    its k from calibration runs is bounded the same way (and said).  The campaign's time
    counts from its banner (the first line on stderr, printed once the command line is
    read): Python's start-up and imports before it are not the campaign's, and on a
    machine loaded by the rest of the suite they alone took seconds."""
    import time
    out = tmp_path / "run"
    t0 = time.monotonic()
    # --ops 1000: one run takes well over 15 s, and its workload is made in 0.15 s
    # (10000 took 1.2 s, and a worker that was still making it when a loaded machine's
    # 3 s ran out had no run in flight to cut short).  Learning k keeps 10000: its eight
    # calibration runs must not all fit in the duration; and a cache of its own, so that k is
    # learned, never read from an earlier run's cache.
    ops = 1000 if extra else 10000
    # D = 5 s: the workers (spawned, importing, each on a CPU it shares with a busy test
    # worker) must have begun a run before the time runs out; with 3 s, twice in one
    # session of full-suite runs, neither of two workers had.  Learning k runs in this
    # process before any worker: 2 s, well inside its four calibration runs of 10000 ops
    # (each one's workload alone takes over a second to make; with 5 s, a faster model
    # once finished learning in time)
    D = 5 if extra else 2
    p = subprocess.Popen(_cmd(["run", "--vcpus", 16, "--zappers", 16, "--ops", ops,
                               "--max-steps", 100_000_000, "--duration", D, "--seed", 1,
                               "--out", out, *extra]),
                         env=dict(_env(), XDG_CACHE_HOME=str(tmp_path / "cache")),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = p.stderr.readline()
        started = time.monotonic()
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    took, wall = time.monotonic() - started, time.monotonic() - t0
    assert banner.startswith("tdx-stress "), banner + err
    assert p.returncode in (0, 1), err
    assert took < D + 5, (took, wall)
    s = json.loads((out / "summary.json").read_text())
    if not extra:
        assert s["stop_reason"] == "duration" and s["pct_calibration_cut"], s
        assert s["runs"] == 0 and s["pct"] is None
        return
    assert s["stop_reason"] == "duration" and s["cut_short_runs"] >= 1, s


def test_an_exit_that_hangs_after_the_command_ends_is_bounded():
    """Once a command has ended, the exit watchdog bounds Python's shutdown: a hung
    atexit handler (CI once saw a finished run not exit for 240 s) ends after the grace
    with the command's exit code and every thread's stack on stderr; an ordinary exit
    is not held up."""
    import sys
    import time
    hung = ("import atexit, sys, time\n"
            "from stress import cli\n"
            "atexit.register(time.sleep, 60)\n"
            "cli.exit_watchdog(3, grace=1.0)\n"
            "sys.exit(3)\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", hung], env=_env(), capture_output=True,
                       text=True, timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == 3 and took < 15, (r.returncode, took, r.stderr)
    assert "had not exited 1 s after the command ended" in r.stderr, r.stderr
    assert "Thread 0x" in r.stderr, r.stderr         # every thread's stack
    ok = "from stress import cli\nimport sys\ncli.exit_watchdog(0, grace=20.0)\nsys.exit(0)\n"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", ok], env=_env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and time.monotonic() - t0 < 10 and r.stderr == "", r.stderr
