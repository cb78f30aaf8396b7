"""When a work pool claims (issue 22, event-driven, not polled), against a real Redis: at
the due score its claim returned, at a kick, at a change of its queue made by another
replica (keyspace notifications), and at the slow poll for what nothing told it about.
Every pool here polls slowly (30 s) unless the test is about the poll, so an item started
within a second was not found by a poll. Bounds are generous: a loaded 2-core machine."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from services.common.due_queue import Claim, DueQueue, now_ms
from services.common.workpool import WorkPool

QUEUE = "test:wakes:due"
LEASE_MS = 400
SLOW_POLL = 30.0


@contextlib.asynccontextmanager
async def running(pool: WorkPool) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(pool.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=5)


class Starts:
    """When each item started (ms, by the queue's clock)."""

    def __init__(self) -> None:
        self.at: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def work(self, claim: Claim) -> None:
        self.at.setdefault(claim.member, now_ms())
        self.changed.set()

    async def wait_for(self, member: str, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while member not in self.at:
            left = deadline - time.monotonic()
            assert left > 0, f"{member} not started within {seconds} s"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=left)
        return self.at[member]


def pool_of(queue: DueQueue, starts: Starts, *, poll: float = SLOW_POLL, watch: bool) -> WorkPool:
    return WorkPool(
        "test", queue, starts.work, slots=4, lease_ms=LEASE_MS, poll_seconds=poll, watch=watch
    )


async def test_the_claim_returns_the_next_due_score(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    assert await queue.claim_next(10, LEASE_MS) == ([], None)
    now = now_ms()
    await queue.schedule("now", now)
    await queue.schedule("later", now + 60_000)
    claimed, next_ms = await queue.claim_next(10, LEASE_MS)
    assert [c.member for c in claimed] == ["now"]
    # The lowest score left is the lease just taken: due again if this replica dies.
    assert next_ms == claimed[0].lease
    lease = claimed[0].lease
    again, next_ms = await queue.claim_next(10, LEASE_MS)
    assert again == []  # leased: nothing due
    assert next_ms == lease


async def test_an_item_due_in_300_ms_starts_at_its_due_time_not_at_a_poll(
    redis: aioredis.Redis,
) -> None:
    queue = DueQueue(redis, QUEUE)
    due = now_ms() + 300
    await queue.schedule("turn", due)
    starts = Starts()
    # Without notifications: only the due score the claim returned can wake it on time.
    async with running(pool_of(queue, starts, watch=False)):
        started = await starts.wait_for("turn", 5)
    assert started >= due  # never before it is due
    assert started - due < 500  # ~100 ms on a quiet machine; the poll is 30 s


async def test_a_kick_claims_at_once(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    starts = Starts()
    pool = pool_of(queue, starts, watch=False)
    async with running(pool):
        await asyncio.sleep(0.2)  # claimed an empty queue: asleep until the slow poll
        await queue.schedule("kicked", now_ms())
        pool.kick()
        await starts.wait_for("kicked", 2)


async def test_work_another_replica_adds_wakes_the_pool(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    starts = Starts()
    pool = pool_of(queue, starts, watch=True)
    other = aioredis.Redis(connection_pool=redis.connection_pool)  # another replica
    async with running(pool):
        await asyncio.sleep(0.5)  # subscribed, claimed an empty queue, asleep
        claims = pool.claims
        await DueQueue(other, QUEUE).schedule("elsewhere", now_ms())
        await starts.wait_for("elsewhere", 2)
        # Also an item scheduled later by another replica starts at its due time.
        due = now_ms() + 300
        await DueQueue(other, QUEUE).schedule("later", due)
        started = await starts.wait_for("later", 5)
    assert due <= started < due + 500
    assert pool.claims - claims < 20  # woken by the changes, not polling


async def test_an_expired_lease_is_recovered_when_it_runs_out(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    await queue.schedule("orphan", now_ms())
    (dead,) = await queue.claim(1, LEASE_MS)  # a replica that then dies, no heartbeat
    starts = Starts()
    # The live pool's claim returns the dead lease's end: it wakes then, not at the poll.
    async with running(pool_of(queue, starts, watch=False)):
        started = await starts.wait_for("orphan", 5)
    assert dead.lease <= started < dead.lease + 500


async def test_an_expired_lease_nobody_told_the_pool_of_is_recovered_by_the_slow_poll(
    redis: aioredis.Redis,
) -> None:
    queue = DueQueue(redis, QUEUE)
    starts = Starts()
    poll = 1.0
    async with running(pool_of(queue, starts, poll=poll, watch=False)):
        await asyncio.sleep(0.2)  # claimed an empty queue: asleep until the slow poll
        # Another replica adds an item and claims it, then dies: no kick, no notification.
        await queue.schedule("orphan", now_ms())
        (dead,) = await queue.claim(1, LEASE_MS)
        started = await starts.wait_for("orphan", 10)
    # At the first poll after the lease ran out: a poll is at most 1.2 s (jitter).
    assert dead.lease <= started < dead.lease + 1000 * poll * 1.2 + 1000


async def test_an_idle_pool_does_not_poll(redis: aioredis.Redis) -> None:
    queue = DueQueue(redis, QUEUE)
    await queue.schedule("far", now_ms() + 3_600_000)  # due in an hour
    pool = pool_of(queue, Starts(), watch=True)
    async with running(pool):
        await asyncio.sleep(1.5)
    # The first claim and the one after subscribing; was 15 at one claim every 0.1 s.
    assert pool.claims <= 3


async def test_leases_taken_and_renewed_wake_no_pool(redis: aioredis.Redis) -> None:
    """Another replica's lease taken (ZINCRBY: a `zincr` notification), renewed and its
    work done (`zrem`) is no new work: the pool stays asleep; work queued (`zadd`) wakes
    it (test_work_another_replica_adds_wakes_the_pool)."""
    queue = DueQueue(redis, QUEUE)
    starts = Starts()
    pool = pool_of(queue, starts, watch=True)
    other = DueQueue(aioredis.Redis(connection_pool=redis.connection_pool), QUEUE)
    async with running(pool):
        await asyncio.sleep(0.5)  # subscribed, claimed an empty queue, asleep
        claims = pool.claims
        lease = now_ms() + 60_000
        await redis.zincrby(QUEUE, lease, "theirs")  # taken as a lease, as a claim does
        claim = Claim("theirs", lease)
        for n in range(5):
            assert await other.renew(claim, 61_000 + n * 1_000)
        await other.release(claim)
        await asyncio.sleep(0.5)
        assert pool.claims == claims, "a lease taken, renewed or released woke the pool"
        await other.schedule("queued", now_ms())  # new work does wake it
        await starts.wait_for("queued", 2)


async def test_an_expected_item_starts_at_its_due_time_without_a_notification(
    redis: aioredis.Redis,
) -> None:
    queue = DueQueue(redis, QUEUE)
    starts = Starts()
    pool = pool_of(queue, starts, watch=False)
    async with running(pool):
        await asyncio.sleep(0.2)  # claimed an empty queue: asleep until the slow poll
        due = now_ms() + 300
        await redis.zincrby(QUEUE, due, "expected")  # as commit_turn queues a handoff
        await redis.zincrby(QUEUE, due, "forgotten")
        pool.expect("expected", due)
        pool.expect("forgotten", due - 200)
        pool.forget("forgotten")  # settled: its wake-up goes, not the other's
        started = await starts.wait_for("expected", 5)
    assert due <= started < due + 500


async def test_a_finished_task_claims_again_only_when_more_may_be_due(
    redis: aioredis.Redis,
) -> None:
    queue = DueQueue(redis, QUEUE)
    starts = Starts()
    pool = pool_of(queue, starts, watch=False)
    async with running(pool):
        await asyncio.sleep(0.2)
        claims = pool.claims
        for n in range(3):  # fewer than its 4 slots: the claim took all that was due
            await queue.schedule(f"item-{n}", now_ms())
        pool.kick()
        for n in range(3):
            await starts.wait_for(f"item-{n}", 2)
        await asyncio.sleep(0.3)
    assert pool.claims - claims == 1, "a finished task made an empty claim"
