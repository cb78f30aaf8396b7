"""Stage 1, webhook events: what an event does to its conversation — a message applied
(its conversation found by its lead, recorded once, acknowledged in the same call, its
turn claimed when it can start now), a command or a person's message handed to bot
control, a lead created or moved starting a proactive conversation.

The events are read from their partitioned streams, one replica per partition, into
per-conversation lanes by stages/event_reader.py, which calls `EventStage.apply_event`
and `apply_lead_event` for each entry in stream order. A customer's message whose
partition holds nothing waiting skips the stream: the ingest applies it with its ack
(`apply_here`, webhook_intake.py), with the same arguments.

Applying a message is quick (Redis, no n8n): a customer's message makes its turn due (or
runs it at once, claimed by the apply) and the lane goes on with the next event.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.common.due_queue import now_ms
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.logs import request_id
from services.conversation import bot, envelope
from services.conversation.context import CONVERSATION
from services.conversation.stages import Stage, StageContext
from services.conversation.store.conversations import (
    ECHO_COUNTER,
    Applied,
    ApplyHere,
    EchoCheck,
    TurnOffer,
)
from services.conversation.store.keys import (
    EVENTS_STREAM,
)
from services.conversation.webhook_events import LeadEvent, MessageEvent

if TYPE_CHECKING:
    from services.conversation.stages.turns import TurnStage
    from services.conversation.starter import ProactiveStarter

log = logging.getLogger(__name__)

# A chat's origin is a short channel name (waba, instagram_business...): kept bounded.
_ORIGIN_CHARS = 64


@dataclass(slots=True)
class Ack:
    """An entry the apply script acknowledges (and deletes) itself, in the same call:
    its consumer group and its id in the failure records; `done` once it did."""

    group: str
    failure_id: str
    done: bool = False


class PartitionLost(Exception):
    """This replica no longer holds the lease of the entry's stream: its new owner applies it."""


class EventStage(Stage):
    """What an event does to its conversation."""

    def __init__(self, ctx: StageContext, *, turns: TurnStage, starter: ProactiveStarter) -> None:
        super().__init__(ctx)
        # A customer's message makes its turn due (or hands it the turn its apply claimed).
        self.turns = turns
        # A lead created or moved may start a proactive conversation.
        self.starter = starter

    async def conversation_for(self, event: MessageEvent, stored: str = "") -> str:
        """A conversation is identified by its lead. A chat seen before its lead (a message
        without one) is taken over by the lead that shows up in it; a chat already held by
        another lead's conversation is not: Kommo reuses chats across leads. `stored`:
        the lead's conversation as the ingest found it (nothing to look up)."""
        if not event.lead_id:
            known = await self.store.conversation_by_chat(event.chat_id)
            return known or envelope.conversation_id_for(event)
        if stored:
            # A lead keeps its conversation; the apply script refuses one that went to
            # another lead meanwhile (then the lead gets its own, as below).
            return stored
        known = self.ctx.context.get(CONVERSATION, event.lead_id)
        if known is None:
            known = await self.store.conversation_by_lead(event.lead_id)
            if known:
                # A lead keeps its conversation; an erasure or a reset drops the copy
                # (services/conversation/context.py), and the apply script still refuses
                # a conversation that went to another lead meanwhile.
                self.ctx.context.put(CONVERSATION, event.lead_id, known)
        if known:
            return known
        by_chat = await self.store.conversation_by_chat(event.chat_id) if event.chat_id else None
        if by_chat and not (await self.store.conversation(by_chat)).get("lead_id"):
            return by_chat
        return envelope.conversation_id_for(event)

    def _role(self, event: MessageEvent) -> str:
        """Who wrote it, unless it is the echo of the bridge's own send ("bot", which the
        apply recognises): customer, automation, human, or command (a person's /assumir
        or /liberar)."""
        if event.from_customer:
            return "customer"
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
        self,
        conversation_id: str,
        stream_id: str,
        event: MessageEvent,
        stream: str,
        owner: str,
        ack: Ack | None,
    ) -> tuple[Applied, str, bool]:
        """Record the message in the conversation; what that did, who wrote it, and
        whether its turn started in this process (claimed by the apply)."""
        role = self._role(event)
        # Not the customer: perhaps the echo of the bridge's own send, which the apply
        # recognises by its text (then counted as the bot's, kept out of the history).
        echo = (
            None
            if event.from_customer
            else EchoCheck(envelope.text_fingerprint(event.text), ECHO_COUNTER)
        )
        at = float(event.created_at) if event.created_at else time.time()
        # The bot's replies enter the history when Kommo takes them (run_reply), so their
        # echo is not recorded again: one entry per message even when the echo is lost,
        # late or delivered twice. Everything else — the customer, a person of the team,
        # another automation — is known only from its webhook and recorded here, once per
        # message id.
        history = self._history(role, event, at)
        # A message Kommo redelivered long after it was written is history, not a
        # question to answer now.
        max_age = self.settings.message_max_age_seconds
        too_old = bool(
            event.from_customer
            and max_age
            and event.created_at
            and time.time() - event.created_at > max_age
        )
        to_inbox = event.from_customer and not too_old
        turns = self.turns
        offer = self._offer(to_inbox=to_inbox)
        try:
            applied = await self.store.apply_message(
                conversation_id=conversation_id,
                inbox_entry=json.dumps(
                    {**envelope.inbox_entry(event, stream_id), "request_id": request_id.get()},
                    ensure_ascii=False,
                ),
                history_entry=history,
                to_inbox=to_inbox,
                **self._fields(event, at),
                stream_id=stream_id,
                stream=stream,
                owner=owner,
                group=ack.group if ack else "",
                failure_id=ack.failure_id if ack else "",
                counter=f"messages_{role}",
                turn=offer,
                echo=echo,
            )
        except BaseException:
            if offer is not None:
                turns.pool.unreserve()
            raise
        if offer is not None:
            turns.pool.take(offer.claim, turns.held(offer))
        if applied == Applied.NOT_OWNER:
            raise PartitionLost(stream)
        if ack is not None and applied != Applied.OTHER_LEAD:
            ack.done = True
        if echo is not None and echo.was_sent:
            role = "bot"
        if too_old and applied in (Applied.APPLIED, Applied.SHARED_CHAT):
            log.info(
                "customer message older than MESSAGE_MAX_AGE_SECONDS: recorded, not answered",
                extra={"conversation_id": conversation_id},
            )
            await self.bots.count("messages_too_old")
        return applied, role, offer is not None and offer.claim is not None

    def apply_here(self, event: MessageEvent, request: str) -> ApplyHere | None:
        """A customer's message of a lead, offered to the ingest to apply in the same call
        as its ack when nothing waits in its partition (store/lua/ingest.lua): what its
        apply from the stream would get, and its turn offered to this process as that
        apply offers it. None when it must go through the stream (no lead; a message
        too old to answer, which is also logged and counted there)."""
        if not event.from_customer or event.lead_id <= 0:
            return None
        max_age = self.settings.message_max_age_seconds
        if max_age and event.created_at and time.time() - event.created_at > max_age:
            return None
        at = float(event.created_at) if event.created_at else time.time()
        inbox = envelope.inbox_entry(event, "")
        del inbox["seq"]  # the ingest adds it: Redis' clock, as a stream id would be
        inbox["request_id"] = request
        offer = self._offer(to_inbox=True)
        return ApplyHere(
            self.store.apply_args(
                conversation_id="",
                inbox_entry=json.dumps(inbox, ensure_ascii=False)[:-1],
                history_entry=self._history("customer", event, at),
                to_inbox=True,
                **self._fields(event, at),
                counter="messages_customer",
                turn=offer,
            ),
            offer,
        )

    def applied_here(self, here: ApplyHere) -> None:
        """After the ingest: the turn it claimed runs in this process; an offer it did not
        take frees its slot (the message went through the stream, or its turn could not
        start now); a turn due now that the apply could not claim is claimed by the pool."""
        offer = here.turn
        if offer is not None:
            self.turns.pool.take(offer.claim, self.turns.held(offer))
        if here.outcome == Applied.SHARED_CHAT:
            log.warning(
                "a Kommo chat is shared by two leads; each keeps its own conversation",
                extra={"conversation_id": here.conversation_id},
            )
        if (
            here.outcome in (Applied.APPLIED, Applied.SHARED_CHAT)
            and self.settings.message_debounce_seconds == 0
            and (offer is None or offer.claim is None)
        ):
            self.turns.pool.kick()

    def release_offer(self, here: ApplyHere) -> None:
        """The ingest failed: the turn offered with the message is not taken."""
        if here.turn is not None and here.turn.claim is None:
            self.turns.pool.unreserve()
            here.turn = None

    def _offer(self, *, to_inbox: bool) -> TurnOffer | None:
        """No debounce: the turn can start now, so the apply claims it for this process
        when a turn slot is free (and nobody holds it): no claim, no read after it."""
        turns = self.turns
        if to_inbox and self.settings.message_debounce_seconds == 0 and turns.pool.reserve():
            return TurnOffer(now_ms() + self.settings.lease_ms, turns.history_read)
        return None

    def _fields(self, event: MessageEvent, at: float) -> dict[str, Any]:
        """What every apply of `event` (written at `at`) is given, however it is applied."""
        return {
            "message_id": event.message_id,
            "at_ms": now_ms(),
            "due_ms": self._due_ms(),
            "lead_id": event.lead_id,
            "contact_id": event.contact_id,
            "chat_id": event.chat_id,
            "talk_id": event.talk_id,
            "inbox_max": self.settings.inbox_max_messages,
            # WhatsApp's window opens at the customer's message as Kommo dates it.
            "customer_at_ms": int(min(at, time.time()) * 1000) if event.from_customer else 0,
            "origin": event.origin[:_ORIGIN_CHARS],
            "history_max": max(self.settings.history_turns * 2, 10),
        }

    def _due_ms(self) -> int:
        """When a message's turn is due: a burst within the debounce is one turn."""
        return now_ms() + int(self.settings.message_debounce_seconds * 1000)

    def _history(self, role: str, event: MessageEvent, at: float) -> str:
        return json.dumps(
            envelope.history_entry(
                role, event.text, at, message_id=event.message_id, type=event.message_type
            ),
            ensure_ascii=False,
        )

    async def apply_event(
        self,
        stream_id: str,
        event: MessageEvent,
        stream: str = EVENTS_STREAM,
        owner: str = "",
        ack: Ack | None = None,
        known: str = "",
    ) -> None:
        """Apply a message read from `stream`; with `owner`, only while that replica holds
        the stream's lease (else PartitionLost); with `ack`, the entry is acknowledged in
        the same call (`ack.done`); `known`: its lead's conversation, as the ingest found
        it. The message is counted by who wrote it."""
        conversation_id = await self.conversation_for(event, known)
        applied, role, started = await self._apply(
            conversation_id, stream_id, event, stream, owner, ack
        )
        if applied == Applied.OTHER_LEAD:
            # The conversation found went to another lead meanwhile (or before this
            # version kept leads apart): the lead gets its own.
            conversation_id = envelope.conversation_id_for(event)
            applied, role, started = await self._apply(
                conversation_id, stream_id, event, stream, owner, ack
            )
        if applied == Applied.OTHER_LEAD:
            raise Conflict(f"conversation {conversation_id} belongs to another lead")
        if applied == Applied.SHARED_CHAT:
            log.warning(
                "a Kommo chat is shared by two leads; each keeps its own conversation",
                extra={"conversation_id": conversation_id, "lead_id": event.lead_id},
            )
        elif applied != Applied.APPLIED:
            return
        author = event.author_name or f"usuário {event.author_id}"
        if role == "command":
            try:
                await self.bot.command(event.text, author, conversation_id, "command")
            except (NotFound, InvalidInput) as exc:
                log.info("command from the chat not applied: %s", exc)
        elif role == "human":
            await self.bot.on_person_wrote(conversation_id, author)
        elif event.from_customer and self.settings.message_debounce_seconds == 0 and not started:
            # No burst window, and the apply could not claim the turn (no slot free, or
            # someone holds it): it is due now and the turn pool claims it when it can (a
            # lane never waits for a turn: its next conversation's events go on).
            self.turns.pool.kick()

    async def apply_lead_event(self, event: LeadEvent) -> None:
        """A lead created or moved in Kommo may start a proactive conversation."""
        if event.kind == "add":
            trigger = self.settings.proactive_on_lead_add
        else:
            trigger = self.settings.status_trigger(event.pipeline_id, event.status_id)
        if not trigger:
            return
        if event.kind == "add" and await self.store.conversation_by_lead(event.lead_id):
            # The lead came with a conversation (a chat that created it): it is answered,
            # not greeted.
            log.info("lead %s already has a conversation: no proactive start", event.lead_id)
            return
        try:
            started = await self.starter.start(
                event.lead_id,
                trigger,
                only_if_silent=event.kind == "add",
            )
        except InvalidInput as exc:
            # The configuration names a trigger the bridge cannot start (no template).
            log.warning("lead %s: no proactive start (%s)", event.lead_id, exc)
            return
        except (Conflict, NotFound) as exc:
            log.info("lead %s: no proactive start (%s)", event.lead_id, exc)
            return
        log.info("proactive start from Kommo", extra={"trigger": trigger, "status": started.status})
