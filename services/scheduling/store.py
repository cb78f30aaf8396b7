"""Every Redis key of the scheduling service, with its lifetime and why.

A request holds personal data (the contact's name and phone in its envelope): it expires
REQUEST_TTL_SECONDS after it was made, at most DATA_RETENTION_DAYS (R; 0 = no limit
beyond its own), and goes with an erase of its lead or contact (LGPD). Each key of a lead
or contact is listed in that lead's or contact's key index, so that an erase finds them.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import DueQueue, text, text_map
from services.common.reports import REPORT_SECONDS
from services.scheduling import reports

# Requests to deliver to n8n, by next attempt (a sorted set of request ids, no TTL: it
# lives with the service; an erased request is taken off it, a request that expired is
# dropped when claimed).
OUTBOX_DUE = "sched:outbox:due"
# Kept while they may be asked about: 90 days, at most R.
REQUEST_TTL_SECONDS = 90 * 24 * 3600
REQUEST_PREFIX = "sched:req:"


def request_key(request_id: str) -> str:
    """A request (hash with its envelope for n8n and its status)."""
    return f"{REQUEST_PREFIX}{request_id}"


def dedupe_key(lead_id: int, slot: str) -> str:
    """The first request of a lead for a slot: SCHEDULING_DEDUPE_DAYS, at most R."""
    return f"sched:dedupe:{lead_id}:{slot}"


def lead_keys_key(lead_id: int) -> str:
    """A lead's requests and dedupe keys (a set of key names), for its erase; lives as
    long as the longest of them."""
    return f"sched:lead:{lead_id}:keys"


def contact_keys_key(contact_id: int) -> str:
    """A contact's requests (a set of key names), for its erase; as long as they live."""
    return f"sched:contact:{contact_id}:keys"


# KEYS: the key, then the indexes listing it. ARGV: its lifetime (ms). The indexes live
# at least as long as what they list.
_LIST = """
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
"""

_CLAIM_SLOT = (
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('GET', KEYS[1]) or ''
end
"""
    + _LIST.replace("ARGV[1]", "ARGV[2]")
    + """
return false
"""
)

# A count in the day's report (services/scheduling/reports.py), whose hash lives ARGV[2]
# seconds from its first count: KEYS[2] the day's hash, FIELD the counter and owner.
_TALLY = """
if redis.call('HINCRBY', KEYS[2], FIELD, 1) == 1 and redis.call('TTL', KEYS[2]) < 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
"""

# KEYS: request, the day's report, outbox, indexes. ARGV: lifetime (ms), the report
# hash's lifetime (s), request id, due at, the request's owner for the report, then
# field/values. Counted as requested in the same call.
_CREATE = (
    """
redis.call('HSET', KEYS[1], 'report_owner', ARGV[5], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
"""
    + _TALLY.replace("FIELD", "'@REQUESTED@|' .. ARGV[5]")
    + _LIST.replace("for i = 2,", "for i = 4,")
).replace("@REQUESTED@", reports.REQUESTED)

# A request erased (or expired) meanwhile is never written again by its delivery.
# KEYS: request, the day's report. ARGV: its new status ('' = unchanged), the report
# hash's lifetime (s), then field/values. A status that changes to confirmed or failed is
# counted in the same call: once, however often it is set.
_UPDATE = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local before = redis.call('HGET', KEYS[1], 'status')
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[1]) end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
local owner = redis.call('HGET', KEYS[1], 'report_owner')
if owner and ARGV[1] ~= before and (ARGV[1] == 'confirmed' or ARGV[1] == 'failed') then
"""
    + _TALLY.replace("FIELD", "'agendamentos_' .. ARGV[1] .. '|' .. owner")
    + """
end
return 1
"""
)


class SchedulingStore:
    def __init__(
        self, redis: aioredis.Redis, retention_seconds: int = 0, timezone: str = "UTC"
    ) -> None:
        """`retention_seconds`: DATA_RETENTION_DAYS in seconds (0 = no limit);
        `timezone`: BRIDGE_TIMEZONE, whose days the reports count in."""
        self.redis = redis
        self.report_days = reports.report_days(timezone)
        self.outbox = DueQueue(redis, OUTBOX_DUE)
        self._retention_ms = max(retention_seconds, 0) * 1000
        self._claim_slot = redis.register_script(_CLAIM_SLOT)
        self._create = redis.register_script(_CREATE)
        self._update = redis.register_script(_UPDATE)

    def _life_ms(self, own_seconds: int) -> int:
        own = own_seconds * 1000
        return min(own, self._retention_ms) if self._retention_ms else own

    async def claim_slot(self, lead_id: int, slot: str, request_id: str, ttl: int) -> str | None:
        """Reserve (lead, slot) for this request; the earlier request's id if taken."""
        existing = await self._claim_slot(
            keys=[dedupe_key(lead_id, slot), lead_keys_key(lead_id)],
            args=[request_id, self._life_ms(ttl)],
        )
        return text(cast(bytes, existing)) if existing else None

    async def release_slot(self, lead_id: int, slot: str) -> None:
        await self.redis.delete(dedupe_key(lead_id, slot))

    async def create(
        self,
        request_id: str,
        record: dict[str, Any],
        due_ms: int,
        contact_id: int = 0,
        owner: str = "-|-|-|-|-",
    ) -> None:
        """Store a request of record["lead_id"] (and of `contact_id`) and queue it;
        counted as requested under `owner` (reports.owner)."""
        indexes = [lead_keys_key(int(record["lead_id"]))]
        if contact_id:
            indexes.append(contact_keys_key(contact_id))
        flat: list[Any] = []
        # The contact's index is named in the request, so an erase of its lead takes the
        # request out of it.
        for name, value in {**record, "contact_id": contact_id}.items():
            flat.extend((name, value))
        await self._create(
            keys=[request_key(request_id), self.report_days.key(), OUTBOX_DUE, *indexes],
            args=[
                self._life_ms(REQUEST_TTL_SECONDS),
                REPORT_SECONDS,
                request_id,
                due_ms,
                owner,
                *flat,
            ],
        )

    async def get(self, request_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(request_key(request_id)))

    async def update(self, request_id: str, status: str = "", **fields: str | int | float) -> None:
        """Set a request's `status` (counted in the day's report when it changes to
        confirmed or failed) and other fields; nothing for a request gone."""
        flat: list[Any] = [status, REPORT_SECONDS]
        for name, value in {**fields, "updated_at": time.time()}.items():
            flat.extend((name, value))
        await self._update(keys=[request_key(request_id), self.report_days.key()], args=flat)

    async def delivered(self, request_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(OUTBOX_DUE, request_id)
            await pipe.execute()

    async def erase(self, lead_ids: list[int], contact_ids: list[int]) -> Counter[str]:
        """Every request and dedupe key of these leads and contacts, off the outbox too.
        Idempotent."""
        indexes = [lead_keys_key(x) for x in lead_ids] + [contact_keys_key(x) for x in contact_ids]
        # Every kind, 0 when nothing was held: a repeated erase answers as the first did.
        counts: Counter[str] = Counter(requests=0, keys=0)
        if not indexes:
            return counts
        async with self.redis.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.smembers(index)
            listed = await pipe.execute()
        keys = sorted({text(k) for members in listed for k in members})
        requests = [k.removeprefix(REQUEST_PREFIX) for k in keys if k.startswith(REQUEST_PREFIX)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id in requests:
                pipe.hget(request_key(request_id), "contact_id")
            contacts = await pipe.execute()
        unlisted = [
            (contact_keys_key(int(contact)), request_key(request_id))
            for request_id, contact in zip(requests, contacts, strict=True)
            if contact and int(contact)
        ]
        async with self.redis.pipeline(transaction=True) as pipe:
            for index, key in unlisted:
                pipe.srem(index, key)
            for key in keys:
                pipe.delete(key)
            if requests:
                pipe.zrem(OUTBOX_DUE, *requests)
            pipe.delete(*indexes)
            results = await pipe.execute()
        found = results[len(unlisted) : len(unlisted) + len(keys)]
        counts["requests"] = sum(
            int(n) for key, n in zip(keys, found, strict=True) if key.startswith(REQUEST_PREFIX)
        )
        counts["keys"] = sum(int(n) for n in found) + int(results[-1])
        return counts
