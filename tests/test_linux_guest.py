"""The Linux TD guest (issue 10): SEPT_VE_DISABLE, accept before use with
tdx_accept_memory()'s policy, accept_memory()'s shared bitmap, and MapGPA conversions on
the vCPU thread.  Each test fails on the model's old guest (accept on #VE, 64 BUSY
retries, userspace-only conversions)."""
import pytest

from core.guest import LinuxTdGuest, ProgramGuest
from core.kvm import Kvm
from core.sched import current
from core.spte import PG_LEVEL_2M, PG_LEVEL_4K
from core.tdx_errno import TDX_OPERAND_BUSY, TDX_SUCCESS
from core.tdx_module import MAPPED
from stress.config import ConfigError, RunConfig
from stress.runner import run_seed

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def vm(guest="linux", variant="hugepage-rfc", initial=()):
    kvm = Kvm(variant, nr_vcpus=2, guest=guest)
    kvm.build(initial)
    current().vcpu = kvm.vcpus[0]
    return kvm


def run(kvm, guest, vcpu=0, trips=50):
    for _ in range(trips):
        if not kvm.vcpu_enter_guest(kvm.vcpus[vcpu], guest) or guest.done:
            break


def test_sept_ve_disable_makes_a_pending_touch_a_td_exit():
    """td_ept_violation.c: with pending_ve_disable a PENDING page is a TD exit, not a
    #VE."""
    for guest, want in (("linux", "pending_exit"), ("ve-accept", "pending")):
        kvm = vm(guest)
        kvm.kvm_tdp_page_fault(0x5, True, PG_LEVEL_4K)       # AUG: PENDING
        assert kvm.module.guest_access(0, 0x5) == want


def test_a_linux_td_touching_a_pending_page_is_killed_not_a_finding():
    """tdx_handle_ept_violation(): tdx_is_sept_violation_unexpected_pending() ->
    kvm_vm_dead(), -EIO: the VM is dead and the run reports no bug."""
    kvm = vm()
    kvm.kvm_tdp_page_fault(0x5, True, PG_LEVEL_4K)
    g = LinuxTdGuest((("touch", 0x5),))
    assert kvm.vcpu_enter_guest(kvm.vcpus[0], g) is False
    assert kvm.vm_dead and not kvm.vm_bugged
    assert "Guest access before accepting" in kvm.vm_killed
    assert kvm.rec.findings == []
    # the old guest accepted it from its #VE handler and went on
    old = vm("ve-accept")
    old.kvm_tdp_page_fault(0x5, True, PG_LEVEL_4K)
    pg = ProgramGuest((("touch", 0x5),))
    run(old, pg)
    assert pg.done and not old.vm_dead


def test_accept_falls_back_from_2m_to_4k_on_any_error_and_never_retries():
    """tdx_accept_memory() / try_accept_one(): a BUSY 2M accept falls back to 4K at
    once; a BUSY 4K accept fails the accept (arch_accept_memory() panics: a GUEST
    finding), with no retry at either size."""
    kvm = vm()
    calls = []
    real = kvm.module.tdg_mem_page_accept

    def accept(vcpu_id, gfn, level):
        calls.append((gfn, level))
        if level == PG_LEVEL_2M or gfn == 0x203:
            return TDX_OPERAND_BUSY
        return real(vcpu_id, gfn, level)
    kvm.module.tdg_mem_page_accept = accept
    g = LinuxTdGuest((("accept", 0x200, PG_LEVEL_2M),))
    run(kvm, g, trips=200)
    assert calls[0] == (0x200, PG_LEVEL_2M)
    assert calls.count((0x200, PG_LEVEL_2M)) == 1               # no 2M retry
    assert calls.count((0x203, PG_LEVEL_4K)) == 1               # no 4K retry
    assert {gfn for gfn, _ in calls} == set(range(0x200, 0x204))
    assert g.failed and not g.done
    assert [(f.kind, f.where) for f in kvm.rec.findings] == [("GUEST", "arch_accept_memory")]


def test_accept_memory_accepts_a_unit_once_for_all_vcpus():
    """accept_memory(): the second vCPU finds the unit accepted and makes no TDCALL (a
    second TDG.MEM.PAGE.ACCEPT would fail with PAGE_ALREADY_ACCEPTED, which
    try_accept_one() takes as failure)."""
    kvm = vm()
    a = LinuxTdGuest((("accept", 0x205, PG_LEVEL_2M), ("touch", 0x205)))
    run(kvm, a)
    assert a.done and a.accepted == 1
    current().vcpu = kvm.vcpus[1]
    b = LinuxTdGuest((("accept", 0x2FF, PG_LEVEL_2M), ("touch", 0x2FF)))
    run(kvm, b, vcpu=1)
    assert b.done and b.accepts == 0 and kvm.rec.findings == []


def test_mapgpa_converts_on_the_vcpu_thread_and_back():
    """MapGPA: KVM_HC_MAP_GPA_RANGE to the VMM on this vCPU's thread, which sets the
    attributes and punches out the private backing (kvm_convert_memory()); back to
    private, the guest accepts the page again (tdx_enc_status_changed())."""
    kvm = vm()
    prog = (("accept", 0x5, PG_LEVEL_4K), ("touch", 0x5), ("mapgpa", 0x5, 1, 1),
            ("shared", 0x5), ("mapgpa", 0x5, 1, 0), ("touch", 0x5))
    g = LinuxTdGuest(prog)
    seen = []
    real = kvm.vmm_convert_memory

    def convert(start, end, shared):
        seen.append((start, end, shared, 0x5 in kvm.gmem))
        real(start, end, shared)
        seen.append(0x5 in kvm.gmem)
    kvm.vmm_convert_memory = convert
    run(kvm, g)
    assert g.done and kvm.rec.findings == [] and not kvm.vm_dead
    assert seen[0] == (0x5, 0x6, True, True) and seen[1] is False   # backing punched
    assert seen[2][:3] == (0x5, 0x6, False)
    assert kvm.vcpus[0].stats["map_gpa"] == 2 and 0x5 not in kvm.shared_gfns
    leaf = kvm.module.leaf_of(0x5)
    assert leaf is not None and leaf[1].state == MAPPED
    assert g.accepted == 2


def test_config_refuses_mapgpa_without_a_linux_guest():
    with pytest.raises(ConfigError, match="needs --guest linux"):
        RunConfig(guest="ve-accept", conversions="mapgpa").validate()
    with pytest.raises(ConfigError, match="unknown guest"):
        RunConfig(guest="windows").validate()


def test_a_run_models_a_linux_td_converting_with_mapgpa_unless_told():
    """Issue 10: a Linux TD by default; each guest's own conversion flow unless told; the
    default portfolio runs PCT on even seeds and random on odd ones."""
    cfg = RunConfig().validate()
    assert (cfg.guest, cfg.conversions, cfg.strategy) == ("linux", "mapgpa", "portfolio")
    assert RunConfig(guest="ve-accept").conversions == "async"
    assert RunConfig(conversions="async").conversions == "async"
    assert [cfg.strategy_of(s) for s in range(4)] == ["pct", "random", "pct", "random"]
    assert RunConfig(strategy="pct").strategy_of(1) == "pct"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_an_old_configuration_replays_as_the_guest_it_ran():
    """A repro written before the guest was a choice ran the ve-accept guest with async
    conversions."""
    cfg = RunConfig.from_dict({"variant": "v6.19"})
    assert (cfg.guest, cfg.conversions) == ("ve-accept", "async")


@pytest.mark.quality
@pytest.mark.parametrize("variant", ["hugepage-rfc", "v6.19"])
def test_linux_td_runs_clean_on_as_designed_kernels(variant):
    """As-designed kernels, a Linux TD with MapGPA conversions: no finding, no VM killed,
    and the guests convert memory."""
    cfg = RunConfig(variant=variant, guest="linux", conversions="mapgpa").validate()
    conversions = 0
    for seed in range(15):
        r = run_seed(cfg, seed, record_steps=False)
        assert r.findings == [], (seed, [f.signature for f in r.findings])
        conversions += sum(s.get("map_gpa", 0) for s in r.vcpu_stats)
    assert conversions > 0
    assert TDX_SUCCESS == 0


@pytest.mark.integration
def test_a_hostile_vmm_closes_guest_memfd_in_a_share_of_async_runs():
    """kvm_gmem_release() while the TD runs: the last operation of the first zapper in
    about a quarter of async workloads, never with MapGPA (a VMM that converts when
    asked keeps guest_memfd open); such runs end clean on an as-designed kernel."""
    from stress.config import Streams
    from stress.workload import generate
    for conv, lo, hi in (("async", 10, 45), ("mapgpa", 0, 0)):
        cfg = RunConfig(guest="linux", conversions=conv).validate()
        ws = [generate(cfg, Streams(s).get("workload")) for s in range(100)]
        closing = [s for s, w in enumerate(ws) if w.zaps[0][-1] == ("release", 0, 0)]
        assert lo <= len(closing) <= hi, (conv, len(closing))
    cfg = RunConfig(guest="ve-accept").validate()
    seed = next(s for s in range(100)
                if generate(cfg, Streams(s).get("workload")).zaps[0][-1][0] == "release")
    r = run_seed(cfg, seed)
    assert not r.findings
    assert any(s.label == "kvm_gmem_release" for s in r.step_log)


@pytest.mark.scripted
@pytest.mark.parametrize("hostile", [False, True])
def test_a_guest_panic_is_a_finding_only_when_the_vmm_converts_on_request(hostile):
    """A memslot deletion BLOCKs the page a Linux TD is accepting: the ACCEPT gets BUSY,
    tdx_accept_memory() has no smaller size to try and the guest panics.  With a VMM
    that converts only when asked that is a GUEST finding (KVM made it fail); with one
    that takes memory on its own (async) it is the run's outcome, and the VMM stops the
    VM.  The old model reported both and left the other vCPU threads running."""
    from stress.testing import Sequencer
    seq = Sequencer("hugepage-rfc", [("through", "vcpu0", "TDH.MEM.PAGE.AUG"),
                                     ("through", "vcpu0", "TDH.VP.ENTER"),
                                     ("through", "vmm", "TDH.MEM.RANGE.BLOCK:lock"),
                                     ("finish", "vcpu0")],
                    guest="linux", hostile_vmm=hostile)
    seq.kvm.build()
    seq.run(vcpu0=seq.vcpu_trips(0, LinuxTdGuest((("accept", 0x3, PG_LEVEL_4K),))),
            vmm=lambda: seq.kvm.kvm_memslot_delete_readd(0x3, 0x7))
    guest = seq.found("GUEST")
    assert seq.kvm.vmm_stopped
    if hostile:
        assert not guest and "hostile VMM" in (seq.kvm.vm_killed or "")
    else:
        assert [f.where for f in guest] == ["arch_accept_memory"]
