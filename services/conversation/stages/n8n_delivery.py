"""Stage 3, the n8n outbox: where envelopes are POSTed to n8n, retried on n8n's schedule
(N8N_RETRY_SCHEDULE), parked as dead letters after the last try.

claim: a turn's commit leases its envelope to this process and the pool POSTs the payload
in hand (`held`); otherwise the outbox pool (N8N_DELIVERY_CONCURRENCY slots) claims due
envelopes from `conv:outbox:due` (retries, resends, a replica that died). work: one
POST, however long n8n takes to answer (the lease is renewed meanwhile). release: the
envelope is marked delivered (kept for a resend until its reply comes), due again at its
next try, or parked.
"""

from __future__ import annotations

import logging

from services.common.due_queue import Claim, now_ms
from services.common.logs import flow, request_id
from services.common.metrics import N8N_DELIVERIES
from services.common.n8n import next_delay
from services.common.workpool import Work, WorkPool
from services.conversation.stages import Stage, StageContext
from services.conversation.store.keys import N8N_FAILING, OUTBOX_DUE

log = logging.getLogger(__name__)


class OutboxStage(Stage):
    """Envelopes on their way to n8n, many at once."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.pool: WorkPool = ctx.pool(
            "n8n_delivery", self.store.outbox, self.work, self.settings.n8n_delivery_concurrency
        )

    async def work(self, claim: Claim) -> None:
        await self.ctx.attempt("n8n_delivery", self.store.outbox, claim, self.deliver(claim))

    def held(self, item: dict[str, str]) -> Work:
        """The work of an envelope its turn's commit leased to this process: the payload
        is in hand, nothing is read back (run in the pool's slot: `WorkPool.adopt`)."""

        async def work(claim: Claim) -> None:
            await self.ctx.attempt(
                "n8n_delivery", self.store.outbox, claim, self._deliver_in_flow(claim, item)
            )

        return work

    async def deliver(self, claim: Claim) -> None:
        item = await self.store.outbox_item(claim.member)
        if not item:
            await self.store.outbox.release(claim)
            return
        await self._deliver_in_flow(claim, item)

    async def _deliver_in_flow(self, claim: Claim, item: dict[str, str]) -> None:
        with flow(item.get("request_id") or request_id.get()):
            await self._deliver(claim, item)

    async def _deliver(self, claim: Claim, item: dict[str, str]) -> None:
        rid = request_id.get()
        attempt = await self.n8n.post(item["url"], claim.member, item["payload"], rid)
        N8N_DELIVERIES.labels("ok" if attempt.ok else "retry" if attempt.retry else "refused").inc()
        failed_before = int(item.get("attempts") or 0) > 0
        if attempt.ok:
            n8n_was_failing = await self.store.outbox_delivered(claim)
            if failed_before:
                await self.failures.succeeded("n8n_delivery", claim.member)
            if n8n_was_failing:
                await self._n8n_is_back()
            log.info("envelope delivered to n8n", extra={"event_id": claim.member})
            return
        attempts = int(item.get("attempts") or 0) + 1
        delay = next_delay(self.settings.retry_schedule, attempts) if attempt.retry else None
        next_due = None if delay is None else now_ms() + int(delay * 1000)
        await self.store.outbox_failed(claim, attempt.detail, next_due)
        if next_due is not None:
            await self.store.redis.set(N8N_FAILING, "1", px=self._longest_wait_ms())
        await self.bots.count(
            "dead_lettered" if next_due is None else "retried",
            conversation_id=item.get("conversation_id", ""),
        )
        if next_due is None:
            await self.failures.given_up("n8n_delivery", claim.member)
        else:
            await self.failures.retrying(
                "n8n_delivery",
                claim.member,
                OUTBOX_DUE,
                attempt.detail,
                next_due,
                item.get("conversation_id", ""),
            )
        if next_due is None:
            log.error(
                "n8n delivery parked as dead letter",
                extra={"event_id": claim.member, "attempts": attempts, "reason": attempt.detail},
            )
        else:
            log.warning(
                "n8n delivery failed, retrying",
                extra={"event_id": claim.member, "attempts": attempts, "reason": attempt.detail},
            )

    async def _n8n_is_back(self) -> None:
        """n8n answered after failing: the envelopes waiting out their backoff (1 s, 5 s,
        30 s, 2 min, 10 min …) go now, not minutes after n8n came back."""
        pulled = await self.failures.pull_forward("n8n_delivery", OUTBOX_DUE)
        if pulled:
            log.info("n8n is back: %d waiting envelopes due now", pulled)
            self.pool.kick()

    def _longest_wait_ms(self) -> int:
        return int(max(self.settings.retry_schedule, default=0) * 1000) + 1
