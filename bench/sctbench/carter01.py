"""carter01: SCTBench benchmarks/concurrent-software-benchmarks/carter01_bad.c.

A readers-style lock built from mutex ``m`` and mutex ``l``: ``t1`` counts class-A
users in ``A`` and takes ``l`` when the first enters, ``t2`` does the same for class B
with ``B``; ``t3`` and ``t4`` are empty (as in the source).  ``t2`` entering after
``t1`` took ``l`` blocks on ``l`` while it holds ``m``; ``t1`` then cannot take ``m`` to
leave: a deadlock after one preemption of ``t1`` between its two critical sections
(depth 2).  ``A++`` is a read and a write and ``if (A == 1)`` a read of its own.
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, rd, wr


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.m = mutex("m")
    st.l = mutex("l")
    st.A = Var("A", 0)
    st.B = Var("B", 0)
    return st


def _user(count: str):
    def t(st, s) -> None:
        c = getattr(st, count)
        st.m.lock(s)
        wr(s, c, rd(s, c) + 1)
        if rd(s, c) == 1:
            st.l.lock(s)
        st.m.unlock(s)
        # perform class A (B) operation
        st.m.lock(s)
        wr(s, c, rd(s, c) - 1)
        if rd(s, c) == 0:
            st.l.unlock(s)
        st.m.unlock(s)
    return t


def empty(st, s) -> None:
    pass


# main creates a1 (t1), b1 (t2), a2 (t3), b2 (t4)
carter01 = Program(
    "carter01", "benchmarks/concurrent-software-benchmarks/carter01_bad.c", fresh,
    (("t1", _user("A")), ("t2", _user("B")), ("t3", empty), ("t4", empty)),
    bug="deadlock", preemptions=1, depth=2, sct_threads=5, sct_steps=19,
    witness=(("through", "t1", "pthread_mutex_unlock(&m)"),
             ("through", "t2", "pthread_mutex_lock(&m)")))
