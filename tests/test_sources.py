"""The source ledger (core/SOURCES.md) names every public function of the model, and no
function that is gone; every such function has a docstring naming its counterpart."""
import ast
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

CORE = Path(__file__).resolve().parent.parent / "core"
# the model (v6.19) and the built-in patches over it; findings, sched, variants, oracle
# and invariants are the tool's own side
MODEL = ("spte", "store", "mmu_lock", "rcu", "tdp_mmu", "tdx", "tdx_module", "tdx_errno",
         "kvm", "guest") + tuple(f"patches.{p.stem}" for p in sorted((CORE / "patches").glob(
             "*.py")) if p.stem != "__init__")


def model_functions() -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for mod in MODEL:
        tree = ast.parse((CORE / f"{mod.replace('.', '/')}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                out[f"{mod}.{node.name}"] = node
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for m in node.body:
                    if isinstance(m, ast.FunctionDef) and not m.name.startswith("_"):
                        out[f"{mod}.{node.name}.{m.name}"] = m
    return out


def ledger_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (CORE / "SOURCES.md").read_text().splitlines():
        m = re.match(r"\|\s*`([\w.]+)`\s*\|(.*)\|\s*$", line)
        if m and any(m.group(1).startswith(mod + ".") for mod in MODEL):
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_every_model_function_has_a_ledger_row():
    missing = sorted(set(model_functions()) - set(ledger_rows()))
    assert not missing, f"add rows to core/SOURCES.md for {missing}"


def test_no_ledger_row_names_a_function_that_is_gone():
    stale = sorted(set(ledger_rows()) - set(model_functions()))
    assert not stale, f"core/SOURCES.md names functions that no longer exist: {stale}"


def test_every_row_has_a_verdict_and_a_source():
    for name, (real, source, verdict) in ledger_rows().items():
        assert real, name
        assert re.match(r"(same|diff|tool|what-if)\b", verdict), name
        if not verdict.startswith("tool"):
            assert source and source != "-", name


def test_model_functions_name_their_counterpart():
    """A model function with a kernel or TDX counterpart says which in its docstring
    (the first identifier of its ledger row's counterpart appears there)."""
    funcs = model_functions()
    lacking = []
    for name, (real, _src, verdict) in ledger_rows().items():
        if verdict.startswith("tool") or name.startswith(("spte.", "store.", "tdx_errno.")):
            continue   # one-line helpers whose name is the kernel's
        doc = ast.get_docstring(funcs[name]) or ""
        first = re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", real.replace("`", ""))
        if not doc or not any(w.split(".")[-1].lower() in doc.lower() or
                              w.split("_")[0].lower() in doc.lower() for w in first[:3]):
            lacking.append(name)
    assert not lacking, f"docstrings that do not name their counterpart: {lacking}"
