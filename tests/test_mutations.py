"""Mutation tests: a deliberately broken model is caught by the invariants of MODEL §7.

Each planted bug is a patch (``tests/patches/``) over hugepage-rfc that breaks KVM (and
the module's own refusal where it would refuse), runs the same deterministic drive as
the row tests, and must produce the named invariant.  The unpatched drive is clean, so
these cannot pass by accident.
"""
from pathlib import Path

import pytest

from core.guest import ProgramGuest
from core.invariants import check_invariants
from core.kvm import Kvm
from core.sched import current
from core.variants import get_variant

pytestmark = [pytest.mark.quality, pytest.mark.timeout(60)]

PATCHES = Path(__file__).resolve().parent / "patches"


def planted(name):
    return get_variant(str(PATCHES / f"{name}.py"))


def drive(variant="hugepage-rfc", *, teardown=True):
    kvm = Kvm(variant, nr_vcpus=1)
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


def test_unpatched_drive_is_clean():
    kvm, found = drive()
    assert found == [] and kvm.rec.findings == []
    # the drive reaches what the planted bugs break: a removal and a split
    assert kvm.module.calls.get("TDH.MEM.PAGE.REMOVE") and \
        kvm.module.calls.get("TDH.MEM.PAGE.DEMOTE"), kvm.module.calls


def test_frozen_spte_left_behind():
    """Invariant 2: a FROZEN SPTE left reachable after a fault installed a leaf.

    (Not through a vCPU: the vCPU's local retry would spin on that SPTE forever, which
    is the liveness failure the controlled scheduler reports as a HANG.)"""
    for variant, caught in (("hugepage-rfc", False), (planted("leave_frozen"), True)):
        kvm = Kvm(variant, nr_vcpus=1)
        kvm.build()
        kvm.kvm_prefault(0x2)
        assert (2 in invariants_of(check_invariants(kvm))) is caught, variant


def test_leaf_removed_without_track():
    """Invariant 4: a leaf removed by BLOCK and REMOVE with no TRACK in between."""
    _, found = drive(planted("remove_untracked_lax_module"))
    assert 4 in invariants_of(found), found
