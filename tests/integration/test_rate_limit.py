"""The shared Kommo rate limit against a real Redis and a real HTTP server: no more than
the limit in any window, each request counted from the moment it is written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from services.kommo_gateway.ratelimit import RateLimiter
from services.kommo_gateway.store import RATE_DEPARTURES

WINDOW = 1.025  # seconds: one second and the limiter's margin


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.close()
        await server.wait_closed()


async def test_no_more_than_the_limit_leave_in_one_window(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, 3)
    first = time.monotonic()
    for _ in range(3):
        await limiter.acquire()
    await limiter.acquire()
    assert time.monotonic() - first >= WINDOW - 0.01


async def test_a_request_written_late_counts_from_when_it_was_written(
    redis: aioredis.Redis,
) -> None:
    limiter = RateLimiter(redis, 2)
    late = await limiter.acquire()
    await asyncio.sleep(0.4)  # e.g. a TLS handshake before the request could go out
    await late.trace("http11.send_request_headers.started", {})
    written = time.monotonic()
    await late.settle()
    punctual = await limiter.acquire()
    await punctual.trace("http11.send_request_headers.started", {})
    await punctual.settle()
    # The third may leave only a window after the late one was *written*, not after
    # it was allowed to go: otherwise three would reach Kommo within one second.
    await limiter.acquire()
    assert time.monotonic() - written >= WINDOW - 0.01


async def test_real_requests_record_the_moment_they_were_written(
    redis: aioredis.Redis, server_url: str
) -> None:
    limiter = RateLimiter(redis, 5)
    async with httpx.AsyncClient() as http:
        departure = await limiter.acquire()
        confirmed_us = _redis_us(await redis.time())
        await asyncio.sleep(0.3)  # between the go-ahead and the write, as a slow connect
        answer = await limiter.request(http, "GET", server_url, departure=departure)
        answered_us = _redis_us(await redis.time())
    assert answer.status_code == 200
    (row,) = await redis.zrange(RATE_DEPARTURES, 0, -1, withscores=True)
    # httpx's trace hook moved the departure to the write, 0.3 s after the go-ahead.
    assert confirmed_us + 300_000 <= float(row[1]) <= answered_us


async def test_a_request_that_never_connects_frees_its_place(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, 1)
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await limiter.request(http, "GET", "http://127.0.0.1:9/")  # discard port: refused
    # Nothing went out, so its place is free again.
    assert await redis.zcard(RATE_DEPARTURES) == 0


def _redis_us(now: tuple[int, int]) -> int:
    return now[0] * 1_000_000 + now[1]
