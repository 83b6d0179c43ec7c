"""The hunts' small workloads: the setups and threads of the scripted tests, by name.

``tests/test_scripted.py`` forces one interleaving of each (a :class:`Sequencer` with a
script); a bounded exploration (:mod:`stress.bounded`) runs every interleaving of the
same workload with at most P preemptions (``tdx-stress explore``, ``bench_hunts``).

Each workload has a setup run single-threaded on a fresh VM (its steps are taken at
once) and the threads that then race.  ``run_small(name, variant, strategy)`` builds,
runs and checks one execution.

Example::

    >>> sorted(SMALL)
    ['a1', 'a2', 'b', 'c', 'd']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.guest import ProgramGuest
from core.sched import ThreadCtx, current, set_current

from .strategies import Strategy
from .testing import Sequencer

ZS_GFN = 0x7       # the GFN a zero-step vCPU keeps faulting on (4K region)

Threads = dict[str, Callable[[], None]]


@dataclass(frozen=True)
class Small:
    """One small workload: ``setup(seq)`` prepares the VM, ``threads(seq)`` the racing
    threads; ``hunt`` is the variant whose bug it exposes, ``about`` what races."""
    hunt: str
    about: str
    setup: Callable[[Sequencer], None]
    threads: Callable[[Sequencer], Threads]


def arm_zero_step_at(seq: Sequencer) -> None:
    """A TD with the tables for ZS_GFN populated and vCPU0's zero-step armed at it."""
    seq.kvm.build()
    seq.kvm.kvm_populate_tables(ZS_GFN)
    seq.arm_zero_step(0, ZS_GFN)


def zero_step_vcpu(seq: Sequencer) -> Callable[[], None]:
    """vCPU0 touching ZS_GFN: with zero-step armed, its VP.ENTER holds the S-EPT tree lock
    exclusively."""
    return seq.vcpu_trips(0, ProgramGuest((("touch", ZS_GFN),)))


def pending_2m_split_then_one_accepted(seq: Sequencer) -> None:
    """A 2M leaf AUGed (PENDING), split (512 PENDING 4K children, DEMOTE keeps PENDING),
    then the guest accepts one 4K page of it: the children are a mix."""
    kvm = seq.kvm
    kvm.build()
    kvm.kvm_prefault(0x205)
    if not kvm.kvm_split_huge_page(0x205):
        raise RuntimeError("setup: the split of 0x205 failed")
    if kvm.module.tdg_mem_page_accept(0, 0x205, 1) != 0:
        raise RuntimeError("setup: the guest's accept of 0x205 failed")


def two_mapped_leaves(seq: Sequencer) -> None:
    seq.kvm.build()
    for gfn in (0x3, 0x4):
        seq.kvm.kvm_prefault(gfn)


def table_with_one_leaf(seq: Sequencer) -> None:
    seq.kvm.build()
    seq.kvm.kvm_prefault(ZS_GFN)          # the 4K table under 2M range 0x0 has one leaf


SMALL: dict[str, Small] = {
    "a1": Small("hunt-a1", "a prefault's PAGE.AUG against a zero-step vCPU",
                arm_zero_step_at,
                lambda s: {"vcpu0": zero_step_vcpu(s),
                           "mapper": lambda: s.kvm.kvm_prefault(ZS_GFN)}),
    "a2": Small("hunt-a2", "a table population's SEPT.ADD against a zero-step vCPU",
                arm_zero_step_at,
                lambda s: {"vcpu0": zero_step_vcpu(s),
                           "populator": lambda: s.kvm.kvm_populate_tables(0x20007)}),
    "b": Small("hunt-b", "a huge-page recovery over a split 2M range with mixed children",
               pending_2m_split_then_one_accepted,
               lambda s: {"promoter": lambda: s.kvm.kvm_recover_huge_pages(0x205)}),
    "c": Small("hunt-c", "two leaf removals (memory errors) at once",
               two_mapped_leaves,
               lambda s: {"z1": lambda: s.kvm.kvm_gmem_error_folio(0x3, 0x4),
                          "z2": lambda: s.kvm.kvm_gmem_error_folio(0x4, 0x5)}),
    "d": Small("hunt-d", "a fault's PAGE.AUG against a table zap",
               table_with_one_leaf,
               lambda s: {"fault": lambda: s.kvm.kvm_prefault(0x205),
                          "zap": lambda: s.kvm.kvm_zap_table(ZS_GFN)}),
}


def run_small(name: str, variant: str, strategy: Strategy,
              max_steps: int = 100_000) -> Sequencer:
    """One execution of workload ``name`` on ``variant`` under ``strategy``; the
    invariants are checked at the end unless the run was stopped."""
    w = SMALL[name]
    seq = Sequencer(variant, strategy=strategy, max_steps=max_steps)
    main = current()
    set_current(ThreadCtx("setup"))      # a fresh context per execution, as run_seed's
    try:
        w.setup(seq)
        seq.sched.run(list(w.threads(seq).items()))
    finally:
        set_current(main)
    if not seq.sched.aborting:
        seq.check()
    return seq


__all__ = ["SMALL", "Small", "run_small", "ZS_GFN"]
