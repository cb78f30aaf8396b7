"""Wake-ups from Redis for the work pools of a process (services/common/workpool.py).

A pool claims at once what its own replica queues (a kick) and sleeps until its next due
score; what another replica or a script queues reaches it through Redis' keyspace
notifications on the queue's key. Every change of a busy queue is one (a lease taken,
renewed, released: several a message), and redis-py's pub/sub spent about 90 µs on each
(a health check, a timeout and a task per message read); here the subscribed connection
is read directly and parsed by hiredis, a few µs a notification (issue 22).

The connection is made by redis-py (URL, TLS, AUTH are as for every other command), then
read here (`redis_lane.open_raw`). A PING every `_PING_SECONDS` of silence finds a connection that died without
a word; a broken one is made again, and every pool woken (a change may have been missed).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, ClassVar, Protocol

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.redis_lane import open_raw

log = logging.getLogger(__name__)

# What the keyspace notifications must include: K (keyspace channel), z (sorted sets).
NOTIFY_FLAGS = "Kz"
# After a Redis error the watch waits this long before subscribing again.
_REDIS_PAUSE_SECONDS = 1.0
# Silence this long makes the watch PING its connection; no answer within the socket
# timeout after it, and the connection is made again.
_PING_SECONDS = 30.0
_READ_SIZE = 65536

# Keyspace events of a queue that never make work due: a lease taken or renewed (the
# due queues move leases with ZINCRBY), work done or the queue deleted. Anything else
# (`zadd`: work queued or rescheduled) wakes the queue's pools.
_NOT_NEW_WORK = frozenset({b"zincr", b"zrem", b"del", b"expired", b"zremrangebyscore"})


def new_work(event: object) -> bool:
    if isinstance(event, str):
        event = event.encode()
    return event not in _NOT_NEW_WORK


class _Queue(Protocol):
    @property
    def key(self) -> str: ...


class Watcher(Protocol):
    """What the watch wakes: a work pool."""

    @property
    def queue(self) -> _Queue: ...

    def kick(self) -> None: ...

    def notice(self) -> None: ...


class QueueWatch:
    """Wakes the pools of this process when their queue's key changes in Redis: whoever
    changed it (another replica, a script, this process), without polling. One
    subscribed connection per Redis client, to the keyspace channel of each pool's key.

    Keyspace notifications are a server setting: the watch turns on the flags it needs
    (`notify-keyspace-events` + "Kz") when they are off. A Redis that refuses CONFIG
    (some managed ones) may have them set by its operator; without them the pools still
    wake at their due scores and kicks, and find other replicas' new work at the slow
    poll. After a Redis error the watch subscribes again and wakes every pool (a change
    may have been missed meanwhile)."""

    _watches: ClassVar[weakref.WeakKeyDictionary[aioredis.Redis, QueueWatch]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._pools: dict[str, set[Watcher]] = {}
        self._task: asyncio.Task[None] | None = None
        self._prefix = f"__keyspace@{redis.connection_pool.connection_kwargs.get('db', 0)}__:"
        self.enabled = False  # notifications known to be on (CONFIG said so or took it)
        # The subscribed connection's writer while it is open, and the keys asked for.
        self._writer: asyncio.StreamWriter | None = None
        self._subscribed: set[str] = set()

    @classmethod
    def of(cls, redis: aioredis.Redis) -> QueueWatch:
        watch = cls._watches.get(redis)
        if watch is None:
            watch = cls._watches[redis] = cls(redis)
        return watch

    def add(self, pool: Watcher) -> None:
        self._pools.setdefault(pool.queue.key, set()).add(pool)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="due-queue-watch")
        else:
            self._subscribe({pool.queue.key})

    def remove(self, pool: Watcher) -> None:
        pools = self._pools.get(pool.queue.key, set())
        pools.discard(pool)
        if not pools:
            self._pools.pop(pool.queue.key, None)
        if not self._pools and self._task is not None:
            self._task.cancel()
            self._task = None

    def _wake(self, keys: set[str] | None = None) -> None:
        for key, pools in list(self._pools.items()):
            if keys is None or key in keys:
                for pool in list(pools):
                    pool.kick()

    def _subscribe(self, keys: set[str]) -> None:
        """Subscribe to `keys` not asked for yet; their pools are woken when Redis
        confirms (a change made before that is then claimed)."""
        new = keys - self._subscribed
        if new and self._writer is not None:
            command: Any = ("SUBSCRIBE", *(self._prefix + key for key in sorted(new)))
            self._writer.write(hiredis.pack_command(command))
            self._subscribed |= new

    async def _enable(self) -> None:
        try:
            raw = await self._redis.config_get("notify-keyspace-events")
            flags = str(raw.get("notify-keyspace-events", ""))
            if "A" in flags:  # "A" stands for every class, z included
                wanted = flags if "K" in flags else flags + "K"
            else:
                wanted = flags + "".join(f for f in NOTIFY_FLAGS if f not in flags)
            if wanted != flags:
                await self._redis.config_set("notify-keyspace-events", wanted)
            self.enabled = True
        except ResponseError as exc:
            log.warning(
                "keyspace notifications not verified (%s): if they are off, work pools find "
                "other replicas' new work only at their slow poll (POLL_INTERVAL_SECONDS); "
                "set notify-keyspace-events to include 'Kz' in Redis's configuration",
                exc,
            )

    async def _listen(self) -> None:
        while True:
            try:
                if not self.enabled:
                    await self._enable()
                await self._serve()
            except (RedisError, OSError) as exc:
                log.warning("work pools' queue watch: redis error, again soon: %s", exc)
            self.enabled = False  # a restarted Redis forgot the setting
            await asyncio.sleep(_REDIS_PAUSE_SECONDS)
            self._wake()

    async def _serve(self) -> None:
        """Subscribe and read notifications until the connection breaks (raises)."""
        pool = self._redis.connection_pool
        answer_seconds = float(pool.connection_kwargs.get("socket_timeout") or 5.0)
        raw = await open_raw(pool)
        stream, writer, parser = raw.stream, raw.writer, raw.parser
        try:
            self._writer, self._subscribed = writer, set()
            self._subscribe(set(self._pools))
            pinged = False
            while True:
                try:
                    async with asyncio.timeout(answer_seconds if pinged else _PING_SECONDS):
                        data = await stream.read(_READ_SIZE)
                except TimeoutError:
                    if pinged:
                        raise RedisTimeoutError(
                            "the queue watch's connection stopped answering"
                        ) from None
                    writer.write(hiredis.pack_command(("PING",)))
                    pinged = True
                    continue
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                pinged = False
                parser.feed(data)
                while (message := parser.gets()) is not False:
                    self._handle(message)
        finally:
            self._writer = None
            await raw.close()

    def _handle(self, message: Any) -> None:
        if isinstance(message, Exception):  # SUBSCRIBE refused (an ACL, say)
            raise message
        kind = message[0]
        if kind == b"message":
            if new_work(message[2]):
                key = message[1][len(self._prefix) :].decode()
                for pool in list(self._pools.get(key, ())):
                    pool.notice()
        elif kind == b"subscribe":
            self._wake({message[1][len(self._prefix) :].decode()})
