"""Stage 1, webhook events: the stream read by a consumer group, each entry applied to
its conversation, then acknowledged.

claim: XREADGROUP reads only as many entries as this replica has room for (WORKER_BATCH
entries held at once), and XAUTOCLAIM takes over entries left pending by a dead replica
after VISIBILITY_TIMEOUT_SECONDS. work: each entry goes to a lane by the hash of its
conversation's key (its lead, or its chat before a lead exists) modulo EVENT_LANES; a
lane is one task, so one conversation's events are applied in stream order while other
conversations' events are applied side by side. release: an entry is acknowledged (and
deleted) only after its lane applied it; one that fails stays pending and is tried again
after the visibility timeout, then parked after MAX_EVENT_ATTEMPTS.

Applying a message is quick (Redis, no n8n): a customer's message makes its turn due and
wakes the turn pool (stages/turns.py); the lane goes on with the next event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from services.common.due_queue import WorkFailures, describe, now_ms
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.grpc_server import BackgroundTask
from services.common.logs import flow, request_id
from services.conversation import bot, envelope
from services.conversation.events import LeadEvent, MessageEvent
from services.conversation.stages import Stage
from services.conversation.store import EVENTS_STREAM, WORKERS_GROUP, Applied

if TYPE_CHECKING:
    from services.conversation.engine import Engine

log = logging.getLogger(__name__)

Entry = tuple[str, dict[bytes, bytes]]


class EventStage(Stage):
    """What an event does to its conversation."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.consumer = EventConsumer(self, engine.store.redis)

    async def conversation_for(self, event: MessageEvent) -> str:
        """A conversation is identified by its lead. A chat seen before its lead (a message
        without one) is taken over by the lead that shows up in it; a chat already held by
        another lead's conversation is not: Kommo reuses chats across leads."""
        if not event.lead_id:
            known = await self.store.conversation_by_chat(event.chat_id)
            return known or envelope.conversation_id_for(event)
        known = await self.store.conversation_by_lead(event.lead_id)
        if known:
            return known
        by_chat = await self.store.conversation_by_chat(event.chat_id) if event.chat_id else None
        if by_chat and not (await self.store.conversation(by_chat)).get("lead_id"):
            return by_chat
        return envelope.conversation_id_for(event)

    async def _role(self, conversation_id: str, event: MessageEvent) -> str:
        """Who wrote it: customer, bot (the bridge's own send, echoed), automation, human,
        or command (a person's /assumir or /liberar)."""
        if event.from_customer:
            return "customer"
        if await self.store.was_sent_by_bridge(
            conversation_id, envelope.text_fingerprint(event.text)
        ):
            return "bot"
        if not bot.written_by_a_person(event.author_type):
            return "automation"
        try:
            command = bot.parse_command(
                event.text, self.settings.bot_assume_command, self.settings.bot_release_command
            )
        except InvalidInput as exc:
            log.info("malformed command in the chat, kept as a message: %s", exc)
            command = None
        # A command is for the bridge: never history for n8n, never a reply.
        return "human" if command is None else "command"

    async def _apply(
        self, conversation_id: str, stream_id: str, event: MessageEvent
    ) -> tuple[Applied, str]:
        """Record the message in the conversation; what that did, and who wrote it."""
        role = await self._role(conversation_id, event)
        at = float(event.created_at) if event.created_at else time.time()
        # The bot's replies enter the history when Kommo takes them (run_reply), so their
        # echo is not recorded again: one entry per message even when the echo is lost,
        # late or delivered twice. Everything else — the customer, a person of the team,
        # another automation — is known only from its webhook and recorded here, once per
        # message id.
        history = (
            ""
            if role == "bot"
            else json.dumps(
                envelope.history_entry(
                    role, event.text, at, message_id=event.message_id, type=event.message_type
                ),
                ensure_ascii=False,
            )
        )
        applied = await self.store.apply_message(
            conversation_id=conversation_id,
            message_id=event.message_id,
            inbox_entry=json.dumps(
                {**envelope.inbox_entry(event, stream_id), "request_id": request_id.get()},
                ensure_ascii=False,
            ),
            history_entry=history,
            at_ms=now_ms(),
            due_ms=now_ms() + int(self.settings.message_debounce_seconds * 1000),
            lead_id=event.lead_id,
            contact_id=event.contact_id,
            chat_id=event.chat_id,
            talk_id=event.talk_id,
            to_inbox=event.from_customer,
            history_max=max(self.settings.history_turns * 2, 10),
            stream_id=stream_id,
        )
        return applied, role

    async def apply_event(self, stream_id: str, event: MessageEvent) -> None:
        conversation_id = await self.conversation_for(event)
        applied, role = await self._apply(conversation_id, stream_id, event)
        if applied == Applied.OTHER_LEAD:
            # The conversation found went to another lead meanwhile (or before this
            # version kept leads apart): the lead gets its own.
            conversation_id = envelope.conversation_id_for(event)
            applied, role = await self._apply(conversation_id, stream_id, event)
        if applied == Applied.OTHER_LEAD:
            raise Conflict(f"conversation {conversation_id} belongs to another lead")
        if applied == Applied.SHARED_CHAT:
            log.warning(
                "a Kommo chat is shared by two leads; each keeps its own conversation",
                extra={"conversation_id": conversation_id, "lead_id": event.lead_id},
            )
        elif applied != Applied.APPLIED:
            return
        await self.bots.count(f"messages_{role}")
        author = event.author_name or f"usuário {event.author_id}"
        if role == "command":
            try:
                await self.bot.command(event.text, author, conversation_id, "command")
            except (NotFound, InvalidInput) as exc:
                log.info("command from the chat not applied: %s", exc)
        elif role == "human":
            await self.bot.on_person_wrote(conversation_id, author)
        elif event.from_customer and self.settings.message_debounce_seconds == 0:
            # No burst window: the turn is due now and the turn pool claims it at once
            # (a lane never waits for a turn: its next conversation's events go on).
            self.engine.turns.pool.kick()

    async def apply_lead_event(self, event: LeadEvent) -> None:
        """A lead created or moved in Kommo may start a proactive conversation."""
        if event.kind == "add":
            trigger = self.settings.proactive_on_lead_add
        else:
            trigger = self.settings.status_triggers.get(event.status_id, "")
        if not trigger:
            return
        try:
            started = await self.proactive.start(event.lead_id, trigger)
        except InvalidInput as exc:
            # The configuration names a trigger the bridge cannot start (no template).
            log.warning("lead %s: no proactive start (%s)", event.lead_id, exc)
            return
        except (Conflict, NotFound) as exc:
            log.info("lead %s: no proactive start (%s)", event.lead_id, exc)
            return
        log.info("proactive start from Kommo", extra={"trigger": trigger, "status": started.status})

    # --- turns ----------------------------------------------------------------------


def lane_key(data: dict[str, Any]) -> str:
    """Events with the same key are applied in stream order: a conversation's lead, or
    its chat while the message has no lead yet."""
    if data.get("lead_id"):
        return f"lead:{data['lead_id']}"
    return f"chat:{data.get('chat_id', '')}"


class EventConsumer(BackgroundTask):
    """Reads webhook events from the stream (consumer group) into per-conversation lanes;
    each lane applies its entries in order and acknowledges each once applied."""

    name = "event-consumer"

    def __init__(self, stage: EventStage, redis: aioredis.Redis) -> None:
        self.stage = stage
        self.engine = stage.engine
        self.redis = redis
        self.settings = stage.settings
        self._lanes: list[asyncio.Queue[Entry]] = [
            asyncio.Queue() for _ in range(self.settings.event_lanes)
        ]
        # Entries read and not yet acknowledged (or left pending after a failure).
        self._held: set[str] = set()
        self._room = asyncio.Event()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(EVENTS_STREAM, WORKERS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stopping: asyncio.Event) -> None:
        lanes = [
            asyncio.create_task(self._lane(queue), name=f"event-lane-{n}")
            for n, queue in enumerate(self._lanes)
        ]
        try:
            await self._read(stopping)
            # Stopping: read nothing more, apply what the lanes hold.
            await asyncio.gather(*(queue.join() for queue in self._lanes))
        finally:
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    async def _read(self, stopping: asyncio.Event) -> None:
        last_reclaim = 0.0
        while not stopping.is_set():
            try:
                await self.ensure_group()
                while not stopping.is_set():
                    room = self.settings.worker_batch - len(self._held)
                    if room <= 0:
                        # Full: wait for a lane to finish an entry.
                        self._room.clear()
                        await self._wait(self._room, stopping, 0.5)
                        continue
                    if (
                        time.monotonic() - last_reclaim
                        > self.settings.visibility_timeout_seconds / 3
                    ):
                        last_reclaim = time.monotonic()
                        await self._reclaim(room)
                        continue
                    entries = await self.redis.xreadgroup(
                        WORKERS_GROUP,
                        self.engine.consumer,
                        {EVENTS_STREAM: ">"},
                        count=room,
                        block=500,
                    )
                    for _, items in cast(list[tuple[bytes, Any]], entries or []):
                        self._dispatch(items)
            except RedisError as exc:
                log.warning("event consumer: redis error, retrying: %s", exc)
                await asyncio.sleep(1.0)

    @staticmethod
    async def _wait(event: asyncio.Event, stopping: asyncio.Event, seconds: float) -> None:
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _reclaim(self, room: int) -> None:
        idle_ms = int(self.settings.visibility_timeout_seconds * 1000)
        result = await self.redis.xautoclaim(
            EVENTS_STREAM,
            WORKERS_GROUP,
            self.engine.consumer,
            min_idle_time=idle_ms,
            start_id="0-0",
            count=room,
        )
        items = cast(list[tuple[bytes, dict[bytes, bytes]]], result[1] if result else [])
        if items:
            log.info("reclaimed %d pending events", len(items))
            self._dispatch(items)

    def _dispatch(self, items: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for raw_id, fields in items:
            stream_id = raw_id.decode()
            if stream_id in self._held:
                continue  # one of ours, still in its lane (or failed, to be reclaimed)
            self._held.add(stream_id)
            key = ""
            if fields:  # empty: deleted meanwhile, acknowledged by its lane
                try:
                    key = lane_key(json.loads(fields[b"e"]))
                except (ValueError, KeyError):
                    key = stream_id  # unreadable: its own lane fails and parks it
            lane = zlib.crc32(key.encode()) % len(self._lanes)
            self._lanes[lane].put_nowait((stream_id, fields))

    async def _lane(self, queue: asyncio.Queue[Entry]) -> None:
        while True:
            stream_id, fields = await queue.get()
            try:
                await self._handle(stream_id, fields)
            except RedisError as exc:
                # Left pending: reclaimed after the visibility timeout.
                log.warning("event %s not applied (redis error): %s", stream_id, exc)
            except Exception:
                log.exception("event %s: unexpected failure", stream_id)
            finally:
                self._held.discard(stream_id)
                self._room.set()
                queue.task_done()

    async def _handle(self, stream_id: str, fields: dict[bytes, bytes]) -> None:
        if fields:
            try:
                data = json.loads(fields[b"e"])
                with flow(data.pop("request_id", "")):
                    if data.get("kind") == "lead":
                        await self.stage.apply_lead_event(LeadEvent.from_dict(data))
                    else:
                        await self.stage.apply_event(stream_id, MessageEvent.from_dict(data))
            except RedisError:
                raise
            except Exception as exc:
                await self._failed(stream_id, fields, exc)
                return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(EVENTS_STREAM, WORKERS_GROUP, stream_id)
            pipe.xdel(EVENTS_STREAM, stream_id)
            pipe.hdel(self.engine.failures.failing_key, WorkFailures.item_id("event", stream_id))
            await pipe.execute()

    async def _failed(self, stream_id: str, fields: dict[bytes, bytes], exc: Exception) -> None:
        """Left pending, the entry is reclaimed after the visibility timeout; parked
        after MAX_EVENT_ATTEMPTS. One ERROR line per failure; the traceback once."""
        reason = describe(exc)
        visibility_ms = int(self.settings.visibility_timeout_seconds * 1000)
        outcome = await self.engine.failures.entry_failed(
            "event",
            EVENTS_STREAM,
            WORKERS_GROUP,
            stream_id,
            fields[b"e"].decode(),
            reason,
            self.settings.max_event_attempts,
            visibility_ms,
        )
        extra = {"work": "event", "item": stream_id, "attempt": outcome.attempts}
        if outcome.parked:
            await self.engine.bots.count("work_dead_lettered")
            message = f"event {stream_id} parked as a dead letter after {outcome.attempts} tries"
        else:
            message = (
                f"event {stream_id} failed (try {outcome.attempts}), tried again in about "
                f"{visibility_ms / 1000:.0f} s"
            )
        log.error("%s: %s", message, reason, extra=extra, exc_info=outcome.attempts == 1)
