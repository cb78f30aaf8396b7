"""A note or task for Kommo is retried after every failure that a later try can get past —
the same codes as every other retrying caller (services/common/errors.TRANSIENT_CODES) —
and given up only when Kommo refuses it for good."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from services.common.errors import TRANSIENT_CODES
from services.conversation.control import BotController
from services.conversation.settings import ConversationSettings
from services.conversation.store.bot_state import BotStore
from services.conversation.store.conversations import ConversationStore
from services.conversation.store.keys import NOTIFY_DUE
from services.conversation.store.proactive import ProactiveStore
from tests.unit.test_production_settings import WIRING

CONVERSATION, LEAD, CONTACT = "c-notify", 9100001, 4400001


class RefusingGateway:
    """A gateway whose AddNote fails with one gRPC code."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.calls = 0

    async def AddNote(self, request: Any, metadata: Any = None) -> None:
        self.calls += 1
        raise grpc.aio.AioRpcError(
            self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no", debug_error_string=""
        )


async def _notify(redis: aioredis.Redis, code: grpc.StatusCode) -> tuple[RefusingGateway, bool]:
    values: dict[str, Any] = {**WIRING, "kommo_sandbox": True}
    settings = ConversationSettings(_env_file=None, **values)
    await ProactiveStore(redis).ensure_conversation(CONVERSATION, LEAD, CONTACT)
    gateway = RefusingGateway(code)
    control = BotController(settings, ConversationStore(redis), BotStore(redis), gateway)  # type: ignore[arg-type]
    await control.notify(CONVERSATION, "O bot passou a conversa para você.")
    still_queued = await redis.zcard(NOTIFY_DUE) == 1
    return gateway, still_queued


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES, key=lambda code: str(code)))
async def test_a_note_refused_for_now_is_kept_for_a_later_try(
    redis: aioredis.Redis, code: grpc.StatusCode
) -> None:
    gateway, still_queued = await _notify(redis, code)
    assert gateway.calls == 1
    assert still_queued, f"{code.name}: the note was dropped"


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND])
async def test_a_note_kommo_refuses_for_good_is_given_up(
    redis: aioredis.Redis, code: grpc.StatusCode
) -> None:
    _, still_queued = await _notify(redis, code)
    assert not still_queued
