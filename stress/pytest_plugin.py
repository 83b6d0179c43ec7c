"""tdx-stress as a pytest plugin: campaigns as tests, repro files as regression tests.

Registered through the ``pytest11`` entry point ``tdx_stress`` (disable it with
``-p no:tdx_stress``; without the installed entry point load it with
``-p stress.pytest_plugin``).  It is loaded into every pytest session of whoever installs
the package, so it is import-light and inert: at import it needs only pytest and the
standard library, and the machine (``core``), the campaign code and the reports are
imported only when a test uses the fixture or a repro is collected.  Until then it adds
options, a marker and nothing else.

Example::

    import pytest

    @pytest.mark.tdx_stress(variant="hugepage-rfc", seeds=500)
    def test_mirror_stays_clean(tdx_stress):
        summary = tdx_stress.run()          # fails with the replay command on a finding
        assert summary["rows"]["8"]["hits"] > 0

    $ pytest --tdx-stress-variant hunt-d --tdx-stress-seed 0     # fails: replay line
    $ pytest --tdx-stress-repros regressions/                    # each repro is a test
    $ pytest -m "not tdx_stress"                                 # skip the stress work

What it adds:

* options (group "tdx-stress"): ``--tdx-stress-variant``, ``--tdx-stress-seed`` (base
  seed: the option, else ``$TDX_STRESS_SEED``, else the test's ``seed=``, else a fresh one
  shown at the start of the session), ``--tdx-stress-seeds N`` / ``--tdx-stress-duration
  S`` (the budget of each campaign; both: whichever ends first; neither anywhere: 20 s),
  ``--tdx-stress-strategy``, ``--tdx-stress-depth``, ``--tdx-stress-mode``,
  ``--tdx-stress-workers``, ``--tdx-stress-out DIR`` (run directories, default under
  pytest's temporary directory) and ``--tdx-stress-repros DIR`` (repeatable; the ini
  option ``tdx_stress_repros`` names such directories too).  A bad value stops pytest
  with one sentence (exit code 4).
* marker ``tdx_stress(**kwargs)``: marks a stress test (tests using the fixture and repro
  items get it automatically, so ``-m "not tdx_stress"`` deselects all stress work); its
  keyword arguments are the test's defaults: any field of the run configuration
  (``variant``, ``mode``, ``strategy``, ``depth``, ``vcpus``, ``zappers``, ``ops``,
  ``busy_rate``, ``max_steps``, ``stall_rate``) and ``seed``, ``seeds``, ``duration``,
  ``workers``, ``stop_on_first``.  Precedence: command line > ``run(**kw)`` > marker on
  the function > class > module > built-in defaults.
* fixture ``tdx_stress``: ``.run(**kw)`` runs one campaign (stop on first by default, so
  a hunt fails fast) into a normal run directory (``summary.json``, ``findings/``,
  ``events.jsonl``, ``log.txt``, ``report.md``, ``report.html``, ``junit.xml``); on a
  finding the test fails with every distinct finding, its first seed and its
  ``tdx-stress replay <repro>`` line; clean, it returns the summary.
  ``.replay(path, variant=None)`` replays a repro file: fails if the finding still fires,
  returns a :class:`ReplayOutcome` if not.
  Replay lines and the run directory also go to the test's ``user_properties`` (so into
  ``--junitxml``) and to a "tdx-stress" report section.
* regression tests: every ``*.json`` repro (``tdx-stress/repro/1``) under a repro
  directory becomes the test ``<file>::replay``.  It fails while the finding still fires
  (signature, step, replay command) and passes once it does not (the bug is fixed).
  With ``--tdx-stress-variant`` the repro is replayed under that variant.  The exact
  schedule (or free-mode trace) is replayed first; if it no longer fits (the model or the
  variant changed), a lenient replay by runs follows, so a changed model does not pass a
  regression test just by shifting steps.  Why a repro did not reproduce is printed in a
  "tdx-stress" section of the terminal summary.  A file that is not a usable repro is a
  collection error of one sentence; other tdx-stress files (``summary.json`` of a run
  directory) are ignored, so a run directory can be given as it is.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NoReturn

import pytest

from reports.rundir import LOG, REPRO_SCHEMA  # light: imports no part of the model

if TYPE_CHECKING:   # the heavy parts, imported only where they are used
    from stress.config import RunConfig
    from stress.repro import Repro

MARKER = "tdx_stress"
DEFAULT_DURATION = 20.0
# (option suffix, what it is): one place for names, help and the rerun line
_OPTIONS = {
    "variant": "kernel variant of every campaign and repro replay (default: the test's, "
               "else hugepage-rfc); `tdx-stress variants` lists them",
    "seed": "base seed (default $TDX_STRESS_SEED, else the test's seed=, else a fresh one, "
            "shown at the start)",
    "seeds": "seeds per campaign (default: the test's budget, else 20 s)",
    "duration": "seconds per campaign (with --tdx-stress-seeds: whichever ends first)",
    "strategy": "controlled-mode strategy: portfolio (default), pct or random",
    "depth": "PCT depth (1..20)",
    "mode": "controlled or free",
    "workers": "worker processes per campaign (default 1)",
    "out": "put run directories here (default: under pytest's temporary directory)",
    "repros": "collect every repro file under DIR as a regression test (repeatable)",
}
_RERUN_OPTIONS = ("variant", "seeds", "duration", "strategy", "depth", "mode", "workers")
_FIXTURE_KEYS = ("seed", "seeds", "duration", "workers", "stop_on_first")


# ---------------------------------------------------------------------- session state
@dataclass
class _State:
    """What the command line and ini file asked for (validated), and results to show."""
    cmdline: dict[str, Any] = field(default_factory=dict)   # given options only, parsed
    seed_text: str | None = None
    out: Path | None = None
    repro_dirs: list[Path] = field(default_factory=list)
    session_seed: tuple[int, str] | None = None             # resolved on first use
    notes: list[str] = field(default_factory=list)          # for the terminal summary
    announced: bool = False

    @property
    def used(self) -> bool:
        return bool(self.cmdline or self.seed_text is not None or self.out or
                    self.repro_dirs)

    def base_seed(self) -> tuple[int, str]:
        """The session's base seed and where it came from (the CLI's precedence)."""
        if self.session_seed is None:
            from stress.config import ConfigError, resolve_seed
            try:
                seed, source = resolve_seed(self.seed_text)
            except ConfigError as e:
                raise pytest.UsageError(_reword(str(e), cmdline=True)) from None
            self.session_seed = (seed, "--tdx-stress-seed" if source == "--seed" else source)
        return self.session_seed


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    return config.stash.setdefault(_STATE, _State())


def _reword(message: str, *, cmdline: bool) -> str:
    """RunConfig and the CLI name their own flags (``--depth``); say what the user wrote:
    ``--tdx-stress-depth`` on the command line, ``depth`` in a marker or ``run()``."""
    if cmdline:
        return re.sub(r"(?<![\w-])--(?!tdx-stress-)([a-z][a-z-]*)", r"--tdx-stress-\1",
                      message)
    return re.sub(r"(?<![\w-])--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"),
                  message)


# ---------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tdx-stress", "tdx-stress campaigns and repro regression tests")
    for name, text in _OPTIONS.items():
        metavar = {"seeds": "N", "duration": "S", "workers": "K", "out": "DIR",
                   "repros": "DIR", "depth": "D"}.get(name, name.upper())
        kw: dict[str, Any] = {"action": "append"} if name == "repros" else {}
        group.addoption(f"--tdx-stress-{name}", dest=f"tdx_stress_{name}", default=None,
                        metavar=metavar, help=text, **kw)
    parser.addini("tdx_stress_repros", type="paths", default=[],
                  help="directories of tdx-stress repro files collected as regression tests "
                       "(added to the run when pytest runs its default paths)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tdx_stress(**kwargs): a tdx-stress stress test; kwargs (variant, seed, seeds, "
        "duration, strategy, depth, mode, workers, stop_on_first, and any run configuration "
        "field) are the defaults of its campaigns; --tdx-stress-* options override them")
    st = _state(config)
    given = {name: config.getoption(f"tdx_stress_{name}") for name in _OPTIONS}
    given = {k: v for k, v in given.items() if v is not None}
    ini_dirs: list[Path] = list(config.getini("tdx_stress_repros") or [])
    if not given and not ini_dirs:
        return                  # not used: import nothing, check nothing
    st.seed_text = given.pop("seed", None)
    out = given.pop("out", None)
    cmd_dirs = [Path(d) for d in given.pop("repros", [])]
    st.cmdline = _parse_cmdline(given)
    if st.seed_text is not None:
        st.base_seed()          # a bad seed is a usage error now, not in the first test
    if out is not None:
        from stress.config import ConfigError, make_out_dir
        try:
            st.out = make_out_dir(out).resolve()
        except ConfigError as e:
            raise pytest.UsageError(f"--tdx-stress-out: {e}") from None
    for source, dirs in (("--tdx-stress-repros", cmd_dirs), ("tdx_stress_repros", ini_dirs)):
        for d in dirs:
            d = Path(config.invocation_params.dir, d) if source.startswith("--") else d
            if not d.is_dir():
                raise pytest.UsageError(f"{source}: {d} is not a directory")
            st.repro_dirs.append(d.resolve())
    # The command line's directories are collected whatever else is; the ini's ones only
    # when pytest runs its default paths (as testpaths), not when tests were named.
    default_paths = config.args_source != pytest.Config.ArgsSource.ARGS
    extra = st.repro_dirs if default_paths else st.repro_dirs[:len(cmd_dirs)]
    if extra:
        config.args = list(config.args) + [str(d) for d in extra]


def _parse_cmdline(given: dict[str, str]) -> dict[str, Any]:
    """Parse and check the options with the CLI's own parsers and RunConfig's checks."""
    if not given:
        return {}
    from core.variants import UnknownVariant
    from stress.config import ConfigError, RunConfig, positive_int, seconds, whole
    out: dict[str, Any] = {}
    parsers = {"seeds": positive_int, "workers": positive_int, "duration": seconds,
               "depth": whole}
    for name, text in given.items():
        try:
            out[name] = parsers[name](text) if name in parsers else text
        except ConfigError as e:
            raise pytest.UsageError(f"--tdx-stress-{name}: {e}") from None
    for name in ("variant", "mode", "strategy", "depth"):
        if name not in out:
            continue
        try:
            RunConfig(**{name: out[name]}).validate()
        except (ConfigError, UnknownVariant) as e:
            text = _reword(str(e), cmdline=True)
            raise pytest.UsageError(text if text.startswith("--") else
                                    f"--tdx-stress-{name}: {text}") from None
    return out


def _session_line(config: pytest.Config) -> str:
    st = _state(config)
    try:
        seed_text = "{} ({})".format(*st.base_seed())
    except pytest.UsageError as e:      # a bad $TDX_STRESS_SEED: the tests say so too
        seed_text = f"unusable ({e})"
    c = st.cmdline
    variant = c.get("variant", "per test")
    if "seeds" in c or "duration" in c:
        budget = " and ".join(x for x in (c.get("seeds") and f"{c['seeds']} seeds",
                                          c.get("duration") and f"{c['duration']:g} s") if x)
        budget += " per campaign"
    else:
        budget = f"per test (default {DEFAULT_DURATION:g} s)"
    where = st.out or "pytest's temporary directory"
    line = (f"tdx-stress: variant {variant}, base seed {seed_text}, budget {budget}, "
            f"run directories in {where}")
    if st.repro_dirs:
        line += f"; repros from {', '.join(map(str, st.repro_dirs))}"
    return line


def pytest_report_header(config: pytest.Config) -> str | None:
    # Only when the session asked for tdx-stress on its command line or ini file; a
    # session that merely has marked tests says so after collection instead, and every
    # other session of whoever installed the package hears nothing from the plugin.
    st = config.stash.get(_STATE, None)
    if st is None or not st.used:
        return None
    st.announced = True
    return _session_line(config)


def pytest_report_collectionfinish(config: pytest.Config,
                                   items: list[pytest.Item]) -> str | None:
    st = config.stash.get(_STATE, None)
    if st is None or st.announced or not any(i.get_closest_marker(MARKER) for i in items):
        return None
    st.announced = True
    return _session_line(config)


def pytest_itemcollected(item: pytest.Item) -> None:
    # a test using the fixture is a stress test even unmarked: -m "not tdx_stress"
    if "tdx_stress" in getattr(item, "fixturenames", ()) and \
            item.get_closest_marker(MARKER) is None:
        item.add_marker(MARKER)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    st = parent.config.stash.get(_STATE, None)
    if st is None or not st.repro_dirs or file_path.suffix != ".json":
        return None
    if not any(file_path.is_relative_to(d) for d in st.repro_dirs):
        return None
    return ReproFile.from_parent(parent, path=file_path)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    st = terminalreporter.config.stash.get(_STATE, None)
    if st is None or not st.notes:
        return
    terminalreporter.write_sep("-", "tdx-stress")
    for note in st.notes:
        terminalreporter.write_line(note)


# ---------------------------------------------------------------------- replay
@dataclass
class ReplayOutcome:
    """What replaying one repro file showed."""
    path: Path
    signature: str
    variant: str                 # replayed under
    own_variant: str             # recorded under
    fired: bool
    step: int | None             # where it fired in this replay
    recorded_step: int
    how: str                     # "exact replay" or "lenient replay"
    reason: str                  # why it did not reproduce / how it differed
    stale: str                   # another tool version or model recorded it
    others: list[str]
    lanes: str
    first_line: str

    @property
    def replay_command(self) -> str:
        return f"tdx-stress replay {shlex.quote(str(self.path))}"

    def message(self) -> str:
        if self.fired:
            at = f"step {self.step}" + ("" if self.step == self.recorded_step
                                        else f" (recorded at step {self.recorded_step})")
            lines = [f"{self.signature} still fires under {self.variant}: {self.how} of "
                     f"{self.path.name} reached it at {at}: {self.first_line}"]
            if self.reason:
                lines.append(f"  ({self.reason})")
            lines.append(f"  replay: {self.replay_command}" + (
                f"   (replays under the file's own variant {self.own_variant})"
                if self.variant != self.own_variant else ""))
        else:
            lines = [f"did not reproduce {self.signature} under {self.variant}: "
                     f"{self.reason}"]
            if self.others:
                lines.append(f"  other findings of the replay: {', '.join(self.others)}")
        if self.stale:
            lines.append(f"  note: {self.stale}")
        return "\n".join(lines)


def replay_repro(path: str | Path, variant: str | None = None) -> ReplayOutcome:
    """Replay the repro file at ``path`` (under ``variant`` if given) and say whether its
    finding still fires.  :class:`stress.repro.ReproError` for a file that is no repro."""
    from stress.repro import load_repro
    return _replay(load_repro(Path(path).resolve(), check_version=False), variant)


def _replay(rp: Repro, variant: str | None) -> ReplayOutcome:
    from core import __version__
    from reports.swimlane import render
    from stress.replay import replay
    from stress.repro import model_hash

    got = replay(rp, variant=variant, lenient=True)
    cfg, r, hit, how, reason = got.run.config, got.run, got.hit, got.how, got.reason
    stale = []
    if rp.raw.get("tool_version") != __version__:
        stale.append(f"recorded by tdx-stress {rp.raw.get('tool_version')}, "
                     f"this is {__version__}")
    if rp.raw.get("model_hash") != model_hash():
        stale.append("recorded against another model")
    stale_text = ("; ".join(stale) + " (`tdx-stress replay` refuses such a file; record or "
                  "shrink it again)") if stale else ""
    lanes = render(r.step_log, r.threads, hit, last=30) if hit is not None else ""
    return ReplayOutcome(
        path=Path(rp.path), signature=rp.signature, variant=cfg.variant,
        own_variant=rp.config.variant, fired=hit is not None,
        step=hit.step if hit is not None else None, recorded_step=rp.step, how=how,
        reason=reason, stale=stale_text,
        others=sorted({f.signature for f in r.findings} - {rp.signature}), lanes=lanes,
        first_line=(hit.message.splitlines() or [""])[0] if hit is not None else "")


def _record_replay(item: pytest.Item, o: ReplayOutcome) -> None:
    item.user_properties.append(("tdx_stress_repro", str(o.path)))
    item.user_properties.append(("tdx_stress_replay", o.replay_command))
    item.user_properties.append(("tdx_stress_outcome", "still fires" if o.fired
                                 else f"did not reproduce: {o.reason}"))
    if o.lanes:
        item.add_report_section("call", "tdx-stress swim lanes", o.lanes)
    if not o.fired:
        _state(item.config).notes.append(f"PASSED {item.nodeid}: {o.message()}")


def _replay_variant(config: pytest.Config) -> str | None:
    st = config.stash.get(_STATE, None)
    return st.cmdline.get("variant") if st is not None else None


# ---------------------------------------------------------------------- repro items
class ReproFile(pytest.File):
    """A repro file under a repro directory: one regression test, ``<file>::replay``."""

    def collect(self) -> Iterator[pytest.Item]:
        from stress.repro import ReproError, load_repro
        try:
            head = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            head = None         # load_repro says what is wrong with it
        schema = head.get("schema") if isinstance(head, dict) else None
        if isinstance(schema, str) and schema.startswith("tdx-stress/") and \
                schema != REPRO_SCHEMA:
            return              # summary.json of a run directory: not a repro, not an error
        try:
            rp = load_repro(self.path, check_version=False)
        except ReproError as e:
            raise self.CollectError(f"tdx-stress: {e}") from None
        yield ReproItem.from_parent(self, name="replay", repro=rp)


class ReproItem(pytest.Item):
    """Replays one repro: fails while its finding fires, passes once it does not."""

    def __init__(self, *, repro: Repro, **kw: Any) -> None:
        super().__init__(**kw)
        self.repro = repro
        self.add_marker(MARKER)

    def runtest(self) -> None:
        o = _replay(self.repro, _replay_variant(self.config))
        _record_replay(self, o)
        if o.fired:
            pytest.fail(o.message(), pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"tdx-stress replay of {self.repro.signature}"


# ---------------------------------------------------------------------- the fixture
class TdxStress:
    """The ``tdx_stress`` fixture: run campaigns and replay repros from a test."""

    def __init__(self, request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> None:
        self._request = request
        self._tmp = tmp_path_factory
        self._runs = 0
        self.last_out: Path | None = None       # run directory of the last campaign

    @property
    def _item(self) -> pytest.Item:
        return self._request.node  # type: ignore[return-value]

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The effective settings of a campaign: built-in defaults < marker (module,
        class, function) < ``overrides`` < command line; the seed from the command line,
        else ``$TDX_STRESS_SEED``, else the test's ``seed=``, else the session's fresh
        one."""
        from stress.config import SEED_ENV, RunConfig
        layers: list[tuple[str, dict[str, Any]]] = []
        for m in reversed(list(self._item.iter_markers(MARKER))):
            if m.args:
                self._bad(f"the {MARKER} marker takes keyword arguments only, not "
                          f"{m.args!r}")
            layers.append(("marker", dict(m.kwargs)))
        layers.append(("run()", dict(overrides)))
        st = _state(self._item.config)
        layers.append(("command line", dict(st.cmdline)))
        known = set(RunConfig.__dataclass_fields__) | set(_FIXTURE_KEYS)
        s: dict[str, Any] = {"stop_on_first": True, "workers": 1}
        budget: dict[str, Any] | None = None
        for where, layer in layers:
            unknown = sorted(set(layer) - known)
            if unknown:
                self._bad(f"unknown tdx_stress setting {', '.join(unknown)} in {where}; "
                          f"valid: {', '.join(sorted(known))}")
            if "seeds" in layer or "duration" in layer:
                budget = {"seeds": layer.get("seeds"), "duration": layer.get("duration")}
            s.update({k: v for k, v in layer.items() if k not in ("seeds", "duration")})
        s.update(budget or {"seeds": None, "duration": DEFAULT_DURATION})
        if st.seed_text is not None or os.environ.get(SEED_ENV) is not None \
                or "seed" not in s:
            try:
                s["seed"], s["seed_source"] = st.base_seed()
            except pytest.UsageError as e:
                problem = str(e)
            else:
                problem = ""
            if problem:
                self._bad(problem)
        else:
            s["seed_source"] = "the test"
        from stress.config import ConfigError, positive_int, seconds, seed_value
        checks = {"seed": seed_value, "seeds": positive_int, "workers": positive_int,
                  "duration": seconds}
        problem = ""
        for key, check in checks.items():
            if s[key] is not None and not isinstance(s[key], str):
                try:
                    check(s[key])
                except ConfigError as e:
                    problem = f"{key}: {e}"
                    break
            elif s[key] is not None:
                problem = f"{key}: {s[key]!r} is a string; give a number"
                break
        if problem:
            self._bad(problem)
        return s

    def _bad(self, sentence: str) -> NoReturn:
        # callers fail outside their `except` blocks: the message alone, no exception chain
        pytest.fail(f"tdx-stress: {sentence}", pytrace=False)

    def _config(self, s: dict[str, Any]) -> RunConfig:
        from core.variants import UnknownVariant
        from stress.config import ConfigError, RunConfig
        fields = {k: v for k, v in s.items() if k in RunConfig.__dataclass_fields__}
        try:
            return RunConfig(**fields).validate()
        except (ConfigError, UnknownVariant) as e:
            problem = _reword(str(e), cmdline=False)
        except TypeError as e:      # depth="3": the comparison fails, not the check
            problem = f"a setting has a value of the wrong type ({e})"
        self._bad(problem)

    def _out_dir(self) -> Path:
        from stress.config import make_out_dir
        self._runs += 1
        name = re.sub(r"[^\w.-]+", "_", self._item.name)[:60]
        if self._runs > 1:
            name += f"-{self._runs}"
        st = _state(self._item.config)
        if st.out is None:
            return self._tmp.mktemp(f"tdx-stress-{name[:30]}", numbered=True).resolve()
        path = st.out / name
        n = 1
        while path.exists():
            path = st.out / f"{name}-{n}"
            n += 1
        return make_out_dir(str(path)).resolve()

    def _rerun(self, s: dict[str, Any]) -> str:
        st = _state(self._item.config)
        parts = ["pytest", self._item.nodeid, "--tdx-stress-seed", str(s["seed"])]
        for name in _RERUN_OPTIONS:
            if name in st.cmdline:
                parts += [f"--tdx-stress-{name}", f"{st.cmdline[name]}"]
        return shlex.join(parts)

    def run(self, **overrides: Any) -> dict:
        """Run one campaign; fail the test on a finding, else return the summary."""
        from reports.markdown import text_summary
        from reports.render import write_reports
        from stress.campaign import Campaign, CampaignSpec

        s = self.settings(**overrides)
        cfg = self._config(s)
        out = self._out_dir()
        self.last_out = out
        rerun = self._rerun(s)
        spec = CampaignSpec(config=cfg, base_seed=s["seed"], seeds=s["seeds"],
                            duration=s["duration"], workers=s["workers"],
                            stop_on_first=bool(s["stop_on_first"]))
        with open(out / LOG, "a", buffering=1) as log:
            def say(message: str) -> None:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
            bound = " and ".join(x for x in (s["seeds"] and f"{s['seeds']} seeds",
                                              s["duration"] and f"{s['duration']:g} s") if x)
            say(f"{self._item.nodeid}: {cfg.variant} ({cfg.mode}, {cfg.strategy}, depth "
                f"{cfg.depth}), base seed {s['seed']} ({s['seed_source']}), {bound}, "
                f"{s['workers']} worker(s) -> {out}")
            camp = Campaign(spec, out, shlex.split(rerun), log=say)
            camp.run()
            summary = camp.summary()
            say(text_summary(summary, out))
        write_reports(summary, out)     # report.md, report.html, junit.xml: as the CLI

        item = self._item
        item.user_properties.append(("tdx_stress_run_dir", str(out)))
        item.user_properties.append(("tdx_stress_base_seed", str(s["seed"])))
        for f in summary["findings"]:
            item.user_properties.append(
                ("tdx_stress_replay", f"tdx-stress replay {shlex.quote(str(out / f['repro']))}"))
        # the failure message lists the findings; the section keeps what it does not say
        item.add_report_section("call", "tdx-stress", "\n".join(
            line for line in text_summary(summary, out).splitlines()
            if not line.startswith(("FINDING ", "  replay: "))))
        if camp.interrupted:
            raise KeyboardInterrupt(f"tdx-stress campaign interrupted; partial run in {out}")
        if summary["errors"]:
            pytest.fail(f"tdx-stress internal error: {len(summary['errors'])} batch(es) "
                        f"failed, first: {summary['errors'][0]} (run directory {out})",
                        pytrace=False)
        if summary["findings"]:
            pytest.fail(self._findings_message(summary, s, out, rerun), pytrace=False)
        return summary

    @staticmethod
    def _findings_message(summary: dict, s: dict[str, Any], out: Path, rerun: str) -> str:
        n = len(summary["findings"])
        lines = [f"tdx-stress: {n} distinct finding{'s' if n > 1 else ''} in "
                 f"{summary['variant']} ({summary['mode']}, {summary['strategy']}, depth "
                 f"{summary['depth']}): {summary['runs']} runs from base seed {s['seed']} "
                 f"({s['seed_source']}), stopped by {summary['stop_reason'] or 'end'}"]
        from core.variants import get_variant
        v = get_variant(summary["variant"])
        target = v.hunt_hit
        # what a hunt is after first (it stopped the campaign), then by first seed
        for f in sorted(summary["findings"], key=lambda f: not target(f)):
            lines.append(f"  {f['signature']} (first seed {f['first_seed']}, "
                         f"{f['count']} run(s)" + (", the hunt's target" if target(f) else "")
                         + f"): {f['message']}")
            lines.append(f"    tdx-stress replay {shlex.quote(str(out / f['repro']))}")
        lines.append(f"run directory: {out}")
        lines.append(f"rerun: {rerun}")
        return "\n".join(lines)

    def replay(self, path: str | Path, *, variant: str | None = None) -> ReplayOutcome:
        """Replay a repro file (under ``variant``, else the command line's, else its own):
        fail the test if its finding still fires, else return the outcome."""
        from stress.repro import ReproError
        try:
            o = replay_repro(path, variant or _replay_variant(self._item.config))
        except ReproError as e:
            problem = str(e)
        else:
            problem = ""
        if problem:
            self._bad(problem)
        _record_replay(self._item, o)
        if o.fired:
            pytest.fail(o.message(), pytrace=False)
        return o


@pytest.fixture
def tdx_stress(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> TdxStress:
    """Run tdx-stress campaigns (``.run(**kw)``) and replay repros (``.replay(path)``);
    a finding fails the test with its ``tdx-stress replay`` command."""
    return TdxStress(request, tmp_path_factory)
