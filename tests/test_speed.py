"""The shortcuts taken for speed (issue 14, point 6) give what they stand for: the
scheduler's inline trace hash and preemption count are TraceHash's and Preemptions', and
Kvm._folio_intact()'s remembered answers are those of a fresh check after any change to
guest_memfd or the memory attributes."""
from __future__ import annotations

import random

import pytest

from core.findings import Recorder
from core.kvm import CountedDict, CountedSet, Kvm
from core.mmu_lock import MmuLock
from core.sched import ThreadCtx, cpu_relax, mix, set_current
from core.spte import PG_LEVEL_2M
from core.store import KvmMmuPage
from core.tdx_module import TD_RUNNABLE
from stress.config import RunConfig
from stress.controlled import ControlledScheduler, Preemptions, TraceHash
from stress.runner import run_seed
from stress.strategies import PCTStrategy, RandomStrategy

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def workload(sched: ControlledScheduler, rec: Recorder) -> list:
    """Readers CAS-incrementing one SPTE under the read lock, with spin hints, and a
    writer under the write lock: switches, waits, yields and preemptions."""
    lock = MmuLock(sched, rec)
    sp = KvmMmuPage(sched, rec, 0x3000, 1, 0, True)
    sp.spt[0] = 0

    def inc() -> None:
        for _ in range(5):
            lock.read_lock()
            while not sp.cmpxchg(0, cur := sp.read(0), cur + 1)[0]:
                cpu_relax(sched)
            lock.read_unlock()

    def writer() -> None:
        for _ in range(3):
            lock.write_lock()
            sp.write(0, sp.read(0) + 100)
            lock.write_unlock()
    return [("inc0", inc), ("inc1", inc), ("writer", writer)]


@pytest.mark.parametrize("seed", range(6))
def test_inline_hash_and_preemptions_are_the_instruments(seed: int) -> None:
    strategy = PCTStrategy(random.Random(seed), depth=3, horizon=60) if seed % 2 \
        else RandomStrategy(random.Random(seed))
    h, p = TraceHash(), Preemptions()
    rec = Recorder()
    sched = ControlledScheduler(strategy, recorder=rec, instruments=(h, p))
    sched.run(workload(sched, rec), join_timeout=10)
    assert not sched.aborting and sched.step > 40
    assert sched.trace_hash == h.value
    assert sched.preemptions == p.count
    folded = 0
    for s in sched.steps:
        folded = mix(folded, s.thread, s.label)
    assert folded == sched.trace_hash


def test_run_seed_hash_is_the_fold_of_its_steps() -> None:
    r = run_seed(RunConfig(ops=4), 3)
    folded = 0
    for s in r.step_log:
        folded = mix(folded, s.thread, s.label)
    assert f"{folded:016x}" == r.trace_hash


def test_counted_containers_count_every_change() -> None:
    d = CountedDict()
    d[1] = 1
    d.setdefault(2, 2)
    d.update({3: 3})
    d |= {4: 4}
    d.pop(1)
    del d[2]
    d.popitem()
    d.clear()
    assert d.changes == 8 and d == {}
    s = CountedSet()
    s.add(1)
    s.update({2, 3})
    s.discard(2)
    s.remove(3)
    s |= {5}
    s -= {5}
    s ^= {6}
    s &= {6}
    s.difference_update({7})
    s.intersection_update({6})
    s.symmetric_difference_update({8})
    s.pop()
    s.clear()
    assert s.changes == 13 and s == set()


def test_folio_intact_memo_follows_changes() -> None:
    set_current(ThreadCtx("t"))
    kvm = Kvm("hugepage-rfc", nr_vcpus=1)
    kvm.module.td_state = TD_RUNNABLE
    huge = next(r for r in kvm.regions if r.huge)
    base = huge.base

    def check() -> None:
        for g in (base, base + 5, base + 511):
            assert kvm._folio_intact(g) == kvm._folio_intact_now(base)

    assert not kvm._folio_intact(base)
    kvm.kvm_gmem_get_folio(base, huge)
    assert kvm._folio_intact(base + 7)
    check()
    kvm.shared_gfns.add(base + 3)
    assert not kvm._folio_intact(base)
    check()
    kvm.shared_gfns.discard(base + 3)
    assert kvm._folio_intact(base)
    kvm.gmem.pop(base + 100)
    assert not kvm._folio_intact(base)
    check()
    kvm.gmem[base + 100] = kvm.gmem[base] + 100
    assert kvm._folio_intact(base)
    kvm.gmem = {g: p for g, p in kvm.gmem.items() if g != base + 9}   # a plain dict
    assert not kvm._folio_intact(base)
    check()
    assert kvm.kvm_mmu_max_mapping_level(base) == kvm.kvm_mmu_max_mapping_level(base + 1)
    assert PG_LEVEL_2M > kvm.kvm_mmu_max_mapping_level(base)


def _reference_8(m) -> list[tuple[int, str]]:
    """Invariant 8 as it was checked page by page (before the bulk check)."""
    from core.spte import level_pages
    from core.tdx_module import LEAF_STATES
    out, owner = [], {}
    for (level, gfn), e in m.entries.items():
        if e.state in LEAF_STATES and e.pfn is not None:
            for k in range(level_pages(level)):
                pfn = e.pfn + k
                if pfn in owner:
                    out.append((8, f"pfn {pfn:#x} mapped by gfn={owner[pfn][1]:#x} and "
                                   f"gfn={gfn + k:#x}"))
                    break
                owner[pfn] = (level, gfn + k)
    return out


def test_invariant_8_bulk_check_is_the_page_by_page_one() -> None:
    from core.invariants import check_invariants
    from core.tdx_module import MAPPED, PENDING, SeptEntry
    set_current(ThreadCtx("t"))
    kvm = Kvm("hugepage-rfc", nr_vcpus=1)
    m = kvm.module
    rng = random.Random(5)
    for trial in range(40):
        m.entries.clear()
        for _ in range(rng.randrange(1, 6)):
            level = rng.choice((1, 1, 2))
            gfn = rng.randrange(0, 4) * (512 if level == 2 else 1) + (0x200 if level == 2 else 0)
            e = SeptEntry()
            e.state, e.pfn = rng.choice((MAPPED, PENDING)), rng.randrange(0, 1100)
            m.entries[(level, gfn + rng.randrange(0, 3) * (level == 1))] = e
        got = [f for f in check_invariants(kvm) if f[0] == 8]
        assert got == _reference_8(m), trial
