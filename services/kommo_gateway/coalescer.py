"""Concurrent calls of one kind, sent to Kommo as one list call, from every gateway replica.

Kommo counts requests, not entities (docs/kommo-api.md, "List calls"): a caller enqueues
its item and awaits its own answer; when the Budget grants a departure, everything
waiting (up to the kind's maximum) leaves in one request and each caller gets its item's
answer or its item's error. Nothing waits for a batch to fill: with an idle budget the
first item leaves at once, and under load the queue fills while the departure is pending.

Across replicas, the batches are sent by one replica for all of them: a replica without
the dispatch lease hands its callers' items over to the one that holds it (`Handoff`,
handoff.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from services.common.errors import Unavailable
from services.kommo_gateway.handoff import Handoff
from services.kommo_gateway.ratelimit import (
    Budget,
    BudgetBusy,
    Departure,
    Priority,
    call_deadline,
    call_priority,
)
from services.kommo_gateway.store import BATCH_KEEP_SECONDS

log = logging.getLogger(__name__)

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
    # Handed over by a replica without the lease: its answer goes back through Redis.
    remote: bool = False
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
        handoff: Handoff | None = None,
    ) -> None:
        """`exclusive`: items with the same key never share a request (two writes to one
        lead); the later one leaves with the next batch. `handoff`: batch with the other
        replicas (without it, this replica's callers only). Payloads handed over travel
        as JSON: numbers, strings, objects, and tuples (JSON arrays come back as tuples)."""
        self.kind = kind
        self._budget = budget
        self._maximum = maximum
        self._priority = priority
        self._send = send
        self._exclusive = exclusive
        self._handoff = handoff
        self._queue: list[_Item[T, R]] = []
        # An item's future finished while it may still be queued (its caller gave up):
        # `_live` then drops the finished ones. Not looked for on every call: the budget
        # asks every source how much is queued on every call it admits (issue 22).
        self._settled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        budget.attach(self)
        if handoff is not None:
            handoff.register(self)

    async def submit(self, payload: T) -> R:
        """The answer for this item, after its batch went to Kommo. Refused at once
        (BudgetBusy) when its departure could not come before the caller's deadline."""
        priority = call_priority.get()
        if priority is None:
            priority = self._priority
        give_up = self._budget.give_up_at()
        if self._handoff is not None:
            await self._handoff.ready()
            if not self._handoff.holds:
                return await self._forward(self._handoff, payload, priority, give_up)
        loop = asyncio.get_running_loop()
        item: _Item[T, R] = _Item(
            payload, priority, time.monotonic(), give_up, loop.create_future()
        )
        self._admit(item)
        return await item.future

    def take_over(
        self,
        payload: T,
        priority: Priority,
        since: float,
        give_up: float | None,
        future: asyncio.Future[R],
    ) -> None:
        """Queue an item another replica handed over, or refuse it as its own caller
        would have been."""
        item = _Item(payload, priority, since, give_up, future, remote=True)
        try:
            self._admit(item)
        except BudgetBusy as exc:
            future.set_exception(exc)

    def abandon_remote(self, reason: str) -> None:
        """Fail the queued items other replicas handed over: the lease is no longer ours
        (or was taken anew), and whoever takes it answers them."""
        for item in [i for i in self._queue if i.remote]:
            self._remove(item)
            if not item.future.done():
                item.future.set_exception(Unavailable(reason))

    def _admit(self, item: _Item[T, R]) -> None:
        if item.give_up is not None:
            own = self._own_departure(item.priority)
            self._budget.refuse_if_late(item.priority, item.give_up, own=own)
        self._enqueue(item)

    async def _forward(
        self, handoff: Handoff, payload: T, priority: Priority, give_up: float | None
    ) -> R:
        """Hand the item to the replica holding the lease and wait for its answer."""
        item_id = uuid.uuid4().hex
        future: asyncio.Future[R] = handoff.expect(item_id)
        try:
            queued = await handoff.push(item_id, self.kind, payload, priority, give_up)
            if give_up is not None:
                await _until(future, give_up)
                if not future.done() and await handoff.take_back(queued):
                    # No holder pulled it in time (one is being replaced).
                    raise BudgetBusy(self._budget.estimate(priority))
            # Pulled: its answer comes, or its call share runs out as a timed-out call.
            deadline = call_deadline.get()
            if deadline is None:  # waited for as long as the hand-off's keys live
                deadline = time.monotonic() + BATCH_KEEP_SECONDS
            await _until(future, deadline)
            if future.done():
                return future.result()
            raise Unavailable(f"no answer from Kommo in time for a {self.kind}: outcome unknown")
        finally:
            handoff.forget(item_id)

    @property
    def idle(self) -> bool:
        """Nothing queued nor in flight."""
        return not self._queue and not self._in_flight

    def _own_departure(self, priority: Priority) -> int:
        """1 when this item needs a departure of its own, 0 when it fits in a batch that
        already waits."""
        n = sum(1 for i in self._queue if i.priority <= priority)
        return math.ceil((n + 1) / self._maximum) - math.ceil(n / self._maximum)

    def _enqueue(self, item: _Item[T, R]) -> None:
        self._queue.append(item)
        item.future.add_done_callback(self._one_settled)
        if item.give_up is not None:
            delay = max(0.0, item.give_up - time.monotonic())
            item.timer = asyncio.get_running_loop().call_later(delay, self._expire, item)
        self._budget.notify()

    def _remove(self, item: _Item[T, R]) -> None:
        self._queue.remove(item)
        if item.timer is not None:
            item.timer.cancel()

    def _expire(self, item: _Item[T, R]) -> None:
        if item in self._queue:
            self._queue.remove(item)
            if not item.future.done():
                item.future.set_exception(BudgetBusy(self._budget.estimate(item.priority)))

    def _one_settled(self, _: asyncio.Future[R]) -> None:
        self._settled = True

    def _live(self) -> list[_Item[T, R]]:
        if self._settled:
            self._settled = False
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
            if item.future.done():  # given up on in this turn of the loop: not sent
                continue
            if self._exclusive is not None:
                key = self._exclusive(item.payload)
                if key in keys:
                    continue
                keys.add(key)
            batch.append(item)
        for item in batch:
            self._remove(item)
        return batch

    def depart(self, departure: Departure) -> None:
        if self._handoff is not None and not self._handoff.holds:
            # The lease may have passed to another replica, which answers these.
            self.abandon_remote("the gateway replica sending Kommo calls was replaced")
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
        self.abandon_remote("the gateway is shutting down")


async def _until(future: asyncio.Future[Any], moment: float) -> None:
    """Wait for `future` until `moment` (monotonic), leaving it pending after."""
    await asyncio.wait({future}, timeout=max(0.0, moment - time.monotonic()))
