"""Unit tests of the simulated TDX module against MODEL §4.

Single-threaded tests drive ``TdxModule`` under ``PassThrough``.  Tests of contention use
``ControlledScheduler`` + ``ScriptStrategy`` with real threads: setup calls made on the
main thread before ``run()`` execute directly; inside ``run()`` the script decides the
interleaving, so a SEAMCALL can be parked between its ``NAME:lock`` step and its ``NAME``
(effect) step while another thread runs.
"""
from __future__ import annotations

import itertools
import random

import pytest

from core.findings import Recorder
from core.sched import PassThrough
from core.spte import PG_LEVEL_2M, PG_LEVEL_4K, ROOT_LEVEL
from core.tdx_errno import (
    TDX_EPT_ENTRY_STATE_INCORRECT,
    TDX_EPT_PAGE_NOT_FREE,
    TDX_EPT_WALK_FAILED,
    TDX_GPA_RANGE_ALREADY_BLOCKED,
    TDX_GPA_RANGE_NOT_BLOCKED,
    TDX_LIFECYCLE_STATE_INCORRECT,
    TDX_OP_STATE_INCORRECT,
    TDX_OPERAND_BUSY,
    TDX_OPERAND_BUSY_HOST_PRIORITY,
    TDX_OPERAND_ID_RCX,
    TDX_OPERAND_ID_SEPT,
    TDX_OPERAND_ID_TD_EPOCH,
    TDX_OPERAND_ID_TDR,
    TDX_PAGE_ALREADY_ACCEPTED,
    TDX_PREVIOUS_TLB_EPOCH_BUSY,
    TDX_SUCCESS,
    TDX_TLB_TRACKING_NOT_DONE,
    status,
    tdx_operand_busy,
)
from core.tdx_module import (
    BLOCKED,
    FREE,
    MAPPED,
    NL_BLOCKED,
    NL_MAPPED,
    PENDING,
    PENDING_BLOCKED,
    TD_BUILD,
    TD_RUNNABLE,
    TD_TEARDOWN,
    TdxModule,
)
from stress.controlled import ControlledScheduler
from stress.strategies import ScriptStrategy

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

G = 0x1          # a 4K GFN in the level-2 table at 0x0
G2M = 0x200      # a 2M-aligned GFN (its own level-2 entry, same level-3/4 entries as G)
PFN_2M = 0x10000  # 512-aligned guest PFN for 2M leaves
RIP = 0xFFFF_1000

_pages = itertools.count(0x80000)   # S-EPT table pages, never reused


# ---------------------------------------------------------------------- helpers
def new_module(nr_vcpus: int = 2, **kw) -> TdxModule:
    return TdxModule(PassThrough(), nr_vcpus=nr_vcpus, **kw)


def runnable(nr_vcpus: int = 2, **kw) -> TdxModule:
    m = new_module(nr_vcpus, **kw)
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    return m


def add_tables(m: TdxModule, gfn: int, down_to: int = PG_LEVEL_2M) -> None:
    """SEPT.ADD the non-leaf entries of levels ROOT_LEVEL..down_to over ``gfn``."""
    for lvl in range(ROOT_LEVEL, down_to - 1, -1):
        e = m.peek(gfn, lvl)
        if e is None or e.state == FREE:
            assert m.tdh_mem_sept_add(gfn, lvl, next(_pages)) == TDX_SUCCESS


def map_4k(m: TdxModule, gfn: int, pfn: int, accept: bool = True) -> None:
    add_tables(m, gfn)
    assert m.tdh_mem_page_aug(gfn, PG_LEVEL_4K, pfn) == TDX_SUCCESS
    if accept:
        assert m.tdg_mem_page_accept(0, gfn, PG_LEVEL_4K) == TDX_SUCCESS
    assert m.entry(gfn, PG_LEVEL_4K).state == (MAPPED if accept else PENDING)


def map_2m(m: TdxModule, gfn: int, pfn: int) -> None:
    add_tables(m, gfn, down_to=3)
    assert m.tdh_mem_page_aug(gfn, PG_LEVEL_2M, pfn) == TDX_SUCCESS
    assert m.tdg_mem_page_accept(0, gfn, PG_LEVEL_2M) == TDX_SUCCESS
    assert m.entry(gfn, PG_LEVEL_2M).state == MAPPED


def block_and_track(m: TdxModule, gfn: int, level: int) -> None:
    assert m.tdh_mem_range_block(gfn, level) == TDX_SUCCESS
    assert m.tdh_mem_track() == TDX_SUCCESS


def arm_zero_step(m: TdxModule, vcpu_id: int, gfn: int, rip: int = RIP) -> None:
    for _ in range(7):
        m.td_exit(vcpu_id, gfn, rip)
    assert m.vcpus[vcpu_id].zstep_gpas == [gfn]


def is_busy(err: int, operand: int) -> bool:
    return status(err) == TDX_OPERAND_BUSY and (err & 0xFFFFFFFF) == operand


def controlled(script: list[tuple], nr_vcpus: int = 1, **kw):
    sched = ControlledScheduler(ScriptStrategy(script), recorder=Recorder())
    return sched, TdxModule(sched, nr_vcpus=nr_vcpus, **kw)


def run_threads(sched: ControlledScheduler, **threads) -> dict:
    """Run one model thread per keyword (in keyword order); return each one's result."""
    results: dict = {}
    sched.run([(name, (lambda name=name, fn=fn: results.__setitem__(name, fn())))
               for name, fn in threads.items()])
    assert sched.divergence is None, sched.divergence
    assert sched.rec is not None and sched.rec.findings == []
    assert set(results) == set(threads)
    return results


def trace(sched: ControlledScheduler) -> list[tuple[str, str]]:
    names = sched.thread_names()
    return [(names[s.thread], s.label) for s in sched.steps]


def seq(*calls):
    """A thread body that makes several calls in order and returns their results."""
    return lambda: [c() for c in calls]


# ====================================================================== 1. errors
# ---------------------------------------------------------------- TDH.MEM.SEPT.ADD
def test_sept_add_walk_failed_when_parents_missing():
    """§4.2 SEPT.ADD needs its parents NL_MAPPED: EPT_WALK_FAILED otherwise."""
    m = new_module()
    assert status(m.tdh_mem_sept_add(G, 3, next(_pages))) == TDX_EPT_WALK_FAILED
    assert m.tdh_mem_sept_add(G, 4, next(_pages)) == TDX_SUCCESS
    assert status(m.tdh_mem_sept_add(G, 2, next(_pages))) == TDX_EPT_WALK_FAILED
    assert m.entry(G, 2).state == FREE
    assert m.tdh_mem_sept_add(G, 3, next(_pages)) == TDX_SUCCESS
    assert m.tdh_mem_sept_add(G, 2, next(_pages)) == TDX_SUCCESS
    assert [m.entry(G, lvl).state for lvl in (4, 3, 2)] == [NL_MAPPED] * 3


def test_sept_add_parent_blocked_is_walk_failure():
    """§4.2 SEPT.ADD needs parents NL_MAPPED: an NL_BLOCKED parent is a failed walk."""
    m = new_module()
    add_tables(m, G, down_to=3)
    assert m.tdh_mem_range_block(G, 3) == TDX_SUCCESS
    assert m.entry(G, 3).state == NL_BLOCKED
    assert status(m.tdh_mem_sept_add(G, 2, next(_pages))) == TDX_EPT_WALK_FAILED
    assert m.entry(G, 2).state == FREE


def test_sept_add_entry_state_incorrect_when_not_free():
    """§4.2 SEPT.ADD needs the entry FREE: EPT_ENTRY_STATE_INCORRECT otherwise."""
    m = runnable()
    add_tables(m, G)
    old = m.entry(G, 2).pfn
    assert status(m.tdh_mem_sept_add(G, 4, next(_pages))) == TDX_EPT_ENTRY_STATE_INCORRECT
    assert status(m.tdh_mem_sept_add(G, 2, next(_pages))) == TDX_EPT_ENTRY_STATE_INCORRECT
    assert m.entry(G, 2).pfn == old
    add_tables(m, G2M, down_to=3)
    assert m.tdh_mem_page_aug(G2M, PG_LEVEL_2M, PFN_2M) == TDX_SUCCESS   # a 2M leaf
    assert status(m.tdh_mem_sept_add(G2M, 2, next(_pages))) == TDX_EPT_ENTRY_STATE_INCORRECT
    assert m.entry(G2M, 2).state == PENDING and m.entry(G2M, 2).pfn == PFN_2M


@pytest.mark.scripted
def test_sept_add_busy_on_entry_lock():
    """§4.1 SEPT.ADD takes the entry lock: a second SEPT.ADD of the same entry is BUSY."""
    sched, m = controlled([("through", "t1", "TDH.MEM.SEPT.ADD:lock"), ("finish", "t2")])
    r = run_threads(sched, t1=lambda: m.tdh_mem_sept_add(G, 4, 0x70001),
                    t2=lambda: m.tdh_mem_sept_add(G, 4, 0x70002))
    assert r["t1"] == TDX_SUCCESS
    assert is_busy(r["t2"], TDX_OPERAND_ID_RCX)
    assert m.busy == {"sept_entry": 1}
    assert m.entry(G, 4).state == NL_MAPPED and m.entry(G, 4).pfn == 0x70001


# ---------------------------------------------------------------- TDH.MEM.PAGE.AUG
def test_page_aug_walk_failed_and_entry_not_free():
    """§4.2 PAGE.AUG: parents present (else EPT_WALK_FAILED), entry FREE (else STATE_INCORRECT)."""
    m = runnable()
    assert status(m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000)) == TDX_EPT_WALK_FAILED
    add_tables(m, G, down_to=3)
    assert status(m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000)) == TDX_EPT_WALK_FAILED
    add_tables(m, G)
    assert m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000) == TDX_SUCCESS
    e = m.entry(G, PG_LEVEL_4K)
    assert (e.state, e.pfn) == (PENDING, 0x5000)
    assert status(m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x6000)) == TDX_EPT_ENTRY_STATE_INCORRECT
    assert (e.state, e.pfn) == (PENDING, 0x5000)


def test_page_aug_not_allowed_before_finalize():
    """§4.2 PAGE.AUG needs the TD runnable: TDX_OP_STATE_INCORRECT before MR.FINALIZE."""
    m = new_module()
    add_tables(m, G)
    assert status(m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000)) == TDX_OP_STATE_INCORRECT
    assert m.entry(G, PG_LEVEL_4K).state == FREE
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    assert m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000) == TDX_SUCCESS


@pytest.mark.scripted
def test_page_aug_busy_on_entry_lock():
    """§4.1 PAGE.AUG takes the entry lock: a second AUG of the same GPA is BUSY."""
    sched, m = controlled([("through", "t1", "TDH.MEM.PAGE.AUG:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    add_tables(m, G)
    r = run_threads(sched, t1=lambda: m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000),
                    t2=lambda: m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x6000))
    assert r["t1"] == TDX_SUCCESS
    assert is_busy(r["t2"], TDX_OPERAND_ID_RCX)
    assert m.busy == {"sept_entry": 1}
    assert m.entry(G, PG_LEVEL_4K).pfn == 0x5000


# ---------------------------------------------------------------- TDH.MEM.PAGE.ADD
def test_page_add_only_before_finalize():
    """§4.2 PAGE.ADD: a FREE entry becomes MAPPED, only while the TD is not finalized."""
    m = new_module()
    add_tables(m, G)
    assert m.tdh_mem_page_add(G, 0x5000) == TDX_SUCCESS
    e = m.entry(G, PG_LEVEL_4K)
    assert (e.state, e.pfn) == (MAPPED, 0x5000)
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    assert status(m.tdh_mem_page_add(G + 1, 0x5001)) == TDX_OP_STATE_INCORRECT
    assert m.entry(G + 1, PG_LEVEL_4K).state == FREE


@pytest.mark.scripted
def test_page_add_busy_on_tdr():
    """§4.1 PAGE.ADD takes the TDR exclusively: BUSY(TDR) while a SEPT.ADD holds it shared."""
    sched, m = controlled([("through", "t1", "TDH.MEM.SEPT.ADD:lock"), ("finish", "t2")])
    add_tables(m, G)
    add_tables(m, G2M, down_to=3)
    r = run_threads(sched, t1=lambda: m.tdh_mem_sept_add(G2M, 2, 0x70003),
                    t2=lambda: m.tdh_mem_page_add(G, 0x5000))
    assert r["t1"] == TDX_SUCCESS
    assert is_busy(r["t2"], TDX_OPERAND_ID_TDR)
    assert m.busy == {"tdr": 1}
    assert m.entry(G, PG_LEVEL_4K).state == FREE
    assert m.tdh_mem_page_add(G, 0x5000) == TDX_SUCCESS


# ---------------------------------------------------------------- TDH.MEM.RANGE.BLOCK
def test_range_block_states_and_errors():
    """§4.2 RANGE.BLOCK: -> *_BLOCKED with the epoch; ALREADY_BLOCKED; FREE is STATE_INCORRECT."""
    m = runnable()
    map_4k(m, G, 0x5000)
    map_4k(m, G + 1, 0x5001, accept=False)
    add_tables(m, G2M)
    assert status(m.tdh_mem_range_block(G + 2, PG_LEVEL_4K)) == TDX_EPT_ENTRY_STATE_INCORRECT
    assert m.entry(G + 2, PG_LEVEL_4K).state == FREE

    assert m.tdh_mem_range_block(G, PG_LEVEL_4K) == TDX_SUCCESS
    assert m.entry(G, PG_LEVEL_4K).state == BLOCKED
    assert m.entry(G, PG_LEVEL_4K).bepoch == 1
    assert status(m.tdh_mem_range_block(G, PG_LEVEL_4K)) == TDX_GPA_RANGE_ALREADY_BLOCKED

    assert m.tdh_mem_track() == TDX_SUCCESS
    assert m.tdh_mem_range_block(G + 1, PG_LEVEL_4K) == TDX_SUCCESS
    assert m.entry(G + 1, PG_LEVEL_4K).state == PENDING_BLOCKED
    assert m.entry(G + 1, PG_LEVEL_4K).bepoch == 2

    assert m.tdh_mem_range_block(G2M, PG_LEVEL_2M) == TDX_SUCCESS
    assert m.entry(G2M, PG_LEVEL_2M).state == NL_BLOCKED
    assert status(m.tdh_mem_range_block(G2M, PG_LEVEL_2M)) == TDX_GPA_RANGE_ALREADY_BLOCKED


@pytest.mark.scripted
def test_range_block_busy_on_tree_lock():
    """§4.1 RANGE.BLOCK takes the tree lock exclusively: a BLOCK of another GPA is BUSY."""
    sched, m = controlled([("through", "t1", "TDH.MEM.RANGE.BLOCK:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_4k(m, G, 0x5000)
    map_4k(m, G + 1, 0x5001)
    r = run_threads(sched, t1=lambda: m.tdh_mem_range_block(G, PG_LEVEL_4K),
                    t2=lambda: m.tdh_mem_range_block(G + 1, PG_LEVEL_4K))
    assert r["t1"] == TDX_SUCCESS
    assert is_busy(r["t2"], TDX_OPERAND_ID_SEPT)
    assert m.busy == {"sept_tree": 1}
    assert m.entry(G + 1, PG_LEVEL_4K).state == MAPPED


# ---------------------------------------------------------------- TDH.MEM.TRACK
@pytest.mark.scripted
def test_track_busy_against_vp_enter_in_flight():
    """§4.1 TRACK takes the epoch lock exclusively: BUSY(epoch) while a VP.ENTER holds it."""
    sched, m = controlled([("through", "t1", "TDH.VP.ENTER:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    r = run_threads(sched, t1=lambda: m.tdh_vp_enter(0), t2=m.tdh_mem_track)
    assert r["t1"] == (TDX_SUCCESS, None)
    assert is_busy(r["t2"], TDX_OPERAND_ID_TD_EPOCH)
    assert m.busy == {"epoch": 1}
    assert m.td_epoch == 1
    assert m.vcpus[0].running_epoch == 1


@pytest.mark.scripted
def test_track_busy_against_another_track():
    """§4.1 TRACK takes the epoch lock exclusively: a second TRACK in flight is BUSY(epoch)."""
    sched, m = controlled([("through", "t1", "TDH.MEM.TRACK:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    r = run_threads(sched, t1=m.tdh_mem_track, t2=m.tdh_mem_track)
    assert r["t1"] == TDX_SUCCESS
    assert is_busy(r["t2"], TDX_OPERAND_ID_TD_EPOCH)
    assert m.td_epoch == 2


def test_track_previous_tlb_epoch_busy():
    """§4.2 TRACK: PREVIOUS_TLB_EPOCH_BUSY while a vCPU still runs in the epoch before."""
    m = runnable()
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, None)
    assert m.vcpus[0].running_epoch == 1
    assert m.tdh_mem_track() == TDX_SUCCESS          # the epoch before 1 is empty
    assert m.td_epoch == 2
    assert status(m.tdh_mem_track()) == TDX_PREVIOUS_TLB_EPOCH_BUSY
    assert m.td_epoch == 2
    m.td_exit(0)
    assert m.tdh_mem_track() == TDX_SUCCESS
    assert m.td_epoch == 3


# ---------------------------------------------------------------- TDH.MEM.PAGE.REMOVE
def test_page_remove_needs_block_then_track():
    """§4.2 PAGE.REMOVE: GPA_RANGE_NOT_BLOCKED, then TLB_TRACKING_NOT_DONE, then FREE."""
    m = runnable()
    map_4k(m, G, 0x5000)
    e = m.entry(G, PG_LEVEL_4K)
    assert status(m.tdh_mem_page_remove(G, PG_LEVEL_4K)) == TDX_GPA_RANGE_NOT_BLOCKED
    assert e.state == MAPPED
    assert m.tdh_mem_range_block(G, PG_LEVEL_4K) == TDX_SUCCESS
    assert status(m.tdh_mem_page_remove(G, PG_LEVEL_4K)) == TDX_TLB_TRACKING_NOT_DONE
    assert e.state == BLOCKED
    assert m.tdh_mem_track() == TDX_SUCCESS
    assert m.tdh_mem_page_remove(G, PG_LEVEL_4K) == TDX_SUCCESS
    assert (e.state, e.pfn) == (FREE, None)
    assert m.audit == []


@pytest.mark.scripted
def test_page_remove_busy_on_tree_lock():
    """§4.1 PAGE.REMOVE takes the tree lock shared: BUSY while a RANGE.BLOCK holds it."""
    sched, m = controlled([("through", "t1", "TDH.MEM.RANGE.BLOCK:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_4k(m, G, 0x5000)
    map_4k(m, G + 1, 0x5001)
    block_and_track(m, G, PG_LEVEL_4K)
    r = run_threads(sched, t1=lambda: m.tdh_mem_range_block(G + 1, PG_LEVEL_4K),
                    t2=lambda: m.tdh_mem_page_remove(G, PG_LEVEL_4K))
    assert r["t1"] == TDX_SUCCESS
    assert is_busy(r["t2"], TDX_OPERAND_ID_SEPT)
    assert m.entry(G, PG_LEVEL_4K).state == BLOCKED
    assert m.tdh_mem_page_remove(G, PG_LEVEL_4K) == TDX_SUCCESS


# ---------------------------------------------------------------- TDH.MEM.SEPT.REMOVE
def test_sept_remove_needs_blocked_tracked_and_512_free_children():
    """§4.2 SEPT.REMOVE: NL_BLOCKED, tracked, all 512 children FREE (else EPT_PAGE_NOT_FREE)."""
    m = runnable()
    # Table A (level-2 entry at 0x400): its only live child is the last of the 512.
    map_4k(m, 0x5FF, 0x6000)
    block_and_track(m, 0x400, PG_LEVEL_2M)
    assert status(m.tdh_mem_sept_remove(0x400, PG_LEVEL_2M)) == TDX_EPT_PAGE_NOT_FREE
    assert m.entry(0x400, PG_LEVEL_2M).state == NL_BLOCKED
    assert m.entry(0x5FF, PG_LEVEL_4K).state == MAPPED

    # Table B (level-2 entry at 0x200): remove the child first, then the table.
    map_4k(m, G2M + 1, 0x7000)
    table = m.entry(G2M, PG_LEVEL_2M)
    page = table.pfn
    assert page in m.sept_pages
    block_and_track(m, G2M + 1, PG_LEVEL_4K)
    assert m.tdh_mem_page_remove(G2M + 1, PG_LEVEL_4K) == TDX_SUCCESS
    assert status(m.tdh_mem_sept_remove(G2M, PG_LEVEL_2M)) == TDX_GPA_RANGE_NOT_BLOCKED
    assert m.tdh_mem_range_block(G2M, PG_LEVEL_2M) == TDX_SUCCESS
    assert status(m.tdh_mem_sept_remove(G2M, PG_LEVEL_2M)) == TDX_TLB_TRACKING_NOT_DONE
    assert m.tdh_mem_track() == TDX_SUCCESS
    assert m.tdh_mem_sept_remove(G2M, PG_LEVEL_2M) == TDX_SUCCESS
    assert (table.state, table.pfn) == (FREE, None)
    assert page not in m.sept_pages
    assert m.audit == []


# ---------------------------------------------------------------- TDH.MEM.PAGE.DEMOTE
def test_page_demote_blocked_tracked_2m_leaf():
    """§4.2 PAGE.DEMOTE: a blocked, tracked 2M leaf becomes NL_MAPPED over 512 4K leaves."""
    m = runnable()
    map_2m(m, G2M, PFN_2M)
    page = next(_pages)
    assert status(m.tdh_mem_page_demote(G2M, PG_LEVEL_2M, page)) == TDX_GPA_RANGE_NOT_BLOCKED
    assert m.tdh_mem_range_block(G2M, PG_LEVEL_2M) == TDX_SUCCESS
    assert status(m.tdh_mem_page_demote(G2M, PG_LEVEL_2M, page)) == TDX_TLB_TRACKING_NOT_DONE
    assert m.entry(G2M, PG_LEVEL_2M).state == BLOCKED
    assert m.tdh_mem_track() == TDX_SUCCESS
    assert m.tdh_mem_page_demote(G2M, PG_LEVEL_2M, page) == TDX_SUCCESS
    e = m.entry(G2M, PG_LEVEL_2M)
    assert (e.state, e.pfn) == (NL_MAPPED, page)
    assert page in m.sept_pages
    kids = m.children(G2M, PG_LEVEL_2M)
    assert len(kids) == 512
    assert all(k is not None and k.state == MAPPED and k.pfn == PFN_2M + i
               for i, k in enumerate(kids))
    assert m.leaf_of(G2M + 7) == (PG_LEVEL_4K, kids[7])


@pytest.mark.scripted
def test_page_demote_busy_on_tree_lock():
    """§4.2 PAGE.DEMOTE fails OPERAND_BUSY while another SEAMCALL holds the tree lock."""
    sched, m = controlled([("through", "t1", "TDH.MEM.RANGE.BLOCK:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_2m(m, G2M, PFN_2M)
    map_4k(m, G, 0x5000)
    block_and_track(m, G2M, PG_LEVEL_2M)
    page = next(_pages)
    r = run_threads(sched, t1=lambda: m.tdh_mem_range_block(G, PG_LEVEL_4K),
                    t2=lambda: m.tdh_mem_page_demote(G2M, PG_LEVEL_2M, page))
    assert r["t1"] == TDX_SUCCESS
    assert is_busy(r["t2"], TDX_OPERAND_ID_SEPT)
    assert m.entry(G2M, PG_LEVEL_2M).state == BLOCKED
    assert m.tdh_mem_page_demote(G2M, PG_LEVEL_2M, page) == TDX_SUCCESS


# ---------------------------------------------------------------- TDH.MEM.PAGE.PROMOTE
@pytest.mark.scripted
def test_page_promote_busy_while_accept_in_flight():
    """§4.2/§6 PAGE.PROMOTE is OPERAND_BUSY while a guest ACCEPT holds a child's entry lock."""
    sched, m = controlled([("through", "g", "TDG.MEM.PAGE.ACCEPT:lock"), ("finish", "h")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_2m(m, G2M, PFN_2M)
    block_and_track(m, G2M, PG_LEVEL_2M)
    table_page = next(_pages)
    assert m.tdh_mem_page_demote(G2M, PG_LEVEL_2M, table_page) == TDX_SUCCESS
    child = m.entry(G2M + 7, PG_LEVEL_4K)
    r = run_threads(
        sched,
        g=lambda: m.tdg_mem_page_accept(0, G2M + 7, PG_LEVEL_4K),
        h=seq(lambda: m.tdh_mem_range_block(G2M, PG_LEVEL_2M), m.tdh_mem_track,
              lambda: m.tdh_mem_page_promote(G2M, PG_LEVEL_2M)))
    block, track, promote = r["h"]
    assert (block, track) == (TDX_SUCCESS, TDX_SUCCESS)
    assert is_busy(promote, TDX_OPERAND_ID_RCX)
    assert m.busy == {"accept": 1}
    assert child.host_prio
    assert status(r["g"]) == TDX_PAGE_ALREADY_ACCEPTED
    assert m.entry(G2M, PG_LEVEL_2M).state == NL_BLOCKED
    # The ACCEPT is over: the host's retry wins and merges the table.
    assert m.tdh_mem_page_promote(G2M, PG_LEVEL_2M) == TDX_SUCCESS
    e = m.entry(G2M, PG_LEVEL_2M)
    assert (e.state, e.pfn) == (MAPPED, PFN_2M)
    assert table_page not in m.sept_pages
    assert all(k is None or k.state == FREE for k in m.children(G2M, PG_LEVEL_2M))
    assert not child.host_prio


# ---------------------------------------------------------------- TDH.PHYMEM.PAGE.RECLAIM
def test_reclaim_needs_hkid_released():
    """§4.2 PHYMEM.PAGE.RECLAIM: LIFECYCLE_STATE_INCORRECT while the HKID is assigned."""
    m = runnable()
    add_tables(m, G)
    page = m.entry(G, PG_LEVEL_2M).pfn
    assert status(m.tdh_phymem_page_reclaim(page)) == TDX_LIFECYCLE_STATE_INCORRECT
    assert page not in m.reclaimed and page in m.sept_pages
    assert m.release_hkid() == TDX_SUCCESS
    assert m.tdh_phymem_page_reclaim(page) == TDX_SUCCESS
    assert page in m.reclaimed and page not in m.sept_pages
    assert m.audit == []


# ---------------------------------------------------------------- TDH.VP.ENTER
@pytest.mark.scripted
def test_vp_enter_busy_on_tree_lock_under_zero_step():
    """§4.4 VP.ENTER under zero-step takes the tree lock exclusively: BUSY while AUG holds it."""
    sched, m = controlled([("through", "t1", "TDH.MEM.PAGE.AUG:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_4k(m, G, 0x5000)
    arm_zero_step(m, 0, G)
    r = run_threads(sched, t1=lambda: m.tdh_mem_page_aug(G + 1, PG_LEVEL_4K, 0x5001),
                    t2=lambda: m.tdh_vp_enter(0))
    assert r["t1"] == TDX_SUCCESS
    err, faked = r["t2"]
    assert is_busy(err, TDX_OPERAND_ID_SEPT) and faked is None
    assert m.vcpus[0].running_epoch is None
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, None)   # the TDVPR was given back
    assert m.vcpus[0].running_epoch == m.td_epoch


@pytest.mark.scripted
def test_vp_enter_busy_on_epoch_lock_vs_track():
    """§4.1 VP.ENTER takes the epoch lock shared: BUSY(epoch) while a TRACK holds it."""
    sched, m = controlled([("through", "t1", "TDH.MEM.TRACK:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    r = run_threads(sched, t1=m.tdh_mem_track, t2=lambda: m.tdh_vp_enter(0))
    assert r["t1"] == TDX_SUCCESS
    err, faked = r["t2"]
    assert is_busy(err, TDX_OPERAND_ID_TD_EPOCH) and faked is None
    assert m.busy == {"epoch": 1}
    assert m.vcpus[0].running_epoch is None and m.vcpus[0].entered == 0
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, None)
    assert m.vcpus[0].running_epoch == 2


# ---------------------------------------------------------------- TDG.MEM.PAGE.ACCEPT
def test_accept_pending_then_already_accepted():
    """§4.2 ACCEPT: PENDING -> MAPPED; a second ACCEPT gets PAGE_ALREADY_ACCEPTED."""
    m = runnable()
    map_4k(m, G, 0x5000, accept=False)
    assert m.tdg_mem_page_accept(0, G, PG_LEVEL_4K) == TDX_SUCCESS
    assert m.entry(G, PG_LEVEL_4K).state == MAPPED
    assert status(m.tdg_mem_page_accept(0, G, PG_LEVEL_4K)) == TDX_PAGE_ALREADY_ACCEPTED
    assert m.entry(G, PG_LEVEL_4K).state == MAPPED


@pytest.mark.scripted
def test_accept_busy_while_host_holds_entry_lock():
    """§4.1 ACCEPT is OPERAND_BUSY while a host SEAMCALL (AUG in flight) holds the entry lock."""
    sched, m = controlled([("through", "h", "TDH.MEM.PAGE.AUG:lock"), ("finish", "g")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    add_tables(m, G)
    r = run_threads(sched, h=lambda: m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000),
                    g=lambda: m.tdg_mem_page_accept(0, G, PG_LEVEL_4K))
    assert r["h"] == TDX_SUCCESS
    assert is_busy(r["g"], TDX_OPERAND_ID_RCX)
    assert m.busy == {"sept_entry": 1}
    assert m.entry(G, PG_LEVEL_4K).state == PENDING
    assert m.tdg_mem_page_accept(0, G, PG_LEVEL_4K) == TDX_SUCCESS


# ====================================================================== 2. two yield points
@pytest.mark.scripted
@pytest.mark.parametrize("script, interleaved", [
    ([("through", "t1", "TDH.MEM.RANGE.BLOCK:lock"), ("finish", "t2")], True),
    ([("finish", "t1"), ("finish", "t2")], False),
])
def test_seamcall_spans_two_yield_points(script, interleaved):
    """§4.1 a SEAMCALL is ':lock' then effect: two BLOCKs collide only if one is parked between."""
    sched, m = controlled(script)
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_4k(m, G, 0x5000)
    r = run_threads(sched, t1=lambda: m.tdh_mem_range_block(G, PG_LEVEL_4K),
                    t2=lambda: m.tdh_mem_range_block(G, PG_LEVEL_4K))
    assert r["t1"] == TDX_SUCCESS
    assert m.entry(G, PG_LEVEL_4K).state == BLOCKED
    if interleaved:
        assert trace(sched) == [("t1", "TDH.MEM.RANGE.BLOCK:lock"),
                                ("t2", "TDH.MEM.RANGE.BLOCK:lock"),
                                ("t1", "TDH.MEM.RANGE.BLOCK")]
        assert is_busy(r["t2"], TDX_OPERAND_ID_SEPT)
        assert m.busy == {"sept_tree": 1}
    else:
        assert trace(sched) == [("t1", "TDH.MEM.RANGE.BLOCK:lock"),
                                ("t1", "TDH.MEM.RANGE.BLOCK"),
                                ("t2", "TDH.MEM.RANGE.BLOCK:lock"),
                                ("t2", "TDH.MEM.RANGE.BLOCK")]
        assert status(r["t2"]) == TDX_GPA_RANGE_ALREADY_BLOCKED
        assert m.busy == {}


@pytest.mark.scripted
def test_shared_tree_lock_lets_two_augs_overlap():
    """§4.1 AUG takes the tree lock shared: two AUGs of different GPAs overlap without BUSY."""
    sched, m = controlled([("through", "t1", "TDH.MEM.PAGE.AUG:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    add_tables(m, G)
    r = run_threads(sched, t1=lambda: m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000),
                    t2=lambda: m.tdh_mem_page_aug(G + 1, PG_LEVEL_4K, 0x5001))
    assert trace(sched) == [("t1", "TDH.MEM.PAGE.AUG:lock"), ("t2", "TDH.MEM.PAGE.AUG:lock"),
                            ("t2", "TDH.MEM.PAGE.AUG"), ("t1", "TDH.MEM.PAGE.AUG")]
    assert r == {"t1": TDX_SUCCESS, "t2": TDX_SUCCESS}
    assert m.busy == {}
    assert m.entry(G, PG_LEVEL_4K).state == m.entry(G + 1, PG_LEVEL_4K).state == PENDING


# ====================================================================== 3. zero-step
def test_zero_step_records_gpa_after_six_violations_at_one_rip():
    """td_exit_epf_stepping_log(): the first STEPPING_EPF_THRESHOLD (6) EPT violations at
    one RIP only count; the 7th records its GPA."""
    m = runnable()
    v = m.vcpus[0]
    for _ in range(6):
        m.td_exit(0, G, RIP)
    assert v.zstep_gpas == []
    m.td_exit(0, G, RIP)
    assert v.zstep_gpas == [G]


def test_zero_step_needs_six_at_the_same_rip():
    """§4.4 violations at different RIPs do not add up: nothing is recorded."""
    m = runnable()
    v = m.vcpus[0]
    for i in range(12):
        m.td_exit(0, G, RIP + (i % 2))
    assert v.zstep_gpas == []
    for _ in range(6):
        m.td_exit(0, G, RIP + 0x10)
    assert v.zstep_gpas == []


def test_zero_step_progress_clears_gpas():
    """§4.4 progress (a new RIP) clears the recorded GPAs."""
    m = runnable()
    v = m.vcpus[0]
    arm_zero_step(m, 0, G)
    m.guest_progress(0, RIP + 4)
    assert v.zstep_gpas == []
    for _ in range(6):
        m.td_exit(0, G, RIP + 4)
    assert v.zstep_gpas == []


def test_zero_step_records_at_most_32_gpas():
    """§4.4 at most 32 GPAs are recorded."""
    m = runnable()
    v = m.vcpus[0]
    arm_zero_step(m, 0, 0x1000)
    for i in range(1, 40):
        m.td_exit(0, 0x1000 + i, RIP)
    assert len(v.zstep_gpas) == 32
    assert v.zstep_gpas == [0x1000 + i for i in range(32)]


@pytest.mark.scripted
@pytest.mark.parametrize("armed", [True, False])
def test_zero_step_vp_enter_holds_tree_lock_exclusively(armed):
    """§4.4 armed VP.ENTER holds the tree lock: AUG/SEPT.ADD/REMOVE/BLOCK are BUSY meanwhile."""
    sched, m = controlled([("through", "t1", "TDH.VP.ENTER:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_4k(m, G, 0x5000)
    map_4k(m, G + 1, 0x5001)
    block_and_track(m, G + 1, PG_LEVEL_4K)
    add_tables(m, G2M, down_to=3)
    if armed:
        arm_zero_step(m, 0, G)          # G is mapped: the entry goes through
    r = run_threads(
        sched,
        t1=lambda: m.tdh_vp_enter(0),
        t2=seq(lambda: m.tdh_mem_page_aug(G + 2, PG_LEVEL_4K, 0x5002),
               lambda: m.tdh_mem_sept_add(G2M, PG_LEVEL_2M, 0x70004),
               lambda: m.tdh_mem_page_remove(G + 1, PG_LEVEL_4K),
               lambda: m.tdh_mem_range_block(G, PG_LEVEL_4K)))
    assert trace(sched)[0] == ("t1", "TDH.VP.ENTER:lock")
    assert trace(sched)[-1] == ("t1", "TDH.VP.ENTER")
    assert r["t1"] == (TDX_SUCCESS, None)
    assert m.vcpus[0].running_epoch == m.td_epoch
    if armed:
        assert all(is_busy(err, TDX_OPERAND_ID_SEPT) for err in r["t2"]), r["t2"]
        assert m.busy == {"zero_step": 4}
        assert m.entry(G + 2, PG_LEVEL_4K).state == FREE
        assert m.entry(G2M, PG_LEVEL_2M).state == FREE
        assert m.entry(G + 1, PG_LEVEL_4K).state == BLOCKED
        assert m.entry(G, PG_LEVEL_4K).state == MAPPED
    else:
        assert r["t2"] == [TDX_SUCCESS] * 4
        assert m.busy == {}


def test_zero_step_vp_enter_fakes_ept_violation_for_unmapped_gpa():
    """§4.4 a recorded GPA still unmapped: VP.ENTER refuses entry and fakes an EPT violation."""
    m = runnable()
    add_tables(m, G)
    v = m.vcpus[0]
    arm_zero_step(m, 0, G)
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, G)
    assert v.running_epoch is None and v.entered == 0
    assert m.tree.excl is None and v.tdvpr_lock is None
    assert v.zstep_gpas == [G]
    map_4k(m, G, 0x5000)
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, None)
    assert v.running_epoch == m.td_epoch and v.entered == 1
    assert m.tree.excl is None


# ====================================================================== 4. host priority
@pytest.mark.scripted
def test_host_priority_bit():
    """§4.1 host sets the bit, guest gets BUSY_HOST_PRIORITY, the host's retry clears it."""
    sched, m = controlled([("through", "g", "TDG.MEM.PAGE.ACCEPT:lock"), ("finish", "h")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_4k(m, G, 0x5000, accept=False)
    e = m.entry(G, PG_LEVEL_4K)
    r = run_threads(sched, g=lambda: m.tdg_mem_page_accept(0, G, PG_LEVEL_4K),
                    h=lambda: m.tdh_mem_range_block(G, PG_LEVEL_4K))
    assert is_busy(r["h"], TDX_OPERAND_ID_RCX)
    assert m.busy == {"accept": 1}
    assert e.host_prio
    assert r["g"] == TDX_SUCCESS and e.state == MAPPED
    assert e.lock is None
    err = m.tdg_mem_page_accept(0, G, PG_LEVEL_4K)        # the lock is free, the bit set
    assert status(err) == TDX_OPERAND_BUSY_HOST_PRIORITY and tdx_operand_busy(err)
    assert m.busy.get("host_priority") == 1
    assert e.host_prio and e.lock is None
    # No bound on guest attempts (the module has none; its only bound is the 1 s
    # hp_lock_timeout TD exit, after which the guest still sees BUSY): the bit stays
    # set until a host takes the lock.
    for _ in range(50):
        assert tdx_operand_busy(m.tdg_mem_page_accept(0, G, PG_LEVEL_4K))
    assert e.host_prio and m.busy["host_priority"] == 51
    assert m.tdh_mem_range_block(G, PG_LEVEL_4K) == TDX_SUCCESS
    assert not e.host_prio and e.state == BLOCKED


# ====================================================================== 5. TLB tracking
def test_tlb_tracking_needs_track_past_epoch_and_old_vcpus_out():
    """§4.2 a block at epoch E is tracked once TRACK moved past E and no vCPU runs in <= E."""
    m = runnable(nr_vcpus=2)
    map_4k(m, G, 0x5000)
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, None)
    assert m.vcpus[0].running_epoch == 1
    assert m.tdh_mem_range_block(G, PG_LEVEL_4K) == TDX_SUCCESS
    assert m.entry(G, PG_LEVEL_4K).bepoch == 1
    assert status(m.tdh_mem_page_remove(G, PG_LEVEL_4K)) == TDX_TLB_TRACKING_NOT_DONE
    assert m.tdh_mem_track() == TDX_SUCCESS
    assert m.td_epoch == 2
    # vCPU 0 entered before the TRACK and still runs in epoch 1.
    assert status(m.tdh_mem_page_remove(G, PG_LEVEL_4K)) == TDX_TLB_TRACKING_NOT_DONE
    # vCPU 1 enters after the TRACK (epoch 2): it does not hold the tracking back.
    assert m.tdh_vp_enter(1) == (TDX_SUCCESS, None)
    assert m.vcpus[1].running_epoch == 2
    m.td_exit(0)
    assert m.vcpus[0].running_epoch is None
    assert m.tdh_mem_page_remove(G, PG_LEVEL_4K) == TDX_SUCCESS
    assert m.entry(G, PG_LEVEL_4K).state == FREE


# ====================================================================== 6. busy injection
def test_busy_injection_only_while_a_vcpu_is_in_the_guest():
    """TdxModule busy_rate: injected BUSY only while some vCPU is in the guest."""
    m = runnable(nr_vcpus=1, busy_rate=1.0, rng=random.Random(1))
    map_4k(m, G, 0x5000)                       # no vCPU in: nothing injected
    assert m.tdh_mem_track() == TDX_SUCCESS
    assert m.busy.get("injected", 0) == 0
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, None)
    err = m.tdh_mem_page_aug(G + 1, PG_LEVEL_4K, 0x5001)
    assert is_busy(err, TDX_OPERAND_ID_RCX)
    assert m.busy["injected"] == 1
    assert m.entry(G + 1, PG_LEVEL_4K).state == FREE
    assert status(m.tdh_mem_range_block(G, PG_LEVEL_4K)) == TDX_OPERAND_BUSY
    assert m.busy["injected"] == 2
    m.td_exit(0)
    assert m.tdh_mem_page_aug(G + 1, PG_LEVEL_4K, 0x5001) == TDX_SUCCESS
    assert m.tdh_mem_range_block(G, PG_LEVEL_4K) == TDX_SUCCESS
    assert m.busy["injected"] == 2


# ====================================================================== 7. lifecycle
def test_lifecycle_build_runnable_teardown():
    """§4.2/§3.4 lifecycle: BUILD -> RUNNABLE (MR.FINALIZE) -> TEARDOWN (HKID released)."""
    m = new_module()
    assert (m.td_state, m.hkid_assigned) == (TD_BUILD, True)
    assert status(m.tdh_vp_enter(0)[0]) == TDX_OP_STATE_INCORRECT
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    assert m.td_state == TD_RUNNABLE
    assert m.tdh_vp_enter(0) == (TDX_SUCCESS, None)
    m.td_exit(0)
    assert m.release_hkid() == TDX_SUCCESS
    assert (m.td_state, m.hkid_assigned) == (TD_TEARDOWN, False)
    assert m.audit == []
    assert m.tdh_vp_enter(0)[0] != TDX_SUCCESS
    assert m.vcpus[0].running_epoch is None


def test_release_hkid_with_private_leaves_is_audited():
    """§7 invariant 5: releasing the HKID with private leaves left appends an audit entry."""
    m = runnable()
    map_4k(m, G, 0x5000)
    assert m.release_hkid() == TDX_SUCCESS
    assert m.td_state == TD_TEARDOWN
    assert [n for n, _ in m.audit] == [5]


# ====================================================================== 1.5.01 details
def test_error_values_are_the_modules():
    """tdx_error_codes_defs.h of TDX 1.5.01."""
    from core import tdx_errno as E
    assert E.TDX_LIFECYCLE_STATE_INCORRECT == 0xC000060700000000
    assert E.TDX_EPT_PAGE_NOT_FREE == 0xC0000B0E00000000
    assert E.TDX_TD_KEYS_NOT_CONFIGURED == 0x8000081000000000
    assert E.TDX_OPERAND_ID_TDVPR == 130


def test_aug_and_sept_add_after_the_hkid_is_freed():
    """check_td_in_correct_build_state(): past TDH.MNG.KEY.FREEID every S-EPT call gets
    TDX_TD_KEYS_NOT_CONFIGURED; RECLAIM before it gets TDX_LIFECYCLE_STATE_INCORRECT."""
    from core.tdx_errno import TDX_LIFECYCLE_STATE_INCORRECT, TDX_TD_KEYS_NOT_CONFIGURED
    m = runnable(nr_vcpus=1)
    add_tables(m, G)
    assert m.tdh_phymem_page_reclaim(0x90000) == TDX_LIFECYCLE_STATE_INCORRECT
    assert m.release_hkid() == TDX_SUCCESS
    assert m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000) == TDX_TD_KEYS_NOT_CONFIGURED
    assert m.tdh_mem_sept_add(G2M, PG_LEVEL_2M, next(_pages)) == TDX_TD_KEYS_NOT_CONFIGURED


@pytest.mark.scripted
def test_demote_takes_the_tree_lock_shared():
    """tdh_mem_page_demote.c: the tree lock is shared, so a DEMOTE goes through while an
    AUG holds it shared (before: exclusive, BUSY)."""
    sched, m = controlled([("through", "t1", "TDH.MEM.PAGE.AUG:lock"), ("finish", "t2")])
    assert m.tdh_mr_finalize() == TDX_SUCCESS
    map_2m(m, G2M, 0x40000)
    block_and_track(m, G2M, PG_LEVEL_2M)
    add_tables(m, G)
    r = run_threads(sched, t1=lambda: m.tdh_mem_page_aug(G, PG_LEVEL_4K, 0x5000),
                    t2=lambda: m.tdh_mem_page_demote(G2M, PG_LEVEL_2M, next(_pages)))
    assert r == {"t1": TDX_SUCCESS, "t2": TDX_SUCCESS}
    assert m.entry(G2M + 5, PG_LEVEL_4K).state == MAPPED


def test_page_add_takes_no_entry_lock():
    """tdh_mem_page_add.c: the TDR exclusively and nothing else; the entry is written
    unlocked (sept_set_leaf_unlocked_entry)."""
    m = new_module(nr_vcpus=1)
    add_tables(m, G)
    e = m.entry(G, PG_LEVEL_4K)
    e.lock = object()          # an entry lock held (cannot happen in BUILD; ignored)
    assert m.tdh_mem_page_add(G, 0x5000) == TDX_SUCCESS
    assert e.state == MAPPED

