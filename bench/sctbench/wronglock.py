"""wronglock: SCTBench benchmarks/concurrent-software-benchmarks/wronglock_bad.c
(``iNum1`` = 1 ``funcA``, ``iNum2`` = 7 ``funcB``).

``funcA`` increments ``dataValue`` under ``dataLock`` and asserts it went up by exactly
one; each ``funcB`` increments it under ``thisLock``, the wrong lock.  A ``funcB``
increment between ``funcA``'s reads fails the assertion: one preemption (depth 2).
``int x = dataValue; dataValue++; if (dataValue != x + 1)`` is four accesses: a read,
a read and a write, a read (``dataValue`` is volatile in the C program).

``wronglock_fixed`` (not in SCTBench) is the same program with ``funcB`` taking
``dataLock``, the right lock: no schedule fails it while the mutex is modelled right.
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, check, rd, wr


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.dataLock = mutex("dataLock")
    st.thisLock = mutex("thisLock")
    st.dataValue = Var("dataValue", 0)
    return st


def funcA(st, s) -> None:
    st.dataLock.lock(s)
    x = rd(s, st.dataValue)
    wr(s, st.dataValue, rd(s, st.dataValue) + 1)
    now = rd(s, st.dataValue)
    check(st, now == x + 1, f"dataValue == x + 1 (x = {x}, dataValue = {now})")
    st.dataLock.unlock(s)


def funcB(st, s) -> None:
    st.thisLock.lock(s)
    wr(s, st.dataValue, rd(s, st.dataValue) + 1)
    st.thisLock.unlock(s)


def funcB_fixed(st, s) -> None:
    st.dataLock.lock(s)
    wr(s, st.dataValue, rd(s, st.dataValue) + 1)
    st.dataLock.unlock(s)


wronglock = Program(
    "wronglock", "benchmarks/concurrent-software-benchmarks/wronglock_bad.c", fresh,
    (("funcA", funcA),) + tuple((f"funcB{i}", funcB) for i in range(7)),
    bug="assert", preemptions=1, depth=2, sct_threads=9, sct_steps=49,
    witness=(("through", "funcA", "read dataValue"), ("finish", "funcB0"),
             ("finish", "funcA")))

wronglock_fixed = Program(
    "wronglock_fixed", "wronglock_bad.c with funcB under dataLock (not in SCTBench)", fresh,
    (("funcA", funcA),) + tuple((f"funcB{i}", funcB_fixed) for i in range(7)),
    bug=None, note="the right lock: clean in every schedule while mutexes are modelled")
