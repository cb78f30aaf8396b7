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
up another. Each stage gets the parts it works with (`stages.StageContext`) and the
stages it hands work to; the `Engine` wires them together once, for the servicer and
the server. Nothing else is global.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING

from services.common.due_queue import RetryPolicy, WorkFailures
from services.common.grpc_server import BackgroundTask
from services.common.n8n import N8nClient
from services.conversation.context import ContextCache
from services.conversation.control import BotController
from services.conversation.rulebook import RuleBook
from services.conversation.settings import ConversationSettings
from services.conversation.stages import StageContext, delivery_streams
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
from services.conversation.store.proactive import ProactiveStore
from services.conversation.store.rules import RulesStore
from services.conversation.template_sends import TemplateSender

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceAsyncStub

log = logging.getLogger(__name__)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Engine:
    """A conversation replica: its shared parts (`StageContext`) and its stages, wired
    together once here; the servicer and the server use it."""

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
        bots = BotStore(store.redis, store.retention_seconds, store.report_days.timezone)
        copies = ContextCache(settings.context_cache_seconds)
        rules = RuleBook(
            RulesStore(store.redis),
            settings.bot_rules_file,
            settings.bot_rules_refresh_seconds,
            copies=copies,
        )
        self.ctx = StageContext(
            settings=settings,
            store=store,
            gateway=gateway,
            deliveries=delivery_streams(gateway),
            vendedores=vendedores,
            n8n=n8n,
            consumer=consumer_name(),
            context=copies,
            bots=bots,
            bot=BotController(settings, store, bots, gateway),
            rules=rules,
            templates=TemplateSender(settings, store, gateway, vendedores, rules, bots),
            failures=WorkFailures(
                store.redis,
                WORK_FAILURES,
                RetryPolicy(
                    settings.work_max_attempts,
                    settings.work_retry_base_seconds,
                    settings.work_retry_max_seconds,
                ),
            ),
        )
        self.context = self.ctx.context
        self.bots = self.ctx.bots
        self.bot = self.ctx.bot
        self.rules = self.ctx.rules
        self.templates = self.ctx.templates
        self.failures = self.ctx.failures
        # Each stage is handed the stages it passes work to.
        self.timers = TimerStage(self.ctx)
        starts = ProactiveStore(store.redis, store.retention_seconds, store.report_days.timezone)
        self.replies = ReplyStage(self.ctx, handoffs=self.timers.handoff_pool, proactive=starts)
        self.outbox = OutboxStage(self.ctx)
        self.proactive = ProactiveStarter(
            self.ctx, starts, replies=self.replies, envelope_due=self.outbox.pool.kick
        )
        self.turns = TurnStage(
            self.ctx, outbox=self.outbox, replies=self.replies, handoffs=self.timers.handoff_pool
        )
        self.events = EventStage(self.ctx, turns=self.turns, starter=self.proactive)
        self.event_reader = EventConsumer(self.events, store.redis)
        self.proactive_work = ProactiveStage(self.ctx, self.proactive)

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
