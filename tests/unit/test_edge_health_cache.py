"""SharedResult: what /health serves — one computation at a time, reused for a while."""

from __future__ import annotations

import asyncio

import pytest

from services.edge_api.cache import SharedResult


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_callers_at_the_same_time_share_one_computation() -> None:
    started = 0
    release = asyncio.Event()

    async def compute() -> int:
        nonlocal started
        started += 1
        await release.wait()
        return started

    shared = SharedResult(compute, ttl=0)
    waiting = [asyncio.ensure_future(shared.get()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 50
    assert started == 1


async def test_the_result_is_reused_for_ttl_seconds_after_it_was_computed() -> None:
    clock = Clock()
    runs = 0

    async def compute() -> int:
        nonlocal runs
        runs += 1
        return runs

    shared = SharedResult(compute, ttl=2.0, clock=clock)
    assert await shared.get() == 1
    clock.now += 1.9
    assert await shared.get() == 1
    clock.now += 0.2
    assert await shared.get() == 2
    assert runs == 2


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    fail = True

    async def compute() -> str:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError("down")
        return "up"

    shared = SharedResult(compute, ttl=60)
    results = await asyncio.gather(shared.get(), shared.get(), return_exceptions=True)
    assert [str(r) for r in results] == ["down", "down"]
    fail = False
    assert await shared.get() == "up"


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        return "done"

    shared = SharedResult(compute, ttl=60)
    leaving = asyncio.ensure_future(shared.get())
    staying = asyncio.ensure_future(shared.get())
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    release.set()
    assert await staying == "done"


async def test_fresh_computes_now_and_keeps_the_result_for_get() -> None:
    clock = Clock()
    runs = 0

    async def compute() -> int:
        nonlocal runs
        runs += 1
        return runs

    shared = SharedResult(compute, ttl=60, clock=clock)
    assert await shared.get() == 1
    assert await shared.fresh() == 2
    assert await shared.get() == 2


async def test_fresh_joins_a_run_under_way() -> None:
    release = asyncio.Event()
    runs = 0

    async def compute() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return runs

    shared = SharedResult(compute, ttl=0)
    first = asyncio.ensure_future(shared.get())
    await asyncio.sleep(0)
    second = asyncio.ensure_future(shared.fresh())
    await asyncio.sleep(0)
    release.set()
    assert (await first, await second) == (1, 1)
