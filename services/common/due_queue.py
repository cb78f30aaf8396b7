"""Due queues: work items in a Redis sorted set scored by when they are due (integer
milliseconds), claimed with leases.

Claiming re-scores an item to the end of a lease instead of removing it, so the work of
a replica that dies is due again when the lease ends; an item is removed only by the
holder of that exact lease. Shared by every service that schedules work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def text_map(raw: Any) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


_CLAIM_DUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(items) do redis.call('ZADD', KEYS[1], ARGV[3], m) end
return items
"""

_CLAIM_ONE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if score and tonumber(score) <= tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# Only the holder of this exact lease may drop the item: a newer schedule (a message
# that arrived meanwhile) re-scored it and must survive.
_RELEASE = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == ARGV[1] then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Claim:
    member: str
    lease: int


class DueQueue:
    """A sorted set of work items due at a time, claimed with leases."""

    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self._redis = redis
        self.key = key
        self._claim = redis.register_script(_CLAIM_DUE)
        self._claim_one = redis.register_script(_CLAIM_ONE)
        self._release = redis.register_script(_RELEASE)

    async def schedule(self, member: str, due_ms: int) -> None:
        await self._redis.zadd(self.key, {member: due_ms})

    async def claim(self, limit: int, lease_ms: int) -> list[Claim]:
        now = now_ms()
        lease = now + lease_ms
        items = await self._claim(keys=[self.key], args=[now, limit, lease])
        return [Claim(m.decode(), lease) for m in cast(list[bytes], items)]

    async def claim_member(self, member: str, lease_ms: int) -> Claim | None:
        now = now_ms()
        lease = now + lease_ms
        ok = await self._claim_one(keys=[self.key], args=[now, lease, member])
        return Claim(member, lease) if ok else None

    async def release(self, claim: Claim) -> bool:
        return bool(await self._release(keys=[self.key], args=[claim.lease, claim.member]))

    async def reschedule(self, claim: Claim, due_ms: int) -> None:
        """Move a claimed item to a later time (the lease is then over)."""
        await self._redis.zadd(self.key, {claim.member: due_ms})
