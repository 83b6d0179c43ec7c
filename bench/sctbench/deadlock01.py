"""deadlock01: SCTBench benchmarks/concurrent-software-benchmarks/deadlock01_bad.c.

``thread1`` takes ``a`` then ``b``; ``thread2`` takes ``b`` then ``a``; each changes
``counter`` (a read and a write) inside.  Preempting ``thread1`` after it holds ``a``
and letting ``thread2`` take ``b`` deadlocks them: one preemption (depth 2).
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, rd, wr


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.a = mutex("a")
    st.b = mutex("b")
    st.counter = Var("counter", 1)
    return st


def thread1(st, s) -> None:
    st.a.lock(s)
    st.b.lock(s)
    wr(s, st.counter, rd(s, st.counter) + 1)
    st.b.unlock(s)
    st.a.unlock(s)


def thread2(st, s) -> None:
    st.b.lock(s)
    st.a.lock(s)
    wr(s, st.counter, rd(s, st.counter) - 1)
    st.a.unlock(s)
    st.b.unlock(s)


deadlock01 = Program(
    "deadlock01", "benchmarks/concurrent-software-benchmarks/deadlock01_bad.c", fresh,
    (("thread1", thread1), ("thread2", thread2)),
    bug="deadlock", preemptions=1, depth=2, sct_threads=3, sct_steps=11,
    witness=(("through", "thread1", "pthread_mutex_lock(&a)"),
             ("through", "thread2", "pthread_mutex_lock(&b)")))
