"""Shrinking: from a repro, a smaller one with the same finding signature.

A candidate is an edited (workload, schedule) pair, run with lenient replay so that any
edit is a valid schedule (a decision that cannot be followed keeps the running thread);
it is kept when the same signature fires and the size goes down.  Size is compared as
(preemptions, threads, operations, steps): fewer context switches first, because they are
what a reader has to follow.  Passes, repeated until none helps or the budget is spent:

1. delete context switches: drop runs of the schedule, in halving chunks (ddmin-style);
2. drop whole threads (their decisions go, later thread indices shift down);
3. drop single zapper operations and guest instructions.

The kept candidate's *recorded* schedule (what actually ran) is what the new repro
holds, so it replays exactly, not leniently.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .config import RunConfig
from .repro import Repro, make_repro, rle
from .runner import RunResult, run_seed
from .workload import Workload


@dataclass
class Size:
    preemptions: int
    threads: int
    operations: int
    steps: int

    def key(self) -> tuple[int, int, int, int]:
        return (self.preemptions, self.threads, self.operations, self.steps)

    def as_dict(self) -> dict:
        return {"preemptions": self.preemptions, "threads": self.threads,
                "operations": self.operations, "steps": self.steps}


def size_of(r: RunResult, w: Workload) -> Size:
    return Size(r.preemptions, len(w.programs) + len(w.zaps),
                sum(map(len, w.programs)) + sum(map(len, w.zaps)) + len(w.initial), r.steps)


class Shrinker:
    def __init__(self, repro: Repro, *, max_runs: int = 400) -> None:
        self.repro = repro
        self.signature = repro.signature
        self.cfg = repro.config.with_(mode="controlled")
        self.seed = repro.seed
        self.max_runs = max_runs
        self.runs = 0

    def _try(self, w: Workload, schedule: list[int]) -> RunResult | None:
        self.runs += 1
        cfg = self.cfg.with_(vcpus=max(1, len(w.programs)), zappers=len(w.zaps))
        r = run_seed(cfg, self.seed, schedule=schedule, workload=w, lenient=True,
                     stop_on=lambda f: f.signature == self.signature, record_steps=True)
        if any(f.signature == self.signature for f in r.findings):
            return r
        return None

    def shrink(self) -> tuple[dict, Size, Size]:
        rp = self.repro
        if rp.trace is not None:
            start = run_seed(self.cfg, self.seed, trace=rp.trace, workload=rp.workload,
                             stop_on=lambda f: f.signature == self.signature)
        else:
            start = run_seed(self.cfg, self.seed, schedule=rp.schedule, workload=rp.workload,
                             stop_on=lambda f: f.signature == self.signature)
        if not any(f.signature == self.signature for f in start.findings):
            raise ValueError("the repro does not reproduce its finding; nothing to shrink")
        w, best = rp.workload, start
        before = size_of(start, w)
        improved = True
        while improved and self.runs < self.max_runs:
            improved = False
            for step in (self._threads, self._operations, self._switches):
                got = step(w, best)
                if got is not None:
                    w, best = got
                    improved = True
        after = size_of(best, w)
        hit = next(f for f in best.findings if f.signature == self.signature)
        cfg = self.cfg.with_(vcpus=max(1, len(w.programs)), zappers=len(w.zaps))
        out = make_repro(cfg, self.seed, w, hit, schedule=best.schedule, threads=best.threads,
                         steps=best.steps, preemptions=best.preemptions,
                         shrunk_from=before.as_dict())
        return out, before, after

    def _better(self, r: RunResult | None, w: Workload, best: RunResult,
                bw: Workload) -> bool:
        return r is not None and size_of(r, w).key() < size_of(best, bw).key()

    def _switches(self, w: Workload, best: RunResult) -> tuple[Workload, RunResult] | None:
        """Delete runs of the schedule (each deletion removes context switches)."""
        found = None
        runs = rle(best.schedule)
        chunk = max(1, len(runs) // 2)
        while chunk >= 1 and self.runs < self.max_runs:
            i = 0
            progressed = False
            while i < len(runs) and self.runs < self.max_runs:
                cand = runs[:i] + runs[i + chunk:]
                sched = [t for t, n in cand for _ in range(n)]
                r = self._try(w, sched)
                if self._better(r, w, best, w):
                    assert r is not None
                    best, found = r, (w, r)
                    runs = rle(r.schedule)
                    progressed = True
                else:
                    i += chunk
            if not progressed:
                chunk //= 2
        return found

    def _threads(self, w: Workload, best: RunResult) -> tuple[Workload, RunResult] | None:
        nv = len(w.programs)
        for t in reversed(range(nv + len(w.zaps))):
            if t < nv:
                if nv == 1:
                    continue
                cand = replace(w, programs=w.programs[:t] + w.programs[t + 1:])
            else:
                z = t - nv
                cand = replace(w, zaps=w.zaps[:z] + w.zaps[z + 1:])
            sched = [i - (i > t) for i in best.schedule if i != t]
            r = self._try(cand, sched)
            if self._better(r, cand, best, w):
                assert r is not None
                return cand, r
            if self.runs >= self.max_runs:
                break
        return None

    def _operations(self, w: Workload, best: RunResult) -> tuple[Workload, RunResult] | None:
        """Drop zapper operations, guest instructions and initial pages, in halving
        chunks over all of them at once (ddmin)."""
        found = None
        items = self._items(w)
        chunk = max(1, len(items) // 2)
        while chunk >= 1 and self.runs < self.max_runs:
            i = 0
            progressed = False
            while i < len(items) and self.runs < self.max_runs:
                drop = set(items[i:i + chunk])
                cand = self._without(w, drop)
                r = self._try(cand, best.schedule)
                if self._better(r, cand, best, w):
                    assert r is not None
                    w, best, found = cand, r, (cand, r)
                    items = self._items(w)
                    progressed = True
                else:
                    i += chunk
            if not progressed:
                chunk //= 2
        return found

    @staticmethod
    def _items(w: Workload) -> list[tuple[str, int, int]]:
        out = [("z", zi, k) for zi, z in enumerate(w.zaps) for k in range(len(z))]
        out += [("p", pi, k) for pi, p in enumerate(w.programs) for k in range(len(p))]
        out += [("i", 0, k) for k in range(len(w.initial))]
        return out

    @staticmethod
    def _without(w: Workload, drop: set[tuple[str, int, int]]) -> Workload:
        zaps = tuple(tuple(op for k, op in enumerate(z) if ("z", zi, k) not in drop)
                     for zi, z in enumerate(w.zaps))
        progs = tuple(tuple(ins for k, ins in enumerate(p) if ("p", pi, k) not in drop)
                      for pi, p in enumerate(w.programs))
        initial = tuple(g for k, g in enumerate(w.initial) if ("i", 0, k) not in drop)
        return Workload(initial, progs, zaps)


def shrink_repro(repro: Repro, max_runs: int = 400) -> tuple[dict, Size, Size, int]:
    s = Shrinker(repro, max_runs=max_runs)
    out, before, after = s.shrink()
    return out, before, after, s.runs


__all__ = ["shrink_repro", "Shrinker", "Size", "RunConfig"]
