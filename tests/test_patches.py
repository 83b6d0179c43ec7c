"""Your patch as a variant (issue 11): patch files over a built-in variant, found, shrunk,
bound to their source, and refused with one sentence when they cannot be right."""
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from core.variants import get_variant
from stress.config import RunConfig
from stress.repro import ReproError, load_repro, make_repro, write_repro
from stress.runner import hunt_stop, run_seed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "examples" / "patches"
PLANTED = PATCHES / "remove_without_track.py"
HARMLESS = PATCHES / "retry_loop_refactor.py"


def tdx(*args, cwd=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "stress", *map(str, args)], cwd=cwd,
                          env=e, capture_output=True, text=True, timeout=100)


def first_hit(variant, seeds=range(30)):
    cfg = RunConfig(variant=str(variant)).validate()
    stop = hunt_stop(cfg.variant)
    for seed in seeds:
        r = run_seed(cfg, seed, stop_on=stop)
        hits = [f for f in r.findings if stop(f)]
        if hits:
            return cfg, seed, r, hits[0]
    raise AssertionError(f"{variant}: nothing in {seeds}")


def test_a_planted_patch_is_found_where_it_says():
    """The patch that forgets TDH.MEM.TRACK before REMOVE: the module refuses the REMOVE
    (TDX_TLB_TRACKING_NOT_DONE), a TDX_BUG_ON in tdx_sept_remove_private_spte."""
    v = get_variant(str(PLANTED))
    assert v.base == "hugepage-rfc" and not v.as_designed
    assert v.finds == ("TDX_BUG_ON", "tdx_sept_remove_private_spte")
    _, _, _, hit = first_hit(PLANTED)
    assert hit.kind == "TDX_BUG_ON" and "TDX_TLB_TRACKING_NOT_DONE" in hit.signature
    # the base itself does not fail that way
    base = RunConfig(variant="hugepage-rfc").validate()
    assert not any(run_seed(base, s, record_steps=False).findings for s in range(3))


def test_a_harmless_refactor_runs_exactly_as_its_base():
    """tdh_do_no_vcpus() as a loop: the same steps in the same order, so every run is
    trace-identical to hugepage-rfc's and clean."""
    v = get_variant(str(HARMLESS))
    assert v.as_designed and len(v.overrides) == 1
    for seed in range(12):
        mine = run_seed(RunConfig(variant=str(HARMLESS)).validate(), seed, record_steps=False)
        base = run_seed(RunConfig(variant="hugepage-rfc").validate(), seed, record_steps=False)
        assert mine.trace_hash == base.trace_hash and not mine.findings, seed


def test_a_repro_is_bound_to_the_patch_it_was_recorded_against(tmp_path):
    patch = tmp_path / "p.py"
    shutil.copy(PLANTED, patch)
    cfg, seed, r, hit = first_hit(patch)
    path = write_repro(tmp_path, make_repro(cfg, seed, r.workload, hit, schedule=r.schedule,
                                            threads=r.threads, steps=r.steps))
    rp = load_repro(path)
    again = run_seed(rp.config, rp.seed, schedule=rp.schedule, workload=rp.workload,
                     stop_on=lambda f: f.signature == rp.signature)
    assert [f.step for f in again.findings if f.signature == rp.signature] == [rp.step]
    patch.write_text(patch.read_text() + "\n# an edit\n")
    with pytest.raises(ReproError, match="another version of the patch"):
        load_repro(path)
    p = tdx("replay", path)
    assert p.returncode == 2 and "another version of the patch" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


BAD = {
    "missing": (None, "no patch file"),
    "syntax": ('BASE = "hugepage-rfc"\nSUMMARY = "x"\ndef f(:\n', "syntax error at line 3"),
    "base": ('BASE = "linux-7.0"\nSUMMARY = "x"\n', "unknown base variant 'linux-7.0'"),
    "typo": ('from core.tdx import KvmTdx as B\nBASE = "hugepage-rfc"\nSUMMARY = "x"\n'
             'class KvmTdx(B):\n    def tdx_trak(self):\n        pass\n',
             "KvmTdx.tdx_trak overrides nothing in KvmTdx"),
    "signature": ('from core.tdx import KvmTdx as B\nBASE = "hugepage-rfc"\nSUMMARY = "x"\n'
                  'class KvmTdx(B):\n    def tdx_track(self, now):\n        pass\n',
                  "KvmTdx.tdx_track(self, now) does not match KvmTdx.tdx_track(self)"),
    "nothing": ('BASE = "hugepage-rfc"\nSUMMARY = "x"\n', "changes nothing"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_patch_is_refused_with_one_sentence(tmp_path, kind):
    text, says = BAD[kind]
    patch = tmp_path / f"{kind}.py"
    if text is not None:
        patch.write_text(text)
    p = tdx("run", "--variant", patch, "--seeds", 1, "--out", tmp_path / "run")
    assert p.returncode == 2, p.stderr
    assert says in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_variants_lists_a_patch_and_shows_it_beside_its_base():
    p = tdx("variants", PLANTED)
    assert p.returncode == 0
    assert "patch over hugepage-rfc, finds TDX_BUG_ON" in p.stdout
    assert "overrides KvmTdx.tdx_sept_remove_private_spte" in p.stdout
    # the built-in variants show the patches they are made of
    assert "core.patches.refactor_2026: TdpMmu._changed_spte" in p.stdout
    assert p.stdout.count("core.patches.refactor_2026:") == 8   # 7 built-in + 1 patch
    # a function a built-in patch adds is marked as new
    assert "+KvmTdx.tdx_sept_split_private_spte" in p.stdout
    p = tdx("variants", "--show", PLANTED)
    assert p.returncode == 0
    base, mine = p.stdout.split("in hugepage-rfc:")[1].split(f"in {PLANTED}:")
    assert "self.tdx_track()" in base and "self.tdx_track()" not in mine
    # a built-in variant is a patch too: hunt-b beside hugepage-rfc
    p = tdx("variants", "--show", "hunt-b")
    assert p.returncode == 0, p.stderr
    base, mine = p.stdout.split("## Kvm.kvm_recover_huge_pages, in hugepage-rfc:")[1].split(
        "## Kvm.kvm_recover_huge_pages, in hunt-b:")
    assert "return False" in base and "recover_huge_pages_range(" in mine
    assert "## KvmTdx.tdx_sept_promote_private_spte, in hugepage-rfc:\n\n(none: the patch " \
           "adds it)" in p.stdout
    p = tdx("variants", "--show", "v6.19")
    assert p.returncode == 2 and "not a patch" in p.stderr


SHIPPED = '''
from core.tdx import KvmTdx as Base


class _SkipTrack(Base):
    def tdx_track(self) -> None:
        pass


class SkipTrack:
    """A package's patch: TDH.MEM.TRACK never runs."""
    BASE = "hugepage-rfc"
    SUMMARY = "tdx_track() does nothing"
    FINDS = "TDX_BUG_ON"
    KvmTdx = _SkipTrack
'''


def test_a_package_ships_a_patch_by_module_name_and_entry_point(tmp_path):
    """``--variant module:Name`` and the ``tdx_stress.variants`` entry-point group."""
    (tmp_path / "mypatches.py").write_text(SHIPPED)
    info = tmp_path / "mypatches-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypatches\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tdx_stress.variants]\nskip-track = mypatches:SkipTrack\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "stress", *map(str, args)],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=100)
    p = run("variants")
    assert p.returncode == 0 and "skip-track" in p.stdout
    assert "overrides KvmTdx.tdx_track" in p.stdout
    for name in ("skip-track", "mypatches:SkipTrack"):
        p = run("run", "--variant", name, "--stop-on-first", "--seeds", 20, "--seed", 0,
                "--out", tmp_path / name.replace(":", "_"), "-q")
        assert p.returncode == 1, p.stderr
        assert "TDX_TLB_TRACKING_NOT_DONE" in p.stdout + p.stderr
    p = run("run", "--variant", "mypatches:Nope", "--seeds", 1)
    assert p.returncode == 2 and "module mypatches has no Nope" in p.stderr


def test_seed_000s_patch_over_v6_19_behaves_as_refactor_2026():
    """examples/patches/seed000_single_hook.py: v6.19 plus seed 000's single hook in the
    after order.  With injected BUSY (where the two orders differ: the after order
    classifies the change and calls the hook inside the frozen window, v6.19 only after
    a successful update) its runs match refactor-2026's in schedule, rows and findings,
    and v6.19's differ in some, so the comparison can tell the two apart."""
    patch = str(PATCHES / "seed000_single_hook.py")
    assert get_variant(patch).base == "v6.19"

    def outcome(variant, seed):
        r = run_seed(RunConfig(variant=variant, busy_rate=0.3).validate(), seed,
                     record_steps=False)
        return (r.trace_hash, tuple(r.rows), r.attr_changes,
                tuple(sorted(f.signature for f in r.findings)))
    differ = 0
    for seed in range(16):
        mine, want = outcome(patch, seed), outcome("refactor-2026", seed)
        assert mine == want, seed
        differ += want != outcome("v6.19", seed)
    assert differ >= 1


@pytest.mark.timeout(200)
def test_the_nightly_job_takes_patches_and_keeps_its_directory_flat(tmp_path):
    """A patch as an as-designed variant and as the canary of ``nightly``: the harmless one
    clean, the planted one caught; each run directory is one component of the job's."""
    out = tmp_path / "nj"
    p = tdx("nightly", "--duration", 3, "--seed", 1, "--variants", HARMLESS.relative_to(ROOT),
            "--canary", PLANTED.relative_to(ROOT), "--canary-duration", 60, "--out", out,
            cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    dirs = sorted(d.name for d in out.iterdir() if d.is_dir())
    assert dirs == ["canary-examples_patches_remove_without_track.py",
                    "examples_patches_retry_loop_refactor.py"], dirs


@pytest.mark.unit
def test_table_counts_an_as_designed_patch_that_opens_a_row_as_a_disagreement(
        table_observation):
    """``table --variant PATCH``: a patch that plants no bug is held to the as-designed
    rows, so the row it opens to the mirror root is named, with the patch."""
    from stress.table import render_table
    obs = table_observation(("v6.19", "refactor-2026", "hugepage-rfc", "hunt-a1",
                             "hunt-a2", "hunt-b", "hunt-c", "hunt-d", str(HARMLESS)))
    per = obs["variants"]
    text, bad = render_table(obs)
    assert bad == [] and "(a patch over hugepage-rfc)" in text
    per[str(HARMLESS)]["rows"][11] = 3
    text, bad = render_table(obs)
    assert bad == [f"row 11 is not allowed on the mirror but was seen in {HARMLESS}"]


def test_table_runs_a_patch_beside_the_built_in_variants(tmp_path):
    p = tdx("table", "--duration", "0.3", "--variant", HARMLESS)
    assert p.returncode in (0, 1), p.stderr
    assert f"{HARMLESS}: " in p.stdout and "(a patch over hugepage-rfc)" in p.stdout
    p = tdx("table", "--variant", tmp_path / "nope.py")
    assert p.returncode == 2 and "no patch file" in p.stderr and "Traceback" not in p.stderr


CORE = ROOT / "core"
MODEL_FILES = sorted(p for p in [*CORE.glob("*.py"), *(CORE / "patches").glob("*.py")]
                     if p.name not in ("variants.py", "__init__.py"))


@pytest.mark.unit
def test_the_model_has_no_variant_or_mutation_branch():
    """Every variant is a patch: no model file reads what variant it runs in (beyond
    composing its classes) or which mutation is planted."""
    import re
    branch = re.compile(
        r"\.variant\.(?!compose\b)\w+|\bmutations?\b|\.(hunt|hugepages|opens_row|finds|"
        r"as_designed|after_order|single_hook)\b|(==|!=|\bin)\s*\(?\s*[\"']"
        r"(v6\.19|refactor-2026|hugepage-rfc|hunt-\w+|a1|a2|b|c|d|leave_frozen|"
        r"remove_without_track|reclaim_with_hkid)[\"']")
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in MODEL_FILES
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if branch.search(line.split("#")[0])]
    assert not found, "\n".join(found)


@pytest.mark.unit
def test_built_in_patches_override_with_the_base_signature():
    """A built-in patch's function that overrides one of the variant below it keeps its
    signature (a function it adds is new, as in a kernel diff)."""
    import importlib
    import inspect

    from core.variants import VARIANTS
    from stress.patches import PATCHABLE
    checked = 0
    for v in VARIANTS.values():
        for i, name in enumerate(v.patches):
            below = replace(v, name=f"{v.name}~{i}", patches=v.patches[:i])
            m = importlib.import_module(name)
            for cls in [c for c in vars(m).values()
                        if isinstance(c, type) and c.__module__ == m.__name__]:
                model = next(c for c in PATCHABLE if issubclass(cls, c))
                for attr, fn in vars(cls).items():
                    old = getattr(below.compose(model), attr, None)
                    if attr.startswith("__") or not callable(fn) or old is None:
                        continue
                    assert inspect.signature(fn) == inspect.signature(old), (name, attr)
                    checked += 1
    assert checked >= 20, checked


BUILT_IN_ONLY = ('from core.tdx import KvmTdx as B\nBASE = "{base}"\nSUMMARY = "x"\n'
                 'class KvmTdx(B):\n'
                 '    def tdx_sept_split_private_spte(self, gfn, level, old, new):\n'
                 '        return super().tdx_sept_split_private_spte(gfn, level, old, new)\n')


@pytest.mark.unit
def test_a_patch_may_override_what_a_built_in_patch_adds(tmp_path):
    """tdx_sept_split_private_spte() is hugepage-rfc's (its patch adds it): a patch over
    hugepage-rfc may override it, one over v6.19 is refused."""
    from core.variants import UnknownVariant
    ok = tmp_path / "ok.py"
    ok.write_text(BUILT_IN_ONLY.format(base="hugepage-rfc"))
    v = get_variant(str(ok))
    assert v.base == "hugepage-rfc" and len(v.overrides) == 1
    bad = tmp_path / "bad.py"
    bad.write_text(BUILT_IN_ONLY.format(base="v6.19"))
    with pytest.raises(UnknownVariant, match="tdx_sept_split_private_spte overrides nothing"):
        get_variant(str(bad))


def test_the_populate_example_opens_row_4_where_hugepage_rfc_does_not():
    """examples/patches/populate_under_write_lock.py, the table's example: the same seeds
    link mirror tables under the write lock (row 4) with the patch, never without it."""
    patch = str(PATCHES / "populate_under_write_lock.py")
    assert get_variant(patch).as_designed
    mine = [run_seed(RunConfig(variant=patch), s, record_steps=False).rows[4]
            for s in range(12)]
    base = [run_seed(RunConfig(variant="hugepage-rfc"), s, record_steps=False).rows[4]
            for s in range(12)]
    assert sum(1 for n in mine if n) >= 2 and not any(base), (mine, base)


@pytest.mark.unit
def test_the_model_hash_covers_the_built_in_patches_and_the_strategies():
    """A repro's schedule means what the machine, its built-in patches, the scheduler and
    its strategies make of it: an edit of any of them must change the model hash."""
    from stress.repro import model_files
    names = {p.relative_to(ROOT).as_posix() for p in model_files()}
    assert {"core/kvm.py", "core/patches/hugepage_rfc.py", "core/patches/hunt_d.py",
            "stress/controlled.py", "stress/strategies.py", "stress/workload.py"} <= names
