"""The simulated TDX module (docs/model.md §4): S-EPT, try-locks, epochs, zero-step, lifecycle.

Every SEAMCALL is two operations of the scheduler: the first walks the S-EPT and
try-takes every lock the call needs (returning ``TDX_OPERAND_BUSY`` at once if one is
taken, as the module never waits); the second checks states, applies the effect and
releases the locks.  Between the two, other threads run and see the locks held, so two
SEAMCALLs on two threads really collide and BUSY comes from modelled contention.

The S-EPT is a dict of entries keyed by (level, first gfn); an entry at level L maps
``level_pages(L)`` 4K pages.  Level-4 entries live in the TD's root (a TD control page),
so they always exist; an entry below is reachable when the entry above it is a non-leaf.

The module also audits what it is asked to do (``audit``): the facts the invariants
need that only the module sees (a table removed with live children, the HKID released
with private leaves left).  A planted-bug patch that breaks the module's own check too
records its fact there, so that the invariant checker is shown to catch it
(``tests/patches/``).
"""
from __future__ import annotations

import random
from typing import Callable

from .sched import Scheduler
from .spte import (
    LEVEL_MASK,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    ROOT_LEVEL,
    gfn_round_for_level,
    level_pages,
)
from .tdx_errno import (
    TDX_EPT_ENTRY_STATE_INCORRECT,
    TDX_EPT_INVALID_PROMOTE_CONDITIONS,
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
    TDX_OPERAND_ID_TDVPR,
    TDX_PAGE_ALREADY_ACCEPTED,
    TDX_PAGE_SIZE_MISMATCH,
    TDX_PREVIOUS_TLB_EPOCH_BUSY,
    TDX_SUCCESS,
    TDX_TD_KEYS_NOT_CONFIGURED,
    TDX_TLB_TRACKING_NOT_DONE,
)

# S-EPT entry states (docs/model.md §4.2)
FREE = "FREE"
NL_MAPPED = "NL_MAPPED"
NL_BLOCKED = "NL_BLOCKED"
PENDING = "PENDING"
MAPPED = "MAPPED"
BLOCKED = "BLOCKED"
PENDING_BLOCKED = "PENDING_BLOCKED"
LEAF_STATES = (PENDING, MAPPED, BLOCKED, PENDING_BLOCKED)
BLOCKED_STATES = (BLOCKED, PENDING_BLOCKED, NL_BLOCKED)
_BLOCKED_OF = {NL_MAPPED: NL_BLOCKED, MAPPED: BLOCKED, PENDING: PENDING_BLOCKED}  # BLOCK's

# TD lifecycle
TD_BUILD = "BUILD"           # initialised, not finalised: PAGE.ADD allowed
TD_RUNNABLE = "RUNNABLE"     # finalised: VP.ENTER, PAGE.AUG
TD_TEARDOWN = "TEARDOWN"     # HKID released: only reclaim

# td_exit_stepping.h STEPPING_EPF_THRESHOLD: the first 6 EPT violations at one RIP only
# count; from the 7th on each new GPA is recorded (tdx_tdvps.h EPF_GPA_LIST_SIZE: 32).
ZERO_STEP_THRESHOLD = 6
ZERO_STEP_MAX_GPAS = 32

# TD phases, for counting SEAMCALLs (accounting only): "build" until TDH.MR.FINALIZE,
# "runnable", then "teardown" from the moment KVM starts destroying the VM.
PHASES = ("build", "runnable", "teardown")

# Who holds a lock, for classifying BUSY by source.
SRC_ZERO_STEP = "zero_step"
SRC_EPOCH = "epoch"
SRC_ACCEPT = "accept"
SRC_INJECTED = "injected"
SRC_SEPT_TREE = "sept_tree"
SRC_SEPT_ENTRY = "sept_entry"
SRC_TDR = "tdr"
SRC_TDVPR = "tdvpr"


_LOCK_LABEL: dict[str, str] = {}     # SEAMCALL name -> the label of its first step
# level -> the levels a walk to it passes through, from the root down (range(ROOT_LEVEL,
# level, -1), made once)
_LEVELS_ABOVE = tuple(tuple(range(ROOT_LEVEL, level, -1)) for level in range(ROOT_LEVEL + 1))


class SeptEntry:
    __slots__ = ("state", "pfn", "bepoch", "lock", "host_prio")

    def __init__(self) -> None:
        self.state = FREE
        self.pfn: int | None = None     # leaf: guest page; non-leaf: S-EPT table page
        self.bepoch: int | None = None  # TD epoch when blocked
        self.lock: _Call | None = None  # the SEAMCALL/TDCALL holding the entry lock
        # SEPT_ENTRY_TDHP: set by a host that found the lock taken, cleared only when a
        # host next acquires it (tdx_locks.h sept_lock_acquire_host); never on release
        self.host_prio = False

    def __repr__(self) -> str:
        return f"SeptEntry({self.state}, pfn={self.pfn})"


class TryRwLock:
    """One of the module's shared/exclusive try-locks (S-EPT tree, TD epoch, TDR): never
    waits; ``take`` says whether it got the lock."""

    __slots__ = ("shared", "excl")

    def __init__(self) -> None:
        self.shared = 0
        self.excl: _Call | None = None

    def take(self, call: "_Call", excl: bool) -> bool:
        """acquire_sharex_lock_sh() / acquire_sharex_lock_ex(): a try-lock."""
        if self.excl is not None or (excl and self.shared):
            return False
        if excl:
            self.excl = call
        else:
            self.shared += 1
        call.held.append((self, excl))
        return True

    def release(self, excl: bool) -> None:
        """release_sharex_lock_sh() / release_sharex_lock_ex().  (TdxModule._release,
        which releases a SEAMCALL's locks at its end, does this inline.)"""
        if excl:
            self.excl = None
        else:
            self.shared -= 1


class _Call:
    """One SEAMCALL or TDCALL in flight: what it locked, so its second step can release.

    It also carries what :meth:`TdxModule._seamcall` was given, and its two steps are
    its methods (:meth:`lock_step`, :meth:`effect_step`), so that a SEAMCALL makes no
    closure per step."""

    __slots__ = ("name", "guest", "vcpu", "entries", "held", "tdvpr", "module", "lock",
                 "lock_args", "effect", "injectable")

    def __init__(self, name: str, guest: bool, vcpu: TdVcpu | None, module: TdxModule,
                 lock: Callable[..., int], lock_args: tuple, effect: Callable[[_Call], int],
                 injectable: bool) -> None:
        self.name = name
        self.guest = guest
        self.vcpu = vcpu
        self.entries: list[SeptEntry] = []
        self.held: list[tuple[TryRwLock, bool]] = []   # (lock, exclusive) taken
        self.tdvpr: TdVcpu | None = None
        self.module = module
        self.lock = lock
        self.lock_args = lock_args
        self.effect = effect
        self.injectable = injectable

    def __repr__(self) -> str:
        return self.name

    def lock_step(self) -> int:
        """The first step of the SEAMCALL (:meth:`TdxModule._seamcall`): count it, then
        ``lock(call, *lock_args)`` try-takes its locks; released again on failure."""
        m = self.module
        name = self.name
        # the count of this phase's calls (calls_by_phase[phase][name] += 1), without a
        # call or a lookup of the phase each
        by = m.phase_calls
        try:
            by[name] += 1
        except KeyError:
            by[name] = 1
        # (_inject() is False at once without a busy rate: not called then)
        if self.injectable and not m.busy_rate <= 0.0 and m._inject():
            m._count_busy(SRC_INJECTED)
            return TDX_OPERAND_BUSY | TDX_OPERAND_ID_RCX
        err = self.lock(self, *self.lock_args)
        if err:
            m._release(self)
        return err

    def effect_step(self) -> int:
        """The second step of the SEAMCALL: ``effect(call)`` checks and applies; the
        locks are released whatever it returns."""
        try:
            return self.effect(self)
        finally:
            self.module._release(self)


class TdVcpu:
    """The module's per-vCPU state (TDVPS): epoch it runs in, zero-step detector."""

    __slots__ = ("vcpu_id", "running_epoch", "tdvpr_lock", "last_rip", "ept_count",
                 "zstep_gpas", "entered", "exits")

    def __init__(self, vcpu_id: int) -> None:
        self.vcpu_id = vcpu_id
        self.running_epoch: int | None = None   # set while in the guest
        self.tdvpr_lock: _Call | None = None
        self.last_rip: int | None = None
        self.ept_count = 0
        self.zstep_gpas: list[int] = []         # GFNs recorded under zero-step mitigation
        self.entered = 0
        self.exits = 0


class TdxModule:
    """One TD's view of the TDX module.

    ``busy_rate`` injects extra ``TDX_OPERAND_BUSY`` from ``rng`` (its own seeded stream)
    on top of the modelled contention, standing for contenders the model does not
    simulate (other TDCALLs of a running guest).  It only ever fires while some vCPU of
    the TD is in the guest, because only then can such a contender exist: after KVM has
    kicked every vCPU out, the real module cannot be busy, and neither is the model.
    """

    def __init__(self, sched: Scheduler, nr_vcpus: int, *, busy_rate: float = 0.0,
                 rng: random.Random | None = None,
                 sept_ve_disable: bool = True) -> None:
        self._sched = sched
        # TD ATTRIBUTES.SEPT_VE_DISABLE, copied to td_ctls.pending_ve_disable by
        # TDH.MNG.INIT (tdh_mng_init.c): a guest access to a PENDING page is a TD exit
        # to KVM, not a #VE.  A Linux TD requires it (tdx_parse_tdinfo() panics
        # without it unless the TD is a debug TD).
        self.pending_ve_disable = sept_ve_disable
        self.entries: dict[tuple[int, int], SeptEntry] = {}
        self.td_state = TD_BUILD
        self.hkid_assigned = True
        self.td_epoch = 1
        self.tree = TryRwLock()       # S-EPT tree lock
        self.epoch = TryRwLock()      # TD epoch lock
        self.tdr = TryRwLock()        # TDR
        self.vcpus = [TdVcpu(i) for i in range(nr_vcpus)]
        self.sept_pages: dict[int, tuple[int, int]] = {}   # TD-owned S-EPT pages -> (level, gfn)
        self.reclaimed: set[int] = set()
        self.busy_rate = busy_rate
        self._rng = rng or random.Random(0)
        self.busy: dict[str, int] = {}
        # SEAMCALLs and TDCALLs by TD phase (PHASES), for the summary: what a user
        # checks first when a result looks odd.  KVM sets "teardown".
        self.calls_by_phase: dict[str, dict[str, int]] = {p: {} for p in PHASES}
        self.phase = PHASES[0]          # (sets phase_calls too)
        self.audit: list[tuple[int, str]] = []   # (docs/model.md §7 invariant number, message)
        self.audit_checked = 0                   # how much of it the checker has seen
        self.zero_step_arms = 0                  # GPAs recorded by zero-step mitigation

    @property
    def phase(self) -> str:
        """The TD's phase (PHASES), for the accounting of SEAMCALLs by phase."""
        return self._phase

    @phase.setter
    def phase(self, phase: str) -> None:
        self._phase = phase
        self.phase_calls = self.calls_by_phase[phase]   # the counts lock_step() adds to

    @property
    def calls(self) -> dict[str, int]:
        """SEAMCALLs and TDCALLs made, by name, over every phase."""
        out: dict[str, int] = {}
        for by in self.calls_by_phase.values():
            for name, n in by.items():
                out[name] = out.get(name, 0) + n
        return out

    # ------------------------------------------------------------------ S-EPT access
    # (level, gfn_round_for_level(gfn, level)) is the key of an entry; the rounding is
    # written out (gfn & LEVEL_MASK[level]) in the helpers every S-EPT access goes through
    def entry(self, gfn: int, level: int) -> SeptEntry:
        key = (level, gfn & LEVEL_MASK[level])
        e = self.entries.get(key)
        if e is None:
            e = self.entries[key] = SeptEntry()
        return e

    def peek(self, gfn: int, level: int) -> SeptEntry | None:
        return self.entries.get((level, gfn & LEVEL_MASK[level]))

    def _walk(self, gfn: int, level: int) -> tuple[SeptEntry | None, int]:
        """Walk from the root to the entry of ``level`` that maps ``gfn``.

        Returns (entry, 0) or (None, error).  A leaf above ``level`` is a size mismatch;
        a missing or blocked table on the way is a walk failure: like the module's
        secure_ept_walk(), the walk stops at any entry without RWX, and a blocked entry
        has none.  (KVM removes the children of a table before it blocks the table, so
        no as-designed path needs to walk through a blocked one.)
        """
        entries = self.entries
        for lvl in _LEVELS_ABOVE[level]:          # ROOT_LEVEL down to level + 1
            e = entries.get((lvl, gfn & LEVEL_MASK[lvl]))     # peek(gfn, lvl)
            if e is not None and e.state == NL_MAPPED:
                continue
            state = e.state if e else FREE
            if state in LEAF_STATES:
                return None, TDX_PAGE_SIZE_MISMATCH
            return None, TDX_EPT_WALK_FAILED
        # self.entry(gfn, level), inline
        key = (level, gfn & LEVEL_MASK[level])
        e = entries.get(key)
        if e is None:
            e = entries[key] = SeptEntry()
        return e, TDX_SUCCESS

    def leaf_of(self, gfn: int) -> tuple[int, SeptEntry] | None:
        """The leaf mapping ``gfn`` at any level, if the walk reaches one."""
        entries = self.entries
        for lvl in range(ROOT_LEVEL, 0, -1):
            e = entries.get((lvl, gfn & LEVEL_MASK[lvl]))     # peek(gfn, lvl)
            if e is None or e.state == FREE:
                return None
            if e.state in LEAF_STATES:
                return lvl, e
        return None

    def children(self, gfn: int, level: int) -> list[SeptEntry | None]:
        """The 512 entries of the table below the non-leaf entry (level, gfn)."""
        base = gfn_round_for_level(gfn, level)
        step = level_pages(level - 1)
        return [self.peek(base + i * step, level - 1) for i in range(512)]

    # ------------------------------------------------------------------ locks
    def _count_busy(self, source: str) -> None:
        self.busy[source] = self.busy.get(source, 0) + 1

    def _busy(self, source: str, operand: int) -> int:
        self._count_busy(source)
        return TDX_OPERAND_BUSY | operand

    def _tree_holder_source(self) -> str:
        c = self.tree.excl
        return SRC_ZERO_STEP if c is not None and c.name == "TDH.VP.ENTER" else SRC_SEPT_TREE

    def _take_tree(self, call: _Call, excl: bool) -> int:
        if self.tree.take(call, excl):
            return TDX_SUCCESS
        return self._busy(self._tree_holder_source() if self.tree.excl else SRC_SEPT_TREE,
                          TDX_OPERAND_ID_SEPT)

    def _take_entry(self, call: _Call, e: SeptEntry) -> int:
        """sept_lock_acquire_host() / sept_lock_acquire_guest() (tdx_locks.h): try-take
        an entry lock.  A host that finds it taken sets the host-priority bit; a host
        that gets it clears the bit; a guest that gets it while the bit is set gives it
        back with TDX_OPERAND_BUSY_HOST_PRIORITY.  Nothing else clears the bit: if no
        host comes back for the entry, the guest keeps being refused (the module's only
        bound is the 1 s hp_lock_timeout TD exit, after which the guest still sees
        BUSY; see SOURCES.md).  Every caller reports the busy entry as operand RCX."""
        if e.lock is not None:
            if not call.guest:
                e.host_prio = True
            return self._busy(SRC_ACCEPT if e.lock.guest else SRC_SEPT_ENTRY,
                              TDX_OPERAND_ID_RCX)
        if call.guest and e.host_prio:
            self._count_busy("host_priority")
            return TDX_OPERAND_BUSY_HOST_PRIORITY | TDX_OPERAND_ID_RCX
        if not call.guest:
            e.host_prio = False
        e.lock = call
        call.entries.append(e)
        return TDX_SUCCESS

    def _take_tdr(self, call: _Call, excl: bool) -> int:
        return TDX_SUCCESS if self.tdr.take(call, excl) else self._busy(SRC_TDR,
                                                                         TDX_OPERAND_ID_TDR)

    def _take_epoch(self, call: _Call, excl: bool) -> int:
        return TDX_SUCCESS if self.epoch.take(call, excl) else self._busy(
            SRC_EPOCH, TDX_OPERAND_ID_TD_EPOCH)

    def _release(self, call: _Call) -> None:
        """Release every lock ``call`` took.  Once per call: by its first step when that
        fails, else by its second."""
        for e in call.entries:
            if e.lock is call:
                e.lock = None
        for lock, excl in call.held:
            # lock.release(excl), written out (TryRwLock.release)
            if excl:
                lock.excl = None
            else:
                lock.shared -= 1
        if call.tdvpr is not None:
            call.tdvpr.tdvpr_lock = None

    def _inject(self) -> bool:
        if self.busy_rate <= 0.0 or not any(v.running_epoch is not None for v in self.vcpus):
            return False
        return self._rng.random() < self.busy_rate

    # ------------------------------------------------------------------ the two steps
    def _seamcall(self, name: str, arg: object, lock: Callable[..., int],
                  effect: Callable[[_Call], int], *, guest: bool = False,
                  vcpu: TdVcpu | None = None, injectable: bool = True,
                  lock_args: tuple = ()) -> int:
        """The two steps of a SEAMCALL (module docstring): ``lock(call, *lock_args)``
        try-takes its locks, ``effect(call)`` checks and applies; both release.  (The
        steps are the call's methods, :meth:`_Call.lock_step` and
        :meth:`_Call.effect_step`.)"""
        call = _Call(name, guest, vcpu, self, lock, lock_args, effect, injectable)
        try:
            label = _LOCK_LABEL[name]
        except KeyError:
            label = _LOCK_LABEL[name] = name + ":lock"
        err = self._sched.op(label, arg, call.lock_step)
        if err:
            return err
        return self._sched.op(name, arg, call.effect_step)

    def _tracked(self, bepoch: int | None) -> bool:
        """is_tlb_tracked(): TRACK moved the TD past the block epoch and no vCPU still
        runs in an epoch at or before it."""
        if bepoch is None:
            return False
        if self.td_epoch <= bepoch:
            return False
        if self.td_epoch >= bepoch + 2:
            return True     # two TRACKs since the block: the blocking epoch drained
        for v in self.vcpus:
            if v.running_epoch is not None and v.running_epoch <= bepoch:
                return False
        return True

    # ------------------------------------------------------------------ SEAMCALLs
    def _lock_host_entry(self, call: _Call, gfn: int, level: int, tree_excl: bool) -> int:
        # _take_tdr(call, False), then _take_tree(call, tree_excl), with their
        # TryRwLock.take() written out (most SEAMCALLs come through here)
        tdr = self.tdr
        if tdr.excl is not None:
            return self._busy(SRC_TDR, TDX_OPERAND_ID_TDR)
        tdr.shared += 1
        held = call.held
        held.append((tdr, False))
        tree = self.tree
        if tree.excl is not None or (tree_excl and tree.shared):
            return self._busy(self._tree_holder_source() if tree.excl else SRC_SEPT_TREE,
                              TDX_OPERAND_ID_SEPT)
        if tree_excl:
            tree.excl = call
        else:
            tree.shared += 1
        held.append((tree, tree_excl))
        e, err = self._walk(gfn, level)
        if err:
            return err | TDX_OPERAND_ID_RCX
        assert e is not None
        return self._take_entry(call, e)

    def tdh_mem_sept_add(self, gfn: int, level: int, page: int) -> int:
        """TDH.MEM.SEPT.ADD: make the FREE entry (level, gfn) a non-leaf over ``page``."""
        def effect(call: _Call) -> int:
            if self.td_state == TD_TEARDOWN:
                return TDX_TD_KEYS_NOT_CONFIGURED   # check_td_in_correct_build_state()
            e = self.entry(gfn, level)
            if e.state != FREE:
                return TDX_EPT_ENTRY_STATE_INCORRECT | TDX_OPERAND_ID_RCX
            e.state, e.pfn, e.bepoch = NL_MAPPED, page, None
            self.sept_pages[page] = (level - 1, gfn_round_for_level(gfn, level))
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.SEPT.ADD", (gfn, level),
                              self._lock_host_entry, effect,
                              lock_args=(gfn, level, False))

    def tdh_mem_page_aug(self, gfn: int, level: int, pfn: int) -> int:
        """TDH.MEM.PAGE.AUG: add a PENDING page to a running TD."""
        def effect(call: _Call) -> int:
            if self.td_state == TD_TEARDOWN:
                return TDX_TD_KEYS_NOT_CONFIGURED
            if self.td_state != TD_RUNNABLE:
                return TDX_OP_STATE_INCORRECT
            e = self.entry(gfn, level)
            if e.state != FREE:
                return TDX_EPT_ENTRY_STATE_INCORRECT | TDX_OPERAND_ID_RCX
            e.state, e.pfn, e.bepoch = PENDING, pfn, None
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.PAGE.AUG", (gfn, level),
                              self._lock_host_entry, effect,
                              lock_args=(gfn, level, False))

    def tdh_mem_page_add(self, gfn: int, pfn: int) -> int:
        """TDH.MEM.PAGE.ADD: add an initial (MAPPED) 4K page before the TD is finalised.
        It takes the TDR exclusively and nothing else: "SEPT tree is implicitly locked
        in exclusive mode, since TDR is exclusively locked" (tdh_mem_page_add.c), and
        the entry is written unlocked (sept_set_leaf_unlocked_entry)."""
        def lock(call: _Call) -> int:
            err = self._take_tdr(call, True)
            if err:
                return err
            _, err = self._walk(gfn, PG_LEVEL_4K)
            return err | TDX_OPERAND_ID_RCX if err else TDX_SUCCESS

        def effect(call: _Call) -> int:
            if self.td_state != TD_BUILD:
                return TDX_OP_STATE_INCORRECT
            e = self.entry(gfn, PG_LEVEL_4K)
            if e.state != FREE:
                return TDX_EPT_ENTRY_STATE_INCORRECT | TDX_OPERAND_ID_RCX
            e.state, e.pfn, e.bepoch = MAPPED, pfn, None
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.PAGE.ADD", (gfn, PG_LEVEL_4K), lock, effect)

    def tdh_mr_finalize(self) -> int:
        """TDH.MR.FINALIZE: the TD becomes runnable."""
        def effect(call: _Call) -> int:
            if self.td_state != TD_BUILD:
                return TDX_OP_STATE_INCORRECT
            self.td_state = TD_RUNNABLE
            self.phase = "runnable"
            return TDX_SUCCESS
        return self._seamcall("TDH.MR.FINALIZE", None, lambda c: self._take_tdr(c, True),
                              effect, injectable=False)

    def tdh_mem_range_block(self, gfn: int, level: int) -> int:
        """TDH.MEM.RANGE.BLOCK: block an entry and record the block epoch."""
        def effect(call: _Call) -> int:
            e = self.entry(gfn, level)
            if e.state in BLOCKED_STATES:
                return TDX_GPA_RANGE_ALREADY_BLOCKED
            new = _BLOCKED_OF.get(e.state)
            if new is None:
                return TDX_EPT_ENTRY_STATE_INCORRECT | TDX_OPERAND_ID_RCX
            e.state, e.bepoch = new, self.td_epoch
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.RANGE.BLOCK", (gfn, level),
                              self._lock_host_entry, effect,
                              lock_args=(gfn, level, True))

    def tdh_mem_track(self) -> int:
        """TDH.MEM.TRACK: advance the TD epoch once the epoch before has drained."""
        def effect(call: _Call) -> int:
            for v in self.vcpus:
                if v.running_epoch is not None and v.running_epoch < self.td_epoch:
                    self._count_busy("previous_epoch")
                    return TDX_PREVIOUS_TLB_EPOCH_BUSY
            self.td_epoch += 1
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.TRACK", None,
                              lambda c: self._take_tdr(c, False) or self._take_epoch(c, True),
                              effect)

    def tdh_mem_page_remove(self, gfn: int, level: int) -> int:
        """TDH.MEM.PAGE.REMOVE: free a blocked and TLB-tracked leaf."""
        def effect(call: _Call) -> int:
            e = self.entry(gfn, level)
            blocked = e.state in (BLOCKED, PENDING_BLOCKED)
            tracked = self._tracked(e.bepoch)
            if e.state not in LEAF_STATES:
                return TDX_EPT_ENTRY_STATE_INCORRECT | TDX_OPERAND_ID_RCX
            if not blocked:
                return TDX_GPA_RANGE_NOT_BLOCKED | TDX_OPERAND_ID_RCX
            if not tracked:
                return TDX_TLB_TRACKING_NOT_DONE | TDX_OPERAND_ID_RCX
            e.state, e.pfn, e.bepoch = FREE, None, None
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.PAGE.REMOVE", (gfn, level),
                              self._lock_host_entry, effect,
                              lock_args=(gfn, level, False))

    def tdh_mem_sept_remove(self, gfn: int, level: int) -> int:
        """TDH.MEM.SEPT.REMOVE: remove a blocked, tracked non-leaf whose 512 children are FREE."""
        def effect(call: _Call) -> int:
            e = self.entry(gfn, level)
            if e.state != NL_BLOCKED:
                return (TDX_GPA_RANGE_NOT_BLOCKED if e.state == NL_MAPPED
                        else TDX_EPT_ENTRY_STATE_INCORRECT) | TDX_OPERAND_ID_RCX
            if not self._tracked(e.bepoch):
                return TDX_TLB_TRACKING_NOT_DONE | TDX_OPERAND_ID_RCX
            live = sum(1 for c in self.children(gfn, level) if c is not None and c.state != FREE)
            if live:
                return TDX_EPT_PAGE_NOT_FREE | TDX_OPERAND_ID_RCX
            assert e.pfn is not None
            self.sept_pages.pop(e.pfn, None)
            e.state, e.pfn, e.bepoch = FREE, None, None
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.SEPT.REMOVE", (gfn, level),
                              self._lock_host_entry, effect,
                              lock_args=(gfn, level, True))

    def tdh_mem_page_demote(self, gfn: int, level: int, page: int) -> int:
        """TDH.MEM.PAGE.DEMOTE: split a blocked, tracked 2M leaf into a table of 512 4K leaves."""
        def effect(call: _Call) -> int:
            e = self.entry(gfn, level)
            if level != PG_LEVEL_2M or e.state not in (BLOCKED, PENDING_BLOCKED):
                return TDX_GPA_RANGE_NOT_BLOCKED | TDX_OPERAND_ID_RCX
            if not self._tracked(e.bepoch):
                return TDX_TLB_TRACKING_NOT_DONE | TDX_OPERAND_ID_RCX
            child_state = MAPPED if e.state == BLOCKED else PENDING
            base = gfn_round_for_level(gfn, level)
            assert e.pfn is not None
            for i in range(512):
                c = self.entry(base + i, PG_LEVEL_4K)
                c.state, c.pfn, c.bepoch = child_state, e.pfn + i, None
            e.state, e.pfn, e.bepoch = NL_MAPPED, page, None
            self.sept_pages[page] = (PG_LEVEL_4K, base)
            return TDX_SUCCESS
        # tdh_mem_page_demote.c: the tree lock is taken shared
        return self._seamcall("TDH.MEM.PAGE.DEMOTE", (gfn, level),
                              self._lock_host_entry, effect,
                              lock_args=(gfn, level, False))

    def tdh_mem_page_promote(self, gfn: int, level: int) -> int:
        """TDH.MEM.PAGE.PROMOTE: merge a blocked, tracked table of 512 4K leaves, all
        MAPPED or all PENDING, into one 2M leaf.  BUSY while any child's entry lock is
        taken (an ACCEPT in flight)."""
        base = gfn_round_for_level(gfn, level)

        def lock(call: _Call) -> int:
            # tdh_mem_page_promote.c: tree lock shared, the parent entry, then all 512
            # children host-locked one by one (is_sept_page_valid_for_merge)
            err = self._lock_host_entry(call, gfn, level, False)
            if err:
                return err
            for i in range(512):
                c = self.peek(base + i, PG_LEVEL_4K)
                if c is not None:
                    err = self._take_entry(call, c)
                    if err:
                        return err
            return TDX_SUCCESS

        def effect(call: _Call) -> int:
            e = self.entry(gfn, level)
            if level != PG_LEVEL_2M or e.state != NL_BLOCKED:
                return TDX_GPA_RANGE_NOT_BLOCKED | TDX_OPERAND_ID_RCX
            if not self._tracked(e.bepoch):
                return TDX_TLB_TRACKING_NOT_DONE | TDX_OPERAND_ID_RCX
            kids = [self.peek(base + i, PG_LEVEL_4K) for i in range(512)]
            first = kids[0].pfn if kids[0] is not None else None
            state = kids[0].state if kids[0] is not None else FREE
            # All 512 children MAPPED (or all PENDING), contiguous and 2M-aligned: the
            # merged leaf takes their state.  Mixed states cannot be merged.
            if first is None or first % 512 or state not in (MAPPED, PENDING) or any(
                    k is None or k.state != state or k.pfn != first + i
                    for i, k in enumerate(kids)):
                return TDX_EPT_INVALID_PROMOTE_CONDITIONS | TDX_OPERAND_ID_RCX
            for k in kids:
                assert k is not None
                k.state, k.pfn, k.bepoch = FREE, None, None
            assert e.pfn is not None
            self.sept_pages.pop(e.pfn, None)
            e.state, e.pfn, e.bepoch = state, first, None
            return TDX_SUCCESS
        return self._seamcall("TDH.MEM.PAGE.PROMOTE", (gfn, level), lock, effect)

    def tdh_phymem_page_reclaim(self, page: int) -> int:
        """TDH.PHYMEM.PAGE.RECLAIM: take back a TD page; only once the HKID is released."""
        def effect(call: _Call) -> int:
            if self.hkid_assigned:
                return TDX_LIFECYCLE_STATE_INCORRECT
            self.sept_pages.pop(page, None)
            self.reclaimed.add(page)
            return TDX_SUCCESS
        return self._seamcall("TDH.PHYMEM.PAGE.RECLAIM", page, lambda c: TDX_SUCCESS, effect,
                              injectable=False)

    def tdh_phymem_page_wbinvd_hkid(self, page: int) -> int:
        """TDH.PHYMEM.PAGE.WBINVD: write back and invalidate a removed page's cache lines."""
        return self._seamcall("TDH.PHYMEM.PAGE.WBINVD", page, lambda c: TDX_SUCCESS,
                              lambda c: TDX_SUCCESS, injectable=False)

    def release_hkid(self) -> int:
        """tdx_mmu_release_hkid(): TDH.MNG.VPFLUSHDONE, TDH.PHYMEM.CACHE.WB,
        TDH.MNG.KEY.FREEID.  The TD enters TEARDOWN; no private leaf may be left."""
        def effect(call: _Call) -> int:
            left = sum(1 for e in self.entries.values() if e.state in LEAF_STATES)
            if left:
                self.audit.append((5, f"HKID released with {left} private leaves in the S-EPT"))
            if any(v.running_epoch is not None for v in self.vcpus):
                return TDX_LIFECYCLE_STATE_INCORRECT
            self.hkid_assigned = False
            self.td_state = TD_TEARDOWN
            return TDX_SUCCESS
        return self._seamcall("TDH.MNG.KEY.FREEID", None, lambda c: self._take_tdr(c, True),
                              effect, injectable=False)

    # ------------------------------------------------------------------ vCPU entry/exit
    def tdh_vp_enter(self, vcpu_id: int) -> tuple[int, int | None]:
        """TDH.VP.ENTER.  Returns (status, gfn of a faked EPT violation or None).

        With zero-step mitigation armed, entry first try-takes the S-EPT tree lock
        exclusively (BUSY if it cannot); if a recorded GPA is still unmapped, entry is
        refused with a fake EPT violation; else the lock is dropped and the guest runs.
        The epoch lock is held shared from the first step to the second, so a TRACK that
        comes between them is BUSY, and a VP.ENTER that comes during a TRACK is BUSY.
        """
        v = self.vcpus[vcpu_id]
        faked: list[int] = []

        def lock(call: _Call) -> int:
            if self.td_state != TD_RUNNABLE:
                return TDX_OP_STATE_INCORRECT
            if v.tdvpr_lock is not None:
                return self._busy(SRC_TDVPR, TDX_OPERAND_ID_TDVPR)
            v.tdvpr_lock = call
            call.tdvpr = v
            err = self._take_tdr(call, False) or self._take_epoch(call, False)
            if err:
                return err
            if v.zstep_gpas:
                return self._take_tree(call, True)
            return TDX_SUCCESS

        def effect(call: _Call) -> int:
            if v.zstep_gpas:
                for g in v.zstep_gpas:
                    leaf = self.leaf_of(g)
                    if leaf is None or leaf[1].state not in (MAPPED, PENDING):
                        faked.append(g)
                        break
                if faked:
                    # emulate_ept_violation_td_exit(): an exit to KVM without entering
                    # the guest; it is not logged for stepping
                    return TDX_SUCCESS
            v.running_epoch = self.td_epoch
            v.entered += 1
            call.tdvpr = None   # the TDVPR stays locked until the TD exits
            return TDX_SUCCESS

        err = self._seamcall("TDH.VP.ENTER", vcpu_id, lock, effect, injectable=False)
        return err, (faked[0] if faked else None)

    def td_exit(self, vcpu_id: int, ept_gfn: int | None = None, rip: int | None = None) -> None:
        """The TD exits to KVM: leave the epoch; count an EPT violation for zero-step."""
        v = self.vcpus[vcpu_id]

        def step() -> None:
            v.running_epoch = None
            v.tdvpr_lock = None
            v.exits += 1
            if ept_gfn is not None:
                self._ept_violation_accounting(v, rip, ept_gfn)
        self._sched.op("TD.EXIT", (vcpu_id, ept_gfn), step)

    def _ept_violation_accounting(self, v: TdVcpu, rip: int | None, gfn: int) -> None:
        """td_exit_epf_stepping_log() (td_exit_stepping.c), called only from the
        hardware EPT-violation exit handlers for private GPAs (td_ept_violation.c,
        td_l2_ept_violation.c): never for a failed TDG.MEM.PAGE.ACCEPT
        (async_tdexit_ept_violation) nor for the EPT violation VP.ENTER fakes.

        A new RIP resets the state; the first STEPPING_EPF_THRESHOLD violations at one
        RIP only count; from then on each new GPA is recorded (at most 32), and every
        later VP.ENTER checks them under the tree lock."""
        if rip is None or rip != v.last_rip:
            v.last_rip = rip
            v.ept_count = 0
            v.zstep_gpas = []
        if v.ept_count < ZERO_STEP_THRESHOLD:
            v.ept_count += 1
        elif gfn not in v.zstep_gpas and len(v.zstep_gpas) < ZERO_STEP_MAX_GPAS:
            v.zstep_gpas.append(gfn)
            self.zero_step_arms += 1

    def guest_progress(self, vcpu_id: int, rip: int) -> None:
        """The guest retired an instruction: a new RIP clears the zero-step state."""
        v = self.vcpus[vcpu_id]

        def step() -> None:
            if rip != v.last_rip:
                v.last_rip = rip
                v.ept_count = 0
                v.zstep_gpas = []
        self._sched.op("TD.PROGRESS", (vcpu_id, rip), step)

    # ------------------------------------------------------------------ guest side
    def guest_access(self, vcpu_id: int, gfn: int) -> str:
        """A guest access to a private GFN: "ok", "ept" (an EPT-violation TD exit),
        "pending_exit" (a PENDING page with ``pending_ve_disable``: the TD exit carries
        extended exit qualification type PENDING_EPT_VIOLATION) or "pending" (a PENDING
        page without it: #VE to the guest).  td_ept_violation.c,
        td_ept_violation_exit(): ``sept_state_is_any_pending_and_guest_acceptable()`` then
        ``if (td_ctls.pending_ve_disable) ext_exit_qual.type =
        VMX_EEQ_PENDING_EPT_VIOLATION; else tdx_inject_ve(...)``; both exits are logged
        for zero-step (``td_exit_epf_stepping_log``)."""
        def step() -> str:
            leaf = self.leaf_of(gfn)
            if leaf is None:
                return "ept"
            state = leaf[1].state
            if state == MAPPED:
                return "ok"
            if state == PENDING:
                return "pending_exit" if self.pending_ve_disable else "pending"
            return "ept"
        return self._sched.op("TD.ACCESS", (vcpu_id, gfn), step)

    def tdg_mem_page_accept(self, vcpu_id: int, gfn: int, level: int) -> int:
        """TDG.MEM.PAGE.ACCEPT (a guest TDCALL): PENDING -> MAPPED.

        Returns TDX_SUCCESS, TDX_PAGE_ALREADY_ACCEPTED, a BUSY (the guest retries), or
        TDX_EPT_WALK_FAILED / TDX_EPT_ENTRY_STATE_INCORRECT, which stand for the EPT
        violation exit the real module takes when the page is not there to accept.
        """
        def lock(call: _Call) -> int:
            # The guest's walk (walk_private_gpa, no tree lock): a leaf above ``level``
            # that is MAPPED already covers the page (TDX_PAGE_ALREADY_ACCEPTED, a
            # warning); any other leaf above, or a missing or blocked table, is an
            # EPT-violation exit of type ACCEPT to KVM.
            entries = self.entries
            for lvl in _LEVELS_ABOVE[level]:          # ROOT_LEVEL down to level + 1
                up = entries.get((lvl, gfn & LEVEL_MASK[lvl]))    # peek(gfn, lvl)
                state = up.state if up else FREE
                if state == NL_MAPPED:
                    continue
                if state == MAPPED:
                    return TDX_PAGE_ALREADY_ACCEPTED
                return TDX_EPT_WALK_FAILED
            return self._take_entry(call, self.entry(gfn, level))

        def effect(call: _Call) -> int:
            e = self.entry(gfn, level)
            if e.state == PENDING:
                e.state = MAPPED
                return TDX_SUCCESS
            if e.state == MAPPED:
                return TDX_PAGE_ALREADY_ACCEPTED
            if e.state == NL_MAPPED:
                # a table maps the range at a smaller size: the guest retries at 4K
                return TDX_PAGE_SIZE_MISMATCH
            return TDX_EPT_ENTRY_STATE_INCORRECT
        return self._seamcall("TDG.MEM.PAGE.ACCEPT", (vcpu_id, gfn, level), lock, effect,
                              guest=True, vcpu=self.vcpus[vcpu_id], injectable=False)

