"""Concurrent calls of one kind, sent to Kommo as one list call.

Kommo counts requests, not entities (docs/kommo-api.md, "List calls"): a caller enqueues
its item and awaits its own answer; when the Budget grants a departure, everything
waiting (up to the kind's maximum) leaves in one request and each caller gets its item's
answer or its item's error. Nothing waits for a batch to fill: with an idle budget the
first item leaves at once, and under load the queue fills while the departure is pending.

Per gateway replica (a first step): each replica batches its own callers; the rate limit
behind the Budget is shared by every replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeAlias, TypeVar

from services.common.errors import Unavailable
from services.kommo_gateway.ratelimit import (
    Budget,
    BudgetBusy,
    Departure,
    Priority,
    call_priority,
)

log = logging.getLogger(__name__)

# Across replicas (designed, not built yet). With 3 replicas each batches only its own
# callers: 1.95 Kommo calls per answer at 20 customers. The design, keys to go in store.py:
# - Queue: `gw:batch:{kind}:{priority}` lists of item ids, and `gw:batch-item:{id}` (payload
#   as JSON, priority, enqueue time and give-up time by Redis' clock, with a TTL past the
#   give-up), written in one script that also returns the departures queued ahead, so the
#   refusal at once (refuse_if_late) counts every replica's callers, not only this one's.
# - One dispatcher per kind: `gw:batch-lease:{kind}`, SET NX PX, renewed at a third of its
#   life; a new item PUBLISHes on `gw:batch-wake:{kind}` so the holder's Budget notices it.
#   The Budget's Source calls (head, departures_before) are synchronous: the holder keeps a
#   mirror of each queue's length and oldest item, refreshed on a wake and after a departure.
# - On a granted departure, a script pops up to the kind's maximum in (priority − aging,
#   since) order, skipping a second item with the same exclusive key (left in its place) and
#   items past their give-up (their callers were already refused), and LMOVEs the ids to
#   `gw:batch-inflight:{kind}`. Each item's outcome (the answer as JSON; an error as its
#   domain class name and message from a fixed list; REQUEUE as an LPUSH back to its queue's
#   head) is RPUSHed to `gw:batch-result:{id}` with a short TTL, so nothing outlives a caller.
# - The caller BLPOPs its result list until its give-up. On time-out a script takes its item
#   back: still queued → removed, BudgetBusy; already popped → wait the call's share
#   (KOMMO_CALL_SECONDS), then Unavailable, as a timed-out call is today (a bot run's outcome
#   is then settled by the reply evidence, not by a second run).
# - A holder that loses its lease mid-batch: the next holder answers Unavailable for the ids
#   left in flight (their request may have reached Kommo) and goes on with the queues.
# Not built in this step: the codec per kind, the fencing of a caller that gives up against
# the pop, and the failover are each a change to test across processes on their own.

T = TypeVar("T")
R = TypeVar("R")


class Requeue:
    """An item's outcome when Kommo refused its request because of other items: it was
    not applied and goes again in the next batch, keeping its place."""


REQUEUE = Requeue()

# An item's answer, its own error, or REQUEUE.
Outcome: TypeAlias = R | BaseException | Requeue
# Sends a batch (payloads in order) with the departure granted; one outcome per payload.
Send: TypeAlias = Callable[[list[T], Departure], Awaitable[list[Outcome[R]]]]


@dataclass(eq=False)
class _Item(Generic[T, R]):
    payload: T
    priority: Priority
    since: float
    give_up: float | None
    future: asyncio.Future[R]
    timer: asyncio.TimerHandle | None = field(default=None)


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        kind: str,
        budget: Budget,
        maximum: int,
        priority: Priority,
        send: Send[T, R],
        exclusive: Callable[[T], Hashable] | None = None,
    ) -> None:
        """`exclusive`: items with the same key never share a request (two writes to one
        lead); the later one leaves with the next batch."""
        self.kind = kind
        self._budget = budget
        self._maximum = maximum
        self._priority = priority
        self._send = send
        self._exclusive = exclusive
        self._queue: list[_Item[T, R]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        budget.attach(self)

    async def submit(self, payload: T) -> R:
        """The answer for this item, after its batch went to Kommo. Refused at once
        (BudgetBusy) when its departure could not come before the caller's deadline."""
        priority = call_priority.get()
        if priority is None:
            priority = self._priority
        give_up = self._budget.give_up_at()
        if give_up is not None:
            self._budget.refuse_if_late(priority, give_up, own=self._own_departure(priority))
        loop = asyncio.get_running_loop()
        item: _Item[T, R] = _Item(
            payload, priority, time.monotonic(), give_up, loop.create_future()
        )
        self._enqueue(item)
        return await item.future

    def _own_departure(self, priority: Priority) -> int:
        """1 when this item needs a departure of its own, 0 when it fits in a batch that
        already waits."""
        n = sum(1 for i in self._queue if i.priority <= priority)
        return math.ceil((n + 1) / self._maximum) - math.ceil(n / self._maximum)

    def _enqueue(self, item: _Item[T, R]) -> None:
        self._queue.append(item)
        if item.give_up is not None:
            delay = max(0.0, item.give_up - time.monotonic())
            item.timer = asyncio.get_running_loop().call_later(delay, self._expire, item)
        self._budget.notify()

    def _expire(self, item: _Item[T, R]) -> None:
        if item in self._queue:
            self._queue.remove(item)
            if not item.future.done():
                item.future.set_exception(BudgetBusy(self._budget.estimate(item.priority)))

    def _live(self) -> list[_Item[T, R]]:
        self._queue = [i for i in self._queue if not i.future.done()]
        return self._queue

    # Source (ratelimit.Budget)

    def head(self) -> tuple[Priority, float] | None:
        live = self._live()
        if not live:
            return None
        best = min(live, key=lambda i: (i.priority, i.since))
        return best.priority, best.since

    def departures_before(self, priority: Priority) -> int:
        n = sum(1 for i in self._live() if i.priority <= priority)
        return math.ceil(n / self._maximum)

    def _take(self) -> list[_Item[T, R]]:
        batch: list[_Item[T, R]] = []
        keys: set[Hashable] = set()
        for item in sorted(self._live(), key=lambda i: (i.priority, i.since)):
            if len(batch) == self._maximum:
                break
            if self._exclusive is not None:
                key = self._exclusive(item.payload)
                if key in keys:
                    continue
                keys.add(key)
            batch.append(item)
        for item in batch:
            self._queue.remove(item)
            if item.timer is not None:
                item.timer.cancel()
        return batch

    def depart(self, departure: Departure) -> None:
        batch = self._take()
        task = asyncio.get_running_loop().create_task(self._go(batch, departure))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def fail_head(self, error: BaseException) -> None:
        for item in self._take():
            if not item.future.done():
                item.future.set_exception(error)

    async def _go(self, batch: list[_Item[T, R]], departure: Departure) -> None:
        if not batch:
            await departure.settle()
            return
        try:
            outcomes = await self._send([i.payload for i in batch], departure)
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(Unavailable("the gateway is shutting down"))
            raise
        except Exception as exc:  # the whole request failed: every item with it
            outcomes = [exc] * len(batch)
        if all(isinstance(o, Requeue) for o in outcomes):
            # A refusal that named none of the items: nothing would change on a retry.
            outcomes = [Unavailable(f"Kommo refused a {self.kind} batch") for _ in batch]
        requeued = False
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, Requeue):
                self._enqueue(item)
                requeued = True
            elif isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        if requeued:
            log.info("Kommo refused items of a %s batch; the others go again", self.kind)

    async def aclose(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
