"""Stage 5, bot timers: a paused bot resuming, a turn n8n has not answered (resent, then
handed off to a person), and notes and tasks for Kommo about a lead.

Each is a due queue with a pool of its own (TIMER_CONCURRENCY slots each): claim the due
items, run the controller's step for each (services/conversation/control.py), which
releases, reschedules or settles its item.
"""

from __future__ import annotations

from services.common.due_queue import Claim
from services.common.workpool import WorkPool
from services.conversation.stages import Stage, StageContext


class TimerStage(Stage):
    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        slots = self.settings.timer_concurrency
        # The handoff of a turn n8n leaves unanswered: queued by the turn's commit for this
        # process alone (WorkPool.expect), forgotten when the reply settles the turn.
        self.handoff_pool = ctx.pool("handoff", self.bots.handoffs, self.handoff, slots)
        self.pools: list[WorkPool] = [
            ctx.pool("resume", self.bots.resumes, self.resume, slots),
            self.handoff_pool,
            ctx.pool("notification", self.bots.notifications, self.notification, slots),
        ]

    async def resume(self, claim: Claim) -> None:
        await self.ctx.attempt(
            "resume", self.bots.resumes, claim, self.bot.run_resume(claim), claim.member
        )

    async def handoff(self, claim: Claim) -> None:
        await self.ctx.attempt(
            "handoff", self.bots.handoffs, claim, self.bot.run_handoff(claim), claim.member
        )

    async def notification(self, claim: Claim) -> None:
        job = await self.bots.notification(claim.member)
        if not job:
            await self.bots.notification_done(claim.member)
            return
        await self.ctx.attempt(
            "notification", self.bots.notifications, claim, self.bot.run_notification(claim, job)
        )
