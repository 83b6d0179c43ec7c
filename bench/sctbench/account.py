"""account: SCTBench benchmarks/concurrent-software-benchmarks/account_bad.c (and
account_ok.c, the fixed one).

Three threads share ``balance`` under mutex ``m``: ``deposit`` adds ``y``, ``withdraw``
takes ``z``, and ``check_result``, created first, asserts the final balance once both
are done.  The bad version's assertion is wrong (``(x - y) - z`` instead of
``(x + y) - z``), so the bug shows in every schedule where ``check_result`` runs last:
no preemption needed (depth 1).  ``balance = balance + y`` is a read and a write.
``x, y, z`` are set by ``main`` before any thread exists and never written again:
constants here.
"""
from __future__ import annotations

from .common import Mutex, Program, State, Var, check, rd, wr

X, Y, Z = 1, 2, 4


def fresh(mutex: type = Mutex) -> State:
    st = State()
    st.m = mutex("m")
    st.balance = Var("balance", X)
    st.deposit_done = Var("deposit_done", 0)
    st.withdraw_done = Var("withdraw_done", 0)
    return st


def deposit(st, s) -> None:
    st.m.lock(s)
    wr(s, st.balance, rd(s, st.balance) + Y)
    wr(s, st.deposit_done, 1)
    st.m.unlock(s)


def withdraw(st, s) -> None:
    st.m.lock(s)
    wr(s, st.balance, rd(s, st.balance) - Z)
    wr(s, st.withdraw_done, 1)
    st.m.unlock(s)


def _check_result(expected: int):
    def check_result(st, s) -> None:
        st.m.lock(s)
        if rd(s, st.deposit_done) and rd(s, st.withdraw_done):
            bal = rd(s, st.balance)
            check(st, bal == expected, f"balance == {expected} (balance is {bal})")
        st.m.unlock(s)
    return check_result


# main creates t3 (check_result), then t1 (deposit), then t2 (withdraw)
account = Program(
    "account", "benchmarks/concurrent-software-benchmarks/account_bad.c", fresh,
    (("check_result", _check_result((X - Y) - Z)), ("deposit", deposit),
     ("withdraw", withdraw)),
    bug="assert", preemptions=0, depth=1, sct_threads=4, sct_steps=8,
    witness=(("finish", "deposit"), ("finish", "withdraw"), ("finish", "check_result")))

account_ok = Program(
    "account_ok", "benchmarks/concurrent-software-benchmarks/account_ok.c", fresh,
    (("check_result", _check_result((X + Y) - Z)), ("deposit", deposit),
     ("withdraw", withdraw)),
    bug=None, note="the fixed assertion: holds in every schedule while m is held")
