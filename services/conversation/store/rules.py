"""The bot rules document written through the API, versioned (BOT_RULES)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from services.common.due_queue import text_map
from services.common.errors import Conflict
from services.conversation.store.keys import BOT_RULES
from services.conversation.store.scripts import register


@dataclass(frozen=True, slots=True)
class StoredRules:
    json: str
    version: int
    updated_at: str


class RulesStore:
    """The bot rules written through the API, versioned."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._put = register(redis, "put_rules")

    async def get(self) -> StoredRules | None:
        raw = text_map(await self.redis.hgetall(BOT_RULES))
        if not raw.get("json"):
            return None
        return StoredRules(raw["json"], int(raw.get("version") or 0), raw.get("updated_at", ""))

    async def version(self) -> int:
        return int(await self.redis.hget(BOT_RULES, "version") or 0)

    async def put(self, rules_json: str, expected_version: int | None, updated_at: str) -> int:
        """The version written; Conflict when `expected_version` is not the current one."""
        written, current = cast(
            list[int],
            await self._put(
                keys=[BOT_RULES],
                args=[rules_json, "" if expected_version is None else expected_version, updated_at],
            ),
        )
        if int(written) < 0:
            raise Conflict(
                f"the bot rules changed meanwhile (now version {current}, not "
                f"{expected_version}): read them again, then change them"
            )
        return int(written)
