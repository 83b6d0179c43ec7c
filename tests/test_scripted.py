"""Scripted interleavings: the test decides the order of steps, the contention is real,
no luck is involved.  Each hunt's bug fires under its schedule, and the same schedule is
clean in hugepage-rfc (where the as-designed path takes the lock that prevents it)."""
import pytest

from core.guest import ProgramGuest
from core.tdx_module import FREE, NL_MAPPED
from stress.testing import Sequencer

pytestmark = pytest.mark.timeout(60)

ZS_GFN = 0x7       # the GFN a zero-step vCPU keeps faulting on (4K region)


def zero_step_vp_enter_vs(variant, name, body_of):
    """vCPU0, with zero-step armed, holds the S-EPT tree lock exclusively inside
    VP.ENTER while thread ``name`` runs to its end."""
    seq = Sequencer(variant, [("through", "vcpu0", "TDH.VP.ENTER:lock"), ("finish", name)])
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
                                lambda s: lambda: s.kvm.kvm_populate_tables(0x20007))
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


@pytest.mark.parametrize("variant,bug", [("hunt-b", True), ("hugepage-rfc", False)])
def test_b_promotion_vs_zero_step(variant, bug):
    """(b): promotion under the write lock issues BLOCK once; a zero-step VP.ENTER holds
    the tree lock -> BUSY -> KVM_BUG_ON path b.  hugepage-rfc never promotes a mirror."""
    seq = Sequencer(variant, [("through", "vcpu0", "TDH.VP.ENTER:lock"), ("finish", "promoter")])
    _split_region(seq)
    seq.arm_zero_step(0, ZS_GFN)
    seq.run(vcpu0=seq.vcpu_trips(0, ProgramGuest((("touch", ZS_GFN),))),
            promoter=lambda: seq.kvm.kvm_recover_huge_pages(0x205))
    assert bool(seq.found("KVM_BUG_ON", "b")) == bug
    if not bug:
        assert seq.rec.findings == []
        assert seq.check() == 0


@pytest.mark.parametrize("variant,bug", [("hunt-b", True), ("hugepage-rfc", False)])
def test_b_promotion_track_vs_vp_enter(variant, bug):
    """(b): the promotion's single TRACK meets a VP.ENTER holding the epoch lock."""
    seq = Sequencer(variant, [("through", "vcpu0", "TDH.VP.ENTER:lock"), ("finish", "promoter")])
    _split_region(seq)
    seq.run(vcpu0=seq.vcpu_trips(0, ProgramGuest((("touch", ZS_GFN),))),
            promoter=lambda: seq.kvm.kvm_recover_huge_pages(0x205))
    assert bool(seq.found("KVM_BUG_ON", "b")) == bug
    if bug:
        assert seq.kvm.module.busy.get("epoch", 0) >= 1


def _two_mapped_leaves(seq):
    kvm = seq.kvm
    kvm.build()
    for gfn in (0x3, 0x4):
        kvm.kvm_prefault(gfn)


@pytest.mark.parametrize("variant,bug", [("hunt-c", True), ("hugepage-rfc", False)])
def test_c_two_read_lock_removals_race(variant, bug):
    """(c): two leaf removals under the read lock: one holds the tree lock in BLOCK while
    the other's BLOCK fails twice (tdh_do_no_vcpus cannot help) -> TDX_BUG_ON path c."""
    seq = Sequencer(variant, [("through", "z1", "TDH.MEM.RANGE.BLOCK:lock"), ("finish", "z2")])
    _two_mapped_leaves(seq)
    seq.run(z1=lambda: seq.kvm.kvm_mmu_notifier_zap(0x3, 0x4),
            z2=lambda: seq.kvm.kvm_mmu_notifier_zap(0x4, 0x5))
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
    shared, so the child's BLOCK fails twice -> TDX_BUG_ON, then KVM_BUG_ON path d."""
    seq = Sequencer(variant, [("through", "fault", "TDH.MEM.PAGE.AUG:lock"), ("finish", "zap")])
    _table_with_one_leaf(seq)
    seq.run(fault=lambda: seq.kvm.kvm_prefault(0x205),
            zap=lambda: seq.kvm.kvm_zap_table(ZS_GFN))
    assert bool(seq.found("KVM_BUG_ON", "d")) == bug
    if not bug:
        assert seq.rec.findings == []
        assert seq.check() == 0


@pytest.mark.parametrize("variant,bug", [("hunt-d", True), ("hugepage-rfc", False)])
def test_d_yan_zhao_restore_after_children_gone(variant, bug):
    """Yan Zhao's hazard of the "after" order: the children are already removed from the
    S-EPT when the parent's external update fails; the mirror restores a table whose
    subtree the S-EPT no longer has (INVARIANT at the next quiescent point)."""
    seq = Sequencer(variant, [("through", "zap", "TDH.MEM.PAGE.REMOVE"),
                              ("through", "fault", "TDH.MEM.PAGE.AUG:lock"),
                              ("finish", "zap")])
    _table_with_one_leaf(seq)
    seq.run(fault=lambda: seq.kvm.kvm_prefault(0x205),
            zap=lambda: seq.kvm.kvm_zap_table(ZS_GFN))
    n = seq.check()
    if bug:
        assert not seq.found("KVM_BUG_ON", "d")          # every child went fine...
        assert seq.found("TDX_BUG_ON", "d")             # ...the parent's BLOCK did not
        assert n > 0
        sigs = {f.where for f in seq.found("INVARIANT")}
        assert "invariant1" in sigs and "invariant2" in sigs, sigs
        # the parent's BLOCK is what failed: the S-EPT table is still linked, empty
        assert seq.kvm.module.peek(0, 2).state == NL_MAPPED
        assert seq.kvm.module.peek(ZS_GFN, 1).state == FREE
    else:
        assert n == 0 and seq.rec.findings == []
