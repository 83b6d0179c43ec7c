"""Shrinking: from a repro, a smaller one with the same finding signature.

A candidate is an edited (workload, schedule) pair, run with lenient replay so that any
edit is a valid schedule (a decision that cannot be followed keeps the running thread);
it is kept when the same signature fires, neither its preemptions nor its steps grow,
and (threads, operations, preemptions, steps) goes down: a reader follows threads and
operations first, and nothing a reader follows may get longer.  Passes, repeated until
none helps or the budget is spent:

1. truncate: the shortest schedule prefix that, run on without preemption, still fires;
2. drop whole threads (their decisions go, later thread indices shift down);
3. drop zapper operations, guest instructions and initial pages (ddmin chunks);
4. delete context switches: drop runs of the schedule, in halving chunks (ddmin);
5. when none of these helps any more: re-search, i.e. fresh PCT and random schedules of
   the (now small) workload until one fires with fewer preemptions and steps, and go
   round again from it.  Edits keep a schedule's shape; a race that needs a long setup
   (zero-step: six EPT violations in one memslot window) is stuck in that shape, while
   on a small workload a fresh schedule finds a shorter way in (hunt-a1's first find:
   1 in about 700 fresh schedules fired in about half the steps).

The kept candidate's *recorded* schedule (what actually ran) is what the new repro
holds, so it replays exactly, not leniently.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable

from .config import RunConfig
from .controlled import rle
from .replay import replay
from .repro import Repro, Size, make_repro, repro_size
from .runner import RunResult, run_seed
from .strategies import (
    PCTStrategy,
    RandomStrategy,
    RunReplayStrategy,
    Strategy,
    is_sync,
    pct_horizon,
)
from .workload import Workload

RESEARCH = 800     # fresh schedules per re-search pass


def size_of(r: RunResult, w: Workload) -> Size:
    return repro_size(w, r.steps, r.preemptions)


class Shrinker:
    def __init__(self, repro: Repro, *, max_runs: int = 3000, search: int = 4,
                 check: Callable[[], None] | None = None) -> None:
        """``check`` is called before every run: the command line's raises when a signal
        came that Python swallowed (stress.cli._raise_if_signalled)."""
        self.check = check
        self.search = search
        self.best_steps = 0
        self.repro = repro
        self.signature = repro.signature
        self.cfg = repro.config.with_(mode="controlled")
        self.seed = repro.seed
        self.max_runs = max_runs
        self.runs = 0

    def _try(self, w: Workload, schedule: list[int], search: int = 0) -> RunResult | None:
        # a candidate that has not fired by the best one's last step cannot be kept
        # (steps may not grow), so it is cut there: most candidates fail, and fast
        limit = self.best_steps + 1 if self.best_steps else None
        """Does ``w`` still fire the signature: first under ``schedule`` (lenient), then
        under up to ``search`` fresh random schedules (a smaller workload makes the bug
        denser, and an edited schedule often no longer means what it did)."""
        cfg = self.cfg.with_(vcpus=max(1, len(w.programs)), zappers=len(w.zaps))
        stop = lambda f: f.signature == self.signature  # noqa: E731
        for k in range(1 + search):
            if self.runs >= self.max_runs:
                return None
            if self.check is not None:
                self.check()
            self.runs += 1
            # fresh schedules, PCT (few preemptions by construction) and random in turn
            rng = random.Random(f"tdx-stress:shrink:{self.seed}:{self.runs}")
            horizon = pct_horizon(sum(map(len, w.zaps)) + sum(map(len, w.programs)))
            strategy: Strategy | None = RunReplayStrategy(schedule) if k == 0 else None
            if k % 2:
                strategy = PCTStrategy(rng, depth=2 + k // 2, horizon=horizon, sync=is_sync)
            elif k:
                strategy = RandomStrategy(rng)
            r = run_seed(cfg, self.seed, schedule=schedule, workload=w, lenient=True,
                         strategy=strategy, stop_on=stop, record_steps=True,
                         step_limit=limit)
            if any(f.signature == self.signature for f in r.findings):
                return r
        return None

    def shrink(self) -> tuple[dict, Size, Size]:
        rp = self.repro
        first = replay(rp)
        if not first.fired:
            raise ValueError("the repro does not reproduce its finding; nothing to shrink")
        start = first.run
        w, best = rp.workload, start
        before = size_of(start, w)
        self.best_steps = start.steps
        improved = True
        while improved and self.runs < self.max_runs:
            improved = False
            for step in (self._truncate, self._threads, self._operations, self._switches):
                got = step(w, best)
                if got is not None:
                    w, best = got
                    self.best_steps = best.steps
                    improved = True
            if not improved:
                got = self._research(w, best)
                if got is not None:
                    w, best = got
                    self.best_steps = best.steps
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
        if r is None:
            return False
        new, old = size_of(r, w), size_of(best, bw)
        return (new.preemptions <= old.preemptions and new.steps <= old.steps
                and new.key() < old.key())

    def _research(self, w: Workload, best: RunResult) -> tuple[Workload, RunResult] | None:
        """Fresh schedules for the workload as it is now, until one is better (at most
        RESEARCH runs a time: a race that is already small rarely gets smaller)."""
        cfg = self.cfg.with_(vcpus=max(1, len(w.programs)), zappers=len(w.zaps))
        stop = lambda f: f.signature == self.signature  # noqa: E731
        horizon = pct_horizon(sum(map(len, w.zaps)) + sum(map(len, w.programs)))
        end = min(self.max_runs, self.runs + RESEARCH)
        while self.runs < end:
            self.runs += 1
            rng = random.Random(f"tdx-stress:research:{self.seed}:{self.runs}")
            # depths 1..4 in turn, every fifth a uniform random walk
            strategy: Strategy = (RandomStrategy(rng) if self.runs % 5 == 0 else
                                  PCTStrategy(rng, depth=1 + self.runs % 4, horizon=horizon,
                                              sync=is_sync))
            r = run_seed(cfg, self.seed, workload=w, strategy=strategy, stop_on=stop,
                         record_steps=True, step_limit=self.best_steps + 1)
            if any(f.signature == self.signature for f in r.findings) and \
                    self._better(r, w, best, w):
                return w, r
        return None

    def _truncate(self, w: Workload, best: RunResult) -> tuple[Workload, RunResult] | None:
        """Keep a prefix of the schedule and let the rest run without preemption (lenient
        replay keeps the running thread once the schedule ends): the shortest prefix, at
        a switch boundary, that still fires.  Binary search, then the result is kept
        only if it is smaller."""
        sched = best.schedule
        cuts = [i for i in range(1, len(sched)) if sched[i] != sched[i - 1]]
        if not cuts:
            return None
        lo, hi = 0, len(cuts) - 1
        found: tuple[Workload, RunResult] | None = None
        while lo <= hi and self.runs < self.max_runs:
            mid = (lo + hi) // 2
            r = self._try(w, sched[:cuts[mid]])
            if self._better(r, w, best, w):
                assert r is not None
                found = (w, r)
                hi = mid - 1
            else:
                lo = mid + 1
        return found

    def _ddmin(self, items: list, w: Workload, best: RunResult,
               candidate: Callable[[Workload, RunResult, list], tuple[Workload, list[int]]],
               refresh: Callable[[Workload, RunResult], list], search: int
               ) -> tuple[Workload, RunResult] | None:
        """Delta debugging: drop chunks of ``items``, halving the chunk size when no chunk
        can go.  ``candidate(w, best, kept)`` gives the (workload, schedule) to try;
        ``refresh(w, result)`` gives the items of an accepted candidate."""
        found = None
        chunk = max(1, len(items) // 2)
        while chunk >= 1 and self.runs < self.max_runs:
            i = 0
            progressed = False
            while i < len(items) and self.runs < self.max_runs:
                cand, sched = candidate(w, best, items[:i] + items[i + chunk:])
                r = self._try(cand, sched, search=search if chunk > 1 else 0)
                if self._better(r, cand, best, w):
                    assert r is not None
                    w, best = cand, r
                    found = (w, r)
                    items = refresh(w, r)
                    progressed = True
                else:
                    i += chunk
            if not progressed:
                chunk //= 2
        return found

    def _switches(self, w: Workload, best: RunResult) -> tuple[Workload, RunResult] | None:
        """Delete runs of the schedule (each deletion removes context switches)."""
        return self._ddmin(
            rle(best.schedule), w, best,
            lambda w, _best, kept: (w, [t for t, n in kept for _ in range(n)]),
            lambda _w, r: rle(r.schedule), search=0)

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
            r = self._try(cand, sched, search=3 * self.search)
            if self._better(r, cand, best, w):
                assert r is not None
                return cand, r
            if self.runs >= self.max_runs:
                break
        return None

    def _operations(self, w: Workload, best: RunResult) -> tuple[Workload, RunResult] | None:
        """Drop zapper operations, guest instructions and initial pages, in halving
        chunks over all of them at once (ddmin).  The decisions the dropped items took
        go with them (:func:`aligned`), so every other thread still meets the others
        where it did: a vCPU's six zero-step rounds against a memslot window survive
        the loss of the instructions before them."""
        def candidate(w: Workload, best: RunResult, kept: list) -> tuple[Workload, list[int]]:
            drop = set(self._items(w)) - set(kept)
            return self._without(w, drop), aligned(best, len(w.programs), drop)
        return self._ddmin(self._items(w), w, best, candidate,
                           lambda w, _r: self._items(w), search=self.search)

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


def aligned(r: RunResult, vcpus: int, drop: set[tuple[str, int, int]]) -> list[int]:
    """``r``'s schedule without the decisions that served a dropped workload item.

    Thread t < ``vcpus`` is vCPU t (its items are guest instructions, ``("p", t, rip)``);
    the others are zappers (``("z", t - vcpus, k)``).  Each decision records the item its
    thread was working on (``ThreadCtx.item``); without that record (a run not recorded
    step by step) the schedule is returned unchanged."""
    if len(r.decision_items) != len(r.schedule):
        return list(r.schedule)

    def item(t: int, k: int) -> tuple[str, int, int]:
        return ("p", t, k) if t < vcpus else ("z", t - vcpus, k)
    return [t for t, k in zip(r.schedule, r.decision_items, strict=True)
            if k < 0 or item(t, k) not in drop]


def shrink_repro(repro: Repro, max_runs: int = 3000,
                 check: Callable[[], None] | None = None) -> tuple[dict, Size, Size, int]:
    s = Shrinker(repro, max_runs=max_runs, check=check)
    out, before, after = s.shrink()
    return out, before, after, s.runs


__all__ = ["shrink_repro", "Shrinker", "Size", "RunConfig"]
