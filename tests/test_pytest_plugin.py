"""The pytest plugin (stress/pytest_plugin.py) as its users meet it: a hunt fails a test
with the replay command and an as-designed variant passes; marker defaults and command-line
overrides; -m deselection; bad options stop pytest with one sentence; repro files as
regression tests that fail while the bug fires and pass once it does not.

Inner sessions run in subprocesses (campaigns use a spawn process pool), with the plugin
loaded the way a user gets it: through the installed entry point when there is one."""
import importlib.metadata
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from stress import cli, pytest_plugin
from stress.config import RunConfig
from stress.repro import SCHEMA, load_repro, make_repro, write_repro
from stress.runner import hunt_stop, run_seed

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("core.variants", "stress.config", "stress.campaign", "stress.cli", "stress.runner",
         "reports.render", "loguru", "psutil")


def plugin_args() -> list[str]:
    """``-p`` only when the entry point is not live: loading the module by its own name on
    top of the entry point is a "Plugin already registered" error in pytest."""
    installed = any(ep.name == "tdx_stress"
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    if installed and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return []
    return ["-p", "tdx_stress" if installed else "stress.pytest_plugin"]


@pytest.fixture
def inner(pytester, monkeypatch):
    """Run pytest in a subprocess on ``pytester``'s directory with this checkout first on
    the path (so its workers import the same code) and no inherited seed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("TDX_STRESS_SEED", raising=False)

    def run(*args):
        return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider",
                                             *map(str, args), timeout=100)
    return run


STRESS_TEST = """
import json
from pathlib import Path

import pytest

@pytest.mark.tdx_stress(variant="hugepage-rfc", seeds=8)
def test_stress(tdx_stress):
    summary = tdx_stress.run()
    Path("summary-of-test_stress.json").write_text(json.dumps(summary))

@pytest.mark.tdx_stress(variant="nope")
def test_bad_variant(tdx_stress):
    tdx_stress.run()

@pytest.mark.tdx_stress(bogus=1)
def test_bad_key(tdx_stress):
    tdx_stress.run()

@pytest.mark.tdx_stress(seeds=0)
def test_bad_seeds(tdx_stress):
    tdx_stress.run()
"""


@pytest.mark.timeout(90)
def test_hunt_fails_with_replay_command_and_as_designed_passes(pytester, inner, tmp_path,
                                                               monkeypatch):
    pytester.makepyfile(test_stress=STRESS_TEST)
    last = pytester.path / "summary-of-test_stress.json"

    # the acceptance: hunt-d from the command line fails with the replay lines
    junit = tmp_path / "junit.xml"
    r = inner("test_stress.py::test_stress", "--tdx-stress-variant", "hunt-d",
              "--tdx-stress-seed", 0, "--tdx-stress-seeds", 200, f"--junitxml={junit}")
    assert r.ret == 1, r.stdout.str()
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "tdx-stress: variant hunt-d, base seed 0 (--tdx-stress-seed)" in out
    assert "rerun: pytest test_stress.py::test_stress --tdx-stress-seed 0" in out
    assert "Traceback" not in out and not last.exists()
    repros = re.findall(r"^ +tdx-stress replay (/\S+\.json)$", out, re.M)
    assert repros and all(Path(p).is_file() for p in repros)
    run_dir = Path(repros[0]).parent.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["variant"] == "hunt-d" and summary["stop_reason"] == "stop-on-first"
    for name in ("report.md", "junit.xml", "events.jsonl", "log.txt"):
        assert (run_dir / name).is_file(), name
    hunted = [f for f in summary["findings"] if f["kind"] == "KVM_BUG_ON" and f["path"] == "d"]
    assert hunted, summary["findings"]
    bug = str(run_dir / hunted[0]["repro"])
    assert bug in repros
    assert f'name="tdx_stress_replay" value="tdx-stress replay {bug}"' in junit.read_text()
    assert cli.main(["replay", bug, "--lanes", "0"]) == cli.ExitCode.FINDING

    # the same on hugepage-rfc passes; the command line's seeds beat the marker's
    r = inner("test_stress.py::test_stress", "--tdx-stress-variant", "hugepage-rfc",
              "--tdx-stress-seed", 0, "--tdx-stress-seeds", 12)
    assert r.ret == 0, r.stdout.str()
    s = json.loads(last.read_text())
    assert (s["variant"], s["runs"], s["base_seed"], s["findings"]) == \
        ("hugepage-rfc", 12, 0, [])

    # no options: the marker's defaults, the seed from $TDX_STRESS_SEED, announced after
    # collection; bad marker arguments fail their test with one sentence
    last.unlink()
    monkeypatch.setenv("TDX_STRESS_SEED", "5")
    r = inner()
    r.assert_outcomes(passed=1, failed=3)
    s = json.loads(last.read_text())
    assert (s["variant"], s["runs"], s["base_seed"]) == ("hugepage-rfc", 8, 5)
    out = r.stdout.str()
    assert "tdx-stress: variant per test, base seed 5 ($TDX_STRESS_SEED)" in out
    assert "tdx-stress: unknown variant 'nope'; valid variants: v6.19" in out
    assert "tdx-stress: unknown tdx_stress setting bogus in marker; valid: " in out
    assert "tdx-stress: seeds: 0 must be at least 1" in out    # stress.config's check


@pytest.mark.timeout(60)
def test_inert_unless_used_and_deselected_by_marker(pytester, inner):
    pytester.makepyfile(test_mixed=f"""
        import sys
        import pytest

        def test_plain():
            heavy = [m for m in {HEAVY!r} if m in sys.modules]
            assert not heavy, heavy

        @pytest.mark.tdx_stress(variant="hunt-d")
        def test_marked():
            raise AssertionError("deselected")

        def test_uses_fixture(tdx_stress):
            tdx_stress.run(variant="hunt-d")
    """)
    r = inner("-m", "not tdx_stress", "--strict-markers")
    r.assert_outcomes(passed=1, deselected=2)
    assert "tdx-stress:" not in r.stdout.str()       # says nothing when not used
    r = inner("--help")
    for option in ("--tdx-stress-variant", "--tdx-stress-seeds", "--tdx-stress-duration",
                   "--tdx-stress-repros", "tdx_stress_repros"):
        assert option in r.stdout.str()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, sentence", [
    (["--tdx-stress-variant", "hunt-z"], "--tdx-stress-variant: unknown variant 'hunt-z'; "
                                         "valid variants: v6.19, refactor-2026"),
    (["--tdx-stress-seeds", "0"], "--tdx-stress-seeds: '0' must be at least 1"),
    (["--tdx-stress-depth", "99"], "--tdx-stress-depth must be between 1 and 20"),
    (["--tdx-stress-seed", "x1"], "the seed from --tdx-stress-seed ('x1') is not an integer"),
])
def test_bad_option_is_a_usage_error_of_one_sentence(inner, args, sentence):
    r = inner(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = r.stderr.str()
    assert f"ERROR: {sentence}" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def hunt_d_repros(tmp_path_factory):
    """Two hunt-d repro files: the hunted KVM_BUG_ON from a controlled run and a finding
    of a free run (a linearised trace)."""
    d = tmp_path_factory.mktemp("repros")
    stop = hunt_stop("hunt-d")
    cfg = RunConfig(variant="hunt-d")
    for seed in range(300):
        r = run_seed(cfg, seed, stop_on=stop)
        hit = [f for f in r.findings if stop(f)]
        if hit:
            write_repro(d, make_repro(cfg, seed, r.workload, hit[0], schedule=r.schedule,
                                      threads=r.threads, steps=r.steps))
            break
    free = cfg.with_(mode="free")
    for seed in range(50):
        r = run_seed(free, seed)
        if r.findings:
            write_repro(d, make_repro(free, seed, r.workload, r.findings[0],
                                      trace=r.schedule, threads=r.threads, steps=r.steps))
            break
    files = sorted(d.glob("*.json"))
    assert len(files) == 2 and {load_repro(f).mode for f in files} == {"controlled", "free"}
    return files


@pytest.mark.timeout(60)
def test_repro_files_are_regression_tests(pytester, inner, hunt_d_repros):
    regressions = pytester.mkdir("regressions")
    for f in hunt_d_repros:
        shutil.copy(f, regressions)
    # a run directory's summary beside them is not a repro and not an error
    (regressions / "summary.json").write_text('{"schema": "tdx-stress/summary/1"}')
    pytester.makepyfile(test_fixture_replay=f"""
        def test_replay(tdx_stress):
            tdx_stress.replay({str(regressions / hunt_d_repros[0].name)!r})
    """)
    ids = [f"regressions/{f.name}::replay" for f in hunt_d_repros]

    # under its own variant (hunt-d) each still fires: fail with signature, step, command
    r = inner("--tdx-stress-repros", "regressions", "-rA")
    r.assert_outcomes(failed=3)
    out = r.stdout.str()
    for f, node_id in zip(hunt_d_repros, ids, strict=True):
        rp = load_repro(f)
        assert f"FAILED {node_id}" in out
        assert f"{rp.signature} still fires under hunt-d: exact replay of {f.name} " \
               f"reached it at step {rp.step}: " in out
        assert f"  replay: tdx-stress replay {regressions / f.name}\n" in out

    # named by the ini file, replayed under hugepage-rfc: the bug is not there, so they pass
    # and the session says why each did not reproduce
    pytester.makeini("[pytest]\ntdx_stress_repros = regressions\n")
    r = inner("--tdx-stress-variant", "hugepage-rfc", "-rA")
    r.assert_outcomes(passed=3)
    out = r.stdout.str()
    for node_id in ids:
        assert f"PASSED {node_id}: did not reproduce " in out
    assert "under hugepage-rfc: the exact " in out

    # a file that is no repro: a collection error of one sentence, no traceback
    junk = pytester.mkdir("junk")
    (junk / "notes.json").write_text('{"todo": 1}')
    r = inner("--tdx-stress-repros", "junk", "junk")
    assert r.ret == pytest.ExitCode.INTERRUPTED
    out = r.stdout.str()
    assert f"tdx-stress: {junk / 'notes.json'} is not a tdx-stress repro file (schema None, " \
           f"expected '{SCHEMA}')" in out
    assert "1 error" in out and "Traceback" not in out


@pytest.mark.unit
def test_plugin_constants_match_the_tool():
    assert pytest_plugin.REPRO_SCHEMA == SCHEMA
    assert pytest_plugin._reword("--depth must be between 1 and 20", cmdline=True) == \
        "--tdx-stress-depth must be between 1 and 20"
    assert pytest_plugin._reword("--busy-rate must be at least 0", cmdline=False) == \
        "busy_rate must be at least 0"


@pytest.mark.timeout(150)
def test_a_patch_file_runs_from_the_command_line_and_the_marker(pytester, inner):
    """Issue 11: ``--tdx-stress-variant PATH.py`` and the marker's ``variant=`` take a
    patch file; the planted one fails the test with its finding, the harmless one passes."""
    planted = ROOT / "examples" / "patches" / "remove_without_track.py"
    harmless = ROOT / "examples" / "patches" / "retry_loop_refactor.py"
    pytester.makepyfile(test_patch=f"""
        import pytest

        @pytest.mark.tdx_stress(variant={str(harmless)!r}, seeds=6)
        def test_patch(tdx_stress):
            tdx_stress.run()
    """)
    r = inner("test_patch.py", "--tdx-stress-seed", 0)
    r.assert_outcomes(passed=1)
    r = inner("test_patch.py", "--tdx-stress-variant", planted, "--tdx-stress-seed", 0,
              "--tdx-stress-seeds", 20)
    r.assert_outcomes(failed=1)
    out = r.stdout.str()
    assert "TDX_TLB_TRACKING_NOT_DONE" in out and "Traceback" not in out
    assert re.search(r"^ +tdx-stress replay (/\S+\.json)$", out, re.M)
