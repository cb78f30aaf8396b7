"""The conversation record: webhook events taken in (`ingest`), a message applied to its
conversation (`apply_message`: the record, its inbox and history, the lead, contact and
chat indexes), reading them, and the conversations counted by bot state. Turns and the
n8n outbox (turns.py) and replies (replies.py) are the rest of ConversationStore."""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import Claim, DueQueue, now_ms, text, text_map
from services.conversation import series
from services.conversation.reports import report_days
from services.conversation.store.keys import (
    BOT_STATE_AWAITING,
    BOT_STATE_PAUSED,
    BOT_STATES,
    BOT_STATES_RECOUNT_LOCK,
    BOT_STATES_SINCE,
    CONVERSATIONS,
    DEFAULT_EVENT_PARTITIONS,
    EVENTS_STREAM,
    OUTBOX_DUE,
    PAGE,
    RECOUNT_LOCK_MS,
    REPLIES_DUE,
    SEEN_TTL_SECONDS,
    STATS,
    TURNS_DUE,
    WEBHOOKS_LAST,
    WEBHOOKS_TOTAL,
    WORK_DEAD,
    WORK_FAILING,
    applied_key,
    by_chat_key,
    by_contact_key,
    by_lead_key,
    conversation_key,
    event_owner_key,
    event_partition,
    event_stream,
    history_key,
    inbox_key,
    retention_ms,
    sent_key,
)
from services.conversation.store.replies import Replies
from services.conversation.store.scripts import register
from services.conversation.store.turns import Turns


class Applied(enum.IntEnum):
    """What applying a message to a conversation did."""

    DUPLICATE = 0  # applied before (at-least-once delivery)
    APPLIED = 1
    SHARED_CHAT = 2  # applied; its chat is first seen under another conversation
    OTHER_LEAD = -1  # not applied: the conversation belongs to another lead
    ERASED = 3  # not applied: its event was erased meanwhile (with its conversation)
    NOT_OWNER = 4  # not applied: this replica lost its partition's lease (fencing)


@dataclass(slots=True)
class TurnOffer:
    """The caller of `apply_message` offers to run the message's turn at once: claimed in
    the same call when it can start now (`claim`: leased until `lease`), with what the
    turn reads (as `turn_view`)."""

    lease: int
    history_entries: int
    claim: Claim | None = None
    conversation: dict[str, str] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class EchoCheck:
    """A message not from the customer may be the echo of the bridge's own send: the
    apply recognises it by its text's `fingerprint` (then `was_sent`: counted as
    `counter`, kept out of the history)."""

    fingerprint: str
    counter: str
    was_sent: bool = False


# The counter of a message the bridge sent itself, told by its echo.
ECHO_COUNTER = "messages_bot"


@dataclass(slots=True)
class ApplyHere:
    """A customer's message the ingest may apply in the same call as its ack, when
    nothing waits in its partition (ingest.lua): its apply's arguments (as
    `ConversationStore.apply_args` makes them, the conversation id left to the script),
    the turn offered with it, and — once ingested — what the apply did (`outcome`, None
    when the message went through the stream) and the conversation it found."""

    args: list[str | int]
    turn: TurnOffer | None = None
    outcome: Applied | None = None
    conversation_id: str = ""


@dataclass(frozen=True, slots=True)
class Incoming:
    """An event of a webhook to store: its dedupe key, the event (JSON) and its routing
    key (keys.routing_key: which partition). A message names its lead, whose
    conversation the ingest finds and stores with it; one that may be the echo of the
    bridge's own send also its text's fingerprint, so that the ingest recognises it
    (envelope.text_fingerprint); a customer's message may be applied by the ingest
    itself (`here`)."""

    seen: str
    payload: str
    route: str
    lead: int = 0
    fingerprint: str = ""
    here: ApplyHere | None = None


class Ingested(enum.IntEnum):
    """What the ingest did with an event."""

    DUPLICATE = 0
    STORED = 1
    ECHO = 2  # the echo of the bridge's own send: counted, not stored
    APPLIED = 3  # applied in the same call (Incoming.here says how), not stored


class ConversationStore(Turns, Replies):
    """Typed access to the conversation service's Redis state: the conversation record
    (this module), its turns and the n8n outbox (Turns, turns.py) and its replies
    (Replies, replies.py)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        retention_seconds: int = 0,
        event_partitions: int = DEFAULT_EVENT_PARTITIONS,
        timezone: str = "UTC",
    ) -> None:
        """`retention_seconds`: DATA_RETENTION_DAYS in seconds (0 = kept until erased);
        `timezone`: BRIDGE_TIMEZONE, whose days the reports count in (reports.py)."""
        self.redis = redis
        self.report_days = report_days(timezone)
        self.retention_seconds = retention_seconds
        self.event_partitions = event_partitions
        self._partition_streams = [event_stream(p) for p in range(event_partitions)]
        self._r_ms = retention_ms(retention_seconds)
        self.turns = DueQueue(redis, TURNS_DUE)
        self.outbox = DueQueue(redis, OUTBOX_DUE)
        self.replies = DueQueue(redis, REPLIES_DUE)
        self._ingest = register(redis, "ingest")
        self._apply = register(redis, "apply_message")
        self._record_history = register(redis, "record_history")
        self._bind_lead = register(redis, "bind_lead")
        self._recount = register(redis, "recount")
        self._read_turn = register(redis, "read_turn")
        self._register_turn_scripts(redis)
        self._register_reply_scripts(redis)

    async def ingest(
        self,
        webhooks: int,
        events: list[Incoming],
        counters: Mapping[str, int] | None = None,
    ) -> list[Ingested]:
        """Store the events of `webhooks` bodies, each once; what became of each. An echo
        of the bridge's own send is counted as `echo_counter` and not stored. `counters`
        (refused bodies and skipped items of the batch) are added to the stats in the same
        script.

        One round trip for a whole batch of webhooks: this is the ack path.
        """
        now = time.time()
        counted = counters or {}
        args: list[str | int] = [
            SEEN_TTL_SECONDS,
            f"{now:.3f}",
            webhooks,
            len(counted),
            series.KEPT_SECONDS,
            ECHO_COUNTER,
        ]
        for name, n in counted.items():
            args.extend((name, n))
        for event in events:
            here = event.here.args if event.here is not None and event.lead else []
            args.extend(
                (
                    event.seen,
                    10 + event_partition(event.route, self.event_partitions),
                    event.payload,
                    by_lead_key(event.lead) if event.lead else "",
                    event.fingerprint,
                    len(here),
                    *here,
                )
            )
        result = await self._ingest(
            keys=[
                WEBHOOKS_LAST,
                WEBHOOKS_TOTAL,
                STATS,
                series.bucket_key(series.bucket_start(now)),
                TURNS_DUE,
                REPLIES_DUE,
                WORK_FAILING,
                WORK_DEAD,
                self.report_days.key(now),
                *self._partition_streams,
            ],
            args=args,
        )
        outcomes = []
        for event, raw in zip(events, cast(list[Any], result), strict=True):
            if isinstance(raw, list):
                assert event.here is not None
                _, found, applied = raw
                event.here.conversation_id = text(found)
                event.here.outcome = self._applied(applied, event.here.turn, text(found))
                outcomes.append(Ingested.APPLIED)
            else:
                outcomes.append(Ingested(int(raw)))
        return outcomes

    async def webhook_status(self) -> tuple[float, int]:
        last, total = await self.redis.mget(WEBHOOKS_LAST, WEBHOOKS_TOTAL)
        return float(last or 0), int(total or 0)

    async def apply_message(
        self,
        *,
        conversation_id: str,
        message_id: str,
        inbox_entry: str,
        history_entry: str,
        at_ms: int,
        due_ms: int,
        lead_id: int,
        contact_id: int,
        chat_id: str,
        talk_id: int,
        to_inbox: bool,
        history_max: int,
        inbox_max: int = 100,
        customer_at_ms: int = 0,
        origin: str = "",
        stream_id: str = "",
        stream: str = EVENTS_STREAM,
        owner: str = "",
        group: str = "",
        failure_id: str = "",
        counter: str = "",
        turn: TurnOffer | None = None,
        echo: EchoCheck | None = None,
    ) -> Applied:
        """Record a message in its conversation once; `history_entry` '' keeps it out of
        the history. With `stream_id`, only while that event is still in `stream`; with
        `owner`, only while that replica holds the stream's lease. The inbox keeps the
        newest `inbox_max` messages. A customer's message (`customer_at_ms`, Kommo's time
        of it) moves `customer_at` forward, never back: it opens WhatsApp's window; the
        chat's `origin` is kept as the last message names it. With `group` the entry is
        acknowledged and deleted in the same call (its failure record `failure_id`
        dropped), unless the outcome is NOT_OWNER or OTHER_LEAD; `counter` is counted
        when the message is recorded. With `turn` the message's turn is claimed for the
        caller when it can start now (`turn.claim`, and what the turn reads). With `echo`
        it says whether the message is the echo of the bridge's own send."""
        applied = await self._apply(
            keys=[
                conversation_key(conversation_id),
                applied_key(conversation_id),
                inbox_key(conversation_id),
                history_key(conversation_id),
                TURNS_DUE,
                by_lead_key(lead_id),
                CONVERSATIONS,
                by_contact_key(contact_id),
                by_chat_key(chat_id),
                stream,
                event_owner_key(stream),
                REPLIES_DUE,
                STATS,
                series.bucket_key(series.bucket_start(time.time())),
                WORK_FAILING,
                WORK_DEAD,
                sent_key(conversation_id),
                self.report_days.key(),
            ],
            args=self.apply_args(
                conversation_id=conversation_id,
                message_id=message_id,
                inbox_entry=inbox_entry,
                history_entry=history_entry,
                at_ms=at_ms,
                due_ms=due_ms,
                lead_id=lead_id,
                contact_id=contact_id,
                chat_id=chat_id,
                talk_id=talk_id,
                to_inbox=to_inbox,
                history_max=history_max,
                inbox_max=inbox_max,
                customer_at_ms=customer_at_ms,
                origin=origin,
                stream_id=stream_id,
                owner=owner,
                group=group,
                failure_id=failure_id,
                counter=counter,
                turn=turn,
                echo=echo,
            ),
        )
        return self._applied(applied, turn, conversation_id, echo)

    def apply_args(
        self,
        *,
        conversation_id: str,
        message_id: str,
        inbox_entry: str,
        history_entry: str,
        at_ms: int,
        due_ms: int,
        lead_id: int,
        contact_id: int,
        chat_id: str,
        talk_id: int,
        to_inbox: bool,
        history_max: int,
        inbox_max: int = 100,
        customer_at_ms: int = 0,
        origin: str = "",
        stream_id: str = "",
        owner: str = "",
        group: str = "",
        failure_id: str = "",
        counter: str = "",
        turn: TurnOffer | None = None,
        echo: EchoCheck | None = None,
    ) -> list[str | int]:
        """apply_message.lua's ARGV (the same arguments as `apply_message`);
        `conversation_id` '' for the ingest to fill in (ingest.lua)."""
        return [
            conversation_id,
            message_id,
            inbox_entry,
            history_entry,
            at_ms,
            due_ms,
            lead_id,
            contact_id,
            chat_id,
            talk_id,
            "1" if to_inbox else "0",
            max(history_max, 1),
            SEEN_TTL_SECONDS,
            stream_id,
            self._r_ms,
            owner,
            max(inbox_max, 1),
            customer_at_ms,
            origin,
            group,
            failure_id,
            counter,
            series.KEPT_SECONDS,
            turn.lease if turn else 0,
            max(turn.history_entries, 0) if turn else 0,
            f"turn:{conversation_id}",
            echo.fingerprint if echo else "",
            echo.counter if echo else "",
        ]

    @staticmethod
    def _applied(
        applied: Any,
        turn: TurnOffer | None,
        conversation_id: str,
        echo: EchoCheck | None = None,
    ) -> Applied:
        """What apply_message.lua returned, as an outcome; a claimed turn filled in."""
        if not isinstance(applied, list):
            return Applied(int(applied))
        if len(applied) == 2:  # the echo looked for
            assert echo is not None
            echo.was_sent = bool(applied[1])
            return Applied(int(applied[0]))
        outcome, record, inbox, history, failing = cast(
            tuple[int, list[bytes], list[bytes], list[bytes], int], applied
        )
        assert turn is not None
        turn.claim = Claim(conversation_id, turn.lease, failing=bool(failing))
        turn.conversation = {text(record[i]): text(record[i + 1]) for i in range(0, len(record), 2)}
        turn.pending = [json.loads(x) for x in inbox]
        turn.history = [json.loads(x) for x in history]
        return Applied(int(outcome))

    async def conversation(self, conversation_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(conversation_key(conversation_id))
        return text_map(raw)

    async def conversation_by_contact(self, contact_id: int) -> str | None:
        value = await self.redis.get(by_contact_key(contact_id))
        return text(value) if value else None

    async def state_counts(self) -> dict[str, int]:
        """Conversations by bot state (`active`, `paused`) and those whose turn is at n8n
        (`awaiting_reply`), counted in BOT_STATES: one round trip whatever their number.
        The first read after an upgrade files the conversations from before once
        (`recount_states`)."""
        p, a = BOT_STATE_PAUSED, BOT_STATE_AWAITING
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(BOT_STATES_SINCE)
            pipe.zcount(BOT_STATES, 0, p - 1)
            pipe.zcount(BOT_STATES, p, p + a)
            pipe.zcount(BOT_STATES, a, a)
            pipe.zcount(BOT_STATES, p + a, p + a)
            filed, active, paused, awaiting, paused_awaiting = await pipe.execute()
        if not filed and await self.recount_states():
            return await self.state_counts()
        return {
            "active": int(active),
            "paused": int(paused),
            "awaiting_reply": int(awaiting) + int(paused_awaiting),
        }

    async def recount_states(self) -> bool:
        """File every conversation in BOT_STATES again from its own hash (and take out
        members whose conversation is gone); False when another replica is doing it.
        Reads every conversation: only for data written before BOT_STATES existed.
        Scripts running meanwhile file their own conversation; ZSCAN returns every member
        present for the whole walk at least once, and filing one twice is harmless."""
        owner = uuid.uuid4().hex
        if not await self.redis.set(BOT_STATES_RECOUNT_LOCK, owner, nx=True, px=RECOUNT_LOCK_MS):
            return False
        try:
            for index in (CONVERSATIONS, BOT_STATES):
                ids: list[str] = []
                async for member, _ in self.redis.zscan_iter(index, count=PAGE):
                    ids.append(text(member))
                    if len(ids) >= PAGE:
                        await self._recount_each(ids)
                        ids = []
                await self._recount_each(ids)
            await self.redis.set(BOT_STATES_SINCE, now_ms(), nx=True)
        finally:
            if await self.redis.get(BOT_STATES_RECOUNT_LOCK) == owner.encode():
                await self.redis.delete(BOT_STATES_RECOUNT_LOCK)
        return True

    async def _recount_each(self, ids: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation_id in ids:
                await self._recount(
                    keys=[conversation_key(conversation_id), BOT_STATES],
                    args=[conversation_id],
                    client=pipe,
                )
            await pipe.execute()
        await self.redis.pexpire(BOT_STATES_RECOUNT_LOCK, RECOUNT_LOCK_MS)

    async def bind_lead(self, conversation_id: str, lead_id: int) -> bool:
        """Give a conversation without a lead the lead found for it (see lua/bind_lead.lua)."""
        bound = await self._bind_lead(
            keys=[conversation_key(conversation_id), by_lead_key(lead_id)],
            args=[conversation_id, lead_id, now_ms(), self._r_ms],
        )
        return bool(bound)

    async def conversation_by_lead(self, lead_id: int) -> str | None:
        value = await self.redis.get(by_lead_key(lead_id))
        return text(value) if value else None

    async def conversation_by_chat(self, chat_id: str) -> str | None:
        value = await self.redis.get(by_chat_key(chat_id))
        return text(value) if value else None

    async def inbox(self, conversation_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(inbox_key(conversation_id), 0, -1)
        return [json.loads(x) for x in raw]

    async def turn_view(
        self, conversation_id: str, history_entries: int
    ) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
        """What a turn reads before it decides, in one call: the conversation's record,
        its waiting messages and its newest `history_entries` entries."""
        record, inbox, history = cast(
            list[list[bytes]],
            await self._read_turn(
                keys=[
                    conversation_key(conversation_id),
                    inbox_key(conversation_id),
                    history_key(conversation_id),
                ],
                args=[max(history_entries, 0)],
            ),
        )
        conversation = {text(record[i]): text(record[i + 1]) for i in range(0, len(record), 2)}
        return conversation, [json.loads(x) for x in inbox], [json.loads(x) for x in history]

    async def history(self, conversation_id: str, turns: int) -> list[dict[str, Any]]:
        if turns <= 0:
            return []
        raw = await self.redis.lrange(history_key(conversation_id), -turns, -1)
        return [json.loads(x) for x in raw]

    async def record_decision(
        self, conversation_id: str, fields: dict[str, str | int | float]
    ) -> None:
        """The bot rules' decision on a turn (and the session state it keeps), on the
        conversation's hash; nothing for a conversation erased meanwhile."""
        await self.hset_if_exists(conversation_key(conversation_id), fields)

    async def record_history(self, conversation_id: str, entry: dict[str, Any], cap: int) -> None:
        await self._record_history(
            keys=[history_key(conversation_id), conversation_key(conversation_id)],
            args=[
                json.dumps(entry, ensure_ascii=False),
                max(cap, 1),
                conversation_id,
                now_ms(),
                self._r_ms,
            ],
        )
