"""A gateway replica's batching alone, whose Kommo call never ends, for a test to kill it
mid-batch: `python -m tests.integration.hung_dispatcher REDIS_URL KIND LEASE_SECONDS`.

Prints `holding` once it holds the dispatch lease (or `not holding`), then each batch it
starts to send as a JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import redis.asyncio as aioredis

from services.kommo_gateway.coalescer import Coalescer, Outcome
from services.kommo_gateway.handoff import Handoff
from services.kommo_gateway.ratelimit import Budget, Departure, Priority, RateLimiter


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _send(batch: list[Any], departure: Departure) -> list[Outcome[None]]:
    await departure.settle()
    _say(json.dumps(batch))
    await asyncio.Event().wait()
    raise AssertionError("never answered")


async def main(redis_url: str, kind: str, lease_seconds: float) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    handoff = Handoff(redis, lease_seconds)
    budget = Budget(RateLimiter(redis, 50), aging_seconds=60.0, call_seconds=0.0)
    Coalescer(kind, budget, 100, Priority.REPLY, _send, handoff=handoff)
    await handoff.ready()
    _say("holding" if handoff.holds else "not holding")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
