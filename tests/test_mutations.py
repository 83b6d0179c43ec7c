"""Mutation tests: a deliberately broken model is caught by the invariants of MODEL §7.

Each mutation breaks KVM (and the module's own refusal where it would refuse), runs the
same deterministic drive as the row tests, and must produce the named invariant.  The
unmutated drive is clean (tests/test_smoke_rows.py), so these cannot pass by accident.
"""
import pytest

from core.guest import ProgramGuest
from core.invariants import check_invariants
from core.kvm import Kvm
from core.sched import current

pytestmark = pytest.mark.timeout(60)


def drive(mutations, *, teardown=True):
    kvm = Kvm("hugepage-rfc", nr_vcpus=1, mutations=frozenset(mutations))
    kvm.build()
    v = kvm.vcpus[0]
    current().vcpu = v
    g = ProgramGuest((("touch", 0x2), ("touch", 0x3), ("touch", 0x205)))
    for _ in range(20):
        if not kvm.vcpu_enter_guest(v, g) or g.done:
            break
    found = check_invariants(kvm)
    kvm.kvm_gmem_punch_hole(0x3, 0x4)
    kvm.kvm_split_huge_page(0x205)
    found += check_invariants(kvm)
    if teardown:
        kvm.kvm_destroy_vm()
        found += check_invariants(kvm, final=True)
    return kvm, found


def invariants_of(found):
    return {n for n, _ in found}


def test_unmutated_drive_is_clean():
    kvm, found = drive(())
    assert found == [] and kvm.rec.findings == []


def test_frozen_spte_left_behind():
    """Invariant 2: a FROZEN SPTE left reachable after a fault installed a leaf.

    (Not through a vCPU: the vCPU's local retry would spin on that SPTE forever, which
    is the liveness failure the controlled scheduler reports as a HANG.)"""
    kvm = Kvm("hugepage-rfc", nr_vcpus=1, mutations=frozenset({"leave_frozen"}))
    kvm.build()
    kvm.kvm_prefault(0x2)
    assert 2 in invariants_of(check_invariants(kvm))


def test_leaf_removed_without_track():
    """Invariant 4: a leaf removed by BLOCK and REMOVE with no TRACK in between."""
    _, found = drive({"remove_without_track"})
    assert 4 in invariants_of(found), found


def test_unknown_mutation_is_rejected():
    with pytest.raises(ValueError, match="unknown mutations"):
        Kvm("hugepage-rfc", mutations=frozenset({"nope"}))
