"""When a dependency comes back, the items waiting out their backoff for it are due at
once — never an item another replica is working on (against a real Redis)."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.common.due_queue import DueQueue, RetryPolicy, WorkFailures, now_ms

QUEUE = "test:outbox:due"
HOUR_MS = 3_600_000


async def test_waiting_items_of_the_kind_are_due_now_and_claimed_ones_keep_their_lease(
    redis: aioredis.Redis,
) -> None:
    queue = DueQueue(redis, QUEUE)
    failures = WorkFailures(redis, "test:work", RetryPolicy(5, 1.0, 60.0))
    later = now_ms() + HOUR_MS
    for member in ("waiting-1", "waiting-2", "in-hand", "other-kind"):
        await queue.schedule(member, later)
    for member in ("waiting-1", "waiting-2", "in-hand"):
        await failures.retrying("n8n_delivery", member, QUEUE, "503", later)
    await failures.retrying("reply", "other-kind", QUEUE, "503", later)
    # Another replica took "in-hand" when it was due: its score is its lease now.
    lease = now_ms() + 60_000
    await redis.zadd(QUEUE, {"in-hand": lease})

    before = now_ms()
    assert await failures.pull_forward("n8n_delivery", QUEUE) == 2

    members = ("waiting-1", "waiting-2", "in-hand", "other-kind")
    scores = {m: await redis.zscore(QUEUE, m) for m in members}
    assert before <= (scores["waiting-1"] or 0) <= now_ms()
    assert before <= (scores["waiting-2"] or 0) <= now_ms()
    assert scores["in-hand"] == lease, "work in another replica's hands is left alone"
    assert scores["other-kind"] == later, "another kind's items wait for their own dependency"
    claimed_now = {c.member for c in await queue.claim(10, 60_000)}
    assert claimed_now == {"waiting-1", "waiting-2"}
    assert await failures.pull_forward("n8n_delivery", QUEUE) == 0, "nothing left waiting"
