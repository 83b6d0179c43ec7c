"""Scripted interleavings: the test decides the order of steps, the contention is real,
no luck is involved.  Each hunt's bug fires under its schedule, and the same schedule is
clean in hugepage-rfc (where the as-designed path takes the lock that prevents it)."""
import pytest

from core.guest import ProgramGuest
from core.tdx_module import FREE, MAPPED, NL_MAPPED, PENDING
from stress.testing import Sequencer

pytestmark = [pytest.mark.scripted, pytest.mark.timeout(60)]

ZS_GFN = 0x7       # the GFN a zero-step vCPU keeps faulting on (4K region)


def zero_step_vp_enter_vs(variant, name, body_of, until="TDH.MEM.PAGE.AUG:lock"):
    """vCPU0, with zero-step armed, holds the S-EPT tree lock exclusively inside
    VP.ENTER while thread ``name`` runs through its SEAMCALL ``until``; then vCPU0 goes
    on (a fault-in that retries, as the prefault does, gets the lock once it is free)."""
    seq = Sequencer(variant, [("through", "vcpu0", "TDH.VP.ENTER:lock"),
                              ("through", name, until), ("through", name, "spte.write"),
                              ("finish", "vcpu0")])
    seq.kvm.build()
    seq.kvm.kvm_populate_tables(ZS_GFN)
    seq.arm_zero_step(0, ZS_GFN)
    seq.run(vcpu0=seq.vcpu_trips(0, ProgramGuest((("touch", ZS_GFN),))), **{name: body_of(seq)})
    return seq


@pytest.mark.parametrize("variant,bug", [("hunt-a1", True), ("hugepage-rfc", False)])
def test_a1_write_lock_aug_vs_zero_step(variant, bug):
    """(a1): PAGE.AUG under the write lock meets VP.ENTER holding the tree lock under
    zero-step: BUSY, and the write-lock setter cannot fail -> KVM_BUG_ON path a1."""
    seq = zero_step_vp_enter_vs(variant, "mapper", lambda s: lambda: s.kvm.kvm_prefault(ZS_GFN))
    assert seq.kvm.module.busy.get("zero_step", 0) >= 1
    assert bool(seq.found("KVM_BUG_ON", "a1")) == bug
    if not bug:
        assert seq.rec.findings == []
        assert seq.check() == 0


@pytest.mark.parametrize("variant,bug", [("hunt-a2", True), ("hugepage-rfc", False)])
def test_a2_write_lock_sept_add_vs_zero_step(variant, bug):
    """(a2): SEPT.ADD under the write lock meets the zero-step tree lock -> KVM_BUG_ON a2."""
    seq = zero_step_vp_enter_vs(variant, "populator",
                                lambda s: lambda: s.kvm.kvm_populate_tables(0x20007),
                                until="TDH.MEM.SEPT.ADD:lock")
    assert seq.kvm.module.busy.get("zero_step", 0) >= 1
    assert bool(seq.found("KVM_BUG_ON", "a2")) == bug
    if not bug:
        assert seq.rec.findings == []
        assert seq.check() == 0


def _split_region(seq, gfn=0x205):
    """A 2M leaf, accepted by the guest, then split under the write lock (row 8)."""
    kvm = seq.kvm
    kvm.build()
    kvm.kvm_populate_tables(ZS_GFN)
    v = kvm.vcpus[0]
    from core.sched import current
    current().vcpu = v
    g = ProgramGuest((("touch", gfn),))
    while not g.done:
        kvm.vcpu_enter_guest(v, g)
    assert kvm.kvm_split_huge_page(gfn)


def test_b_promotion_busy_is_retried_with_vcpus_out():
    """(b) promotes the way the split path demotes: BLOCK through tdh_do_no_vcpus.  A
    zero-step VP.ENTER holding the tree lock makes the first BLOCK BUSY; the retry, with
    every vCPU kicked out and wait_for_sept_zap set, goes through, and the table
    becomes a 2M leaf with no bug."""
    seq = Sequencer("hunt-b", [("through", "vcpu0", "TDH.VP.ENTER:lock"),
                               ("until", "promoter", "kvm_kick.wait"),
                               ("through", "vcpu0", "vcpu->mode"),     # kicked out
                               ("finish", "promoter")])
    _split_region(seq)
    seq.arm_zero_step(0, ZS_GFN)
    seq.run(vcpu0=seq.vcpu_trips(0, ProgramGuest((("touch", ZS_GFN),))),
            promoter=lambda: seq.kvm.kvm_recover_huge_pages(0x205))
    assert seq.kvm.module.busy.get("zero_step", 0) >= 1
    assert seq.rec.findings == []
    assert seq.kvm.module.peek(0x200, 2).state == MAPPED
    assert seq.check() == 0


def _pending_2m_split_then_one_accepted(seq):
    """A 2M leaf AUGed (PENDING), split (512 PENDING 4K children, DEMOTE keeps PENDING),
    then the guest accepts one 4K page of it: the children are a mix."""
    kvm = seq.kvm
    kvm.build()
    kvm.kvm_prefault(0x205)
    assert kvm.module.peek(0x200, 2).state == PENDING
    assert kvm.kvm_split_huge_page(0x205)
    assert kvm.module.tdg_mem_page_accept(0, 0x205, 1) == 0


@pytest.mark.parametrize("variant,bug", [("hunt-b", True), ("hugepage-rfc", False)])
def test_b_promote_refused_for_pending_and_mapped_children(variant, bug):
    """(b)'s genuine hazard: TDH.MEM.PAGE.PROMOTE refuses a table whose children are
    a mix of PENDING and MAPPED (TDX_EPT_INVALID_PROMOTE_CONDITIONS,
    is_sept_page_valid_for_merge()): TDX_BUG_ON, and the KVM_BUG_ON of
    handle_changed_spte() under the write lock as its consequence."""
    seq = Sequencer(variant, [("finish", "promoter")])
    _pending_2m_split_then_one_accepted(seq)
    seq.run(promoter=lambda: seq.kvm.kvm_recover_huge_pages(0x205))
    if not bug:
        assert seq.rec.findings == [] and seq.check() == 0
        return
    [root] = [f for f in seq.rec.findings if f.kind == "TDX_BUG_ON"]
    assert "TDH.MEM.PAGE.PROMOTE:TDX_EPT_INVALID_PROMOTE_CONDITIONS" in root.where
    assert root.path == "b"
    assert [c["where"] for c in root.consequences if c["same_change"]][:1] == \
        ["handle_changed_spte"]
    assert seq.kvm.variant.hunt_hit(root)


def _two_mapped_leaves(seq):
    kvm = seq.kvm
    kvm.build()
    for gfn in (0x3, 0x4):
        kvm.kvm_prefault(gfn)


@pytest.mark.parametrize("variant,bug", [("hunt-c", True), ("hugepage-rfc", False)])
def test_c_two_read_lock_removals_race(variant, bug):
    """(c): two leaf removals under the read lock: one holds the tree lock in BLOCK while
    the other's BLOCK fails twice (tdh_do_no_vcpus cannot help) -> TDX_BUG_ON path c."""
    # strict for the hunt; lenient as designed, where the same script meets the write
    # lock z1 holds (z2 waits; z1 goes on until z2 can run): that wait is the point
    seq = Sequencer(variant, [("through", "z1", "TDH.MEM.RANGE.BLOCK:lock"), ("finish", "z2")],
                    strict=bug)
    _two_mapped_leaves(seq)
    seq.run(z1=lambda: seq.kvm.kvm_gmem_error_folio(0x3, 0x4),
            z2=lambda: seq.kvm.kvm_gmem_error_folio(0x4, 0x5))
    assert bool(seq.found("TDX_BUG_ON", "c")) == bug
    if bug:
        # the every-call warning is there too, with its own signature
        assert seq.found("LOCKDEP", "c")
    else:
        assert seq.rec.findings == []
        assert seq.check() == 0


def _table_with_one_leaf(seq):
    kvm = seq.kvm
    kvm.build()
    kvm.kvm_prefault(ZS_GFN)          # the 4K table under 2M range 0x0 has one leaf


@pytest.mark.parametrize("variant,bug", [("hunt-d", True), ("hugepage-rfc", False)])
def test_d_child_removal_fails_under_read_lock(variant, bug):
    """(d): a table zapped under the read lock; a fault's PAGE.AUG holds the tree lock
    shared, so the child's BLOCK fails twice (tdh_do_no_vcpus cannot help under the read
    lock) -> TDX_BUG_ON, the first bug; the KVM_BUG_ON of handle_changed_spte() for
    that child follows in the same change, silent in the kernel (the VM is bugged):
    the finding the hunt is after, kept as the root's consequence."""
    seq = Sequencer(variant, [("through", "fault", "TDH.MEM.PAGE.AUG:lock"), ("finish", "zap")])
    _table_with_one_leaf(seq)
    seq.run(fault=lambda: seq.kvm.kvm_prefault(0x205),
            zap=lambda: seq.kvm.kvm_zap_table(ZS_GFN))
    if not bug:
        # as designed, no path zaps a mirror table while the TD runs
        assert seq.rec.findings == []
        assert seq.check() == 0
        return
    roots = [f for f in seq.rec.findings if f.kind in ("KVM_BUG_ON", "TDX_BUG_ON")]
    assert len(roots) == 1
    root = roots[0]
    assert root.kind == "TDX_BUG_ON" and "TDH.MEM.RANGE.BLOCK" in root.where
    assert root.path == "d" and root.row == 13
    assert seq.kvm.variant.hunt_hit(root)
    # the lockdep warning of the read-lock removal came first, with its own signature
    assert seq.found("LOCKDEP", "d")


@pytest.mark.parametrize("variant,bug", [("hunt-d", True), ("hugepage-rfc", False)])
def test_d_uncontended_table_zap_bugs_on_the_hkid(variant, bug):
    """(d) without contention: every child goes, then the table's S-EPT page is released
    while the HKID is assigned (tdx_sept_free_private_spt: KVM_BUG_ON, the page is
    leaked): a bug on every call, not the one the hunt is after.  The S-EPT keeps the
    empty table linked (no SEPT.REMOVE is issued), which the next quiescent check
    reports as the root's consequence."""
    seq = Sequencer(variant, [("finish", "zap")])
    _table_with_one_leaf(seq)
    seq.run(zap=lambda: seq.kvm.kvm_zap_table(ZS_GFN))
    n = seq.check()
    if not bug:
        assert n == 0 and seq.rec.findings == []
        return
    roots = [f for f in seq.rec.findings if f.kind in ("KVM_BUG_ON", "TDX_BUG_ON")]
    assert [r.where for r in roots] == ["tdx_sept_free_private_spt"]
    assert not seq.kvm.variant.hunt_hit(roots[0])
    assert "TDH.MEM.SEPT.REMOVE" not in seq.kvm.module.calls
    assert seq.kvm.module.peek(0, 2).state == NL_MAPPED
    assert seq.kvm.module.peek(ZS_GFN, 1).state == FREE
    assert any(c["kind"] == "INVARIANT" for c in roots[0].consequences)


NO_WIDENING = '''
from core.kvm import Kvm as Base

BASE = "hugepage-rfc"
SUMMARY = "attribute changes invalidate only the range converted, as v6.19 does"


class Kvm(Base):
    def kvm_arch_pre_set_memory_attributes_range(self, start, end):
        return start, end
'''


@pytest.mark.parametrize("widen", [True, False])
def test_no_private_2m_leaf_over_a_gfn_just_made_shared(widen, tmp_path):
    """A fault at 0x200 computes its max level (2M: the folio is all private) just before
    a conversion of 0x205 to shared zaps and flips the attributes.  KVM widens that
    invalidation to the huge-page-aligned head and tail
    (kvm_arch_pre_set_memory_attributes() -> kvm_mmu_invalidate_range_add()), so the
    fault at 0x200 is stale and retries at 4K; without the widening a 2M private leaf
    would cover the shared GFN 0x205 (invariant 10)."""
    variant = "hugepage-rfc"
    if not widen:
        variant = str(tmp_path / "no_widening.py")
        (tmp_path / "no_widening.py").write_text(NO_WIDENING)
    seq = Sequencer(variant, [("through", "fault", "kvm_gmem_get_pfn"),
                                     ("through", "conv", "set_mem_attributes"),
                                     ("finish", "fault"), ("finish", "conv")])
    seq.kvm.build()
    seq.run(fault=lambda: seq.kvm.kvm_tdp_page_fault(0x200, True, 2),
            conv=lambda: seq.kvm.kvm_vm_set_mem_attributes(0x205, 0x206, shared=True))
    seq.check()
    broken = [f.message for f in seq.rec.findings if f.where == "invariant10"]
    assert bool(broken) == (not widen), broken


def _zap_three_leaves(script, strict=True):
    """Three private 4K leaves (0x3, 0x4, 0x5), then ``zap`` unmaps them under the write
    lock (kvm_gmem_error_folio(): tdp_mmu_zap_leafs() on both roots); ``reader`` takes
    the read lock once.  Returns the sequencer and the labels each thread took, in order."""
    seq = Sequencer("hugepage-rfc", script, strict=strict)
    kvm = seq.kvm
    kvm.build()
    for gfn in (0x3, 0x4, 0x5):
        kvm.kvm_prefault(gfn)

    def reader():
        kvm.mmu_lock.read_lock()
        kvm.mmu_lock.read_unlock()
    seq.run(zap=lambda: kvm.kvm_gmem_error_folio(0x3, 0x6), reader=reader)
    names = seq.sched.thread_names()
    took = {n: [s.label for s in seq.sched.steps if names[s.thread] == n] for n in names}
    return seq, took


def test_a_zap_walk_leaves_rcu_only_to_yield_the_contended_lock():
    """tdp_mmu_zap_leafs(): without contention the walk stays in one RCU read-side
    section per root (tdp_mmu_iter_cond_resched() yields only when
    tdp_mmu_iter_need_resched() says so); with a reader queued on mmu_lock it leaves
    RCU, drops the lock for the reader and goes on from the next GFN, and every leaf
    still goes."""
    seq, took = _zap_three_leaves([("finish", "zap"), ("finish", "reader")])
    zap = took["zap"]
    assert zap.count("TDH.MEM.PAGE.REMOVE") == 3
    # one section for the walk of the mirror root (a private unmap), none per leaf
    assert zap.count("rcu_read_lock") == zap.count("rcu_read_unlock") == 1, zap
    assert zap.count("mmu_lock.needbreak") == 3          # asked after each leaf
    assert zap.count("mmu_lock.write_unlock") == 2       # the walk's, invalidate_end()'s
    assert seq.rec.findings == [] and seq.check() == 0

    # the reader queues behind the write lock after the first leaf went (it cannot run
    # until the lock is free: the zapper goes on meanwhile); the walk yields there (the
    # reader runs), then zaps the other two
    seq, took = _zap_three_leaves([("through", "zap", "TDH.PHYMEM.PAGE.WBINVD"),
                                   ("steps", "reader", 1), ("finish", "reader"),
                                   ("finish", "zap")], strict=False)
    zap = took["zap"]
    assert zap.count("TDH.MEM.PAGE.REMOVE") == 3
    # the yield, the end of the walk, kvm_mmu_invalidate_end()'s
    assert zap.count("mmu_lock.write_unlock") == 3
    assert zap.count("rcu_read_lock") == zap.count("rcu_read_unlock") == 2, zap
    steps = [(seq.sched.thread_names()[s.thread], s.label) for s in seq.sched.steps]
    got = steps.index(("reader", "mmu_lock.read_unlock"))
    assert steps.index(("zap", "mmu_lock.write_unlock")) < got
    assert sum(1 for s in steps[got:] if s == ("zap", "TDH.MEM.PAGE.REMOVE")) == 2
    assert seq.rec.findings == [] and seq.check() == 0
