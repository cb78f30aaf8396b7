"""The note of a delivered message, added to its lead after the delivery answered.

A reply's note (the bot's text, for the lead's salespeople) used to be its own call
from the conversation service, made after the delivery and before the reply could
settle. Now it rides in `DeliverMessage`: the delivery's "sent" record keeps it in Redis
(delivery.py, the same script call) and this replica adds it to the lead right after
answering, at the notes' priority (`Priority.RECORD`: may lag, must not be lost).

    DeliverMessage ── sent + note kept (one script) ──► answered
                         │
                         ├─► added now by this replica (its lease renewed while it waits)
                         └─► or, when that replica died or Kommo failed, claimed from
                             gw:notes:due by any replica's note pool when due

Kept: `gw:notes` (member → the note as JSON) and `gw:notes:due` (member → when it is due:
the end of the lease of the replica adding it, or its next try). Notes kept within
`_LINGER_SECONDS` of each other go to Kommo in one call. The member is the
delivery's idempotency key, so a note is kept once per delivery. Taking a note off costs
no call of its own while deliveries flow: it rides in the next delivery's record script
(`take_done`), or leaves on its own after `_FLUSH_SECONDS`.

A replica that dies after Kommo took the note and before it was taken off leaves it to be
added again when its lease ends: a note may be doubled by a crash, never lost by one.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.due_queue import Claim, DueQueue, now_ms
from services.common.errors import InvalidInput, NotFound, UpstreamError
from services.common.grpc_server import BackgroundTask
from services.common.workpool import WorkPool, leased
from services.kommo_gateway.kommo_client import KommoClient
from services.kommo_gateway.ratelimit import call_deadline, call_priority
from services.kommo_gateway.store import NOTES, NOTES_DUE

log = logging.getLogger(__name__)

# How long a replica holds a note it is adding (renewed at a third of it while the note
# waits for Kommo's budget); when it dies, the note is due again after this.
NOTE_LEASE_MS = 60_000
# A note taken off Kommo's hands waits at most this long for a delivery to carry its
# removal, then goes in a call of its own.
_FLUSH_SECONDS = 2.0
# Notes kept within this long of the first go to Kommo in one call.
_LINGER_SECONDS = 1.5
# The note pool looks for notes left behind this often when it has no due time to wait
# for (a replica's own notes are added by it; the pool is for the ones it left).
_POLL_SECONDS = 30.0
_SLOTS = 4
# Tries of a note Kommo keeps failing, then it is dropped (logged): about a day.
_RETRY_SECONDS = (5, 30, 120, 600, 1800, 3600)
_MAX_ATTEMPTS = 30
# Kommo refused it for good: the lead is gone, or the note is not acceptable.
_REFUSED = (NotFound, InvalidInput, UpstreamError)

# Tried again later, unless it was erased meanwhile (never written back). KEYS: NOTES,
# NOTES_DUE. ARGV: member, the note (JSON), when it is due (ms). Returns 1 when kept.
_AGAIN = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# Taken off: the notes and their due times. KEYS: NOTES, NOTES_DUE. ARGV: members.
_FORGET = """
for i = 1, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return #ARGV
"""


@dataclass(frozen=True, slots=True)
class Note:
    lead_id: int
    text: str
    attempts: int = 0

    def encode(self) -> str:
        return json.dumps(
            {"lead_id": self.lead_id, "text": self.text, "attempts": self.attempts},
            ensure_ascii=False,
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Note:
        data: dict[str, Any] = json.loads(raw)
        return cls(int(data["lead_id"]), str(data["text"]), int(data.get("attempts") or 0))


class Notes(BackgroundTask):
    """Notes kept with their deliveries, added to their leads: this replica's own at once,
    and (the pool) those another replica left or Kommo failed."""

    name = "note-pool"

    def __init__(
        self,
        redis: aioredis.Redis,
        kommo: KommoClient,
        *,
        retry_seconds: Sequence[float] = _RETRY_SECONDS,
        linger_seconds: float = _LINGER_SECONDS,
    ) -> None:
        self._redis = redis
        self._kommo = kommo
        self._retry_seconds = tuple(retry_seconds)
        self._queue = DueQueue(redis, NOTES_DUE)
        self._forget = redis.register_script(_FORGET)
        self._again = redis.register_script(_AGAIN)
        self.pool = WorkPool(
            "note",
            self._queue,
            self._work,
            slots=_SLOTS,
            lease_ms=NOTE_LEASE_MS,
            poll_seconds=_POLL_SECONDS,
            watch=False,
        )
        # Added to Kommo, not yet taken off in Redis.
        self._done: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._adding: set[asyncio.Task[None]] = set()
        # Kept by deliveries, waiting to go to Kommo together.
        self._lingering: list[tuple[Claim, Note]] = []
        self._linger: asyncio.TimerHandle | None = None
        self._linger_seconds = linger_seconds

    async def run(self, stopping: asyncio.Event) -> None:
        await self.pool.run(stopping)

    async def aclose(self, wait_seconds: float = 5.0) -> None:
        """Stopping, once the server answers no more: the notes being added finish (or,
        past `wait_seconds`, are left leased: another replica adds them when the lease
        ends), and what was added is taken off."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._linger is not None:
            self._linger.cancel()
            self._send_lingering()
        if self._adding:
            _, pending = await asyncio.wait(set(self._adding), timeout=wait_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self._take_off()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    # Recorded by the delivery: the lease it wrote, and what it carries off.

    @staticmethod
    def lease_end() -> int:
        return now_ms() + NOTE_LEASE_MS

    def take_done(self) -> list[str]:
        """Notes added since the last call, for a delivery's record script to take off
        (`put_back` if that call failed)."""
        done, self._done = self._done, set()
        return sorted(done)

    def put_back(self, members: list[str]) -> None:
        self._done.update(members)
        self._arm()

    def add_soon(self, member: str, note: Note, lease: int) -> None:
        """Add a note the delivery just kept (leased to this replica until `lease`), in
        the background: the delivery's answer does not wait for it. Notes kept within
        `_LINGER_SECONDS` of each other go to Kommo together (one call for the batch, and
        one place under the rate limit, which replies need more)."""
        self._lingering.append((Claim(member, lease), note))
        if self._linger is None:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(self._linger_seconds, self._send_lingering)

    def _send_lingering(self) -> None:
        self._linger = None
        lingering, self._lingering = self._lingering, []
        context = contextvars.copy_context()
        # Not the delivery's call: no deadline of its caller, the notes' own priority.
        context.run(call_deadline.set, None)
        context.run(call_priority.set, None)
        for claim, note in lingering:
            task = asyncio.create_task(
                self._add(claim, note), name=f"note:{claim.member}", context=context
            )
            self._adding.add(task)
            task.add_done_callback(self._adding.discard)

    # Adding.

    async def _work(self, claim: Claim) -> None:
        """A note the pool claimed (left by a replica, or due for another try)."""
        raw = await self._redis.hget(NOTES, claim.member)
        if raw is None:  # taken off meanwhile (or erased)
            await self._queue.release(claim)
            return
        await self._try(claim, Note.decode(raw))

    async def _add(self, claim: Claim, note: Note) -> None:
        try:
            async with leased(self._queue, claim, NOTE_LEASE_MS):
                await self._try(claim, note)
        except RedisError as exc:
            # Its lease runs out and the pool adds it (again, if Kommo had it).
            log.warning("note kept for later: %s", exc)
        except Exception:
            log.exception("adding a note failed unexpectedly")

    async def _try(self, claim: Claim, note: Note) -> None:
        try:
            await self._kommo.add_note(note.lead_id, note.text)
        except _REFUSED as exc:
            log.warning("note not added, dropped: %s", exc, extra={"lead_id": note.lead_id})
        except Exception as exc:
            attempts = note.attempts + 1
            if attempts >= _MAX_ATTEMPTS:
                log.error(
                    "note not added after %d tries, dropped: %s",
                    attempts,
                    exc,
                    extra={"lead_id": note.lead_id},
                )
            else:
                delay = self._retry_seconds[min(attempts, len(self._retry_seconds)) - 1]
                due = now_ms() + int(delay * 1000)
                log.warning(
                    "note not added (%s): trying again in %.0f s",
                    exc,
                    delay,
                    extra={"lead_id": note.lead_id},
                )
                again = Note(note.lead_id, note.text, attempts)
                async with claim.pinned:
                    claim.settled = True
                    kept = await self._again(
                        keys=[NOTES, NOTES_DUE], args=[claim.member, again.encode(), due]
                    )
                if kept:
                    self.pool.expect(claim.member, due)
                return
        claim.settled = True  # taken off below, or by the next delivery
        self._done.add(claim.member)
        self._arm()

    # Taking off what was added.

    def _arm(self) -> None:
        if self._flush is None and self._done:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(_FLUSH_SECONDS, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        if self._done and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.create_task(self._take_off(), name="notes-take-off")

    async def _take_off(self) -> None:
        members = self.take_done()
        if not members:
            return
        try:
            await self._forget(keys=[NOTES, NOTES_DUE], args=members)
        except RedisError as exc:
            log.warning("%d added notes not taken off yet: %s", len(members), exc)
            self.put_back(members)
        self._arm()  # notes added while this call was out

    async def forget(self, members: list[str]) -> None:
        """Erase these deliveries' notes (LGPD): added or not, they go."""
        if members:
            self._done.difference_update(members)
            # Not yet sent to Kommo: they never will be.
            erased = set(members)
            self._lingering = [(c, n) for c, n in self._lingering if c.member not in erased]
            await self._forget(keys=[NOTES, NOTES_DUE], args=members)
