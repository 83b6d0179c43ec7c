"""The nightly job as CI runs it: passes when the as-designed variants stay clean and the
canary is caught; fails when the canary is not caught (pointed at an as-designed
variant) or when a variant that must be clean has a finding; its JUnit validates."""
import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from reports.junit import validate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parent.parent


def nightly(*args, timeout=200):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "stress", "nightly", "-q", *map(str, args)],
                          env=e, capture_output=True, text=True, timeout=timeout)


def test_passes_when_clean_and_canary_caught(tmp_path):
    out = tmp_path / "n"
    r = nightly("--duration", 2, "--canary", "hunt-d", "--canary-duration", 60, "--seed", 1,
                "--out", out, "--junit", tmp_path / "j.xml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nightly PASSED" in r.stdout
    doc = json.loads((out / "nightly.json").read_text())
    assert doc["passed"] and doc["schema"] == "tdx-stress/nightly/1"
    roles = [(c["role"], c["variant"], c["ok"]) for c in doc["campaigns"]]
    assert roles == [("as-designed", "v6.19", True), ("as-designed", "refactor-2026", True),
                     ("as-designed", "hugepage-rfc", True), ("canary", "hunt-d", True)]
    for d in ("v6.19", "refactor-2026", "hugepage-rfc", "canary-hunt-d"):
        assert (out / d / "summary.json").exists() and (out / d / "report.md").exists()
    text = (tmp_path / "j.xml").read_text()
    validate(text)
    root = ET.fromstring(text)
    assert root.get("failures") == "0"
    assert [s.get("name") for s in root] == ["tdx-stress.v6.19", "tdx-stress.refactor-2026",
                                            "tdx-stress.hugepage-rfc",
                                            "tdx-stress.canary.hunt-d"]
    md = (out / "nightly.md").read_text()
    assert md.startswith("# tdx-stress nightly: PASSED")
    assert "PCT bound" in md          # a green night says what it means


def test_fails_when_canary_not_caught(tmp_path):
    """The acceptance check: point the canary at an as-designed variant."""
    out = tmp_path / "n"
    r = nightly("--variants", "v6.19", "--duration", 1, "--canary", "hugepage-rfc",
                "--canary-duration", 3, "--seed", 2, "--out", out)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "nightly FAILED" in r.stdout and "NOT caught" in r.stdout
    text = (out / "junit.xml").read_text()
    validate(text)
    canary = ET.fromstring(text).find("testsuite[@name='tdx-stress.canary.hugepage-rfc']")
    assert canary is not None and canary.find("testcase/failure") is not None


def test_fails_on_a_finding_where_the_kernel_must_be_clean(tmp_path):
    out = tmp_path / "n"
    r = nightly("--variants", "hunt-c", "--seeds", 40, "--canary", "none", "--seed", 0,
                "--out", out)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "replay: tdx-stress replay" in r.stdout
    doc = json.loads((out / "nightly.json").read_text())
    assert not doc["passed"] and doc["campaigns"][0]["findings"] > 0
    validate((out / "junit.xml").read_text())


@pytest.mark.parametrize("args, words", [
    (["--variants", "v6.20"], "unknown variant 'v6.20'"),
    (["--canary", "hunt-z"], "unknown canary variant 'hunt-z'"),
    (["--depth", "0"], "--depth must be between 1 and 20"),
    (["--duration", "-3"], "must be a positive number of seconds"),
])
def test_bad_input_is_one_sentence_exit_2(tmp_path, args, words):
    r = nightly(*args, "--out", tmp_path / "n", timeout=60)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_refuses_to_mix_two_jobs_in_one_directory(tmp_path):
    out = tmp_path / "n"
    out.mkdir()
    (out / "nightly.json").write_text("{}")
    r = nightly("--out", out, timeout=60)
    assert r.returncode == 2 and "already holds a nightly job" in r.stderr
