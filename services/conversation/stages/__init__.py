"""The conversation pipeline, one module per stage (see services/conversation/engine.py).

A stage is given a `StageContext` — the settings, the stores, the clients and caches it
works with, and how a claimed item is run — and, by name in its constructor, the other
stages it hands work to. It never reaches through an engine to find them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from redis.exceptions import RedisError

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from services.common.due_queue import Claim, DueQueue, WorkFailures, describe, now_ms
from services.common.errors import Unavailable, is_transient_code
from services.common.n8n import N8nClient
from services.common.stream_calls import StreamedCalls
from services.common.workpool import Work, WorkPool
from services.conversation.context import ContextCache
from services.conversation.control import BotController
from services.conversation.rulebook import RuleBook
from services.conversation.settings import ConversationSettings
from services.conversation.store.bot_state import BotStore
from services.conversation.store.conversations import ConversationStore

if TYPE_CHECKING:
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceAsyncStub
    from services.conversation.template_sends import TemplateSender

log = logging.getLogger(__name__)

Deliveries = StreamedCalls[gw.DeliverMessageRequest, gw.DeliverMessageResponse]


def delivery_streams(gateway: KommoGatewayAsyncStub, lanes: int = 4) -> Deliveries:
    """The gateway's DeliverMessage over `lanes` long-lived streams (a delivery is
    idempotent by its key: a call a broken stream failed is tried again safely)."""
    return StreamedCalls(
        lambda: gateway.DeliverMessages(wait_for_ready=False),  # type: ignore[call-arg]
        lambda call_id, request, rid, deadline: gw.DeliverMessageCall(
            id=call_id, request=request, request_id=rid, timeout_seconds=deadline
        ),
        name="deliveries",
        lanes=lanes,
    )


def is_transient(exc: BaseException) -> bool:
    """A failure that trying again later can get past (a dependency unavailable)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return is_transient_code(exc.code())
    return isinstance(exc, RedisError | Unavailable | OSError)


@dataclass(frozen=True, slots=True, kw_only=True)
class StageContext:
    """What every stage of a replica shares."""

    settings: ConversationSettings
    store: ConversationStore
    gateway: KommoGatewayAsyncStub
    # The gateway's DeliverMessage over long-lived streams (the replies' hot path).
    deliveries: Deliveries
    vendedores: VendedorServiceAsyncStub
    n8n: N8nClient
    # This replica's name in the event streams' consumer group.
    consumer: str
    # This replica's copies of leads, contacts and vendedores (context.py).
    context: ContextCache
    bots: BotStore
    bot: BotController
    rules: RuleBook
    templates: TemplateSender
    failures: WorkFailures

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


class Stage:
    """A stage of the pipeline: the context's parts it works with, by their names."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.store = ctx.store
        self.gateway = ctx.gateway
        self.vendedores = ctx.vendedores
        self.n8n = ctx.n8n
        self.bots = ctx.bots
        self.bot = ctx.bot
        self.failures = ctx.failures
