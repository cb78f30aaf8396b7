"""The bot's state per conversation (paused or active, with its log and the timed
resume), the counters and time series of the dashboard, and the notes and tasks for
Kommo."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis

from services.common.due_queue import DueQueue, now_ms, text, text_map
from services.conversation import series
from services.conversation.reports import report_days
from services.conversation.store.keys import (
    BOT_LOG_KEPT,
    HANDOFFS_DUE,
    JOB_KEPT_SECONDS,
    NOTIFY_DUE,
    RESUMES_DUE,
    STATS,
    bot_log_key,
    conversation_key,
    notify_key,
    retention_ms,
)
from services.conversation.store.scripts import flat, register


class BotStore:
    """The bot's state per conversation, its history, and the Kommo notifications."""

    def __init__(
        self, redis: aioredis.Redis, retention_seconds: int = 0, timezone: str = "UTC"
    ) -> None:
        """`timezone`: BRIDGE_TIMEZONE, whose days the reports count in."""
        self.redis = redis
        self.report_days = report_days(timezone)
        self._r_ms = retention_ms(retention_seconds)
        self.resumes = DueQueue(redis, RESUMES_DUE)
        self.handoffs = DueQueue(redis, HANDOFFS_DUE)
        self.notifications = DueQueue(redis, NOTIFY_DUE)
        self._set_state = register(redis, "set_state")
        self._count = register(redis, "count")
        self._push_resume = register(redis, "push_resume")
        self._add_job = register(redis, "add_job")
        self._hset_if_exists = register(redis, "hset_if_exists")

    async def set_state(
        self,
        conversation_id: str,
        state: str,
        by: str,
        reason: str,
        resumes_at_ms: int,
        counter: str = "",
        count_always: bool = False,
    ) -> str | None:
        """Set the bot's state; returns the state it had before, None (and nothing set)
        when the conversation is gone. `counter` (the takeover, handoff or release) is
        counted in the same call, when the state changes or, with `count_always`, anyway."""
        now = now_ms()
        entry = json.dumps({"state": state, "by": by, "reason": reason, "at": now / 1000})
        keys = [conversation_key(conversation_id), bot_log_key(conversation_id), RESUMES_DUE]
        args: list[str | int] = [
            conversation_id,
            state,
            by,
            reason,
            resumes_at_ms,
            now,
            entry,
            self._r_ms,
            BOT_LOG_KEPT,
        ]
        if counter:
            keys += [
                STATS,
                series.bucket_key(series.bucket_start(now / 1000)),
                self.report_days.key(now / 1000),
            ]
            args += [counter, "always" if count_always else "changed", series.KEPT_SECONDS]
        previous = await self._set_state(keys=keys, args=args)
        return text(cast(bytes, previous)) if previous else None

    async def push_resume(self, conversation_id: str, resumes_at_ms: int) -> None:
        """A person wrote again: the quiet period starts over."""
        await self._push_resume(
            keys=[conversation_key(conversation_id), RESUMES_DUE],
            args=[conversation_id, resumes_at_ms],
        )

    async def log(self, conversation_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(bot_log_key(conversation_id), 0, -1)
        return [json.loads(x) for x in raw]

    async def count(self, counter: str, n: int = 1, conversation_id: str = "") -> None:
        """A counter for the life of the data, and the same in the current time bucket;
        with `conversation_id`, in the day's report too, under its vendedor, pipeline,
        stage, origin and trigger (reports.py)."""
        await self.count_many({counter: n}, conversation_id)

    async def count_many(self, counters: Mapping[str, int], conversation_id: str = "") -> None:
        """Several counters at once, as `count` adds one: one call to Redis."""
        await self._add_counts(True, counters, conversation_id)

    async def _add_counts(
        self, to_stats: bool, counters: Mapping[str, int], conversation_id: str = ""
    ) -> None:
        if not counters:
            return
        key = series.bucket_key(series.bucket_start(time.time()))
        args: list[str | int] = [series.KEPT_SECONDS, "1" if to_stats else "0"]
        for counter, n in counters.items():
            args += [counter, n]
        keys = [STATS, key]
        if conversation_id:
            keys += [conversation_key(conversation_id), self.report_days.key()]
        await self._count(keys=keys, args=args)

    async def counters(self) -> dict[str, int]:
        raw = await self.redis.hgetall(STATS)
        return {text(k): int(v) for k, v in raw.items()}

    async def record_reply_seconds(self, seconds: float) -> None:
        """A reply's time, in the current bucket's histogram (series.py)."""
        await self._add_counts(
            False,
            {
                series.REPLIES: 1,
                series.REPLY_MS_SUM: round(seconds * 1000),
                series.latency_field(seconds): 1,
            },
        )

    async def time_series(self, hours: int) -> series.Series:
        """The counters and reply latencies of the last `hours` (at most a day), in time
        buckets, read once."""
        starts = series.bucket_starts(time.time(), hours)
        async with self.redis.pipeline(transaction=False) as pipe:
            for start in starts:
                pipe.hgetall(series.bucket_key(start))
            raws = await pipe.execute()
        counts = [{text(k): int(v) for k, v in raw.items()} for raw in raws]
        return series.Series(starts, counts)

    async def add_notification(
        self, job_id: str, job: dict[str, str], lease_ms: int, conversation_id: str
    ) -> bool:
        """Queue a note or task about this conversation's lead; False (nothing queued)
        when the conversation is gone."""
        now = now_ms()
        added = await self._add_job(
            keys=[notify_key(job_id), NOTIFY_DUE, conversation_key(conversation_id)],
            args=[job_id, now + lease_ms, JOB_KEPT_SECONDS * 1000, now, self._r_ms, *flat(job)],
        )
        return bool(added)

    async def notification(self, job_id: str) -> dict[str, str]:
        return text_map(await self.redis.hgetall(notify_key(job_id)))

    async def mark_noted(self, job_id: str) -> None:
        await self._hset_if_exists(keys=[notify_key(job_id)], args=["noted", "1"])

    async def notification_done(self, job_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(NOTIFY_DUE, job_id)
            pipe.delete(notify_key(job_id))
            await pipe.execute()
