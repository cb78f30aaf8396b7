"""The conversation service's engine: what its stages share, and the stages themselves.

The pipeline, one module per stage under `stages/`, each reading claim → work → release:

    webhook events read (streams, per-conversation lanes) stages/event_reader.py
      → applied to their conversations                  stages/events.py
      → turns (one at a time per conversation)           stages/turns.py
      → envelopes POSTed to n8n (retries, dead letters)  stages/n8n_delivery.py
    n8n's replies → Kommo (in order per lead)            stages/replies.py
    bot timers: resumes, handoffs, Kommo notes/tasks     stages/timers.py
    proactive starts and their fallbacks                 stages/proactive_starts.py

Every due-queue stage is a `WorkPool` (services/common/workpool.py) with its own slots,
so different conversations never wait for each other and one kind of work never holds
up another. The servicer and the server use the `Engine`; nothing else is global.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from services.common.due_queue import Claim, DueQueue, RetryPolicy, WorkFailures, describe, now_ms
from services.common.grpc_server import BackgroundTask
from services.common.n8n import N8nClient
from services.common.workpool import Work, WorkPool
from services.conversation.context import ContextCache
from services.conversation.control import BotController
from services.conversation.rulebook import RuleBook
from services.conversation.settings import ConversationSettings
from services.conversation.stages import is_transient
from services.conversation.stages.event_reader import EventConsumer
from services.conversation.stages.events import EventStage
from services.conversation.stages.n8n_delivery import OutboxStage
from services.conversation.stages.proactive_starts import ProactiveStage
from services.conversation.stages.replies import ReplyStage
from services.conversation.stages.timers import TimerStage
from services.conversation.stages.turns import TurnStage
from services.conversation.starter import ProactiveStarter
from services.conversation.store.bot_state import BotStore
from services.conversation.store.conversations import ConversationStore
from services.conversation.store.keys import WORK_FAILURES
from services.conversation.store.rules import RulesStore
from services.conversation.template_sends import TemplateSender

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceAsyncStub

log = logging.getLogger(__name__)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Engine:
    """Everything a conversation replica does, shared by the servicer and the stages."""

    def __init__(
        self,
        settings: ConversationSettings,
        store: ConversationStore,
        gateway: KommoGatewayAsyncStub,
        vendedores: VendedorServiceAsyncStub,
        n8n: N8nClient,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.vendedores = vendedores
        self.n8n = n8n
        self.consumer = consumer_name()
        self.context = ContextCache(settings.context_cache_seconds)
        self.bots = BotStore(store.redis, store.retention_seconds)
        self.bot = BotController(settings, store, self.bots, gateway)
        self.templates = TemplateSender(self)
        self.proactive = ProactiveStarter(self)
        self.rules = RuleBook(
            RulesStore(store.redis), settings.bot_rules_file, settings.bot_rules_refresh_seconds
        )
        self.failures = WorkFailures(
            store.redis,
            WORK_FAILURES,
            RetryPolicy(
                settings.work_max_attempts,
                settings.work_retry_base_seconds,
                settings.work_retry_max_seconds,
            ),
        )
        self.events = EventStage(self)
        self.event_reader = EventConsumer(self.events, store.redis)
        self.turns = TurnStage(self)
        self.outbox = OutboxStage(self)
        self.replies = ReplyStage(self)
        self.timers = TimerStage(self)
        self.proactive_work = ProactiveStage(self)

    def pool(self, kind: str, queue: DueQueue, work: Work, slots: int) -> WorkPool:
        return WorkPool(
            kind,
            queue,
            work,
            slots=slots,
            lease_ms=self.settings.lease_ms,
            poll_seconds=self.settings.poll_interval_seconds,
            failures=self.failures.keys(kind),
        )

    def workers(self) -> list[BackgroundTask]:
        """The replica's background work: the event consumer and one pool per kind."""
        return [
            self.event_reader,
            self.turns.pool,
            self.outbox.pool,
            self.replies.pool,
            *self.timers.pools,
            *self.proactive_work.pools,
        ]

    def envelope_due(self) -> None:
        """An envelope was queued due now: the outbox claims it at once."""
        self.outbox.pool.kick()

    async def attempt(
        self,
        kind: str,
        queue: DueQueue,
        claim: Claim,
        work: Awaitable[object],
        conversation_id: str = "",
    ) -> None:
        """Run one claimed work item. When it fails it is tried again after a growing
        delay and, after WORK_MAX_ATTEMPTS failures (a dependency being unavailable does
        not count), parked as a dead letter with its reason: one bad item never loops
        forever nor stops the others. One ERROR line per failure; the traceback once."""
        began = now_ms()
        try:
            await work
        except RedisError:
            raise
        except Exception as exc:
            transient = is_transient(exc)
            reason = describe(exc)
            outcome = await self.failures.failed(
                kind, queue, claim, reason, counts=not transient, conversation_id=conversation_id
            )
            extra = {"work": kind, "item": claim.member, "attempt": outcome.attempts}
            if conversation_id:
                extra["conversation_id"] = conversation_id
            first = outcome.attempts == 1 and not transient
            if outcome.parked:
                await self.bots.count("work_dead_lettered")
                log.error(
                    "%s %s parked as a dead letter after %d tries: %s",
                    kind,
                    claim.member,
                    outcome.attempts,
                    reason,
                    extra=extra,
                    exc_info=first,
                )
            else:
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "%s %s failed (try %d), tried again in %.1f s: %s",
                    kind,
                    claim.member,
                    outcome.attempts,
                    max(outcome.next_at_ms - now_ms(), 0) / 1000,
                    reason,
                    extra=extra,
                    exc_info=first,
                )
            return
        # Cleared only when its claim said a failure may be on record: no call otherwise.
        if claim.failing and await self.failures.succeeded(kind, claim.member, began):
            log.info("%s %s went through after failing", kind, claim.member)
