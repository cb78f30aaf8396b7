"""Batched calls across gateway replicas: the dispatch lease, the items handed over
through Redis, and their answers (`Handoff`; the batching itself is coalescer.py's).

One replica at a time holds the dispatch lease and sends the batched calls of every
replica. Its own callers queue in its memory (coalescer.py); a replica without the lease
hands each item over through Redis and gets its answer back the same way. So the
holder's Budget sees every replica's batched callers: one list call serves them all,
priorities and aging hold across replicas, and a call that could not leave before its
deadline is refused at once counting everyone's queue, not only its replica's.

    caller (no lease) ── push ──► gw:batch-queue ── pull ──► holder's queues ── Budget ──► Kommo
          ▲                                      (gw:batch-inflight)                          │
          └──────────── its answer or error ◄── gw:batch-results ◄───────────────────────────┘

Failures. A caller still queued in Redis at its give-up takes its item back (BudgetBusy,
as a local caller gets); one whose item was pulled waits its call share, then Unavailable
(a timed-out call: a bot run's outcome is settled by the reply evidence, never by a
second run). The holder renews its lease at a third of its life; when it dies, another
replica takes the lease within a lease and answers Unavailable for every item left in
flight (its request may have reached Kommo), then goes on with the queue: never a silent
hang, never a second send. A holder that cannot renew in time stops sending the items it
was handed (their callers are answered by the next holder).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from services.common.errors import (
    BridgeError,
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UpstreamError,
)
from services.kommo_gateway.ratelimit import BudgetBusy, Priority
from services.kommo_gateway.store import (
    BATCH_INFLIGHT,
    BATCH_KEEP_SECONDS,
    BATCH_LEASE,
    BATCH_QUEUE,
    BATCH_RESULTS,
    BATCH_RESULTS_KEEP_SECONDS,
    BATCH_RESULTS_KEPT,
    BATCH_WAKE,
)

if TYPE_CHECKING:
    from services.kommo_gateway.coalescer import Coalescer

log = logging.getLogger(__name__)

# A dead holder is replaced within this long (plus a third of it, the others' next try).
_LEASE_SECONDS = 3.0
# How long a reader of the answers blocks at a time (below the Redis socket timeout).
_FOLLOW_BLOCK_MS = 1000
# A replica whose batched calls have been idle this long rests (issue 22: idle, the lease
# renewal, the wait for hand-overs and the answers' reader sent Redis ~3 commands a second
# forever after the first call): the holder gives the lease back, the loops stop, and
# the next call starts them again (`Handoff.ready`). Never with an item queued, in
# flight, handed over or awaiting its answer.
_REST_AFTER_SECONDS = 30.0


# The lease, taken only when free; the items its last holder left in flight are answered
# Unavailable (their request may have reached Kommo: never sent again). Safe to repeat
# (redis-py retries a command whose answer was lost).
_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder then
  return holder == ARGV[1] and 1 or 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ids = redis.call('SMEMBERS', KEYS[2])
for i = 1, #ids, 500 do
  local answers = {}
  for j = i, math.min(i + 499, #ids) do
    answers[#answers + 1] = ids[j]
    answers[#answers + 1] = ARGV[3]
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(answers))
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('DEL', KEYS[2])
return 1
"""

_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# An item handed over, stamped with Redis' time (its wait counts from then); a wake-up
# for the holder. Returns the item as queued, so that its caller can take it back, and
# the id of the answers' last entry then ('0-0': none): its answer comes after it.
# KEYS: the queue, the wake-up, the answers.
_PUSH = """
local t = redis.call('TIME')
local item = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) .. ' ' .. ARGV[1]
redis.call('RPUSH', KEYS[1], item)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], 0, 0)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
return {item, last[1] and last[1][1] or '0-0'}
"""

# Everything handed over, into the holder's hands (recorded in flight), with Redis' time
# in milliseconds; an item pushed twice (a retried push) once. Only the holder pulls;
# anyone else leaves the wake-up for it.
_PULL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if redis.call('LLEN', KEYS[2]) > 0 then
    redis.call('RPUSH', KEYS[4], 1)
    redis.call('LTRIM', KEYS[4], 0, 0)
  end
  return false
end
redis.call('DEL', KEYS[4])
local items = {}
for _, item in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if redis.call('SADD', KEYS[3], string.match(item, '^%d+ (%x+) ')) == 1 then
    items[#items + 1] = item
  end
end
redis.call('DEL', KEYS[2])
if #items > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
local t = redis.call('TIME')
return {t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)), items}
"""

# Stream entries as redis-py reads them: (entry id, fields).
_Entries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]

# The errors an answer carries across replicas, by class name; anything else (a bug)
# is logged where it happened and travels as an internal error.
_ERRORS: dict[str, type[BridgeError]] = {
    cls.__name__: cls
    for cls in (
        BridgeError,
        Conflict,
        InvalidInput,
        NotFound,
        Unauthenticated,
        Unavailable,
        UpstreamError,
    )
}


class Handoff:
    """This replica's part in batching across replicas: the dispatch lease, the items it
    hands over (and, holding the lease, pulls from everyone) and their answers."""

    def __init__(self, redis: aioredis.Redis, lease_seconds: float = _LEASE_SECONDS) -> None:
        self._redis = redis
        self._token = uuid.uuid4().hex
        self._lease_seconds = lease_seconds
        # Monotonic time until which the lease is surely ours (0: not ours).
        self._held_until = 0.0
        self._coalescers: dict[str, Coalescer[Any, Any]] = {}
        # Items this replica handed over, by id, until their answer comes.
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        # Answers to items handed over to this replica, to be written to Redis.
        self._answers: dict[FieldT, EncodableT] = {}
        self._writing: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self._last_use = 0.0  # monotonic: the last call, hand-over or answer
        self._generation = 0  # the loops of an earlier start stop when it changes
        # The answers are followed only while this replica waits for one (issue 22: the
        # holder, and a replica with nothing handed over, read nothing).
        self._following: asyncio.Task[None] | None = None
        self._last_answer = b"0-0"
        self._take_lease = redis.register_script(_TAKE_LEASE)
        self._renew_lease = redis.register_script(_RENEW_LEASE)
        self._release_lease = redis.register_script(_RELEASE_LEASE)
        self._push = redis.register_script(_PUSH)
        self._pull = redis.register_script(_PULL)

    @property
    def holds(self) -> bool:
        """This replica sends the batched calls (of every replica)."""
        return time.monotonic() < self._held_until

    def register(self, coalescer: Coalescer[Any, Any]) -> None:
        if coalescer.kind in self._coalescers:
            raise ValueError(f"two coalescers of kind {coalescer.kind!r}")
        self._coalescers[coalescer.kind] = coalescer

    async def ready(self) -> None:
        """Started on the first call (and again on the first after a rest): the lease
        tried once, the answers followed from now."""
        self._last_use = time.monotonic()
        if self._loops:
            return
        async with self._starting:
            if self._loops:
                return
            await self._hold()
            self._generation += 1
            generation = self._generation
            self._loops = [
                asyncio.create_task(self._keep_lease(generation), name="kommo-batch-lease"),
            ]

    def _idle(self) -> bool:
        return (
            time.monotonic() - self._last_use >= _REST_AFTER_SECONDS
            and not self._waiting
            and not self._answers
            and (self._writing is None or self._writing.done())
            and all(c.idle for c in self._coalescers.values())
        )

    async def _rest(self) -> bool:
        """Idle: give the lease back and stop the loops (under the start lock, so a call
        meanwhile starts them afresh). False when a call came meanwhile."""
        async with self._starting:
            if not self._idle() or self._closed:
                return False
            held, self._held_until = self._held_until, 0.0
            try:
                if held:
                    await self._release_lease(keys=[BATCH_LEASE], args=[self._token])
                    log.info("batched Kommo calls idle: dispatch lease given back")
            except RedisError as exc:
                log.warning("batched Kommo calls: lease not given back (it expires): %s", exc)
            finally:
                self._generation += 1
                self._loops = []
            return True

    # A replica without the lease: handing items over.

    def expect(self, item_id: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[item_id] = future
        return future

    def forget(self, item_id: str) -> None:
        self._waiting.pop(item_id, None)

    async def push(
        self, item_id: str, kind: str, payload: Any, priority: Priority, give_up: float | None
    ) -> str:
        """Hand an item over; returns it as queued."""
        wait_ms = None if give_up is None else max(0, int((give_up - time.monotonic()) * 1000))
        body = json.dumps(
            {"kind": kind, "payload": payload, "priority": int(priority), "wait_ms": wait_ms}
        )
        queued, last = cast(
            tuple[bytes, bytes],
            await self._push(
                keys=[BATCH_QUEUE, BATCH_WAKE, BATCH_RESULTS],
                args=[f"{item_id} {body}", BATCH_KEEP_SECONDS * 1000],
            ),
        )
        if self._following is None or self._following.done():
            # Nobody reads the answers here: from the last one before this item.
            self._last_answer = last
            self._following = asyncio.create_task(
                self._follow_answers(), name="kommo-batch-answers"
            )
        return queued.decode()

    async def take_back(self, queued: str) -> bool:
        """Remove an item no holder has pulled yet; False when it was pulled."""
        return bool(await self._redis.lrem(BATCH_QUEUE, 1, queued))

    async def _follow_answers(self) -> None:
        """Read the answers while an item of this replica waits for one."""
        while not self._closed and any(not f.done() for f in self._waiting.values()):
            try:
                streams = await self._redis.xread(
                    {BATCH_RESULTS: self._last_answer}, block=_FOLLOW_BLOCK_MS
                )
            except RedisError as exc:
                log.warning("batched Kommo calls: answers not read (%s); reading again", exc)
                await asyncio.sleep(self._lease_seconds / 3)
                continue
            for _, entries in cast(list[tuple[bytes, _Entries]], streams or []):
                for entry_id, answers in entries:
                    self._last_answer = entry_id
                    for item_id, answer in answers.items():
                        future = self._waiting.get(item_id.decode())
                        if future is not None and not future.done():
                            _settle(future, answer)

    # The lease, and the holder's side: pulling items, writing their answers.

    async def _keep_lease(self, generation: int) -> None:
        """Renew the lease (or try to take it) at a third of its life; holding it, pull
        what the other replicas hand over meanwhile. Idle long enough, rest."""
        interval = self._lease_seconds / 3
        while not self._closed and generation == self._generation:
            if self._idle() and await self._rest():
                return
            renew_at = time.monotonic() + interval
            try:
                await self._hold()
                while self.holds and time.monotonic() < renew_at:
                    await self._pull_handed_over(renew_at - time.monotonic())
            except RedisError as exc:
                log.warning("batched Kommo calls: dispatch lease not kept (%s)", exc)
            await asyncio.sleep(max(0.0, renew_at - time.monotonic()))

    async def _hold(self) -> None:
        began = time.monotonic()
        lease_ms = int(self._lease_seconds * 1000)
        if self._held_until:
            if await self._renew_lease(keys=[BATCH_LEASE], args=[self._token, lease_ms]):
                self._held_until = began + self._lease_seconds
                return
            log.warning("batched Kommo calls: this replica lost the dispatch lease")
            self._held_until = 0.0
        if self._closed:
            return
        taken = await self._take_lease(
            keys=[BATCH_LEASE, BATCH_INFLIGHT, BATCH_RESULTS],
            args=[
                self._token,
                lease_ms,
                _encode_error(Unavailable("the gateway replica sending Kommo calls was lost")),
                BATCH_RESULTS_KEPT,
                BATCH_RESULTS_KEEP_SECONDS * 1000,
            ],
        )
        if taken:
            # Anything handed over to this replica before was just answered by the take.
            for coalescer in self._coalescers.values():
                coalescer.abandon_remote("the gateway replica sending Kommo calls was replaced")
            self._held_until = began + self._lease_seconds
            log.info("batched Kommo calls: this replica sends them for every replica")

    async def _pull_handed_over(self, seconds: float) -> None:
        # Redis reads a timeout of 0 as "forever".
        if not await self._redis.blpop([BATCH_WAKE], timeout=max(0.01, seconds)):
            return
        pulled = await self._pull(
            keys=[BATCH_LEASE, BATCH_QUEUE, BATCH_INFLIGHT, BATCH_WAKE],
            args=[self._token, BATCH_KEEP_SECONDS * 1000],
        )
        if not pulled:
            return
        self._last_use = time.monotonic()
        now_ms, items = int(pulled[0]), pulled[1]
        loop = asyncio.get_running_loop()
        pulled_at = time.monotonic()
        for queued in items:
            stamp, item_id, body = queued.decode().split(" ", 2)
            item = json.loads(body)
            age = (now_ms - int(stamp)) / 1000
            wait_ms = item["wait_ms"]
            future: asyncio.Future[Any] = loop.create_future()
            future.add_done_callback(partial(self._answered, item_id))
            coalescer = self._coalescers.get(item["kind"])
            if coalescer is None:  # a replica of another version
                future.set_exception(UpstreamError(f"unknown batched call {item['kind']!r}"))
                continue
            coalescer.take_over(
                _tuples(item["payload"]),
                Priority(item["priority"]),
                pulled_at - age,
                None if wait_ms is None else pulled_at - age + wait_ms / 1000,
                future,
            )

    def _answered(self, item_id: str, future: asyncio.Future[Any]) -> None:
        self._answers[item_id] = _encode(future)
        if self._writing is None or self._writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write_answers())

    async def _write_answers(self) -> None:
        """Answers of one batch (all set in one go) leave together."""
        while self._answers:
            answers, self._answers = self._answers, {}
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(BATCH_RESULTS, answers, maxlen=BATCH_RESULTS_KEPT, approximate=True)
                    pipe.pexpire(BATCH_RESULTS, BATCH_RESULTS_KEEP_SECONDS * 1000)
                    pipe.srem(BATCH_INFLIGHT, *answers)
                    await pipe.execute()
            except RedisError as exc:
                log.warning(
                    "batched Kommo calls: %d answers not passed on (%s); their callers "
                    "get Unavailable at their deadline",
                    len(answers),
                    exc,
                )

    async def aclose(self) -> None:
        """After the coalescers' aclose (their last answers are written first)."""
        # redis-py may let a command finish in a cancelled task, which then goes on: the
        # loops also stop on `_closed`.
        self._closed = True
        tasks = [*self._loops, *([self._following] if self._following else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writing is not None:
            await self._writing
        try:
            # Whether or not it is ours now: a take may have ended during the close.
            await self._release_lease(keys=[BATCH_LEASE], args=[self._token])
        except RedisError as exc:
            log.warning("batched Kommo calls: dispatch lease not released (%s)", exc)


def _tuples(value: Any) -> Any:
    """A payload as it was before JSON: its arrays were tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _encode(future: asyncio.Future[Any]) -> str:
    if future.cancelled():
        return _encode_error(Unavailable("the gateway is shutting down"))
    error = future.exception()
    if error is None:
        return json.dumps({"value": future.result()})
    return _encode_error(error)


def _encode_error(error: BaseException) -> str:
    if isinstance(error, RateLimited):
        name = "BudgetBusy" if isinstance(error, BudgetBusy) else "RateLimited"
        return json.dumps(
            {"error": name, "message": str(error), "retry_after": error.retry_after_seconds}
        )
    if isinstance(error, RedisError):
        error = Unavailable("storage unavailable, retry later")
    known = next((c.__name__ for c in type(error).__mro__ if c.__name__ in _ERRORS), None)
    if known is None:
        log.error("batched Kommo call failed", exc_info=error)
        return json.dumps({"error": "BridgeError", "message": "internal error"})
    return json.dumps({"error": known, "message": str(error)})


def _settle(future: asyncio.Future[Any], answer: bytes) -> None:
    decoded = json.loads(answer)
    name = decoded.get("error")
    if name is None:
        future.set_result(decoded["value"])
    elif name == "BudgetBusy":
        future.set_exception(BudgetBusy(decoded["retry_after"]))
    elif name == "RateLimited":
        future.set_exception(RateLimited(decoded["message"], decoded["retry_after"]))
    else:
        future.set_exception(_ERRORS.get(name, BridgeError)(decoded["message"]))
