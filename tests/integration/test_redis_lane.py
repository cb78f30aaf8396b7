"""The scripts' lane (services/common/redis_lane.py) against a real redis-server: replies
reach the right callers however many are in flight, errors stay with their call, and a
Redis that restarts, stalls, forgets its scripts or wants a password is handled as
redis-py's pool handles it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from devstack.processes import free_port
from devstack.redis_server import RedisServer
from services.common.redis import create_redis
from services.common.redis_lane import BridgeRedis

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"
INCR = "return redis.call('INCR', KEYS[1])"
# Busy for 0.2 s by Redis' clock, then answers.
SLOW = """
local function us() local t = redis.call('TIME'); return t[1] * 1000000 + t[2] end
local start = us()
repeat until us() - start > 200000
return ARGV[1]
"""


async def test_many_calls_at_once_each_get_their_own_reply(own_redis_server: RedisServer) -> None:
    server = own_redis_server
    redis = create_redis(server.url)
    echo = redis.register_script(ECHO)
    try:
        replies = await asyncio.gather(
            *(echo(keys=[f"k{n}"], args=[f"v{n}", n]) for n in range(500))
        )
        assert replies == [[f"k{n}".encode(), f"v{n}".encode(), n + 1] for n in range(500)]
        # One connection carried them all, beside the pool's own.
        clients = await redis.client_list()
        assert len(clients) <= 2
    finally:
        await redis.aclose()


async def test_an_error_stays_with_its_call(own_redis_server: RedisServer) -> None:
    server = own_redis_server
    redis = create_redis(server.url)
    failing = redis.register_script("return redis.error_reply('NOPE ' .. ARGV[1])")
    echo = redis.register_script(ECHO)
    try:
        results = await asyncio.gather(
            echo(keys=["a"], args=["1", 1]),
            failing(keys=[], args=["x"]),
            echo(keys=["b"], args=["2", 2]),
            return_exceptions=True,
        )
        assert results[0] == [b"a", b"1", 2]
        assert isinstance(results[1], ResponseError) and "NOPE x" in str(results[1])
        assert results[2] == [b"b", b"2", 3]
        with pytest.raises(DataError):  # refused before anything is sent, as redis-py does
            await echo(keys=["a"], args=[None, 1])
        assert await echo(keys=["c"], args=["3", 3]) == [b"c", b"3", 4]
    finally:
        await redis.aclose()


async def test_a_caller_that_gives_up_does_not_shift_the_replies(
    own_redis_server: RedisServer,
) -> None:
    server = own_redis_server
    redis = create_redis(server.url)
    slow = redis.register_script(SLOW)
    echo = redis.register_script(ECHO)
    try:
        assert await echo(keys=["i"], args=["u", 0]) == [b"i", b"u", 1]
        connections = (await redis.info("stats"))["total_connections_received"]
        gave_up = asyncio.create_task(slow(keys=[], args=["late"]))
        await asyncio.sleep(0.05)
        after = asyncio.create_task(echo(keys=["k"], args=["v", 1]))
        gave_up.cancel()
        assert await after == [b"k", b"v", 2]
        assert await echo(keys=["j"], args=["w", 2]) == [b"j", b"w", 3]
        # the same connection carried on: nothing was dropped and made again
        assert (await redis.info("stats"))["total_connections_received"] == connections
    finally:
        await redis.aclose()


async def test_scripts_are_loaded_again_after_redis_forgets_them(
    own_redis_server: RedisServer,
) -> None:
    server = own_redis_server
    redis = create_redis(server.url)
    incr = redis.register_script(INCR)
    try:
        assert await incr(keys=["n"]) == 1
        await redis.script_flush()
        assert await incr(keys=["n"]) == 2
    finally:
        await redis.aclose()


async def test_a_restarted_redis_is_reconnected_to(own_redis_server: RedisServer) -> None:
    server = own_redis_server
    redis = create_redis(server.url)
    incr = redis.register_script(INCR)
    try:
        assert await incr(keys=["n"]) == 1
        server.stop()
        with pytest.raises(RedisConnectionError):
            await incr(keys=["n"])
        server.start()  # same port, its AOF replayed: the key is still 1
        assert await incr(keys=["n"]) == 2
    finally:
        await redis.aclose()


async def test_a_redis_that_stops_answering_times_the_call_out(
    own_redis_server: RedisServer,
) -> None:
    server = own_redis_server
    lane_timeout = 0.3
    pool = aioredis.BlockingConnectionPool.from_url(
        server.url, socket_timeout=lane_timeout, socket_connect_timeout=lane_timeout
    )
    redis = BridgeRedis(connection_pool=pool)
    incr = redis.register_script(INCR)
    try:
        assert await incr(keys=["n"]) == 1
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(RedisTimeoutError):
                await incr(keys=["n"])
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        # it waited its socket timeout at least, then gave up
        assert time.monotonic() - started >= lane_timeout
        assert await incr(keys=["m"]) == 1
    finally:
        await redis.aclose()


async def test_a_password_in_the_url_is_used(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "auth", password="s3cret").start()
    redis = create_redis(server.url)
    try:
        assert await redis.register_script(INCR)(keys=["n"]) == 1
    finally:
        await redis.aclose()
        server.stop()
