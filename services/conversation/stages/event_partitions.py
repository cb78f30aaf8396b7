"""Which event partitions this replica reads: each stream under a lease in Redis, taken
up to a fair share of the live replicas and given back when more are alive
(stages/event_reader.py reads what this says it holds)."""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from typing import cast

from services.common.due_queue import now_ms
from services.conversation.store.keys import EVENT_REPLICAS, EVENTS_STREAM, event_owner_key
from services.conversation.store.leases import EventLeases

log = logging.getLogger(__name__)

# The keeper's round in one call (issue 22: was a transaction, one script per lease held
# and an XLEN, every third of the lease): this replica's heartbeat and the count of live
# replicas (EventLeases.beat), each lease it holds renewed if still its own (EventLeases'
# renewal, the same compare-and-expire), and the length of the stream of earlier versions.
# KEYS: the replicas' set, that stream, then the owner key of each stream held.
# ARGV: replica, now (ms), lease (ms). Returns {live, legacy length, {1|0 per lease}}.
_KEEP_ROUND = """
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - lease)
local live = redis.call('ZCARD', KEYS[1])
local kept = {}
for i = 3, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], lease)
    kept[#kept + 1] = 1
  else
    kept[#kept + 1] = 0
  end
end
return {live, redis.call('XLEN', KEYS[2]), kept}
"""


class PartitionOwnership:
    """The event streams this replica reads, each under a lease in Redis.

    `tick` (every third of the lease) renews what it holds, gives back what exceeds its
    fair share once the lanes hold none of that stream's entries, and takes free
    partitions up to its share. A stream is held only while its lease is known to run:
    the deadline is counted from before the renewal was sent, so this replica stops
    applying before Redis lets another take over.
    """

    def __init__(
        self, leases: EventLeases, replica: str, streams: list[str], lease_ms: int
    ) -> None:
        self.leases = leases
        self.replica = replica
        self.streams = streams
        self.lease_ms = lease_ms
        self._until: dict[str, float] = {}  # stream → monotonic end of the lease
        self._keep_round = leases.redis.register_script(_KEEP_ROUND)
        self.giving_back: set[str] = set()
        # False while this replica still gives back or still wants partitions: the keeper
        # then ticks often, so a partition changing hands is unread for a moment only.
        self.settled = True

    def holds(self, stream: str) -> bool:
        return time.monotonic() < self._until.get(stream, 0.0)

    def owned(self) -> list[str]:
        return [s for s in [*self.streams, EVENTS_STREAM] if self.holds(s)]

    async def tick(
        self, busy: Callable[[str], bool], legacy_waiting: bool | None = None, taking: bool = True
    ) -> list[str]:
        """One round of ownership; the streams newly taken (their pending entries are
        claimed before they are read). `legacy_waiting` None: whether the stream of
        earlier versions holds entries is read in the same call as the renewals."""
        began = time.monotonic()
        until = began + self.lease_ms / 1000
        held = list(self._until)
        live, legacy_length, kept = cast(
            tuple[int, int, list[int]],
            await self._keep_round(
                keys=[EVENT_REPLICAS, EVENTS_STREAM, *(event_owner_key(s) for s in held)],
                args=[self.replica, now_ms(), self.lease_ms],
            ),
        )
        live = max(int(live), 1)
        if legacy_waiting is None:
            legacy_waiting = bool(legacy_length)
        for stream, ok in zip(held, kept, strict=True):
            if ok:
                self._until[stream] = until
            else:
                self._drop(stream)
                log.warning("event partition %s lost (its lease ran out)", stream)
        share = math.ceil(len(self.streams) / live)
        mine = [s for s in self.streams if s in self._until]
        self.giving_back = set(mine[share:])
        for stream in sorted(self.giving_back):
            if not busy(stream):
                await self._release(stream)
        taken: list[str] = []
        wanted = share - len(mine) if taking else 0
        # Each replica starts looking at its own place, so they rarely race for one.
        start = zlib.crc32(self.replica.encode()) % len(self.streams)
        for stream in self.streams[start:] + self.streams[:start]:
            if len(taken) >= wanted:
                break
            if stream not in self._until and await self.leases.take(
                stream, self.replica, self.lease_ms
            ):
                self._until[stream] = until
                taken.append(stream)
        if EVENTS_STREAM not in self._until:
            if legacy_waiting and taking:
                if await self.leases.take(EVENTS_STREAM, self.replica, self.lease_ms):
                    self._until[EVENTS_STREAM] = until
                    taken.append(EVENTS_STREAM)
        elif not legacy_waiting and not busy(EVENTS_STREAM):
            await self._release(EVENTS_STREAM)
        if taken:
            log.info("event partitions taken: %s", ", ".join(taken))
        self.settled = not self.giving_back and len(taken) >= wanted
        return taken

    async def release_all(self) -> None:
        for stream in list(self._until):
            await self._release(stream)
        await self.leases.leave(self.replica)

    async def _release(self, stream: str) -> None:
        self._drop(stream)
        await self.leases.release(stream, self.replica)

    def _drop(self, stream: str) -> None:
        self._until.pop(stream, None)
        self.giving_back.discard(stream)
