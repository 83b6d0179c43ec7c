"""``tdx-stress table``: seed 002's 14-row table as observed, beside the expected one.

Every variant runs for a bounded time, in worker processes, its seeds alternating the
pct and random strategies: as-designed variants for the whole time, hunt variants until
the bug they are after fires (at most six times as long).  Observed per row:

* *mirror allowed*: the row happened on the mirror root in an as-designed variant
  (hugepage-rfc is the table's baseline, so "Y" means seen there);
* *hittable*: the ``KVM_BUG_ON`` fired with that row, and in which variant; for row 11,
  the ``TDX_BUG_ON`` of path (c); for rows 5, 6 and 10, the model's own handling of a
  forced transition (WARN, BUG or none).

Patches given with ``--variant`` run beside the built-in variants: one that plants no
bug counts as as-designed, so a row it opens to the mirror root shows as a disagreement
(the table then says which row of seed 002 the patch changes); one with ``FINDS`` runs
as a hunt does, and a ``KVM_BUG_ON`` it fires in a row marked not hittable is one too.

A disagreement is: a row marked not allowed seen in an as-designed variant; a row
marked allowed never seen; a row marked hittable whose bug never fired in its hunt; a
``KVM_BUG_ON`` in a row marked not hittable.  Rows 6 and 10 count only PFN-changing
transitions; attribute-only changes of a present SPTE are counted apart.
"""
from __future__ import annotations

import multiprocessing
import time

from core.oracle import EXPECTED, ROW_TEXT, force_transition
from core.variants import HUNT_OF_ROW, VARIANTS, get_variant

from .campaign import start_resource_tracker, worker_pool
from .config import RunConfig
from .runner import hunt_stop, run_seed, with_learned_pct_ks

FORCED_ROWS = (5, 6, 10)


def explore(variant: str, budget: float, base_seed: int) -> dict:
    """Worker: run seeds of ``variant`` for ``budget`` seconds (a hunt stops early once
    its bug fired).  Returns row hits and the bug findings by (kind, row, path)."""
    v = get_variant(variant)
    stop = hunt_stop(variant) if v.hunt else None
    rows = [0] * 15
    attr = 0
    bugs: dict[str, int] = {}
    found_at = None
    runs = 0
    # PCT's k is learned before the clock starts: calibration is not the variant's time
    cfg = with_learned_pct_ks(RunConfig(variant=variant, strategy="portfolio"))
    t0 = time.monotonic()
    seed = base_seed
    while time.monotonic() - t0 < budget:
        r = run_seed(cfg, seed, stop_on=stop, record_steps=False)
        runs += 1
        seed += 1
        for i in range(15):
            rows[i] += r.rows[i]
        attr += r.attr_changes
        for f in r.findings:
            if f.kind in ("KVM_BUG_ON", "TDX_BUG_ON", "BUG"):
                key = f"{f.kind}|{f.row}|{f.path}"
                bugs[key] = bugs.get(key, 0) + 1
                # the first bug is the finding: a KVM_BUG_ON that followed it in the
                # same SPTE change (silent in the kernel) still fired on that row
                for c in f.consequences:
                    if c["same_change"] and c["kind"] in ("KVM_BUG_ON", "TDX_BUG_ON"):
                        key = f"{c['kind']}|{f.row}|{c['path']}"
                        bugs[key] = bugs.get(key, 0) + 1
        if stop is not None and any(stop(f) for f in r.findings):
            found_at = round(time.monotonic() - t0, 2)
            break
    return {"variant": variant, "runs": runs, "rows": rows, "attr_changes": attr,
            "bugs": bugs, "found_at": found_at, "seconds": round(time.monotonic() - t0, 2)}


def observe(duration: float, workers: int = 2, base_seed: int = 0,
            patches: tuple[str, ...] = ()) -> dict:
    """Explore every built-in variant and the given ``patches`` (variant names, patch
    files among them) in worker processes."""
    names = list(VARIANTS) + [p for p in patches if p not in VARIANTS]
    ctx = multiprocessing.get_context("spawn")
    start_resource_tracker()            # a hang-up must not kill it (see there)
    pool = worker_pool(ctx, workers)      # the parent terminates them to stop
    try:
        futs = {name: pool.submit(explore, name,
                                  duration if get_variant(name).as_designed else 6 * duration,
                                  base_seed)
                for name in names}
        per = {name: f.result() for name, f in futs.items()}
    except BaseException:
        # Ctrl-C, SIGTERM, SIGHUP: the workers explore for many seconds more; stop them
        # now rather than wait for them
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    forced = {row: force_transition(row) for row in FORCED_ROWS}
    return {"variants": per, "forced": forced}


def render_table(obs: dict) -> tuple[str, list[str]]:
    per = obs["variants"]
    forced = obs["forced"]
    disagreements: list[str] = []
    head = ("| # | old | new | shared | allowed: expected | observed | "
            "KVM_BUG_ON hittable: expected | observed | |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for row in range(1, 15):
        old, new, shared = ROW_TEXT[row]
        exp_allowed, exp_hit = EXPECTED[row]
        seen_in = [n for n in per if get_variant(n).as_designed and per[n]["rows"][row]]
        obs_allowed = "Y" if per["hugepage-rfc"]["rows"][row] else "N"
        if seen_in and obs_allowed == "N":
            obs_allowed = "Y (" + ", ".join(seen_in) + ")"
        bad = []
        if exp_allowed == "N" and seen_in:
            bad.append(f"row {row} is not allowed on the mirror but was seen in "
                       f"{', '.join(seen_in)}")
        if exp_allowed == "Y" and not per["hugepage-rfc"]["rows"][row]:
            bad.append(f"row {row} is allowed but was never seen in hugepage-rfc")
        kvm_bugs = sorted({name for name, p in per.items()
                           for key in p["bugs"] if key.startswith(f"KVM_BUG_ON|{row}|")})
        if row in FORCED_ROWS:
            # no path makes this transition: this is a self-test of the kernel's own
            # check in handle_changed_spte(), handed the transition directly
            kinds = forced[row]
            obs_hit = ("self-test: " + "+".join(kinds)) if kinds else "self-test: none"
        elif kvm_bugs:
            obs_hit = "Y (" + ", ".join(kvm_bugs) + ")"
        else:
            obs_hit = "N"
        if row == 11:
            tdx = [name for name, p in per.items()
                   if any(k.startswith("TDX_BUG_ON|11|c") for k in p["bugs"])]
            obs_hit += " (TDX_BUG_ON in " + (", ".join(tdx) or "none") + ")"
            if "hunt-c" not in tdx:
                bad.append("path (c): the TDX_BUG_ON never fired in hunt-c")
        hittable = exp_hit.startswith("Y")
        if hittable and HUNT_OF_ROW[row] not in kvm_bugs:
            bad.append(f"row {row} is hittable but its KVM_BUG_ON never fired in "
                       f"{HUNT_OF_ROW[row]}")
        if not hittable and kvm_bugs:
            bad.append(f"row {row} is not hittable but a KVM_BUG_ON fired in "
                       f"{', '.join(kvm_bugs)}")
        if row in FORCED_ROWS:
            want = {5: ["WARN"], 6: ["BUG"], 10: ["WARN"]}[row]
            if forced[row] != want:
                bad.append(f"row {row}: a forced transition gives {forced[row]}, "
                           f"the kernel gives {want}")
        mark = "DISAGREES" if bad else "ok"
        disagreements += bad
        lines.append(f"| {row} | {old} | {new} | {shared} | {exp_allowed} | {obs_allowed} | "
                     f"{exp_hit} | {obs_hit} | {mark} |")
    lines.append("")
    for name, p in per.items():
        hunt = ""
        v = get_variant(name)
        if not v.as_designed:
            hunt = (f", its bug after {p['found_at']} s" if p["found_at"] is not None
                    else ", its bug NOT found")
        if v.base:
            hunt += f" (a patch over {v.base})"
        lines.append(f"{name}: {p['runs']} runs in {p['seconds']} s{hunt}; "
                     f"attribute-only changes {p['attr_changes']}")
    lines.append("rows 5, 6 and 10: no path of any variant makes these transitions; "
                 "'self-test' is what handle_changed_spte() reports when handed one "
                 "directly, not an observation")
    if disagreements:
        lines.append("")
        lines += [f"DISAGREEMENT: {d}" for d in disagreements]
    else:
        lines.append("\nno disagreement with seed 002's table")
    return "\n".join(lines), disagreements
