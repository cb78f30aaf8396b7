"""Due queues: work items in a Redis sorted set scored by when they are due (integer
milliseconds), claimed with leases.

Claiming re-scores an item to the end of a lease instead of removing it, so the work of
a replica that dies is due again when the lease ends; an item is removed only by the
holder of that exact lease. Shared by every service that schedules work.

A lease is taken and renewed with ZINCRBY, never ZADD, so that Redis's keyspace
notifications tell the two apart: `zadd` is work queued or rescheduled (the work pools
wake for it), `zincr` a lease taken or moved and `zrem` work done (nothing to claim).

`WorkFailures` keeps what went wrong: an item whose handler raised is tried again after
a growing delay and, after a bounded number of tries, parked as a dead letter with its
reason, so one poison item never loops forever nor blocks the others.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def text_map(raw: Any) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def now_ms() -> int:
    return int(time.time() * 1000)


# Claims up to ARGV[2] items due by ARGV[1] (leased until ARGV[3]) and returns them with
# the queue's lowest score after the claim: when its next item is due, or a lease (ours or
# another replica's) runs out. The claimer sleeps until then instead of polling. Nothing
# due costs one ZRANGE. With the work failures' keys (KEYS[2] failing, KEYS[3] dead,
# ARGV[4] the kind's id prefix), each item says whether a failure of it is on record, so
# the work that goes through clears it only then (no call after every item).
_CLAIM_DUE = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 or tonumber(first[2]) > tonumber(ARGV[1]) then
  return {{}, first[2] or false, {}}
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local items, failing = {}, {}
for i = 1, #due, 2 do
  local m = due[i]
  items[#items + 1] = m
  redis.call('ZINCRBY', KEYS[1], tonumber(ARGV[3]) - tonumber(due[i + 1]), m)
  if #KEYS >= 3 then
    local id = ARGV[4] .. m
    local known = redis.call('HEXISTS', KEYS[2], id) == 1 or redis.call('ZSCORE', KEYS[3], id)
    failing[#items] = known and 1 or 0
  else
    failing[#items] = 1
  end
end
first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {items, first[2] or false, failing}
"""

_CLAIM_ONE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if score and tonumber(score) <= tonumber(ARGV[1]) then
  redis.call('ZINCRBY', KEYS[1], tonumber(ARGV[2]) - tonumber(score), ARGV[3])
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

# A heartbeat: the holder of this exact lease moves its end later. An item re-scored
# meanwhile (new work, a reschedule) is no longer held: that schedule stands.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == ARGV[1] then
  redis.call('ZINCRBY', KEYS[1], tonumber(ARGV[3]) - tonumber(ARGV[1]), ARGV[2])
  return 1
end
return 0
"""


@dataclass(slots=True, eq=False)
class Claim:
    """A claimed item and the end of its lease (its score while it is held: the score
    is the lease's identity in the compare-and-set scripts).

    A heartbeat moves `lease` forward; every script that compares it runs under
    `pinned`, so a renewal never lands between reading `lease` and using it.

    `failing`: a failure of the item may be on record (True unless its claim said
    otherwise), so work that goes through clears it. `settled`: the work already took
    the item off the queue or gave it a new score; the pool does not release it after."""

    member: str
    lease: int
    pinned: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)
    failing: bool = True
    settled: bool = False


@dataclass(frozen=True, slots=True)
class FailureKeys:
    """Where a kind of work's failures are kept (WorkFailures), for its claims to say
    which of their items have one on record."""

    failing: str
    dead: str
    kind: str


class DueQueue:
    """A sorted set of work items due at a time, claimed with leases."""

    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self._redis = redis
        self.key = key
        self._claim = redis.register_script(_CLAIM_DUE)
        self._claim_one = redis.register_script(_CLAIM_ONE)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    async def schedule(self, member: str, due_ms: int) -> None:
        await self._redis.zadd(self.key, {member: due_ms})

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    async def claim(self, limit: int, lease_ms: int) -> list[Claim]:
        claimed, _ = await self.claim_next(limit, lease_ms)
        return claimed

    async def claim_next(
        self, limit: int, lease_ms: int, failures: FailureKeys | None = None
    ) -> tuple[list[Claim], int | None]:
        """Claims up to `limit` due items; and the queue's lowest score after the claim
        (ms: its next item due, or the end of a lease), None when it is empty. With
        `failures`, each claim says whether a failure of its item is on record."""
        now = now_ms()
        lease = now + lease_ms
        keys: list[str] = [self.key]
        args: list[str | int] = [now, max(limit, 0), lease]
        if failures is not None:
            keys += [failures.failing, failures.dead]
            args.append(f"{failures.kind}:")
        items, first, failing = cast(
            tuple[list[bytes], bytes | None, list[int]],
            await self._claim(keys=keys, args=args),
        )
        claimed = [
            Claim(m.decode(), lease, failing=bool(f)) for m, f in zip(items, failing, strict=True)
        ]
        return claimed, None if first is None else int(float(first))

    async def claim_member(self, member: str, lease_ms: int) -> Claim | None:
        now = now_ms()
        lease = now + lease_ms
        ok = await self._claim_one(keys=[self.key], args=[now, lease, member])
        return Claim(member, lease) if ok else None

    async def release(self, claim: Claim) -> bool:
        """Done with it: off the queue, unless new work re-scored it meanwhile."""
        async with claim.pinned:
            claim.settled = True
            return bool(await self._release(keys=[self.key], args=[claim.lease, claim.member]))

    async def renew(self, claim: Claim, lease_ms: int) -> bool:
        """Hold the item `lease_ms` longer; False when it is no longer ours (new work
        re-scored it, or the lease ran out and another replica claimed it)."""
        async with claim.pinned:
            lease = now_ms() + lease_ms
            if lease <= claim.lease:
                return True
            ok = await self._renew(keys=[self.key], args=[claim.lease, claim.member, lease])
            if ok:
                claim.lease = lease
            return bool(ok)

    async def reschedule(self, claim: Claim, due_ms: int) -> None:
        """Move a claimed item to a later time (the lease is then over)."""
        claim.settled = True
        await self._redis.zadd(self.key, {claim.member: due_ms})


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and the start of its message."""
    details = getattr(exc, "details", None)
    message = details() if callable(details) else str(exc)
    message = " ".join(str(message or "").split())
    return f"{type(exc).__name__}: {message[:_ERROR_CHARS]}" if message else type(exc).__name__


_ERROR_CHARS = 300
_JITTER = 0.2


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing work item is tried, and how far apart."""

    max_attempts: int
    base_seconds: float
    max_seconds: float

    def delay_ms(self, attempts: int) -> int:
        """Milliseconds before the next try after `attempts` failures: doubling, capped,
        with jitter so items that failed together do not all come back together."""
        seconds = min(self.base_seconds * 2 ** max(attempts - 1, 0), self.max_seconds)
        return int(seconds * 1000 * (1 + random.uniform(-_JITTER, _JITTER)))  # noqa: S311


@dataclass(frozen=True, slots=True)
class Failure:
    """A work item whose last try failed: still being retried, or parked (dead letter)."""

    id: str  # "<kind>:<member>"
    kind: str
    member: str
    queue: str  # the due queue's (or stream's) key, where a replay puts it back
    conversation_id: str
    attempts: int
    error: str
    first_failed_at: float  # Unix seconds
    last_failed_at: float
    parked_at: float  # 0 while it is still retried
    next_at: float  # when it is tried again; 0 once parked
    payload: str  # a stream entry's event, to add it again on replay

    @classmethod
    def from_json(cls, raw: bytes | str) -> Failure:
        data = json.loads(raw)
        return cls(
            id=str(data.get("id", "")),
            kind=str(data.get("kind", "")),
            member=str(data.get("member", "")),
            queue=str(data.get("queue", "")),
            conversation_id=str(data.get("conversation_id", "")),
            attempts=int(data.get("attempts") or 0),
            error=str(data.get("error", "")),
            first_failed_at=int(data.get("first_failed_at") or 0) / 1000,
            last_failed_at=int(data.get("last_failed_at") or 0) / 1000,
            parked_at=int(data.get("parked_at") or 0) / 1000,
            next_at=int(data.get("next_at") or 0) / 1000,
            payload=str(data.get("payload", "")),
        )


# What both failure scripts share. KEYS: failing (hash id -> record), dead (zset id ->
# parked at), dead info (hash). ARGV: id, now, -, record fields (JSON), max attempts,
# delay, counts (1/0). `failure()` is the item's record with this failure counted;
# `park(r)` moves it to the dead letters.
_FAILURE_LIB = """
local now = tonumber(ARGV[2])
local function failure()
  local raw = redis.call('HGET', KEYS[1], ARGV[1])
  local r = raw and cjson.decode(raw) or {attempts = 0, first_failed_at = now}
  for k, v in pairs(cjson.decode(ARGV[4])) do r[k] = v end
  r.attempts = r.attempts + 1
  r.last_failed_at = now
  return r
end
local function too_many(r)
  return ARGV[7] == '1' and r.attempts >= tonumber(ARGV[5])
end
local function park(r)
  redis.call('HDEL', KEYS[1], ARGV[1])
  r.parked_at = now
  r.next_at = 0
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(r))
  return {r.attempts, 0}
end
local function retry(r)
  r.next_at = now + tonumber(ARGV[6])
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
  return {r.attempts, r.next_at}
end
"""

# A queued item (KEYS[4] its queue, ARGV[3] its lease). It is parked when it has failed
# too often, or when its handler already took it off the queue (the handler gave up on
# it). Otherwise it is due again after the delay, unless newer work re-scored it
# meanwhile: that schedule stands.
_FAILED = (
    _FAILURE_LIB
    + """
local r = failure()
local score = redis.call('ZSCORE', KEYS[4], r.member)
if not score or too_many(r) then
  redis.call('ZREM', KEYS[4], r.member)
  return park(r)
end
if score == ARGV[3] then redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), r.member) end
return retry(r)
"""
)

# A stream entry (KEYS[4] the stream, ARGV[8] its group, ARGV[9] the entry id): it stays
# pending and is reclaimed after the visibility timeout; parked, it is acknowledged and
# deleted, and its event kept in the dead letter for a replay.
_ENTRY_FAILED = (
    _FAILURE_LIB
    + """
local r = failure()
if too_many(r) then
  redis.call('XACK', KEYS[4], ARGV[8], ARGV[9])
  redis.call('XDEL', KEYS[4], ARGV[9])
  return park(r)
end
return retry(r)
"""
)

# A work item that went through is no longer failing, nor a dead letter (parked, then
# put back by new work, and this time it went through) — unless it failed again since
# the try began (ARGV[2]): a handler that retries on its own schedule returns normally.
_SUCCEEDED = """
local since = tonumber(ARGV[2])
local n = 0
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and tonumber(cjson.decode(raw).last_failed_at) < since then
  n = redis.call('HDEL', KEYS[1], ARGV[1])
end
local parked = redis.call('ZSCORE', KEYS[2], ARGV[1])
if parked and tonumber(parked) < since then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  n = n + 1
end
return n
"""

# Back where it came from (KEYS[4], the queue or stream), due now, its tries from zero.
_REPLAY = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[4], '*', 'e', ARGV[4])
else
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
end
return 1
"""

# A dependency is back: every item of one kind (ARGV[2]) waiting in its queue (KEYS[2])
# for a later try is due now (ARGV[1]). Only an item still at the try its record names
# (score = next_at): a claimed one has its lease as score and is left alone.
_PULL_FORWARD = """
local now = tonumber(ARGV[1])
local pulled = 0
local records = redis.call('HGETALL', KEYS[1])
for i = 2, #records, 2 do
  local ok, r = pcall(cjson.decode, records[i])
  if ok and r.kind == ARGV[2] and r.next_at then
    local score = redis.call('ZSCORE', KEYS[2], r.member)
    if score and tonumber(score) == tonumber(r.next_at) and tonumber(score) > now then
      redis.call('ZADD', KEYS[2], now, r.member)
      pulled = pulled + 1
    end
  end
end
return pulled
"""


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """What became of a failed try."""

    attempts: int
    parked: bool
    next_at_ms: int


@dataclass(frozen=True, slots=True)
class FailureCounts:
    failing: int
    dead: int
    dead_recent: int


class WorkFailures:
    """Failed tries of a service's work items, and the items parked as dead letters.

    Keys: `<prefix>:failing` (hash id -> record), `<prefix>:dead` (sorted set id ->
    parked at, ms) and `<prefix>:dead:info` (hash id -> record). Records are JSON; a
    dead letter stays until it is replayed or its item succeeds after new work.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str, policy: RetryPolicy) -> None:
        self._redis = redis
        self.policy = policy
        self.failing_key = f"{prefix}:failing"
        self.dead_key = f"{prefix}:dead"
        self.dead_info_key = f"{prefix}:dead:info"
        self._failed = redis.register_script(_FAILED)
        self._entry_failed = redis.register_script(_ENTRY_FAILED)
        self._succeeded = redis.register_script(_SUCCEEDED)
        self._replay = redis.register_script(_REPLAY)
        self._pull_forward = redis.register_script(_PULL_FORWARD)

    @staticmethod
    def item_id(kind: str, member: str) -> str:
        return f"{kind}:{member}"

    def keys(self, kind: str) -> FailureKeys:
        """What a pool of `kind` passes its claims (DueQueue.claim_next)."""
        return FailureKeys(self.failing_key, self.dead_key, kind)

    def _fields(self, kind: str, member: str, queue: str, error: str, **extra: str) -> str:
        fields = {"id": self.item_id(kind, member), "kind": kind, "member": member}
        fields.update(queue=queue, error=error, **{k: v for k, v in extra.items() if v})
        return json.dumps(fields)

    async def failed(
        self,
        kind: str,
        queue: DueQueue,
        claim: Claim,
        error: str,
        *,
        counts: bool = True,
        conversation_id: str = "",
    ) -> FailureOutcome:
        """Record a failed try of a claimed item: due again after the policy's delay,
        or parked. `counts` False (a dependency unavailable) retries without parking."""
        delay_ms = self.policy.delay_ms(await self._attempts(kind, claim.member) + 1)
        async with claim.pinned:
            attempts, next_at = await self._failed_once(
                kind, queue, claim, error, counts, conversation_id, delay_ms
            )
        return FailureOutcome(int(attempts), not next_at, int(next_at))

    async def _failed_once(
        self,
        kind: str,
        queue: DueQueue,
        claim: Claim,
        error: str,
        counts: bool,
        conversation_id: str,
        delay_ms: int,
    ) -> tuple[int, int]:
        attempts, next_at = await self._failed(
            keys=[self.failing_key, self.dead_key, self.dead_info_key, queue.key],
            args=[
                self.item_id(kind, claim.member),
                now_ms(),
                claim.lease,
                self._fields(kind, claim.member, queue.key, error, conversation_id=conversation_id),
                self.policy.max_attempts,
                delay_ms,
                "1" if counts else "0",
            ],
        )
        return int(attempts), int(next_at)

    async def entry_failed(
        self,
        kind: str,
        stream: str,
        group: str,
        entry_id: str,
        payload: str,
        error: str,
        max_attempts: int,
        retry_after_ms: int,
        member: str = "",
    ) -> FailureOutcome:
        """Record a failed try of a stream entry (left pending, or parked); `member` names
        it when entry ids are not unique (several streams), else the entry id does."""
        member = member or entry_id
        attempts, next_at = await self._entry_failed(
            keys=[self.failing_key, self.dead_key, self.dead_info_key, stream],
            args=[
                self.item_id(kind, member),
                now_ms(),
                0,
                self._fields(kind, member, stream, error, payload=payload),
                max_attempts,
                retry_after_ms,
                "1",
                group,
                entry_id,
            ],
        )
        return FailureOutcome(int(attempts), not next_at, int(next_at))

    async def retrying(
        self,
        kind: str,
        member: str,
        queue: str,
        error: str,
        next_at_ms: int,
        conversation_id: str = "",
    ) -> None:
        """A handler retries on its own schedule (n8n's, Kommo's): counted as failing
        until it succeeds, or until it gives up (`given_up`)."""
        key = self.item_id(kind, member)
        raw = await self._redis.hget(self.failing_key, key)
        now = now_ms()
        record: dict[str, Any] = json.loads(raw) if raw else {"attempts": 0, "first_failed_at": now}
        record.update(
            json.loads(self._fields(kind, member, queue, error, conversation_id=conversation_id))
        )
        record.update(attempts=int(record["attempts"]) + 1, last_failed_at=now, next_at=next_at_ms)
        await self._redis.hset(self.failing_key, key, json.dumps(record))

    async def pull_forward(self, kind: str, queue: str) -> int:
        """A dependency is back (one call went through): the items of `kind` waiting for
        their next try in `queue` are due now rather than at their backoff's end (up to
        an hour after an outage). How many were pulled forward."""
        return int(await self._pull_forward(keys=[self.failing_key, queue], args=[now_ms(), kind]))

    async def given_up(self, kind: str, member: str) -> None:
        """The handler parked the item in a dead-letter list of its own: not failing."""
        await self._redis.hdel(self.failing_key, self.item_id(kind, member))

    async def succeeded(self, kind: str, member: str, tried_at_ms: int | None = None) -> bool:
        """The item went through (its try began at `tried_at_ms`; None = just now):
        True if it had been failing (or parked)."""
        since = now_ms() + 1 if tried_at_ms is None else tried_at_ms
        return bool(
            await self._succeeded(
                keys=[self.failing_key, self.dead_key, self.dead_info_key],
                args=[self.item_id(kind, member), since],
            )
        )

    async def _attempts(self, kind: str, member: str) -> int:
        raw = await self._redis.hget(self.failing_key, self.item_id(kind, member))
        return int(json.loads(raw).get("attempts") or 0) if raw else 0

    async def failing(self) -> list[Failure]:
        raw = await self._redis.hvals(self.failing_key)
        return sorted(
            (Failure.from_json(r) for r in cast(list[bytes], raw)), key=lambda f: -f.last_failed_at
        )

    async def dead(self, limit: int) -> list[Failure]:
        ids = cast(list[bytes], await self._redis.zrevrange(self.dead_key, 0, limit - 1))
        if not ids:
            return []
        raw = await self._redis.hmget(self.dead_info_key, ids)
        return [Failure.from_json(r) for r in cast(list[bytes | None], raw) if r]

    async def counts(self, recent_since_ms: int) -> FailureCounts:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hlen(self.failing_key)
            pipe.zcard(self.dead_key)
            pipe.zcount(self.dead_key, recent_since_ms, "+inf")
            failing, dead, recent = await pipe.execute()
        return FailureCounts(int(failing), int(dead), int(recent))

    async def replay(self, item_id: str) -> bool:
        """Put a dead letter back on its queue (or stream), due now; False if unknown."""
        raw = await self._redis.hget(self.dead_info_key, item_id)
        if not raw:
            return False
        letter = Failure.from_json(raw)
        return bool(
            await self._replay(
                keys=[self.dead_key, self.dead_info_key, self.failing_key, letter.queue],
                args=[item_id, now_ms(), letter.member, letter.payload],
            )
        )
