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
        "run with findings": (["run", "--variant", "hunt-d", "--stop-on-first", "--seeds",
                               50, "--seed", 1, "--out", "{new}"], 1),
        "clean run": (["run", "--variant", "v6.19", "--seeds", 2, "--seed", 1,
                       "--out", "{new}"], 0),
        "replay that reproduces": (["replay", h["repro"], "--times", 2], 1),
        "replay that does not": (["replay", h["diverged"]], 4),
        "report with findings": (["report", h["run"]], 1),
        "shrink": (["shrink", h["repro"], "-o", "{new}.json", "--max-runs", 20], 0),
        "nightly": (["nightly", "--variants", "v6.19", "--seeds", 2, "--canary", "none",
                     "--seed", 1, "--out", "{new}"], 0),
        "bad usage": (["run", "--seeds", "many", "--out", d / "never"], 2),
        "missing repro": (["replay", d / "no-such.json"], 2),
    }


@pytest.mark.parametrize("how", [closed_output, full_disk_output],
                         ids=["closed pipe", "full disk"])
def test_lost_output_never_changes_the_exit_code(hunted, how, tmp_path):
    got, want = {}, {}
    for n, (name, (args, code)) in enumerate(cases(hunted).items()):
        args = [str(a).replace("{new}", str(tmp_path / f"out{n}")) for a in args]
        assert open_output(args, tmp_path) == code, name     # the code, output kept
        args = [a.replace(str(tmp_path / f"out{n}"), str(tmp_path / f"lost{n}"))
                for a in args]
        got[name], want[name] = how(args, tmp_path), code
    assert got == want
