"""Ten SCTBench programs (Thomson, Donaldson, Betts, "Concurrency testing using
controlled schedulers: an empirical study", PPoPP 2014 / TOPC 2016), ported to the
yield-point interface of :mod:`core.sched`; see :mod:`.common` for how, and each module
for the C file it follows.  ``PROGRAMS`` are the buggy ten, ``FIXED`` programs that
must stay clean.
"""
from __future__ import annotations

from .account import account, account_ok
from .carter01 import carter01
from .common import Direct, Mutex, Program, RealMutex, State, holders
from .deadlock01 import deadlock01
from .lazy01 import lazy01
from .reorder import reorder_3, reorder_5, reorder_10
from .token_ring import token_ring
from .twostage import twostage
from .wronglock import wronglock, wronglock_fixed

PROGRAMS: dict[str, Program] = {p.name: p for p in (
    account, lazy01, reorder_3, reorder_5, reorder_10, twostage, wronglock, deadlock01,
    carter01, token_ring)}
FIXED: dict[str, Program] = {p.name: p for p in (account_ok, wronglock_fixed)}

__all__ = ["PROGRAMS", "FIXED", "Program", "State", "Mutex", "RealMutex", "Direct",
           "holders"]
