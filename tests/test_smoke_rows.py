"""Deterministic, single-threaded drives of every row-producing path: each variant
produces exactly the rows MODEL §5 allows it, and the hunt rows only in their hunt."""
import pytest

from core.guest import ProgramGuest
from core.invariants import check_invariants
from core.kvm import Kvm
from core.sched import current
from core.variants import VARIANTS

pytestmark = pytest.mark.unit


def drive(variant: str) -> tuple[Kvm, dict[int, int]]:
    kvm = Kvm(variant, nr_vcpus=1)
    kvm.build((0x1,))                     # PAGE.ADD before finalise (rows 3, 1)
    v = kvm.vcpus[0]
    current().vcpu = v
    guest = ProgramGuest((("touch", 0x2), ("touch", 0x3), ("accept", 0x4, 1),
                          ("touch", 0x205), ("shared", 0x5)))
    for _ in range(50):
        if not kvm.vcpu_enter_guest(v, guest):
            break
    assert guest.done
    assert check_invariants(kvm) == []
    kvm.kvm_gmem_punch_hole(0x3, 0x4)     # row 12
    kvm.kvm_split_huge_page(0x205)        # row 8 (hugepages)
    kvm.kvm_recover_huge_pages(0x205)     # row 9 (hunt-b)
    kvm.kvm_split_huge_page(0x205)
    kvm.kvm_gmem_error_folio(0x2, 0x3)    # row 12, or 11 (hunt-c)
    kvm.kvm_zap_table(0x205)              # nothing, or row 13 (hunt-d); 14 only at teardown
    kvm.kvm_prefault(0x6)                 # row 1, or 2 (hunt-a1)
    kvm.kvm_populate_tables(0x20007)      # row 3, or 4 (hunt-a2): a range with no table
    kvm.running_rows = list(current().rows)  # type: ignore[attr-defined]
    kvm.kvm_destroy_vm()                  # rows 12, 14
    rows = {i: c for i, c in enumerate(current().rows) if c}
    return kvm, rows


@pytest.mark.parametrize("variant", ["v6.19", "refactor-2026"])
def test_4k_variants_rows(variant):
    kvm, rows = drive(variant)
    assert set(rows) == {1, 3, 12, 14}
    assert kvm.rec.findings == []
    assert check_invariants(kvm, final=True) == []


@pytest.mark.parametrize("variant", ["v6.19", "refactor-2026", "hugepage-rfc"])
def test_no_sept_table_removed_while_the_td_runs(variant):
    """KVM never zaps a mirror page table while the TD runs (tdx_sept_free_private_spt:
    "KVM should only free mirror page tables after the TD's hkid is freed"): no
    TDH.MEM.SEPT.REMOVE ever, row 14 only once teardown has begun."""
    kvm, rows = drive(variant)
    assert "TDH.MEM.SEPT.REMOVE" not in kvm.module.calls
    assert kvm.running_rows[14] == 0 and rows[14] > 0
    assert kvm.module.calls_by_phase["runnable"].get("TDH.PHYMEM.PAGE.RECLAIM", 0) == 0
    assert kvm.module.calls_by_phase["teardown"]["TDH.PHYMEM.PAGE.RECLAIM"] > 0


def test_hugepage_rfc_rows():
    kvm, rows = drive("hugepage-rfc")
    assert set(rows) == {1, 3, 8, 12, 14}
    assert kvm.rec.findings == []
    assert check_invariants(kvm, final=True) == []


@pytest.mark.parametrize("variant,row", [("hunt-a1", 2), ("hunt-a2", 4), ("hunt-b", 9),
                                         ("hunt-c", 11), ("hunt-d", 13)])
def test_hunt_rows_only_in_their_hunt(variant, row):
    _, rows = drive(variant)
    assert row in rows
    others = {r for name, v in VARIANTS.items() if v.opens_row and name != variant
              for r in [v.opens_row]}
    # hunt-d's read-lock table zap tears its children down under the read lock too:
    # those are leaf P -> NP with shared=true, row 11 by the table's own definition.
    if variant == "hunt-d":
        others.discard(11)
    assert not (set(rows) & others), rows
