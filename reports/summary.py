"""The arithmetic of a summary, in one place: what a campaign adds up seed by seed and
what ``tdx-stress report`` adds up shard by shard go into the same :class:`Totals` and
:class:`FindingAgg`, and come out as the same keys of ``summary.json``
(``tdx-stress/summary/1``).

>>> a, b = Totals(), Totals()
>>> a.add_run({"seed": 3, "steps": 10, "rows": [0, 2] + [0] * 13, "attr_changes": 0,
...            "zero_step_arms": 1, "threads": 4, "pct_k": 40, "sync_steps": 50,
...            "busy": {"epoch": 2}})
>>> b.add_run({"seed": 4, "steps": 5, "rows": [0, 1] + [0] * 13, "attr_changes": 1,
...            "zero_step_arms": 0, "threads": 4, "pct_k": 0, "sync_steps": 0,
...            "busy": {"epoch": 1, "accept": 1}})
>>> a.add(b)
>>> s = a.to_summary(depth=3)
>>> s["runs"], s["steps"], s["rows"]["1"]["hits"], s["busy"], s["seeds"]
(2, 15, 3, {'accept': 1, 'epoch': 3}, [[3, 4]])
>>> s["pct"]["runs"], s["pct"]["runs_past_k"]
(1, 1)
>>> Totals.from_summary(s).to_summary(depth=3) == s
True
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.oracle import ROW_TEXT
from core.tdx_module import PHASES

from .rundir import ReportError

ROWS = 15       # rows 1..14 of seed 002's table; index 0 unused


def _ranges(xs: list[int]) -> list[list[int]]:
    """Sorted seeds as [first, last] runs: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    out: list[list[int]] = []
    for x in xs:
        if out and out[-1][1] == x - 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return out


@dataclass
class FindingAgg:
    """One finding signature over a campaign (or merged shards): how often it fired,
    and its first seed, whose repro is kept."""
    signature: str
    kind: str
    path: str | None
    row: int | None
    message: str
    count: int = 0               # seeds it fired in
    occurrences: int = 0
    first_seed: int = -1
    first_elapsed_s: float = 0.0
    repro: str = ""
    where: str = ""              # the kernel/TDX function (and SEAMCALL, error) it came from
    # what the first seed's run reported after this finding (core.findings: the first
    # bug is the finding, what a bugged VM does next is its consequence)
    consequences: list[dict] = field(default_factory=list)
    consequences_total: int = 0
    dir: str = ""                # merging: the run directory its repro is in

    def to_dict(self) -> dict:
        return {"signature": self.signature, "kind": self.kind, "path": self.path,
                "row": self.row, "count": self.count, "occurrences": self.occurrences,
                "first_seed": self.first_seed, "first_elapsed_s": round(self.first_elapsed_s, 3),
                "repro": self.repro, "message": self.message, "where": self.where,
                "consequences": self.consequences,
                "consequences_total": self.consequences_total}

    @classmethod
    def from_dict(cls, d: dict, dir: str = "") -> "FindingAgg":
        """A finding of a ``summary.json`` (older ones lack the later keys)."""
        return cls(d["signature"], d["kind"], d.get("path"), d.get("row"), d["message"],
                   count=d["count"], occurrences=d.get("occurrences", 0),
                   first_seed=d["first_seed"], first_elapsed_s=d["first_elapsed_s"],
                   repro=d.get("repro", ""), where=d.get("where", ""),
                   consequences=d.get("consequences", []),
                   consequences_total=d.get("consequences_total", 0), dir=dir)

    def add(self, other: "FindingAgg") -> bool:
        """Another shard's count of the same signature; returns whether the other's first
        seed is earlier (then its repro and consequences are kept)."""
        self.count += other.count
        self.occurrences += other.occurrences
        self.first_elapsed_s = min(self.first_elapsed_s, other.first_elapsed_s)
        if other.first_seed < self.first_seed:
            self.first_seed, self.repro, self.dir = other.first_seed, other.repro, other.dir
            self.consequences = other.consequences
            self.consequences_total = other.consequences_total
            return True
        return False


@dataclass
class Totals:
    """The counters of a summary: per run, then per shard, added up the same way."""
    runs: int = 0
    steps: int = 0
    rows: list[int] = field(default_factory=lambda: [0] * ROWS)
    bug_rows: list[int] = field(default_factory=lambda: [0] * ROWS)
    attr_changes: int = 0
    busy: dict[str, int] = field(default_factory=dict)
    zero_step_arms: int = 0
    # runs whose VM KVM killed without a bug (a Linux TD touching memory the VMM took),
    # and the guests' MapGPA conversions
    vm_killed: int = 0
    map_gpa: int = 0
    cut_short: int = 0          # runs the campaign's time ran out in
    seeds_done: list[int] = field(default_factory=list)
    # what the PCT bound of the report needs: the most threads a run had, PCT's k, and
    # how many runs took more SEAMCALL windows than k (their tail got no change point)
    threads_max: int = 0
    pct_k_max: int = 0
    pct_runs: int = 0           # runs PCT scheduled (all of them with --strategy pct)
    sync_steps_sum: float = 0
    sync_steps_max: int = 0
    runs_past_k: int = 0
    # --strategy bounded: workloads walked, how many completely, the schedules run to
    # the end and pruned (last bound's walk), executions of all walks, the bound
    bounded_workloads: int = 0
    bounded_complete: int = 0
    bounded_schedules: int = 0
    bounded_pruned: int = 0
    bounded_executions: int = 0
    bounded_preemptions: int = 0
    seamcalls: dict[str, dict[str, int]] = field(
        default_factory=lambda: {p: {} for p in PHASES})
    rows_by_phase: dict[str, list[int]] = field(
        default_factory=lambda: {p: [0] * ROWS for p in PHASES})

    def add_run(self, s: dict) -> None:
        """One seed's result (``stress.campaign.seed_summary``)."""
        one = Totals(runs=1, steps=s["steps"], rows=list(s["rows"]),
                     attr_changes=s["attr_changes"], busy=dict(s["busy"]),
                     zero_step_arms=s["zero_step_arms"], vm_killed=int(bool(s.get("vm_killed"))),
                     map_gpa=s.get("map_gpa", 0), seeds_done=[s["seed"]],
                     cut_short=int(bool(s.get("cut_short"))),
                     threads_max=s["threads"], seamcalls=s.get("seamcalls", {}),
                     rows_by_phase=s.get("rows_by_phase", {}))
        if s["pct_k"]:
            one.pct_k_max, one.pct_runs = s["pct_k"], 1
            one.sync_steps_sum = one.sync_steps_max = s["sync_steps"]
            one.runs_past_k = int(s["sync_steps"] > s["pct_k"])
        b = s.get("bounded")
        if b:
            one.bounded_workloads, one.bounded_complete = 1, int(b["complete"])
            one.bounded_schedules, one.bounded_pruned = b["schedules"], b["pruned"]
            one.bounded_executions = b["executions_total"]
            one.bounded_preemptions = b["preemptions"]
        self.add(one)

    def add(self, o: "Totals") -> None:
        """Another run's or shard's totals."""
        self.runs += o.runs
        self.steps += o.steps
        for i in range(ROWS):
            self.rows[i] += o.rows[i]
            self.bug_rows[i] += o.bug_rows[i]
        self.attr_changes += o.attr_changes
        self.zero_step_arms += o.zero_step_arms
        self.vm_killed += o.vm_killed
        self.map_gpa += o.map_gpa
        self.cut_short += o.cut_short
        self.seeds_done += o.seeds_done
        self.threads_max = max(self.threads_max, o.threads_max)
        self.pct_k_max = max(self.pct_k_max, o.pct_k_max)
        self.pct_runs += o.pct_runs
        self.sync_steps_sum += o.sync_steps_sum
        self.sync_steps_max = max(self.sync_steps_max, o.sync_steps_max)
        self.runs_past_k += o.runs_past_k
        self.bounded_workloads += o.bounded_workloads
        self.bounded_complete += o.bounded_complete
        self.bounded_schedules += o.bounded_schedules
        self.bounded_pruned += o.bounded_pruned
        self.bounded_executions += o.bounded_executions
        self.bounded_preemptions = max(self.bounded_preemptions, o.bounded_preemptions)
        for k, v in o.busy.items():
            self.busy[k] = self.busy.get(k, 0) + v
        for phase, calls in o.seamcalls.items():
            into = self.seamcalls.setdefault(phase, {})
            for name, n in calls.items():
                into[name] = into.get(name, 0) + n
        for phase, rows in o.rows_by_phase.items():
            into_rows = self.rows_by_phase.setdefault(phase, [0] * ROWS)
            for i in range(ROWS):
                into_rows[i] += rows[i]

    def to_summary(self, depth: int) -> dict:
        """The keys of ``summary.json`` that these totals are (``depth``: PCT's)."""
        return {
            "runs": self.runs, "steps": self.steps,
            "rows": {str(i): {"hits": self.rows[i], "bug_hits": self.bug_rows[i],
                              "old": ROW_TEXT[i][0], "new": ROW_TEXT[i][1],
                              "shared": ROW_TEXT[i][2]} for i in range(1, ROWS)},
            "attr_changes": self.attr_changes,
            # SEAMCALLs (and the guest's TDCALLs) by TD phase, and rows by phase: the
            # first thing to check when a result looks odd
            "seamcalls": {p: dict(sorted(c.items())) for p, c in self.seamcalls.items()},
            "rows_by_phase": {p: {str(i): r[i] for i in range(1, ROWS)}
                              for p, r in self.rows_by_phase.items()},
            "busy": dict(sorted(self.busy.items())),
            "zero_step_arms": self.zero_step_arms,
            "vm_killed_runs": self.vm_killed, "map_gpa_exits": self.map_gpa,
            "cut_short_runs": self.cut_short,
            "seeds": _ranges(sorted(self.seeds_done)),
            "threads_max": self.threads_max,
            "pct": ({"k": self.pct_k_max, "depth": depth, "runs": self.pct_runs,
                     "sync_steps_mean": round(self.sync_steps_sum / max(self.pct_runs, 1), 1),
                     "sync_steps_max": self.sync_steps_max, "runs_past_k": self.runs_past_k}
                    if self.pct_k_max else None),
            "bounded": ({"preemptions": self.bounded_preemptions,
                         "workloads": self.bounded_workloads,
                         "complete": self.bounded_complete,
                         "schedules": self.bounded_schedules, "pruned": self.bounded_pruned,
                         "executions": self.bounded_executions}
                        if self.bounded_workloads else None),
        }

    @classmethod
    def from_summary(cls, s: dict) -> "Totals":
        """The totals a ``summary.json`` holds (older ones lack the later keys)."""
        rows = [0] * ROWS
        bug_rows = [0] * ROWS
        for i, r in s["rows"].items():
            rows[int(i)], bug_rows[int(i)] = r["hits"], r["bug_hits"]
        t = cls(runs=s["runs"], steps=s["steps"], rows=rows, bug_rows=bug_rows,
                attr_changes=s.get("attr_changes", 0), busy=dict(s["busy"]),
                zero_step_arms=s.get("zero_step_arms", 0),
                vm_killed=s.get("vm_killed_runs", 0), map_gpa=s.get("map_gpa_exits", 0),
                cut_short=s.get("cut_short_runs", 0),
                seeds_done=[x for a, b in s.get("seeds", []) for x in range(a, b + 1)],
                threads_max=s.get("threads_max", 0),
                seamcalls={p: dict(c) for p, c in s.get("seamcalls", {}).items()},
                rows_by_phase={p: [r.get(str(i), 0) for i in range(ROWS)]
                               for p, r in s.get("rows_by_phase", {}).items()})
        pct = s.get("pct")
        if pct:
            t.pct_k_max, t.pct_runs = pct["k"], pct.get("runs", s["runs"])
            t.sync_steps_sum = pct["sync_steps_mean"] * t.pct_runs
            t.sync_steps_max, t.runs_past_k = pct["sync_steps_max"], pct["runs_past_k"]
        b = s.get("bounded")
        if b:
            t.bounded_workloads, t.bounded_complete = b["workloads"], b["complete"]
            t.bounded_schedules, t.bounded_pruned = b["schedules"], b["pruned"]
            t.bounded_executions, t.bounded_preemptions = b["executions"], b["preemptions"]
        return t


def merge_summaries(summaries: list[dict]) -> dict:
    """Shards of one campaign into one summary: their :class:`~reports.summary.Totals`
    and findings added up as a campaign adds up its runs."""
    variants = {s["variant"] for s in summaries}
    if len(variants) > 1:
        raise ReportError(f"cannot merge runs of different variants: {sorted(variants)}")
    _check_disjoint(summaries)
    m = json.loads(json.dumps({k: v for k, v in summaries[0].items() if k != "_dir"}))
    m["shard"] = "merged " + ", ".join(s.get("shard", "?") for s in summaries)
    totals = Totals()
    for s in summaries:
        totals.add(Totals.from_summary(s))
    depth = next((s["pct"]["depth"] for s in summaries if s.get("pct")), m.get("depth", 0))
    m.update(totals.to_summary(depth=depth))
    m["elapsed_s"] = max(s["elapsed_s"] for s in summaries)
    m["interrupted"] = any(s["interrupted"] for s in summaries)
    by_sig: dict[str, FindingAgg] = {}
    for s in summaries:
        for d in s["findings"]:
            f = FindingAgg.from_dict(d, dir=s["_dir"])
            if f.signature in by_sig:
                by_sig[f.signature].add(f)
            else:
                by_sig[f.signature] = f
    m["findings"] = [dict(f.to_dict(), _dir=f.dir)
                     for f in sorted(by_sig.values(), key=lambda f: f.first_seed)]
    # shards run side by side, each with its own clock: keep each one's timeline
    m["timeline"] = []
    m["shard_timelines"] = {s.get("shard", str(i)): s.get("timeline", [])
                            for i, s in enumerate(summaries)}
    m["resources"] = {"peak_rss_mb": max(s["resources"]["peak_rss_mb"] for s in summaries),
                      "cpu_s": sum(s["resources"]["cpu_s"] for s in summaries)}
    return m


def _check_disjoint(summaries: list[dict]) -> None:
    """Shards merge only once each: the same directory twice, or two that ran a seed in
    common, would count runs and findings twice."""
    dirs: dict[str, str] = {}
    for s in summaries:
        key = str(s.get("_dir", ""))
        key = str(Path(key).resolve()) if key else key
        if key and key in dirs:
            raise ReportError(f"{s['_dir']} is given twice; each shard merges once")
        dirs[key] = s.get("_dir", "?")
    spans = sorted((a, b, str(s.get("_dir", "?"))) for s in summaries
                   for a, b in s.get("seeds", []))
    end, owner = -1, ""
    for a, b, d in spans:
        if a <= end and d != owner:
            raise ReportError(f"{owner} and {d} both ran seed {a}; shards of one campaign "
                              f"run disjoint seeds")
        if b > end:
            end, owner = b, d
