"""Fidelity checks of issue 9: each pins one behaviour of the kernel or the TDX module
(core/SOURCES.md names the source) and fails on the model's old behaviour."""
import pytest

from core.findings import ROOT_KINDS, Recorder
from core.guest import ProgramGuest
from core.kvm import Kvm
from core.oracle import classify
from core.sched import ThreadCtx, current
from core.spte import FROZEN_SPTE, SHADOW_NONPRESENT_VALUE
from core.tdx import KVM_REQ_OUTSIDE_GUEST_MODE
from core.variants import get_variant as get_hunt
from stress.config import RunConfig
from stress.runner import run_seed

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


def vm(variant="hugepage-rfc"):
    kvm = Kvm(variant, nr_vcpus=1)
    kvm.build()
    current().vcpu = kvm.vcpus[0]
    return kvm


def test_a_failed_accept_does_not_feed_zero_step():
    """td_exit_epf_stepping_log() is called from the hardware EPT-violation handlers
    only: the EPT violation of a TDG.MEM.PAGE.ACCEPT on a missing page is not counted,
    a touch of one is."""
    kvm = vm()
    kvm.vcpu_enter_guest(kvm.vcpus[0], ProgramGuest((("accept", 0x5, 1),)))
    assert kvm.module.vcpus[0].ept_count == 0
    kvm.vcpu_enter_guest(kvm.vcpus[0], ProgramGuest((("touch", 0x6),)))
    assert kvm.module.vcpus[0].ept_count == 1


def test_a_kick_leaves_no_request_behind():
    """KVM_REQ_OUTSIDE_GUEST_MODE is KVM_REQUEST_NO_ACTION: no request bit is set, so it
    cannot end a vCPU's local fault-retry loop or be seen by kvm_vcpu_has_events()."""
    kvm = vm()
    kvm.kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)
    v = kvm.vcpus[0]
    assert v.requests == set() and not v.ipi_pending


def test_row5_does_not_count_the_kernels_own_frozen_case():
    """handle_removed_pt() freezing a non-present child is allowed (the WARN exempts a
    frozen *new* value): no row, no WARN.  A frozen *old* value is not exempt."""
    assert classify(SHADOW_NONPRESENT_VALUE, FROZEN_SPTE, 1, True) is None
    assert classify(FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, 1, False) == 5
    kvm = vm()
    ctx = ThreadCtx("t")
    saved = current()
    from core.sched import set_current
    set_current(ctx)
    try:
        mmu = kvm.mmu
        mmu.handle_changed_spte(mmu.mirror_root, 0, SHADOW_NONPRESENT_VALUE, FROZEN_SPTE, 1, True)
        assert ctx.rows[5] == 0 and kvm.rec.findings == []
        mmu.handle_changed_spte(mmu.mirror_root, 0, FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, 1, False)
        assert ctx.rows[5] == 1 and [f.kind for f in kvm.rec.findings] == ["WARN"]
    finally:
        set_current(saved)


def test_teardown_zaps_leaves_of_a_bugged_vm():
    """kvm_gmem_release() has no vm_bugged check: the private leaves go before the HKID
    is released even when the VM is bugged, so none is left in the S-EPT."""
    kvm = vm()
    kvm.kvm_prefault(0x3)
    kvm.kvm_bug_on("test", "bug the VM")
    kvm.kvm_destroy_vm()
    assert kvm.module.calls_by_phase["teardown"].get("TDH.MEM.PAGE.REMOVE", 0) >= 1
    assert not [a for a in kvm.module.audit if a[0] == 5]


def test_the_first_bug_is_the_finding():
    """KVM_BUG_ON warns once per VM: what is reported after the first bug of a run is
    kept inside it as its consequences, not listed as findings of its own."""
    rec = Recorder()
    ctx = ThreadCtx("t")
    root = rec.report("TDX_BUG_ON", "tdx_sept_remove_private_spte:X", "first", ctx)
    rec.report("KVM_BUG_ON", "handle_changed_spte", "second", ctx)
    rec.report("INVARIANT", "invariant1", "third", ctx)
    rec.report("BUG", "KASAN:use-after-free", "fourth", ctx)
    assert rec.findings == [root]
    assert [c["kind"] for c in root.consequences] == ["KVM_BUG_ON", "INVARIANT", "BUG"]
    assert root.consequences_total == 3


@pytest.mark.integration
def test_hunt_d_runs_report_one_root_bug_each():
    """Over many hunt-d runs, no run lists more than one bug-kind finding (before: a run
    listed its TDX_BUG_ON, the KVM_BUG_ON after it, invariants and a use-after-free)."""
    cfg = RunConfig(variant="hunt-d").validate()
    with_bug = 0
    for seed in range(40):
        r = run_seed(cfg, seed, record_steps=False)
        roots = [f for f in r.findings if f.kind in ROOT_KINDS]
        assert len(roots) <= 1, (seed, [f.signature for f in roots])
        with_bug += bool(roots)
    assert with_bug >= 10


def test_prefault_retries_like_kvm_tdp_map_page(monkeypatch):
    """kvm_tdp_map_page(): ``do { ... } while (r == RET_PF_RETRY)``.  A prefault that
    gave up after one BUSY left the host-priority bit it set on the entry, and the guest's
    ACCEPT was refused forever (the HANG a 60 s v6.19 campaign found once the invented
    bound on host priority was gone)."""
    from core.tdp_mmu import RET_PF_FIXED, RET_PF_RETRY
    kvm = vm()
    results = [RET_PF_RETRY, RET_PF_RETRY, RET_PF_FIXED]
    calls = []

    def fault(gfn, private=True, level_hint=2, write_lock=False):
        calls.append(gfn)
        return results[len(calls) - 1]
    monkeypatch.setattr(kvm, "kvm_tdp_page_fault", fault)
    assert kvm.kvm_prefault(0x3) == RET_PF_FIXED
    assert calls == [0x3] * 3
    kvm.kvm_bug_on("test", "dead VM")
    calls.clear()
    results[:] = [RET_PF_RETRY] * 5
    assert kvm.kvm_prefault(0x3) == RET_PF_RETRY and calls == []   # -EIO: the VM is dead


def test_invalidation_keeps_one_merged_range_under_the_write_lock():
    """kvm_mmu_invalidate_begin/range_add/end assert the write lock, and KVM keeps one
    merged range: with [0x0, 0x2) and [0x8, 0xa) in progress, a fault at 0x5 retries
    too (exact per-range tracking would let it through)."""
    from core.tdp_mmu import PageFault
    kvm = vm()
    kvm.mmu_lock.write_lock()
    for start, end in ((0x0, 0x2), (0x8, 0xa)):
        kvm.kvm_mmu_invalidate_begin()
        kvm.kvm_mmu_invalidate_range_add(start, end)
    kvm.mmu_lock.write_unlock()
    assert kvm.mmu_invalidate_range == (0x0, 0xa)
    seq = kvm.mmu_invalidate_seq
    assert kvm.is_page_fault_stale(PageFault(0x5, 1, True, 0x1234, seq))
    assert not kvm.is_page_fault_stale(PageFault(0x20, 1, True, 0x1234, seq))
    kvm._invalidate_end()
    kvm._invalidate_end()
    assert kvm.mmu_invalidate_in_progress == 0 and kvm.mmu_invalidate_seq == seq + 2
    assert kvm.rec.findings == []
    kvm.kvm_mmu_invalidate_begin()          # no lock held: lockdep
    assert [f.kind for f in kvm.rec.findings] == ["LOCKDEP"]


def test_local_retry_is_for_private_gpas_and_ends_on_a_signal(monkeypatch):
    """tdx_handle_ept_violation(): "Only private GPA triggers zero-step mitigation", so
    only a private fault is retried locally; the loop also ends on signal_pending()."""
    import random

    from core.kvm import GuestExit
    from core.tdp_mmu import RET_PF_RETRY
    kvm = vm()
    calls = []
    monkeypatch.setattr(kvm, "kvm_tdp_page_fault",
                        lambda *a, **k: calls.append(a) or RET_PF_RETRY)
    v = kvm.vcpus[0]
    assert kvm.tdx_handle_ept_violation(v, GuestExit("ept", 0x41, private=False)) == RET_PF_RETRY
    assert len(calls) == 1
    kvm.signal_rate, kvm._signal_rng = 0.5, random.Random(3)
    calls.clear()
    assert kvm.tdx_handle_ept_violation(v, GuestExit("ept", 0x5)) == RET_PF_RETRY
    assert kvm.signals == 1 and 1 <= len(calls) < 20


def test_a_summary_finding_says_where_so_its_hunt_recognises_it():
    """summary.json's findings carry ``where``: the nightly job and the pytest plugin
    judge a hunt from them (hunt-a1's bug is the KVM_BUG_ON of handle_changed_spte)."""
    from core.variants import get_variant
    from reports.summary import FindingAgg
    f = FindingAgg("KVM_BUG_ON:handle_changed_spte:row=2:path=a1", "KVM_BUG_ON", "a1", 2,
                   "set_external_spte failed", where="handle_changed_spte").to_dict()
    assert get_variant("hunt-a1").hunt_hit(f)
    assert not get_variant("hunt-a2").hunt_hit(f)


@pytest.mark.scripted
def test_memslot_deletion_waits_for_the_vcpu_inside_the_fault_path():
    """kvm_invalidate_memslot(): the slot is marked INVALID, then synchronize_srcu waits
    for the vCPU that resolved its pfn before (it holds kvm->srcu from its exit to its
    next entry); only then are both roots zapped, with no invalidation bracket, so the
    mapping that fault installed is gone.  The old model had no SRCU: the zap ran at
    once and an invalidation bracket made the fault retry instead."""
    from core.guest import ProgramGuest
    from stress.testing import Sequencer
    seq = Sequencer("v6.19", [("through", "vcpu0", "kvm_gmem_get_pfn"),
                              ("until", "zapper", "synchronize_srcu.wait"),
                              ("finish", "vcpu0"), ("finish", "zapper")], strict=True)
    seq.kvm.build()
    seq.run(vcpu0=seq.vcpu_trips(0, ProgramGuest((("touch", 0x5),)), trips=1),
            zapper=lambda: seq.kvm.kvm_memslot_delete_readd(0x5, 0x6))
    names = seq.sched.thread_names()
    log = [(names[s.thread], s.label) for s in seq.sched.steps]
    at = {x: i for i, x in reversed(list(enumerate(log)))}    # first occurrence
    aug = min(i for i, (t, lbl) in enumerate(log) if t == "vcpu0" and "AUG" in lbl)
    unlock = max(i for i, x in enumerate(log) if x == ("vcpu0", "srcu_read_unlock"))
    waited = at[("zapper", "synchronize_srcu.wait")]
    zap = min(i for i, (t, lbl) in enumerate(log) if t == "zapper" and "BLOCK" in lbl)
    assert aug < unlock < waited < zap
    assert ("zapper", "kvm_mmu_invalidate_begin") not in at
    assert seq.kvm.module.leaf_of(0x5) is None and seq.rec.findings == []


@pytest.mark.timeout(20)
def test_a_private_fault_without_guest_memfd_ends_with_efault():
    """kvm_mmu_faultin_pfn_private(): kvm_gmem_get_pfn() of a GFN no guest_memfd backs
    fails with -EFAULT and the fault ends.  The old model returned RET_PF_RETRY, so a
    prefault of such a GFN (kvm_tdp_map_page() loops while RETRY) never ended, held
    kvm->srcu for ever and hung a memslot deletion."""
    from core.kvm import EFAULT
    kvm = vm("hunt-a1")
    assert kvm.region_of(0x40) is None
    assert kvm.kvm_prefault(0x40) == -EFAULT
    assert kvm.kvm_tdp_page_fault(0x40) == -EFAULT


def test_a_4k_accept_exit_inhibits_2m_in_its_range_for_good():
    """RFC5 41/45 tdx_handle_mismatched_accept(): an ACCEPT-type EPT violation at 4K in a
    huge region splits any 2M leaf and sets the guest-inhibit bit; later faults there map
    4K (kvm_mmu_max_mapping_level() reads disallow_lpage) and hunt-b's recovery skips the
    range.  The old model mapped 2M again and promoted it."""
    from core.guest import ProgramGuest
    kvm = vm("hunt-b")
    kvm.vcpu_enter_guest(kvm.vcpus[0], ProgramGuest((("accept", 0x205, 1),)))
    assert 0x200 in kvm.guest_inhibit_2m
    kvm.kvm_tdp_page_fault(0x2FF, True, 2)          # a 2M fault elsewhere in the range
    leaf = kvm.module.leaf_of(0x2FF)
    assert leaf is not None and leaf[0] == 1        # mapped at 4K, not 2M
    for g in range(0x200, 0x400):
        kvm.kvm_tdp_page_fault(g, True, 2)
    assert kvm.kvm_recover_huge_pages(0x200) is False


@pytest.mark.timeout(20)
def test_closing_guest_memfd_while_the_td_runs_zaps_every_private_leaf():
    """kvm_gmem_release(): the memslots hold no reference to the file, so a VMM may close
    it while vCPUs run; every private mapping is zapped (bracket and zap under the write
    lock, row 12), the backing stays, and every later private fault ends with -EFAULT
    (slot->gmem.file is NULL).  The old model had no such operation and released
    nothing before teardown."""
    from core.kvm import EFAULT
    from core.tdp_mmu import RET_PF_FIXED
    kvm = vm()
    assert kvm.kvm_tdp_page_fault(0x3, True, 1) == RET_PF_FIXED
    assert kvm.kvm_tdp_page_fault(0x205, True, 2) == RET_PF_FIXED
    assert kvm.module.leaf_of(0x3) is not None and kvm.module.leaf_of(0x205) is not None
    rows12 = current().rows[12]
    kvm.kvm_gmem_release()
    assert kvm.module.leaf_of(0x3) is None and kvm.module.leaf_of(0x205) is None
    assert current().rows[12] > rows12
    assert kvm.mmu_invalidate_in_progress == 0
    assert kvm.gmem.get(0x3) is not None            # the inode keeps the memory
    assert kvm.kvm_tdp_page_fault(0x3, True, 1) == -EFAULT
    kvm.kvm_destroy_vm()                           # nothing left to release: no finding
    assert not kvm.rec.findings


@pytest.mark.timeout(20)
def test_recovery_opened_to_the_mirror_promotes_from_the_first_leaf():
    """recover_huge_pages_range() makes the huge SPTE from the table's first present leaf
    (tdp_mmu_make_huge_spte()) and checks only kvm_mmu_max_mapping_level(): on the
    mirror root a table with missing children goes to TDH.MEM.PAGE.PROMOTE, which the
    module refuses.  The old model skipped any table not fully populated, a guard no
    kernel has.  A range with a shared GFN (mixed attributes) is skipped."""
    kvm = vm("hunt-b")
    for g in (0x200, 0x201, 0x205):
        kvm.kvm_tdp_page_fault(g, True, 1)       # a table in the 2M range, 3 leaves of 512
    assert kvm.kvm_mmu_max_mapping_level(0x200) == 2
    assert kvm.kvm_recover_huge_pages(0x200) is True
    hit = [f for f in kvm.rec.findings if get_hunt("hunt-b").hunt_hit(f)]
    assert hit and "TDX_EPT_INVALID_PROMOTE_CONDITIONS" in hit[0].signature

    mixed = vm("hunt-b")
    for g in (0x200, 0x201, 0x205):
        mixed.kvm_tdp_page_fault(g, True, 1)
    mixed.kvm_vm_set_mem_attributes(0x210, 0x211, shared=True)
    assert mixed.kvm_mmu_max_mapping_level(0x200) == 1
    assert mixed.kvm_recover_huge_pages(0x200) is False
    assert not mixed.rec.findings
