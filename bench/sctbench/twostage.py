"""twostage: SCTBench benchmarks/concurrent-software-benchmarks/twostage_bad.c
(``iTThreads`` = ``iRThreads`` = 1).

``funcA`` sets ``data1Value = 1`` under ``data1Lock``, then, in a second critical
section under ``data2Lock``, ``data2Value = data1Value + 1``.  ``funcB`` reads
``data1Value`` under ``data1Lock`` (returning if it is still 0) and ``data2Value``
under ``data2Lock`` and asserts the second is the first plus one.  It fails when
``funcB`` runs between ``funcA``'s two stages: one preemption (depth 2).  C's
``if (data1Value == 0)`` and ``t1 = data1Value`` are two reads; so is
``data2Value = data1Value + 1`` a read of ``data1Value`` and a write.
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, check, rd, wr


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.data1Lock = mutex("data1Lock")
    st.data2Lock = mutex("data2Lock")
    st.data1Value = Var("data1Value", 0)
    st.data2Value = Var("data2Value", 0)
    return st


def funcA(st, s) -> None:
    st.data1Lock.lock(s)
    wr(s, st.data1Value, 1)
    st.data1Lock.unlock(s)

    st.data2Lock.lock(s)
    wr(s, st.data2Value, rd(s, st.data1Value) + 1)
    st.data2Lock.unlock(s)


def funcB(st, s) -> None:
    st.data1Lock.lock(s)
    if rd(s, st.data1Value) == 0:
        st.data1Lock.unlock(s)
        return
    t1 = rd(s, st.data1Value)
    st.data1Lock.unlock(s)

    st.data2Lock.lock(s)
    t2 = rd(s, st.data2Value)
    st.data2Lock.unlock(s)

    check(st, t2 == t1 + 1, f"t2 == t1 + 1 (t1 = {t1}, t2 = {t2})")


twostage = Program(
    "twostage", "benchmarks/concurrent-software-benchmarks/twostage_bad.c", fresh,
    (("funcA", funcA), ("funcB", funcB)),
    bug="assert", preemptions=1, depth=2, sct_threads=3, sct_steps=11,
    witness=(("through", "funcA", "pthread_mutex_unlock(&data1Lock)"),
             ("finish", "funcB")))
