"""Shared fixtures: a fresh thread context per test, so row counters and lock records
of one test never leak into another (tests run on the main thread)."""
import pytest

from core.sched import ThreadCtx, set_current


@pytest.fixture(autouse=True)
def fresh_ctx():
    ctx = ThreadCtx("main")
    set_current(ctx)
    yield ctx
