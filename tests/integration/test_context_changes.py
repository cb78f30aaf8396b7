"""Every replica drops its copy of a lead or contact at once when one of them publishes a
change (an erasure, a lead moved to another stage) — through real Redis pub/sub."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from services.conversation.context import (
    CONTACT,
    LEAD,
    ContextCache,
    ContextChanges,
    publish_changes,
)


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_published_change_reaches_every_replica(redis: aioredis.Redis) -> None:
    caches = [ContextCache(60), ContextCache(60)]
    listeners = [ContextChanges(redis, cache) for cache in caches]
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(listener.run(stopping)) for listener in listeners]
    try:
        for listener in listeners:
            await asyncio.wait_for(listener.subscribed.wait(), 5)
        for cache in caches:
            cache.put(LEAD, 9100001, "lead")
            cache.put(LEAD, 9100002, "other lead")
            cache.put(CONTACT, 4400001, "contact")
        await publish_changes(redis, lead_ids=[9100001], contact_ids=[4400001])
        await _until(lambda: all(c.get(LEAD, 9100001) is None for c in caches))
        for cache in caches:
            assert cache.get(CONTACT, 4400001) is None
            assert cache.get(LEAD, 9100002) == "other lead"
    finally:
        stopping.set()
        await asyncio.gather(*tasks)


async def test_a_replica_trusts_no_copy_from_before_it_subscribed(redis: aioredis.Redis) -> None:
    cache = ContextCache(60)
    cache.put(LEAD, 9100001, "read before listening")
    stopping = asyncio.Event()
    listener = ContextChanges(redis, cache)
    task = asyncio.create_task(listener.run(stopping))
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        assert cache.get(LEAD, 9100001) is None
    finally:
        stopping.set()
        await task


async def test_switched_off_it_listens_to_nothing_and_runs_until_stopped(
    redis: aioredis.Redis,
) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(ContextChanges(redis, ContextCache(0)).run(stopping))
    await asyncio.sleep(0.2)
    assert not task.done(), "a background task that ends stops the service"
    stopping.set()
    await asyncio.wait_for(task, 5)
