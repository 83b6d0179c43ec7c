"""Thread roles and the workload a seed generates (vCPU guest programs, zapper scripts).

The address space is small on purpose, so that threads meet: a 4K region of 16 pages
(one 4K table), a 2M region (a 2M leaf or a table of 512), and a few shared pages.  Every
vCPU touches and accepts pages of those regions; every zapper punches holes, converts,
deletes and re-adds memslots, splits 2M leaves, zaps tables, prefaults, populates tables
and recovers huge pages in the same ranges.  The path a hunt variant opens is drawn more
often, so a hunt exercises it in every run.

Zero-step mitigation needs the same EPT violation six times without progress: a vCPU
touching a page that a zapper keeps invalidating bounces out of its local retry on every
kick, which is how the defaults make it common.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from core.kvm import Kvm, MemRegion
from core.sched import current
from core.spte import PG_LEVEL_2M, PG_LEVEL_4K
from core.variants import get_variant

from .config import RunConfig

SMALL = MemRegion(0x0, 16)
HUGE = MemRegion(0x200, 512, huge=True)
REGIONS = (SMALL, HUGE)
SHARED_GFNS = tuple(range(0x40, 0x44))
# the end of the VM's guest-physical memory: every GFN a workload names is below it
GFN_LIMIT = max(r.base + r.npages for r in REGIONS)
HUGE_HOT = (0x200, 0x201, 0x205, 0x2FF)      # a few pages of the 2M region guests touch

# zapper operations and their weights; a hunt variant's own path is weighted up
ZAP_OPS = {
    "punch": 3, "convert": 2, "memslot": 3, "notifier": 2, "split": 2, "zap_table": 2,
    "prefault": 2, "populate": 1, "recover": 1,
}
# kvm_gmem_release() while the TD runs: a VMM that converts on its own (async) closes
# guest_memfd as its first zapper's last operation in this share of runs
RELEASE_RATE = 0.25
ZAP_OPS_KNOWN = frozenset(ZAP_OPS) | {"release"}
# The operations a hunt's path needs: the path itself (x4), and what sets it up (x2):
# a2 links tables, so tables must go first; b promotes tables that a split made.
HUNT_OPS = {"a1": ("prefault", ("memslot", "punch")), "a2": ("populate", ("zap_table",)),
            "b": ("recover", ("split",)), "c": ("notifier", ()), "d": ("zap_table", ())}


@dataclass(frozen=True)
class Workload:
    initial: tuple[int, ...]                 # PAGE.ADD before finalise
    programs: tuple[tuple[tuple, ...], ...]  # per vCPU
    zaps: tuple[tuple[tuple, ...], ...]      # per zapper


def _gfn(rng: random.Random, hugepages: bool) -> int:
    if hugepages and rng.random() < 0.35:
        return rng.choice(HUGE_HOT)
    return rng.randrange(SMALL.base, SMALL.base + 8)    # a hot half of the 4K region


def generate(cfg: RunConfig, rng: random.Random) -> Workload:
    """The workload of a run, from the seed's workload stream: the Linux TD's
    (:func:`generate_linux`) or the ``ve-accept`` guest's (:func:`generate_ve_accept`)."""
    w = generate_linux(cfg, rng) if cfg.guest == "linux" else generate_ve_accept(cfg, rng)
    if cfg.conversions == "async" and w.zaps and rng.random() < RELEASE_RATE:
        # a hostile VMM closes guest_memfd while the vCPUs still run: the last thing
        # its first zapper does (drawn last, so the rest of the workload is unchanged)
        zaps = (w.zaps[0] + (("release", 0, 0),),) + w.zaps[1:]
        w = Workload(w.initial, w.programs, zaps)
    return w


def _zap_weights(cfg: RunConfig) -> dict[str, int]:
    """The zapper operations a run draws, and their weights."""
    variant = get_variant(cfg.variant)
    weights = dict(ZAP_OPS)
    if variant.hunt != "a1":
        # KVM_PRE_FAULT_MEMORY is a vCPU ioctl, serialised on vcpu->mutex, which a vCPU
        # in KVM_RUN holds: a VMM cannot prefault while every vCPU runs, as the model's
        # do for the whole run.  Only hunt-a1, whose what-if path is a prefault, has it.
        del weights["prefault"]
    if variant.hunt != "d" and cfg.guest == "linux":
        # only hunt-d's patch zaps a table on its own: elsewhere the draw is a no-op.
        # The ve-accept workloads keep drawing it (an idle turn of a zapper) so that
        # they, and every figure measured on them, stay as they were.
        del weights["zap_table"]
    if cfg.conversions == "mapgpa":
        # A VMM that converts when the guest asks (MapGPA, on the vCPU thread) does not
        # punch holes in, convert or poison the memory of a running Linux TD behind its
        # back (each of those kills it: it touches the page again, finds it PENDING and
        # KVM kills the VM); its memslot moves are of shared memory.  Only hunt-c's
        # what-if path is a memory-failure zap, so only hunt-c has memory failures.
        for op in ("punch", "convert"):
            del weights[op]
        if variant.hunt != "c":
            del weights["notifier"]
    if variant.hunt:
        path, setup = HUNT_OPS[variant.hunt]
        weights[path] *= 4
        for op in setup:
            if op in weights:
                weights[op] *= 2
    return weights


def _zap_scripts(cfg: RunConfig, rng: random.Random, homes: list[int],
                 pick: "Callable[[], int]") -> tuple[tuple[tuple, ...], ...]:
    """Every zapper's script: operations on the pages the guests use."""
    variant = get_variant(cfg.variant)
    huge, hunt = variant.hugepages, variant.hunt
    weights = _zap_weights(cfg)
    names = sorted(weights)
    zaps = []
    for _ in range(cfg.zappers):
        script: list[tuple] = []
        prev = rng.choice(homes)
        for _ in range(cfg.ops):
            op = rng.choices(names, weights=[weights[n] for n in names])[0]
            r = rng.random()
            if op == "memslot" and cfg.conversions == "mapgpa":
                # a shared memslot moves (a BAR, say); the VMM's next operations stay on
                # the guest's memory
                script.append((op, rng.choice(SHARED_GFNS), rng.choice((1, 2, 4, 8))))
                continue
            if (op in ("split", "recover", "zap_table")
                    or (hunt == "a2" and op == "populate")) and huge and r < 0.7:
                g = rng.choice(HUGE_HOT)
            elif r < 0.4:
                g = prev            # a VMM works on one range for a while (punch, prefault)
            elif r < 0.7:
                g = rng.choice(homes)
            else:
                g = pick()
            prev = g
            n = rng.choice((1, 2, 4, 8))
            script.append((op, g, n))
        zaps.append(tuple(script))
    return tuple(zaps)


def generate_linux(cfg: RunConfig, rng: random.Random) -> Workload:
    """A Linux TD's programs.  Memory starts unaccepted; before a vCPU first touches a
    page it calls accept_memory() for it, which accepts the page's unit (the whole 2M
    range in the huge region, tdx_accept_memory() trying 2M first) unless another vCPU
    has (core.guest.LinuxGuestMemory).  With MapGPA conversions each vCPU owns a few
    pages that it alone converts to shared and back (accepting them again at 4K), as a
    Linux page under set_memory_decrypted() has one user; every other page is touched
    by any vCPU.  The PAGE.ADD pages are accepted from the start."""
    variant = get_variant(cfg.variant)
    huge = variant.hugepages
    initial = tuple(sorted(rng.sample(range(SMALL.base + 8, SMALL.base + 16), 2)))
    hot = list(range(SMALL.base, SMALL.base + 8)) + (list(HUGE_HOT) if huge else [])
    rng.shuffle(hot)
    mine: list[list[int]] = [[] for _ in range(cfg.vcpus)]
    if cfg.conversions == "mapgpa":
        for v in range(cfg.vcpus):
            mine[v] = [hot.pop() for _ in range(min(2, len(hot) - 1))]
    stable = hot + list(initial)
    programs = []
    homes = []
    for v in range(cfg.vcpus):
        pages = stable + mine[v]
        home = rng.choice(pages)
        homes.append(home)
        state: dict[int, str] = {g: "private" for g in initial}
        prog: list[tuple] = []
        while len(prog) < cfg.ops * 2:
            if rng.random() < 0.15:
                prog.append(("shared", rng.choice(SHARED_GFNS)))
                continue
            g = home if rng.random() < 0.4 else rng.choice(pages)
            st = state.get(g, "unaccepted")
            if st == "unaccepted":
                level = PG_LEVEL_2M if huge and g >= HUGE.base else PG_LEVEL_4K
                prog.append(("accept", g, level))       # accept_memory() of its unit
                state[g] = "private"
                prog.append(("touch", g))
            elif st == "private":
                if g in mine[v] and rng.random() < 0.25:
                    prog.append(("mapgpa", g, 1, 1))
                    state[g] = "shared"
                else:
                    prog.append(("touch", g))
            elif rng.random() < 0.5:
                prog.append(("shared", g))
            else:
                prog.append(("mapgpa", g, 1, 0))        # back to private, accepted
                state[g] = "private"
        programs.append(tuple(prog))
    zaps = _zap_scripts(cfg, rng, homes, lambda: _gfn(rng, huge))
    return Workload(initial, tuple(programs), zaps)


def generate_ve_accept(cfg: RunConfig, rng: random.Random) -> Workload:
    """The ``ve-accept`` guest's programs: any vCPU touches and accepts any page, and
    its #VE handler accepts what it touches."""
    variant = get_variant(cfg.variant)
    huge = variant.hugepages
    hunt = variant.hunt
    # a1 and a2 meet a guest ACCEPT holding an entry lock: accept more in those hunts
    accept_bias = 0.2 if hunt in ("a1", "a2") else 0.0
    programs = []
    # Guests have locality: each vCPU keeps coming back to one page, and the VMM's
    # zappers work on the pages guests use.  That is what lets an invalidation window
    # catch a vCPU again and again (zero-step) and puts two threads on one S-EPT entry.
    homes = [_gfn(rng, huge) for _ in range(cfg.vcpus)]
    for home in homes:
        prog: list[tuple] = []
        for _ in range(cfg.ops * 2):
            r = rng.random()
            g = home if rng.random() < 0.4 else _gfn(rng, huge)
            if hunt == "a2" and rng.random() < 0.3:
                # a2's other contender: a 2M ACCEPT holding the entry its table goes in
                g = rng.choice(HUGE_HOT)
                r = 0.7
            if r < 0.6 - accept_bias:
                prog.append(("touch", g))
            elif r < 0.85:
                two_m = huge and g >= HUGE.base and rng.random() < (0.8 if hunt == "a2" else 0.5)
                prog.append(("accept", g, PG_LEVEL_2M if two_m else PG_LEVEL_4K))
            else:
                prog.append(("shared", rng.choice(SHARED_GFNS)))
        programs.append(tuple(prog))
    zaps = _zap_scripts(cfg, rng, homes, lambda: _gfn(rng, huge))
    initial = tuple(sorted(rng.sample(range(SMALL.base + 8, SMALL.base + 16), 2)))
    return Workload(initial, tuple(programs), zaps)


def new_vm(cfg: RunConfig, sched: object, rec: object, busy_rng: random.Random,
           nr_vcpus: int, signal_rng: random.Random | None = None) -> Kvm:
    return Kvm(cfg.variant, sched, nr_vcpus=max(1, nr_vcpus),  # type: ignore[arg-type]
               regions=REGIONS, busy_rate=cfg.busy_rate, rng=busy_rng,
               recorder=rec, signal_rate=cfg.signal_rate,  # type: ignore[arg-type]
               signal_rng=signal_rng, guest=cfg.guest,
               hostile_vmm=cfg.conversions == "async")


def workload_to_json(w: Workload) -> dict:
    return {"initial": list(w.initial),
            "programs": [[list(i) for i in p] for p in w.programs],
            "zaps": [[list(o) for o in z] for z in w.zaps]}


GUEST_OPS = {"touch": 2, "accept": 3, "shared": 2, "mapgpa": 4}


def workload_from_json(d: dict) -> Workload:
    """Read a workload back, checking every operation is one this tool knows."""
    w = Workload(tuple(d["initial"]),
                 tuple(tuple(tuple(i) for i in p) for p in d["programs"]),
                 tuple(tuple(tuple(o) for o in z) for z in d["zaps"]))
    for prog in w.programs:
        for ins in prog:
            if GUEST_OPS.get(ins[0] if ins else "") != len(ins) or \
                    not all(isinstance(x, int) for x in ins[1:]):
                raise ValueError(f"unknown guest instruction {list(ins)}")
    for script in w.zaps:
        for op in script:
            if len(op) != 3 or op[0] not in ZAP_OPS_KNOWN or \
                    not all(isinstance(x, int) for x in op[1:]):
                raise ValueError(f"unknown zapper operation {list(op)}")
    if not all(isinstance(g, int) for g in w.initial):
        raise ValueError("initial pages must be GFNs")
    return w


def run_zap_op(kvm: Kvm, op: tuple) -> None:
    """One zapper operation: what a VMM thread or the kernel does to the VM."""
    name, g, n = op
    if name == "punch":
        kvm.kvm_gmem_punch_hole(g, g + n)
    elif name == "convert":
        kvm.kvm_vm_set_mem_attributes(g, g + n, shared=True)
    elif name == "memslot":
        kvm.kvm_memslot_delete_readd(g, g + n)
    elif name == "notifier":
        kvm.kvm_gmem_error_folio(g, g + n)
    elif name == "split":
        kvm.kvm_split_huge_page(g)
    elif name == "zap_table":
        kvm.kvm_zap_table(g)
    elif name == "prefault":
        kvm.kvm_prefault(g)
    elif name == "populate":
        kvm.kvm_populate_tables(g)
    elif name == "recover":
        kvm.kvm_recover_huge_pages(g)
    elif name == "release":
        kvm.kvm_gmem_release()
    else:
        raise ValueError(f"unknown zapper operation {name!r}")


class Running:
    """How many zapper threads have not finished yet (shared by a run's threads; read and
    written only by the thread holding the baton in controlled mode)."""

    def __init__(self, zappers: int) -> None:
        self.zappers = zappers


def vcpu_role(kvm: Kvm, vcpu_id: int, program: tuple[tuple, ...], max_trips: int,
              running: Running | None = None):
    """A vCPU thread: enter the guest until its program is done or the VM is dead.

    Liveness (every retry must end): zappers are finite, and while one still works it
    may keep an invalidation open and the vCPU retrying (KVM has the same property), so
    entries without progress count only once every zapper has finished; then
    ``max_trips`` of them is a livelock."""
    from core.guest import LinuxTdGuest, ProgramGuest

    def body() -> None:
        v = kvm.vcpus[vcpu_id]
        current().vcpu = v
        guest = LinuxTdGuest(program) if kvm.guest_kind == "linux" else ProgramGuest(program)
        rip, stuck = guest.rip, 0
        me = current()
        me.item = rip
        # the VMM calls KVM_RUN again until the guest is done or it stopped the VM
        while kvm.vcpu_enter_guest(v, guest) and not guest.done and not kvm.vmm_stopped:
            me.item = guest.rip        # exit handling serves the instruction at RIP
            if guest.rip != rip:
                rip, stuck = guest.rip, 0
                continue
            if running is None or running.zappers == 0:
                stuck += 1
            if stuck >= max_trips:
                # docs/model.md §7, invariant 9: every retry must end.  Zappers are
                # finite, so a guest that cannot retire one instruction in this many
                # entries is livelocked.
                kvm.rec.report("HANG", "vcpu_run:no_progress",
                               f"vcpu{vcpu_id} made no progress at guest RIP {rip} "
                               f"({program[rip] if rip < len(program) else 'end'}) in "
                               f"{stuck} entries", current())
                return
    return body


def zapper_role(kvm: Kvm, script: tuple[tuple, ...], running: Running | None = None):
    def body() -> None:
        me = current()
        try:
            for k, op in enumerate(script):
                me.item = k
                run_zap_op(kvm, op)
        finally:
            if running is not None:
                running.zappers -= 1
    return body
