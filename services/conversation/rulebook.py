"""The bot rules in force: those set through the API (Redis, versioned), else
BOT_RULES_FILE's, else the defaults (the bot answers everyone at any hour). A change made
through any replica reaches every other at once, without a restart: it is published on
the context changes' channel (context.py), which drops every replica's copy. A replica
that cannot hear that channel (Redis reconnecting, CONTEXT_CACHE_SECONDS=0) reads a change
within BOT_RULES_REFRESH_SECONDS instead: a copy older than that costs one HGET of the
version."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydantic import ValidationError

from services.common.errors import InvalidInput
from services.common.settings import ConfigurationError
from services.conversation.context import RULES, RULES_ID, ContextCache, publish_changes
from services.conversation.rules_document import BotRules

if TYPE_CHECKING:
    from services.conversation.store.rules import RulesStore

log = logging.getLogger(__name__)

# Enough of pydantic's complaints to fix the document; the rest are alike.
_ERRORS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class InForce:
    rules: BotRules
    version: int  # 0 = never changed through the API
    source: str  # "api", "file" or "default"
    updated_at: str = ""


def parse_rules(text: str | bytes) -> BotRules:
    """A rules document, or InvalidInput naming each field that is wrong."""
    try:
        return BotRules.model_validate_json(text)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'the document'}: "
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors(include_url=False, include_input=False)
        ]
        more = len(problems) - _ERRORS_SHOWN
        shown = "; ".join(problems[:_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise InvalidInput(f"bot rules: {shown}") from None


def load_file(path: str) -> BotRules:
    """BOT_RULES_FILE at start: a file that cannot be read or is not valid rules stops the
    service with one line saying why (never silently the defaults)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            "BOT_RULES_FILE", f"cannot read {path} ({exc.strerror or exc})"
        ) from None
    try:
        return parse_rules(text)
    except InvalidInput as exc:
        raise ConfigurationError("BOT_RULES_FILE", f"{path}: {exc}") from None


class RuleBook:
    def __init__(
        self,
        store: RulesStore,
        file_path: str,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        copies: ContextCache | None = None,
    ) -> None:
        """`copies`: the replica's context copies. While they hear every change
        (ContextChanges), the rules are kept there, dropped when changed anywhere, and
        not checked again until then (or the copies' age): no HGET a turn."""
        self._store = store
        self._copies = copies
        self._base = (
            InForce(load_file(file_path), 0, "file")
            if file_path
            else InForce(BotRules(), 0, "default")
        )
        self._refresh = refresh_seconds
        self._clock = clock
        self._cached: InForce | None = None
        self._checked_at = 0.0

    async def current(self) -> InForce:
        copies = self._copies
        if copies is not None and copies.watched:
            kept = copies.get(RULES, RULES_ID)
            if kept is not None:
                return cast(InForce, kept)
        generation = copies.generation if copies is not None else 0
        now = self._clock()
        if self._cached is not None and now - self._checked_at < self._refresh:
            return self._cached
        if self._cached is not None and await self._store.version() == self._cached.version:
            self._checked_at = now
        else:
            self._cached = await self._read()
            self._checked_at = now
        if copies is not None:
            copies.put_if(generation, RULES, RULES_ID, self._cached)
        return self._cached

    async def put(self, rules_json: str, expected_version: int | None) -> InForce:
        rules = parse_rules(rules_json)
        at = datetime.now(UTC).isoformat(timespec="seconds")
        # Stored as written: a field a scope left out stays out (rules.merge_nested).
        stored = rules.model_dump_json(exclude_unset=True)
        version = await self._store.put(stored, expected_version, at)
        self._cached = InForce(rules, version, "api", at)
        self._checked_at = self._clock()
        # Every replica's copy goes (this one's too: it is read again).
        await publish_changes(self._store.redis, rules=True)
        log.info("bot rules changed through the API", extra={"version": version})
        return self._cached

    async def _read(self) -> InForce:
        stored = await self._store.get()
        if stored is None:
            return self._base
        try:
            rules = parse_rules(stored.json)
        except InvalidInput as exc:
            # Written by a version that accepted what this one refuses: the file's or the
            # default rules apply until someone writes them again.
            log.error(
                "the bot rules in Redis are not valid any more, %s rules apply: %s",
                self._base.source,
                exc,
            )
            return InForce(self._base.rules, stored.version, self._base.source)
        return InForce(rules, stored.version, "api", stored.updated_at)
