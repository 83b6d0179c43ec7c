"""KVM's ``mmu_lock``: a fair reader-writer lock (x86 ``rwlock_t`` is a queued rwlock).

Fairness is FIFO, as in qrwlock: once anyone waits, newcomers queue behind it, and the
readers at the head of the queue enter together.  So a stream of readers cannot starve a
writer and a stream of writers cannot starve readers.

Acquiring is one operation when the lock is free and nobody waits (the fast path), else
two: joining the queue, then a waiting operation whose ``ready()`` says when this waiter
may enter.  The wait is modelled by the scheduler (a controlled scheduler treats the
thread as not runnable), never by a real blocking call under the baton.

The per-thread mode held (``ctx.lock_mode``) is the model's lockdep record; the
``lockdep_assert_held*`` functions check it and report a ``LOCKDEP`` finding on failure,
like the kernel's WARN.
"""
from __future__ import annotations

from collections import deque

from .findings import Recorder
from .sched import Scheduler, ThreadCtx, current


class _Waiter:
    __slots__ = ("write", "ctx")

    def __init__(self, write: bool, ctx: ThreadCtx) -> None:
        self.write = write
        self.ctx = ctx


class _Wait:
    """The readiness of a waiter (tool-named): callable as ``ready``, and able to say who
    holds the lock, for a deadlock report."""
    __slots__ = ("lock", "w")

    def __init__(self, lock: "MmuLock", w: "_Waiter") -> None:
        self.lock, self.w = lock, w

    def __call__(self) -> bool:
        return self.lock._grantable(self.w)

    def holder(self) -> str:
        lk = self.lock
        if lk.writer is not None:
            return f"mmu_lock held for write by {lk.writer}"
        if lk.readers:
            return f"mmu_lock held for read by {', '.join(lk.readers)}"
        ahead = [x.ctx.name for x in lk.queue if x is not self.w][:3]
        return "mmu_lock free, queued behind " + (", ".join(ahead) or "nobody")


class MmuLock:
    """The rwlock itself plus lockdep assertions on it."""

    def __init__(self, sched: Scheduler, rec: Recorder) -> None:
        self._sched = sched
        self._rec = rec
        self.readers: list[str] = []        # names of read holders (for deadlock reports)
        self.writer: str | None = None
        self.queue: deque[_Waiter] = deque()

    def _grantable(self, w: _Waiter) -> bool:
        if self.writer is not None:
            return False
        if w.write:
            return not self.readers and self.queue[0] is w
        for ahead in self.queue:   # a reader enters with the readers at the head
            if ahead is w:
                return True
            if ahead.write:
                return False
        return False

    def _acquire(self, write: bool) -> None:
        ctx = current()
        label = "mmu_lock.write_lock" if write else "mmu_lock.read_lock"

        def fast_or_queue() -> _Waiter | None:
            if not self.queue and self.writer is None and (not write or not self.readers):
                self._grant(write, ctx)
                return None
            w = _Waiter(write, ctx)
            self.queue.append(w)
            return w

        w = self._sched.op(label, None, fast_or_queue)
        if w is not None:
            def grant() -> None:
                self.queue.remove(w)
                self._grant(write, ctx)
            ctx.pending = label + ".wait"
            self._sched.op(label + ".wait", None, grant, _Wait(self, w))
            ctx.pending = ""
        ctx.lock_mode = "write" if write else "read"

    def _grant(self, write: bool, ctx: ThreadCtx) -> None:
        if write:
            self.writer = ctx.name
        else:
            self.readers.append(ctx.name)

    def read_lock(self) -> None:
        """read_lock(&kvm->mmu_lock)."""
        self._acquire(False)

    def write_lock(self) -> None:
        """write_lock(&kvm->mmu_lock)."""
        self._acquire(True)

    def read_unlock(self) -> None:
        """read_unlock(&kvm->mmu_lock)."""
        ctx = current()
        self._sched.op("mmu_lock.read_unlock", None, lambda: self.readers.remove(ctx.name))
        ctx.lock_mode = None

    def write_unlock(self) -> None:
        """write_unlock(&kvm->mmu_lock)."""
        ctx = current()

        def release() -> None:
            self.writer = None
        self._sched.op("mmu_lock.write_unlock", None, release)
        ctx.lock_mode = None

    def unlock(self) -> None:
        if current().lock_mode == "write":
            self.write_unlock()
        else:
            self.read_unlock()

    def lock(self, mode: str) -> None:
        self.write_lock() if mode == "write" else self.read_lock()

    def needbreak(self) -> bool:
        """rwlock_needbreak(): somebody waits for the lock (cond_resched should drop it)."""
        return self._sched.op("mmu_lock.needbreak", None, lambda: bool(self.queue))

    def cond_resched(self) -> bool:
        """cond_resched_rwlock_{read,write}(): drop and retake the lock if contended.

        Returns True when it dropped the lock, so the caller restarts from the root
        (what tdp_mmu_iter_cond_resched does).
        """
        ctx = current()
        mode = ctx.lock_mode
        if mode is None or not self.needbreak():
            return False
        self.unlock()
        self.lock(mode)
        return True

    # lockdep -----------------------------------------------------------------------
    def lockdep_assert_held(self, where: str) -> bool:
        """lockdep_assert_held(&kvm->mmu_lock): held in either mode."""
        ctx = current()
        if ctx.lock_mode is None:
            self._rec.report("LOCKDEP", where, "mmu_lock not held", ctx)
            return False
        return True

    def lockdep_assert_held_read(self, where: str) -> bool:
        """lockdep_assert_held_read(&kvm->mmu_lock)."""
        ctx = current()
        if ctx.lock_mode != "read":
            self._rec.report("LOCKDEP", where,
                             f"mmu_lock must be held for read, held: {ctx.lock_mode}", ctx)
            return False
        return True

    def lockdep_assert_held_write(self, where: str) -> bool:
        """lockdep_assert_held_write(&kvm->mmu_lock)."""
        ctx = current()
        if ctx.lock_mode != "write":
            self._rec.report("LOCKDEP", where,
                             f"mmu_lock must be held for write, held: {ctx.lock_mode}", ctx)
            return False
        return True

    def describe_waiters(self) -> list[str]:
        return [f"{w.ctx.name}({'write' if w.write else 'read'})" for w in self.queue]
