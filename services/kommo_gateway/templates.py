"""The integration's chat templates and their WhatsApp review status, kept in the replica.

Read from Kommo (`GET /api/v4/chats/templates?with=reviews`, every page, at the low
priority class) at most once per `kommo_templates_cache_seconds` per replica; callers
that ask together share one read. When Kommo cannot be reached the last copy answers,
however old (its `fetched_at` says so); without one the error goes to the caller. An
account whose plan or token has no templates (402/403/404) gets an empty list, kept like
any other answer and logged when that starts, not an error on every call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as pb
from services.common.errors import RateLimited, Unavailable
from services.kommo_gateway import mapping
from services.kommo_gateway.kommo_client import KommoClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Copy:
    templates: pb.Templates
    # time.monotonic() when the read began, for the cache period.
    read_at: float
    # Why Kommo refused the list ("" when it answered it).
    refused: str


class TemplateCache:
    def __init__(self, kommo: KommoClient, cache_seconds: float) -> None:
        self._kommo = kommo
        self._cache_seconds = cache_seconds
        self._copy: _Copy | None = None
        self._reading = asyncio.Lock()

    async def get(self, fresh: bool = False) -> pb.Templates:
        copy = self._copy
        if not fresh and self._current(copy):
            assert copy is not None
            return copy.templates
        asked = time.monotonic()
        async with self._reading:
            copy = self._copy
            # Another caller read it while this one waited: that answer is as fresh.
            if copy is not None and (copy.read_at >= asked or (not fresh and self._current(copy))):
                return copy.templates
            try:
                return await self._read(copy)
            except (Unavailable, RateLimited) as exc:
                if copy is None:
                    raise
                log.warning(
                    "chat templates: Kommo not reached (%s); answering the copy read %.0f s ago",
                    exc,
                    time.monotonic() - copy.read_at,
                )
                return copy.templates

    def _current(self, copy: _Copy | None) -> bool:
        return copy is not None and time.monotonic() - copy.read_at < self._cache_seconds

    async def _read(self, previous: _Copy | None) -> pb.Templates:
        began = time.monotonic()
        bodies, refused = await self._kommo.chat_templates()
        templates = pb.Templates(
            templates=[mapping.template(b) for b in bodies], fetched_at=time.time()
        )
        if refused and (previous is None or previous.refused != refused):
            log.warning(
                "chat templates: Kommo refuses the list (%s): none are known, so no template "
                "can be checked; the account's plan must include WhatsApp templates and the "
                "bridge must be authorised by an administrator. Asked again every %.0f s",
                refused,
                self._cache_seconds,
            )
        elif not refused and previous is not None and previous.refused:
            log.info("chat templates: Kommo lists them again (%d)", len(bodies))
        self._copy = _Copy(templates, began, refused)
        return templates
