"""A turn's context without a round trip: this replica's copies of the leads, contacts and
vendedores its turns read, kept for CONTEXT_CACHE_SECONDS.

A customer writing several messages in a row makes a turn each time, and each turn used to
ask the gateway for the lead and the contact and the vendedor service for the vendedor —
three gRPC calls and three Redis reads behind them, for the same answers. A copy here is
used while it is young; the gateway's own copy (KOMMO_CACHE_TTL_SECONDS) stays the source.

A copy is dropped at once, on every replica, when what it holds changes or must go: the
erasure of a lead or contact, and a lead or contact Kommo's webhooks say changed (edited,
given another responsible user, deleted, moved to another stage, where its rules may
differ: the gateway's copies go first, `ForgetCopies`). Those publish on one Redis channel that every replica listens to; a replica that
lost the channel for a moment drops every copy it holds when it is back, since it may
have missed a message. The copies are held in memory only, bounded in number, and never
written anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.grpc_server import BackgroundTask

log = logging.getLogger(__name__)
T = TypeVar("T")

CHANNEL = "conv:context:changed"
LEAD, CONTACT, VENDEDOR = "lead", "contact", "vendedor"
# A lead's conversation id (the by-lead pointer, once one exists): dropped with the lead.
CONVERSATION = "conversation"
# A contact as the envelopes carry it (its phone and e-mail masked as configured: the
# phone's parsing was a twentieth of a turn's CPU), with the copy it was made from;
# dropped with the contact.
CONTACT_JSON = "contact-json"
# The bot rules in force (rulebook.py), one copy, dropped when they are changed.
RULES = "rules"
RULES_ID = 1
# Published when conversations were deleted wholesale (a reset): every copy goes.
EVERYTHING = "*"
MAX_ENTRIES = 20_000
_RECONNECT_SECONDS = 1.0


class ContextCache:
    """Copies by (kind, id), each for `seconds` from when it was read; the oldest go first
    past `max_entries`. `seconds` 0 keeps nothing."""

    def __init__(
        self,
        seconds: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._copies: OrderedDict[tuple[str, int], tuple[float, Any]] = OrderedDict()
        # True while this replica hears every change published (ContextChanges is
        # subscribed): a copy is then dropped as soon as what it holds changes.
        self.watched = False
        # Moves on every drop: a copy read before a drop is not kept after it (`put_if`).
        self.generation = 0

    def get(self, kind: str, entity_id: int) -> Any | None:
        copy = self._copies.get((kind, entity_id))
        if copy is None:
            return None
        if self._clock() - copy[0] >= self.seconds:
            del self._copies[(kind, entity_id)]
            return None
        return copy[1]

    def put(self, kind: str, entity_id: int, value: Any) -> None:
        if self.seconds <= 0 or not entity_id:
            return
        key = (kind, entity_id)
        self._copies.pop(key, None)
        self._copies[key] = (self._clock(), value)
        while len(self._copies) > self.max_entries:
            self._copies.popitem(last=False)

    def put_if(self, generation: int, kind: str, entity_id: int, value: Any) -> None:
        """`put`, unless a copy was dropped since `generation` was read (what was read
        before the drop may be what the drop was for)."""
        if generation == self.generation:
            self.put(kind, entity_id, value)

    def made_from(self, kind: str, entity_id: int, source: object, make: Callable[[], T]) -> T:
        """A value made from the copy `source` (e.g. the contact as envelopes carry it),
        made once and kept under `kind` while `source` is the copy in use: a new copy of
        the entity makes it again."""
        kept = self.get(kind, entity_id)
        if kept is not None and kept[0] is source:
            return cast(T, kept[1])
        value = make()
        self.put(kind, entity_id, (source, value))
        return value

    def forget(self, kind: str, entity_id: int) -> None:
        self.generation += 1
        self._copies.pop((kind, entity_id), None)

    def clear(self) -> None:
        self.generation += 1
        self._copies.clear()

    def __len__(self) -> int:
        return len(self._copies)


def change(kind: str, entity_id: int) -> str:
    return f"{kind}:{entity_id}"


async def publish_changes(
    redis: aioredis.Redis,
    lead_ids: Iterable[int] = (),
    contact_ids: Iterable[int] = (),
    everything: bool = False,
    rules: bool = False,
) -> None:
    """Tell every replica to drop its copies of these leads and contacts (`rules`: of the
    bot rules; `everything`: all it holds)."""
    changes = [change(LEAD, i) for i in lead_ids if i] + [
        change(CONTACT, i) for i in contact_ids if i
    ]
    if rules:
        changes.append(change(RULES, RULES_ID))
    if everything:
        changes = [EVERYTHING]
    if changes:
        await redis.publish(CHANNEL, " ".join(changes))


def apply_change(cache: ContextCache, message: str) -> None:
    """One published message: space-separated `kind:id` entries, or `*` for all. A lead's
    change drops its conversation id too, a contact's its envelope form."""
    for item in message.split():
        if item == EVERYTHING:
            cache.clear()
            return
        kind, _, raw = item.partition(":")
        if kind in (LEAD, CONTACT, VENDEDOR, RULES) and raw.isdigit():
            cache.forget(kind, int(raw))
            if kind == LEAD:
                cache.forget(CONVERSATION, int(raw))
            elif kind == CONTACT:
                cache.forget(CONTACT_JSON, int(raw))


class ContextChanges(BackgroundTask):
    """Listens on CHANNEL and drops the copies named; from a (re)subscription on it
    trusts no copy it held before."""

    name = "context-changes"

    def __init__(self, redis: aioredis.Redis, cache: ContextCache) -> None:
        self.redis = redis
        self.cache = cache
        self.subscribed = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        if self.cache.seconds <= 0:
            # Nothing kept, nothing to drop; a background task that ends stops the service.
            await stopping.wait()
            return
        while not stopping.is_set():
            try:
                await self._listen(stopping)
            except (RedisError, OSError) as exc:
                log.warning("context changes: redis error, subscribing again: %s", exc)
            self.subscribed.clear()
            self.cache.clear()
            try:
                await asyncio.wait_for(stopping.wait(), timeout=_RECONNECT_SECONDS)
            except TimeoutError:
                pass

    async def _listen(self, stopping: asyncio.Event) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            # What changed before this moment may have been missed.
            self.cache.clear()
            self.cache.watched = True
            self.subscribed.set()
            while not stopping.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    data = message["data"]
                    apply_change(self.cache, data.decode() if isinstance(data, bytes) else data)
        finally:
            self.cache.watched = False
            await pubsub.aclose()  # type: ignore[no-untyped-call]
