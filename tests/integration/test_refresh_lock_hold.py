"""A refresh holder frozen past its Redis lock, waking while another replica holds the
lock and has not stored the new pair yet: nothing newer is in Redis, so only its "do I
still hold the lock" check stands between it and a second use of a single-use refresh
token. It stands down and takes the pair the other replica stores.

(tests/e2e/test_gateway_tokens.py freezes a real holder until the others have stored
their pair: there the version re-check, which comes first, already stops it.)"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from services.kommo_gateway.store import REFRESH_LOCK, TOKENS
from services.kommo_gateway.tokens import TokenManager, Tokens
from tests.integration.sandbox_kommo import gateway_settings

LOCK_SECONDS = 1.0
STAND_DOWN = "refresh lock lost before calling Kommo; standing down"


class _Departure:
    async def settle(self) -> None:
        return None


class FrozenLimiter:
    """The rate limit, where the holder waits for its turn: held until `thaw`."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.thaw = asyncio.Event()

    async def acquire(self) -> _Departure:
        self.waiting.set()
        await self.thaw.wait()
        return _Departure()

    async def request(
        self, http: httpx.AsyncClient, method: str, url: str, departure: Any = None, **kwargs: Any
    ) -> httpx.Response:
        return await http.request(method, url, **kwargs)


async def test_a_holder_that_lost_its_lock_stands_down_before_anyone_stored_a_pair(
    redis: aioredis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    token_calls: list[httpx.Request] = []

    def kommo(request: httpx.Request) -> httpx.Response:
        token_calls.append(request)
        body = {"access_token": "spent", "refresh_token": "spent", "expires_in": 86400}
        return httpx.Response(200, json=body)

    settings = gateway_settings(redis_url, 50).model_copy(
        update={"kommo_refresh_lock_seconds": LOCK_SECONDS}
    )
    limiter = FrozenLimiter()
    current = Tokens("old-access", "refresh-1", time.time() - 1, version=1)
    await redis.set(TOKENS, json.dumps(asdict(current)))
    caplog.set_level(logging.WARNING, logger="services.kommo_gateway.tokens")
    async with httpx.AsyncClient(transport=httpx.MockTransport(kommo)) as http:
        manager = TokenManager(settings, redis, http, limiter)  # type: ignore[arg-type]
        frozen = asyncio.create_task(manager.refresh(current))
        await asyncio.wait_for(limiter.waiting.wait(), 5)  # it holds the lock, waiting
        assert await redis.get(REFRESH_LOCK)
        await asyncio.sleep(LOCK_SECONDS + 0.1)  # frozen past its lock
        assert await redis.get(REFRESH_LOCK) is None
        # Another replica takes the lock and is calling Kommo: no newer pair stored yet.
        await redis.set(REFRESH_LOCK, "other-replica", px=int(LOCK_SECONDS * 1000))
        limiter.thaw.set()

        # Whatever the frozen one does next — stand down, or call Kommo — then the other
        # replica stores its pair.
        deadline = time.monotonic() + 5
        while not token_calls and STAND_DOWN not in caplog.text:
            assert time.monotonic() < deadline, "the frozen holder neither stood down nor called"
            await asyncio.sleep(0.01)
        newer = Tokens("new-access", "refresh-2", time.time() + 86400, version=2)
        await redis.set(TOKENS, json.dumps(asdict(newer)))
        result = await asyncio.wait_for(frozen, 5)

    assert token_calls == [], "the refresh token was spent by a holder that had lost the lock"
    assert result.version == 2 and result.access_token == "new-access"
