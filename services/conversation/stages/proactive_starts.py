"""Stage 6, proactive starts: starts waiting for working hours, and the fallback that
sends the trigger's template when n8n does not write the first message in time.

Each is a due queue with a pool of its own (PROACTIVE_CONCURRENCY slots each): claim the
due jobs, run the starter's step for each (services/conversation/starter.py), which
settles its job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.due_queue import Claim
from services.common.workpool import WorkPool
from services.conversation.stages import Stage, StageContext

if TYPE_CHECKING:
    from services.conversation.starter import ProactiveStarter


class ProactiveStage(Stage):
    def __init__(self, ctx: StageContext, starter: ProactiveStarter) -> None:
        super().__init__(ctx)
        self.proactive = starter
        slots = self.settings.proactive_concurrency
        starts = self.proactive.store
        self.pools: list[WorkPool] = [
            ctx.pool("proactive_start", starts.waiting, self.start, slots),
            ctx.pool("proactive_fallback", starts.fallbacks, self.fallback, slots),
        ]

    async def start(self, claim: Claim) -> None:
        waiting = self.proactive.store.waiting
        await self.ctx.attempt("proactive_start", waiting, claim, self.proactive.run_waiting(claim))

    async def fallback(self, claim: Claim) -> None:
        fallbacks = self.proactive.store.fallbacks
        await self.ctx.attempt(
            "proactive_fallback", fallbacks, claim, self.proactive.run_fallback(claim)
        )
