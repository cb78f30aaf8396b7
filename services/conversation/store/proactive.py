"""Proactive starts: a lead's and trigger's first message claimed once, the lead's
conversation opened for it, the jobs waiting for working hours or n8n's first message,
and the templates set through the API."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from services.common.due_queue import DueQueue, now_ms, text, text_map
from services.conversation.reports import report_days
from services.conversation.store.keys import (
    FALLBACKS_DUE,
    JOB_KEPT_SECONDS,
    PROACTIVE_DUE,
    TEMPLATES,
    by_contact_key,
    by_lead_key,
    conversation_key,
    proactive_job_key,
    proactive_key,
    retention_ms,
)
from services.conversation.store.scripts import flat, register


class ProactiveStore:
    def __init__(
        self, redis: aioredis.Redis, retention_seconds: int = 0, timezone: str = "UTC"
    ) -> None:
        self.redis = redis
        self.report_days = report_days(timezone)
        self._r_ms = retention_ms(retention_seconds)
        self.waiting = DueQueue(redis, PROACTIVE_DUE)
        self.fallbacks = DueQueue(redis, FALLBACKS_DUE)
        self._claim_start = register(redis, "claim_start")
        self._ensure = register(redis, "ensure_conversation")
        self._add_job = register(redis, "add_job")

    async def claim_start(
        self, lead_id: int, trigger: str, conversation_id: str, ttl: int
    ) -> float | None:
        """None for the first start of this lead and trigger (claimed now); for a start
        already claimed, when it is scheduled to go (Unix seconds; 0 = not waiting)."""
        answer = await self._claim_start(
            keys=[proactive_key(lead_id, trigger), conversation_key(conversation_id)],
            args=[conversation_id, ttl * 1000, self._r_ms, now_ms()],
        )
        if answer == 1:
            return None
        _, _, scheduled_ms = text(answer).partition("|")
        return int(scheduled_ms) / 1000 if scheduled_ms.isdigit() else 0.0

    async def start_scheduled(
        self, lead_id: int, trigger: str, conversation_id: str, at_ms: int
    ) -> None:
        """The claimed start waits until `at_ms`: a repeated start says when it goes."""
        await self.redis.set(
            proactive_key(lead_id, trigger), f"{conversation_id}|{at_ms}", xx=True, keepttl=True
        )

    async def forget_start(self, lead_id: int, trigger: str) -> None:
        await self.redis.delete(proactive_key(lead_id, trigger))

    async def ensure_conversation(
        self,
        conversation_id: str,
        lead_id: int,
        contact_id: int,
        trigger: str = "",
        owner: tuple[int, int, int] | None = None,
    ) -> dict[str, str]:
        """The lead's conversation, opened if needed: a proactive start is a message.
        One it opens is started by `trigger` (counted in the day's report); `owner` is
        the lead's (responsible user, pipeline, stage), recorded for the reports."""
        whose = [str(x) for x in owner] if owner else ["", "", ""]
        flat = await self._ensure(
            keys=[
                conversation_key(conversation_id),
                by_lead_key(lead_id),
                by_contact_key(contact_id),
                self.report_days.key(),
            ],
            args=[conversation_id, now_ms(), lead_id, contact_id, self._r_ms, trigger, *whose],
        )
        pairs = cast(list[bytes], flat)
        return {text(pairs[i]): text(pairs[i + 1]) for i in range(0, len(pairs), 2)}

    async def add_job(self, queue: DueQueue, job_id: str, job: dict[str, str], due_ms: int) -> bool:
        """Queue a job of job["conversation_id"]; False (nothing queued) when that
        conversation is gone."""
        added = await self._add_job(
            keys=[
                proactive_job_key(job_id),
                queue.key,
                conversation_key(job["conversation_id"]),
            ],
            args=[job_id, due_ms, JOB_KEPT_SECONDS * 1000, now_ms(), self._r_ms, *flat(job)],
        )
        return bool(added)

    async def job(self, job_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(proactive_job_key(job_id)))

    async def job_done(self, queue: DueQueue, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(queue.key, job_id)
            pipe.delete(proactive_job_key(job_id))
            await pipe.execute()

    async def templates(self) -> dict[str, str]:
        return text_map(await self.redis.hgetall(TEMPLATES))

    async def set_template(self, trigger: str, template: str) -> None:
        await self.redis.hset(TEMPLATES, trigger, template)
