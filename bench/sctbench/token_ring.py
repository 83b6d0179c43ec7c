"""token_ring: SCTBench benchmarks/concurrent-software-benchmarks/token_ring_bad.c.

Three threads pass a token round a ring (``x1 = (x3 + 1) % 4``, ``x2 = x1``,
``x3 = x2``), each inside ``__ESBMC_atomic_begin/end``, which the benchmark's
common.inc defines as taking and releasing one mutex, ``esbmc_mutex``.  ``t4`` asserts
``x1 == x2 && x2 == x3`` once all three flags are set.  Only the orders t1 t2 t3 and
t1 t3 t2 leave the ring equal; any other order with ``t4`` last fails: no preemption
needed (depth 1).  Each condition is read left to right with short-circuit.
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, check, rd, wr


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.esbmc_mutex = mutex("esbmc_mutex")
    st.x1 = Var("x1", 1)
    st.x2 = Var("x2", 2)
    st.x3 = Var("x3", 1)
    st.flag1 = Var("flag1", 0)
    st.flag2 = Var("flag2", 0)
    st.flag3 = Var("flag3", 0)
    return st


def t1(st, s) -> None:
    st.esbmc_mutex.lock(s)
    wr(s, st.x1, (rd(s, st.x3) + 1) % 4)
    wr(s, st.flag1, 1)
    st.esbmc_mutex.unlock(s)


def t2(st, s) -> None:
    st.esbmc_mutex.lock(s)
    wr(s, st.x2, rd(s, st.x1))
    wr(s, st.flag2, 1)
    st.esbmc_mutex.unlock(s)


def t3(st, s) -> None:
    st.esbmc_mutex.lock(s)
    wr(s, st.x3, rd(s, st.x2))
    wr(s, st.flag3, 1)
    st.esbmc_mutex.unlock(s)


def t4(st, s) -> None:
    st.esbmc_mutex.lock(s)
    if rd(s, st.flag1) and rd(s, st.flag2) and rd(s, st.flag3):
        ok = rd(s, st.x1) == rd(s, st.x2) and rd(s, st.x2) == rd(s, st.x3)
        check(st, ok, "x1 == x2 && x2 == x3")
    st.esbmc_mutex.unlock(s)


token_ring = Program(
    "token_ring", "benchmarks/concurrent-software-benchmarks/token_ring_bad.c", fresh,
    (("t1", t1), ("t2", t2), ("t3", t3), ("t4", t4)),
    bug="assert", preemptions=0, depth=1, sct_threads=5, sct_steps=11,
    witness=(("finish", "t2"), ("finish", "t1"), ("finish", "t3"), ("finish", "t4")))
