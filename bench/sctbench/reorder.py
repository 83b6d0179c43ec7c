"""reorder_3, reorder_5, reorder_10: SCTBench
benchmarks/concurrent-software-benchmarks/reorder_{3,5,10}_bad.c (one source with
``iSet`` = 2, 4, 9 set threads and ``iCheck`` = 1 check thread).

Every ``setThread`` writes ``a = 1`` then ``b = -1``; the ``checkThread`` asserts
``(a == 0 && b == 0) || (a == 1 && b == -1)``, read as C evaluates it: left to right,
short-circuit, every ``a`` and ``b`` a read of its own (so ``a`` may be read twice).
The bug needs the check thread to read between one set thread's two writes: one
preemption of that set thread (depth 2).  The set threads are created first, so a
scheduler that favours the oldest thread (delay bounding, and PCT through its
priorities) meets more of them first as ``iSet`` grows.
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, check, rd, wr


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.a = Var("a", 0)
    st.b = Var("b", 0)
    return st


def set_thread(st, s) -> None:
    wr(s, st.a, 1)
    wr(s, st.b, -1)


def check_thread(st, s) -> None:
    ok = (rd(s, st.a) == 0 and rd(s, st.b) == 0) or (rd(s, st.a) == 1 and rd(s, st.b) == -1)
    check(st, ok, "(a == 0 && b == 0) || (a == 1 && b == -1)")


def _reorder(n: int, sct_steps: int) -> Program:
    sets = tuple((f"setThread{i}", set_thread) for i in range(n - 1))
    return Program(
        f"reorder_{n}", f"benchmarks/concurrent-software-benchmarks/reorder_{n}_bad.c",
        fresh, sets + (("checkThread0", check_thread),),
        bug="assert", preemptions=1, depth=2, sct_threads=n + 1, sct_steps=sct_steps,
        witness=(("through", "setThread0", "write a"), ("finish", "checkThread0")))


reorder_3 = _reorder(3, 12)
reorder_5 = _reorder(5, 20)
reorder_10 = _reorder(10, 40)
