"""The work pools' queue watch (services/common/queue_watch.py) against a real
redis-server of its own: new work on a watched key is noticed, pools added later are
subscribed on the open connection, and a Redis that restarts or goes silent is
subscribed to again, with every pool woken."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from devstack.redis_server import RedisServer
from services.common import queue_watch
from services.common.queue_watch import QueueWatch
from services.common.redis import create_redis
from services.common.redis_lane import BridgeRedis


@dataclass
class Queue:
    key: str


@dataclass(eq=False)
class Pool:
    """Stands for a work pool: records what the watch told it."""

    queue: Queue
    kicks: int = 0
    notices: int = 0

    def kick(self) -> None:
        self.kicks += 1

    def notice(self) -> None:
        self.notices += 1


async def until(check: object, what: str, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def noticed_again(server: RedisServer, pool: Pool, kicks: int) -> None:
    """The pool is woken after the broken connection and again once subscribed anew,
    then notices new work another client queues."""
    await until(lambda: pool.kicks >= kicks + 2, "subscribed again", 10)
    other = aioredis.Redis.from_url(server.url)
    try:
        await other.zadd("test:queue", {"a": 1})
        await until(lambda: pool.notices >= 1, "work noticed on the new connection")
    finally:
        await other.aclose()


async def test_new_work_is_noticed_and_leases_are_not(own_redis_server: RedisServer) -> None:
    server = own_redis_server
    redis = create_redis(server.url)
    other = aioredis.Redis.from_url(server.url)  # another replica
    watch = QueueWatch.of(redis)
    first = Pool(Queue("test:first"))
    second = Pool(Queue("test:second"))
    try:
        watch.add(first)
        await until(lambda: first.kicks >= 1, "woken once subscribed")
        await other.zadd("test:first", {"a": 1})
        await until(lambda: first.notices == 1, "new work noticed")
        await other.zincrby("test:first", 100, "a")  # a lease: no new work
        await other.zrem("test:first", "a")
        # A pool added while the connection is open is subscribed on it.
        watch.add(second)
        await until(lambda: second.kicks >= 1, "second pool subscribed")
        await other.zadd("test:second", {"b": 1})
        await until(lambda: second.notices == 1, "the second key's work noticed")
        assert first.notices == 1
    finally:
        watch.remove(first)
        watch.remove(second)
        await other.aclose()
        await redis.aclose()


async def test_a_restarted_redis_is_subscribed_to_again(own_redis_server: RedisServer) -> None:
    server = own_redis_server
    redis = create_redis(server.url)
    watch = QueueWatch.of(redis)
    pool = Pool(Queue("test:queue"))
    try:
        watch.add(pool)
        await until(lambda: pool.kicks >= 1, "subscribed")
        server.stop()
        server.start()  # forgets the notification flags and every subscriber
        # Woken after the error, then again once subscribed anew (flags turned on again).
        await noticed_again(server, pool, pool.kicks)
    finally:
        watch.remove(pool)
        await redis.aclose()


async def test_a_silent_connection_is_found_by_its_ping(
    own_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = own_redis_server
    monkeypatch.setattr(queue_watch, "_PING_SECONDS", 0.3)
    monkeypatch.setattr(queue_watch, "_REDIS_PAUSE_SECONDS", 0.1)
    pool_of_connections = aioredis.BlockingConnectionPool.from_url(
        server.url, socket_timeout=0.3, socket_connect_timeout=0.3
    )
    redis = BridgeRedis(connection_pool=pool_of_connections)
    watch = QueueWatch.of(redis)
    pool = Pool(Queue("test:queue"))
    assert server.process is not None
    try:
        watch.add(pool)
        await until(lambda: pool.kicks >= 1, "subscribed")
        await asyncio.sleep(0.5)  # idle past a ping that was answered: still subscribed
        kicks = pool.kicks
        assert kicks == 1
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            # No answer to the ping: the connection is given up and every pool woken.
            await until(lambda: pool.kicks > kicks, "woken after the silent connection", 5)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await noticed_again(server, pool, kicks)
    finally:
        watch.remove(pool)
        await redis.aclose()
