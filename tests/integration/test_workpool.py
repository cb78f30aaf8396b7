"""The work pool against a real Redis: claims only what it can start, runs items side by
side, renews the leases of long work, releases what is done."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis

from services.common.due_queue import Claim, DueQueue, now_ms
from services.common.workpool import WorkPool, leased

QUEUE = "test:pool:due"
LEASE_MS = 300


@contextlib.asynccontextmanager
async def running(pool: WorkPool) -> AsyncIterator[asyncio.Event]:
    stopping = asyncio.Event()
    task = asyncio.create_task(pool.run(stopping))
    try:
        yield stopping
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=5)


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 5
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def pool_of(queue: DueQueue, work: Callable[[Claim], Awaitable[None]], slots: int) -> WorkPool:
    return WorkPool("test", queue, work, slots=slots, lease_ms=LEASE_MS, poll_seconds=0.02)


async def test_items_run_side_by_side_up_to_the_slots(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    for n in range(6):
        await queue.schedule(f"item-{n}", now_ms())
    gate = asyncio.Event()
    started: list[str] = []

    async def work(claim: Claim) -> None:
        started.append(claim.member)
        await gate.wait()

    pool = pool_of(queue, work, slots=4)
    async with running(pool):

        async def four_started() -> bool:
            return len(started) == 4

        await until(four_started, "four items started together")
        # A full pool claims nothing more: the other two stay due for any replica.
        await asyncio.sleep(0.1)
        assert len(started) == 4
        due = await redis.zrangebyscore(QUEUE, "-inf", now_ms())
        assert len(due) == 2
        gate.set()

        async def all_done() -> bool:
            return await redis.zcard(QUEUE) == 0

        await until(all_done, "every item done and released")
    assert sorted(started) == [f"item-{n}" for n in range(6)]


async def test_long_work_keeps_its_item_so_nobody_else_claims_it(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    await queue.schedule("slow", now_ms())
    finish = asyncio.Event()
    runs = 0

    async def work(claim: Claim) -> None:
        nonlocal runs
        runs += 1
        await finish.wait()

    pool = pool_of(queue, work, slots=1)
    other_replica = DueQueue(redis, QUEUE)
    async with running(pool):

        async def started() -> bool:
            return runs == 1

        await until(started, "the slow item started")
        # Five leases long, another replica finds nothing due: the heartbeat renews it.
        for _ in range(5):
            await asyncio.sleep(LEASE_MS / 1000)
            assert await other_replica.claim(10, LEASE_MS) == []
        finish.set()

        async def released() -> bool:
            return await redis.zcard(QUEUE) == 0

        await until(released, "the slow item released")
    assert runs == 1


async def test_work_of_a_dead_holder_is_due_again_after_one_lease(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    await queue.schedule("orphan", now_ms())
    (claim,) = await queue.claim(1, LEASE_MS)  # a replica that then dies, no heartbeat
    done: list[str] = []

    async def work(claim: Claim) -> None:
        done.append(claim.member)

    async with running(pool_of(queue, work, slots=2)):

        async def finished() -> bool:
            return done == ["orphan"] and await redis.zcard(QUEUE) == 0

        await until(finished, "the orphan finished by the live pool")
    assert claim.lease <= now_ms()


async def test_new_work_during_a_run_is_not_released_with_it(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    await queue.schedule("conversation", now_ms())
    runs: list[int] = []
    second_message = now_ms() + 60_000

    async def work(claim: Claim) -> None:
        runs.append(claim.lease)
        if len(runs) == 1:
            # A message arrives while the turn runs: it re-scores the item.
            await queue.schedule("conversation", second_message)
            await asyncio.sleep(LEASE_MS / 1000)  # a heartbeat tries to renew meanwhile

    async with running(pool_of(queue, work, slots=1)):

        async def rescored() -> bool:
            return len(runs) == 1 and await redis.zscore(QUEUE, "conversation") is not None

        await until(rescored, "the first run")
        await asyncio.sleep(2 * LEASE_MS / 1000)
    # The newer schedule stands: neither the heartbeat nor the release took it.
    assert await redis.zscore(QUEUE, "conversation") == second_message
    assert len(runs) == 1


async def test_a_claim_held_outside_a_pool_is_renewed_while_its_block_runs(
    redis: aioredis.Redis,
) -> None:
    queue = DueQueue(redis, QUEUE)
    claim = Claim("inline", now_ms() + LEASE_MS)
    await queue.schedule("inline", claim.lease)
    first = claim.lease
    async with leased(queue, claim, LEASE_MS):
        await asyncio.sleep(3 * LEASE_MS / 1000)
        assert claim.lease > first
        assert await redis.zscore(QUEUE, "inline") == claim.lease
    assert await queue.release(claim)
    assert await redis.zcard(QUEUE) == 0


async def test_a_failing_item_does_not_stop_the_others(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    for member in ("bad", "good-1", "good-2"):
        await queue.schedule(member, now_ms())
    done: list[str] = []

    async def work(claim: Claim) -> None:
        if claim.member == "bad":
            raise RuntimeError("a bug")
        done.append(claim.member)

    async with running(pool_of(queue, work, slots=1)):

        async def goods_done() -> bool:
            return sorted(done) == ["good-1", "good-2"]

        await until(goods_done, "the good items done")
    # The failing one is left leased: due again when its lease runs out, not dropped.
    assert await redis.zscore(QUEUE, "bad") is not None
