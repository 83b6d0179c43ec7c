"""lazy01: SCTBench benchmarks/concurrent-software-benchmarks/lazy01_bad.c.

``thread1`` adds 1 and ``thread2`` adds 2 to ``data`` under ``mutex``; ``thread3``
asserts ``data < 3`` under it.  The assertion fails whenever ``thread3`` takes the mutex
after both others: no preemption needed (depth 1).  ``data++`` and ``data += 2`` are a
read and a write each.
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, check, rd, wr


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.mutex = mutex("mutex")
    st.data = Var("data", 0)
    return st


def thread1(st, s) -> None:
    st.mutex.lock(s)
    wr(s, st.data, rd(s, st.data) + 1)
    st.mutex.unlock(s)


def thread2(st, s) -> None:
    st.mutex.lock(s)
    wr(s, st.data, rd(s, st.data) + 2)
    st.mutex.unlock(s)


def thread3(st, s) -> None:
    st.mutex.lock(s)
    data = rd(s, st.data)
    check(st, not data >= 3, f"data >= 3 is never seen (data is {data})")
    st.mutex.unlock(s)


lazy01 = Program(
    "lazy01", "benchmarks/concurrent-software-benchmarks/lazy01_bad.c", fresh,
    (("thread1", thread1), ("thread2", thread2), ("thread3", thread3)),
    bug="assert", preemptions=0, depth=1, sct_threads=4, sct_steps=11,
    witness=(("finish", "thread1"), ("finish", "thread2"), ("finish", "thread3")))
