"""Kommo's rate limit, shared by every gateway replica.

Each request reserves its own departure time in Redis (by Redis' clock) and sleeps
once until then: requests leave evenly spaced, `(1 s + margin) / limit` apart, from all
replicas together. Even spacing matters: Kommo counts arrivals in any one-second
window, and a burst that leaves in the same millisecond arrives spread by network and
server jitter, so the limit could only be kept with a large margin. Evenly spaced, the
margin only has to cover a few milliseconds of jitter (bench/README.md measured the
bursty sliding window at 94.8 % of the limit, with the odd 429; spacing does better).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import RateLimited, Unavailable
from services.kommo_gateway.store import RATE_DEPARTURES, RATE_NEXT_SLOT

log = logging.getLogger(__name__)

_WINDOW_MS = 1000
# Kommo counts arrivals, we count departures: two requests that leave exactly a second
# apart can arrive closer. 25 ms absorbs that jitter for under 2.5 % of the budget.
_MARGIN_MS = 25

# What both scripts below share: the clock (µs), and the confirmation — no more than
# `limit` departures in the last `window` (µs): the member is added, and the values of
# KEYS[first_read..] (what a request needs read with it: the account blocked? a token
# problem? the token pair) are returned as {0, values...}; or nil and how long to wait.
_CONFIRMATION = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function confirm(departures, limit, window, member, first_read)
  redis.call('ZREMRANGEBYSCORE', departures, '-inf', now - window)
  if redis.call('ZCARD', departures) < limit then
    redis.call('ZADD', departures, now, member)
    redis.call('PEXPIRE', departures, math.ceil(window / 1000) + 1000)
    local read = {0}
    for i = first_read, #KEYS do read[#read + 1] = redis.call('GET', KEYS[i]) end
    return read, 0
  end
  local oldest = redis.call('ZRANGE', departures, 0, 0, 'WITHSCORES')
  return nil, tonumber(oldest[2]) + window - now + 1
end
"""

# The next free departure time, in microseconds; every caller reserves its own. A
# reservation due at once is confirmed in the same call (issue 22: was two calls). KEYS:
# the next slot, the departures, then what is read with a confirmation. ARGV: interval
# (µs), the next slot's lifetime (ms), limit, window (µs), member. Returns {w}: w > 0,
# wait that long (µs), then confirm; w < 0: reserved now but the window is full: wait -w
# µs, then confirm. {0, values...}: confirmed.
_RESERVE = (
    _CONFIRMATION
    + """
local next_slot = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, next_slot)
redis.call('SET', KEYS[1], tostring(slot + tonumber(ARGV[1])), 'PX', ARGV[2])
if slot > now then return {slot - now} end
local read, wait = confirm(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], 3)
if read then return read end
return {-wait}
"""
)


# Right before sending: no more than `limit` departures in the last window. A process
# whose event loop woke late may reach this after its reserved time; without this check
# its late request and a punctual one `limit` places later could land in one second.
# KEYS: the departures, then what is read with it. ARGV: limit, window (µs), member.
# Returns {0, values...} confirmed, or {wait (µs)}.
_CONFIRM = (
    _CONFIRMATION
    + """
local read, wait = confirm(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], 2)
if read then return read end
return {wait}
"""
)

# The request is being written now: it counts from now. Between confirmation and the
# write may lie a new connection (a TLS handshake to Kommo); counted from its
# confirmation, that request would arrive late and squeeze the next `limit` into one
# second. (A departure already gone from the window is not brought back.)
# Only when the write came late: over a new connection, or longer than _WRITE_PROMPT_US
# after the confirmation (a request written at once counts from its confirmation: no
# call; issue 22).
_WRITING = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
return 1
"""

# httpcore's trace events for the moment a request starts to be written (HTTP/1.1, 2),
# and for a new connection being made first.
_SENDING = ("http11.send_request_headers.started", "http2.send_request_headers.started")
_CONNECTING = ("connection.connect_tcp.started", "connection.start_tls.started")
# A request written within this long of its confirmation, over a connection it did not
# have to open, counts from its confirmation (well inside the 25 ms margin).
_WRITE_PROMPT_US = 2_000


class Departure:
    """One request's place under the limit.

    Pass `trace` to httpx (`extensions={"trace": departure.trace}`): the departure is
    then counted from the moment the request is written. `settle()` once the call has
    ended frees the place of a request that never went out.
    """

    def __init__(self, limiter: RateLimiter, member: str, read: list[Any] | None = None) -> None:
        self._limiter = limiter
        self._member = member
        # What the confirmation read with it (RateLimiter's `read_with` keys), once.
        self._read = read
        self._written = False
        self._settled = False
        self._confirmed_at = time.monotonic()
        self._connected = False  # a new connection was made before the write

    def take_read(self) -> list[Any] | None:
        """The values read with the confirmation (None: none, or taken already)."""
        read, self._read = self._read, None
        return read

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if event in _CONNECTING:
            self._connected = True
        if not self._written and event in _SENDING:
            self._written = True
            late = (time.monotonic() - self._confirmed_at) * 1_000_000 > _WRITE_PROMPT_US
            if not (self._connected or late):
                return  # written at once: its confirmation is its departure
            try:
                await self._limiter.writing(self._member)
            except RedisError as exc:
                # Counted from its confirmation instead: only the margin protects it.
                log.warning("rate limit: departure not moved to its write (%s)", exc)

    async def settle(self) -> None:
        """Free the place of a request that never went out; once."""
        if self._settled or self._written:
            return
        self._settled = True
        try:
            await self._limiter.release(self._member)
        except RedisError as exc:
            log.warning("rate limit: unused place not released (%s)", exc)


class RateLimiter:
    def __init__(
        self, redis: aioredis.Redis, per_second: int, read_with: tuple[str, ...] = ()
    ) -> None:
        """`read_with`: keys every request needs read just before it goes (the tokens'),
        read by the confirmation itself (`Departure.take_read`): no call of their own."""
        self._redis = redis
        self._limit = per_second
        self._read_with = list(read_with)
        self._window_us = (_WINDOW_MS + _MARGIN_MS) * 1000
        # Rounded up: `limit` reserved slots span a whole window, so a punctual request
        # always finds its place at the confirmation.
        self._interval_us = -(-self._window_us // per_second)
        self._reserve = redis.register_script(_RESERVE)
        self._confirm = redis.register_script(_CONFIRM)
        self._writing = redis.register_script(_WRITING)

    @property
    def interval_seconds(self) -> float:
        return self._interval_us / 1_000_000

    async def acquire(self) -> Departure:
        """Wait for this request's turn to go to Kommo."""
        member = uuid.uuid4().hex
        answer = await self._reserve(
            keys=[RATE_NEXT_SLOT, RATE_DEPARTURES, *self._read_with],
            args=[self._interval_us, 60_000, self._limit, self._window_us, member],
        )
        wait_us = int(answer[0])
        if wait_us == 0:
            return Departure(self, member, list(answer[1:]))  # due at once, and confirmed
        await _sleep_us(abs(wait_us))
        while True:
            answer = await self._confirm(
                keys=[RATE_DEPARTURES, *self._read_with],
                args=[self._limit, self._window_us, member],
            )
            wait_us = int(answer[0])
            if wait_us <= 0:
                return Departure(self, member, list(answer[1:]))
            await _sleep_us(wait_us)

    async def writing(self, member: str) -> None:
        await self._writing(keys=[RATE_DEPARTURES], args=[member])

    async def release(self, member: str) -> None:
        await self._redis.zrem(RATE_DEPARTURES, member)

    async def request(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        departure: Departure | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One HTTP call to Kommo within the limit, its departure recorded when written
        (a departure acquired earlier by the caller, or one acquired now)."""
        departure = departure or await self.acquire()
        try:
            return await http.request(method, url, extensions={"trace": departure.trace}, **kwargs)
        finally:
            await departure.settle()


async def _sleep_us(wait_us: int) -> None:
    """Sleep at least `wait_us`. uvloop's timers count whole milliseconds and may fire a
    sub-millisecond sleep at once; rounded up, a waiting request does not ask Redis
    again before its moment can have come."""
    await asyncio.sleep(math.ceil(wait_us / 1000) / 1000)


class Priority(IntEnum):
    """Who goes first when a departure is granted (lower goes first)."""

    REPLY = 0  # a customer is waiting for our answer: the field write and the bot run
    CONTEXT = 1  # what a turn needs before n8n can answer: lead and contact reads
    RECORD = 2  # notes and tasks: may lag, must not be lost
    BACKGROUND = 3  # syncs (users) and operators' calls (the edge's test endpoints)


# The class of the current gRPC call when the caller says it (an operator at the edge);
# None = the kind's own class. Set by the servicer for each call, read where it queues.
call_priority: ContextVar[Priority | None] = ContextVar("call_priority", default=None)
# The moment (time.monotonic()) after which the current call's answer would come too late.
call_deadline: ContextVar[float | None] = ContextVar("call_deadline", default=None)


class BudgetBusy(RateLimited):
    """Refused before waiting (or while waiting) because the departure would come after the
    caller's deadline: answered at once, with when to come back."""

    retry_after_seconds: int

    def __init__(self, retry_after_seconds: float) -> None:
        seconds = max(1, math.ceil(retry_after_seconds))
        super().__init__(
            "Kommo's request budget (shared by the whole bridge) is taken for the next "
            f"{seconds} s: try again in {seconds} s",
            seconds,
        )


class Source(Protocol):
    """Something waiting for departures: a coalescer, or the queue of single calls."""

    def head(self) -> tuple[Priority, float] | None:
        """The class and enqueue time (monotonic) of its first waiting item, if any."""

    def departures_before(self, priority: Priority) -> int:
        """Departures it needs for its items of this class or a more urgent one."""

    def depart(self, departure: Departure) -> None:
        """Send what is waiting with this departure (without waiting for the answer)."""

    def fail_head(self, error: BaseException) -> None:
        """No departure could be had: fail what would have gone."""


@dataclass
class _Single:
    priority: Priority
    since: float
    future: asyncio.Future[Departure]


class _Singles:
    """Calls that are not batched (users, account, events…): one departure each."""

    def __init__(self) -> None:
        self.waiting: list[_Single] = []

    def head(self) -> tuple[Priority, float] | None:
        self.waiting = [w for w in self.waiting if not w.future.done()]
        if not self.waiting:
            return None
        best = min(self.waiting, key=lambda w: (w.priority, w.since))
        return best.priority, best.since

    def departures_before(self, priority: Priority) -> int:
        return sum(1 for w in self.waiting if w.priority <= priority and not w.future.done())

    def _take(self) -> _Single | None:
        if self.head() is None:
            return None
        best = min(self.waiting, key=lambda w: (w.priority, w.since))
        self.waiting.remove(best)
        return best

    def depart(self, departure: Departure) -> None:
        taken = self._take()
        if taken is None:
            _discard(departure)
        else:
            taken.future.set_result(departure)

    def fail_head(self, error: BaseException) -> None:
        taken = self._take()
        if taken is not None:
            taken.future.set_exception(error)


class Budget:
    """One replica's share of the limit, spent by priority.

    Holds at most one reservation of the shared limit at a time, and only while something
    waits; when it is granted, the most urgent source goes — the class, less one class for
    every `aging_seconds` waited, so a flood of replies delays notes but never starves
    them. Under load the coalescers' batches fill while the reservation is pending, and
    an idle budget grants at once: no fixed batching delay.

    Per replica (a first step): each replica orders its own callers; the limit itself is
    shared by all (RateLimiter), so replicas take turns departure by departure.
    """

    def __init__(self, limiter: RateLimiter, aging_seconds: float, call_seconds: float) -> None:
        """`call_seconds`: the part of a caller's deadline kept for the Kommo call itself."""
        self._limiter = limiter
        self._aging = aging_seconds
        self._call_seconds = call_seconds
        self._singles = _Singles()
        self._sources: list[Source] = [self._singles]
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    def attach(self, source: Source) -> None:
        self._sources.append(source)

    def notify(self) -> None:
        """A source has something waiting."""
        self._wake.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._dispatch(), name="kommo-budget")

    def give_up_at(self) -> float | None:
        """When the current call, still waiting for its departure, must be refused so that
        the refusal and not a DEADLINE_EXCEEDED reaches its caller."""
        deadline = call_deadline.get()
        return None if deadline is None else deadline - self._call_seconds

    def estimate(self, priority: Priority, own: int = 1) -> float:
        """Seconds until `own` more departures of this class could leave, from the queue
        ahead of them in this replica."""
        ahead = sum(source.departures_before(priority) for source in self._sources)
        return (ahead + own) * self._limiter.interval_seconds

    def refuse_if_late(self, priority: Priority, give_up: float | None, own: int = 1) -> None:
        """Refuse at once a call whose departure could not come before it gives up."""
        if give_up is None:
            return
        wait = self.estimate(priority, own) - self._limiter.interval_seconds
        if time.monotonic() + wait > give_up:
            raise BudgetBusy(wait)

    async def departure(self, priority: Priority) -> Departure:
        """A departure for one call that is not batched, in its class's turn."""
        give_up = self.give_up_at()
        self.refuse_if_late(priority, give_up)
        future: asyncio.Future[Departure] = asyncio.get_running_loop().create_future()
        self._singles.waiting.append(_Single(priority, time.monotonic(), future))
        self.notify()
        timeout = None if give_up is None else max(0.0, give_up - time.monotonic())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BudgetBusy(self.estimate(priority)) from None
        except asyncio.CancelledError:
            # The caller went away: a departure granted meanwhile goes back.
            if future.done() and not future.cancelled() and future.exception() is None:
                _discard(future.result())
            raise

    def _most_urgent(self) -> Source | None:
        now = time.monotonic()
        best: tuple[float, float, Source] | None = None
        for source in self._sources:
            head = source.head()
            if head is None:
                continue
            priority, since = head
            rank = priority - (now - since) / self._aging
            if best is None or (rank, since) < best[:2]:
                best = (rank, since, source)
        return best[2] if best else None

    async def _dispatch(self) -> None:
        while True:
            self._wake.clear()
            if self._most_urgent() is None:
                await self._wake.wait()
                continue
            try:
                departure = await self._limiter.acquire()
            except RedisError as exc:
                source = self._most_urgent()
                if source is not None:
                    source.fail_head(Unavailable(f"storage unavailable, retry later ({exc})"))
                continue
            source = self._most_urgent()
            if source is None:
                await departure.settle()
            else:
                source.depart(departure)

    async def aclose(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task


_discarding: set[asyncio.Task[None]] = set()


def _discard(departure: Departure) -> None:
    """Give back a departure nobody took (from sync code: in a task)."""
    task = asyncio.get_running_loop().create_task(departure.settle())
    _discarding.add(task)
    task.add_done_callback(_discarding.discard)
