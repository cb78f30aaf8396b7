"""A delivered message's note, kept by the gateway (notes.py): DeliverMessage answers
before the note is added, the note reaches the lead once per idempotency key, a note a
dead replica left is added by the note pool, a note Kommo refuses for a while is tried
again, and an erasure takes a waiting note away.

The gateway over gRPC on a real Redis, against the Kommo sandbox in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from sandbox.kommo import sandbox_of
from sandbox.kommo.traffic import FailRule
from services.common.due_queue import now_ms
from services.kommo_gateway.notes import NOTE_LEASE_MS, Note, Notes
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.store import NOTES, NOTES_DUE
from tests.integration.gateway_grpc import served_gateway
from tests.integration.sandbox_kommo import Counting, gateway_settings, sandbox_app

LEAD = 9100001
NOTES_PATH = "/api/v4/leads/notes"


def notes_on(sandbox: Any, lead_id: int = LEAD) -> list[str]:
    return [str(n.params.get("text", "")) for n in sandbox.state.notes if n.entity_id == lead_id]


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def taken_off(redis: aioredis.Redis) -> bool:
    """Every added note taken off (by the next delivery's record, or on its own)."""
    for _ in range(50):
        if not await redis.hlen(NOTES):
            return True
        await asyncio.sleep(0.1)
    return False


@dataclass
class Gateway:
    stub: Any
    sandbox: Any
    # Every request the gateway made to the sandbox, by path.
    counting: Counting


@asynccontextmanager
async def gateway(
    redis: aioredis.Redis,
    redis_url: str,
    settings: GatewaySettings | None = None,
    note_retry_seconds: tuple[float, ...] = (5.0,),
) -> AsyncIterator[Gateway]:
    """A gateway served over gRPC (its note pool running) against an in-process sandbox."""
    app = sandbox_app()
    sandbox = sandbox_of(app)
    counting = Counting(httpx.ASGITransport(app=app))
    try:
        async with (
            httpx.AsyncClient(transport=counting) as http,
            served_gateway(
                settings or gateway_settings(redis_url, 50),
                redis,
                http,
                note_retry_seconds=note_retry_seconds,
            ) as stub,
        ):
            yield Gateway(stub, sandbox, counting)
    finally:
        await sandbox.aclose()


async def test_the_note_rides_in_the_delivery_and_reaches_the_lead_once(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with gateway(redis, redis_url) as running:
        stub, sandbox = running.stub, running.sandbox
        ask = gw.DeliverMessageRequest(
            lead_id=LEAD, text="Olá!", idempotency_key="k-note", note="🤖 nota de teste"
        )
        first = await stub.DeliverMessage(ask)
        assert (first.status, first.note_kept) == ("sent", True)
        await until(lambda: "🤖 nota de teste" in notes_on(sandbox))
        again = await stub.DeliverMessage(ask)
        assert (again.status, again.note_kept) == ("already_sent", True)
        # Without a note, nothing is kept.
        plain = await stub.DeliverMessage(
            gw.DeliverMessageRequest(lead_id=LEAD, text="Sem nota.", idempotency_key="k-plain")
        )
        assert (plain.status, plain.note_kept) == ("sent", False)
        # Taken off once added: by the next delivery's record, or on its own.
        assert await taken_off(redis)
        assert await redis.zcard(NOTES_DUE) == 0
        await asyncio.sleep(0.3)
    assert notes_on(sandbox).count("🤖 nota de teste") == 1


async def test_a_note_a_dead_replica_left_is_added_by_the_pool(
    redis: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = sandbox_app()
    sandbox = sandbox_of(app)
    settings = gateway_settings(redis_url, 50)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            # A replica that dies right after answering: its note never left it.
            with monkeypatch.context() as patch:
                patch.setattr(Notes, "add_soon", lambda *args: None)
                async with served_gateway(settings, redis, http) as stub:
                    answer = await stub.DeliverMessage(
                        gw.DeliverMessageRequest(
                            lead_id=LEAD, text="Oi", idempotency_key="k-left", note="nota deixada"
                        )
                    )
            assert answer.note_kept
            kept = await redis.hget(NOTES, "k-left")
            assert kept is not None and Note.decode(kept).text == "nota deixada"
            leased_until = await redis.zscore(NOTES_DUE, "k-left")
            assert leased_until is not None and leased_until > now_ms() + NOTE_LEASE_MS / 2
            # Its lease runs out: another replica's note pool adds it.
            await redis.zadd(NOTES_DUE, {"k-left": now_ms() - 1})
            async with served_gateway(settings, redis, http):
                await until(lambda: "nota deixada" in notes_on(sandbox))
                assert await taken_off(redis)
    finally:
        await sandbox.aclose()
    assert notes_on(sandbox).count("nota deixada") == 1


async def test_a_note_kommo_fails_is_tried_again_and_the_answer_does_not_wait(
    redis: aioredis.Redis, redis_url: str
) -> None:
    settings = gateway_settings(redis_url, 50).model_copy(update={"kommo_max_retries": 0})
    async with gateway(redis, redis_url, settings, note_retry_seconds=(0.3,)) as running:
        stub, sandbox = running.stub, running.sandbox
        # Every note call fails twice (a Kommo outage of the notes' endpoint).
        sandbox.faults.fail_next.append(FailRule(NOTES_PATH, 503, 2))
        answer = await stub.DeliverMessage(
            gw.DeliverMessageRequest(
                lead_id=LEAD, text="Oi", idempotency_key="k-retry", note="nota insistente"
            )
        )
        assert answer.note_kept
        assert "nota insistente" not in notes_on(sandbox)  # answered before it was added
        assert await redis.hexists(NOTES, "k-retry")
        await until(lambda: "nota insistente" in notes_on(sandbox))
    assert notes_on(sandbox).count("nota insistente") == 1


async def test_an_erasure_takes_a_waiting_note_away(redis: aioredis.Redis, redis_url: str) -> None:
    # Waiting for a later try (Kommo failed it): personal data, erased with its reply.
    await redis.hset(NOTES, "k-erase#2", Note(LEAD, "nota a apagar").encode())
    await redis.zadd(NOTES_DUE, {"k-erase#2": now_ms() + 600_000})
    await redis.hset(NOTES, "k-other", Note(LEAD, "outra").encode())
    await redis.zadd(NOTES_DUE, {"k-other": now_ms() + 600_000})
    async with gateway(redis, redis_url) as running:
        erased = await running.stub.EraseData(gw.EraseGatewayDataRequest(delivery_keys=["k-erase"]))
        assert erased.erased["notes"] == 1
    assert not await redis.hexists(NOTES, "k-erase#2")
    assert await redis.zscore(NOTES_DUE, "k-erase#2") is None
    assert await redis.hexists(NOTES, "k-other")


async def test_notes_kept_close_together_go_to_kommo_in_one_call(
    redis: aioredis.Redis, redis_url: str
) -> None:
    leads = [9100001, 9100002, 9100003]
    async with gateway(redis, redis_url) as running:
        stub, sandbox = running.stub, running.sandbox
        for lead in leads:
            answer = await stub.DeliverMessage(
                gw.DeliverMessageRequest(
                    lead_id=lead, text="Oi", idempotency_key=f"k{lead}", note=f"nota {lead}"
                )
            )
            assert answer.note_kept
        await until(lambda: all(f"nota {lead}" in notes_on(sandbox, lead) for lead in leads))
    assert running.counting.paths.count(NOTES_PATH) == 1, running.counting.paths


async def test_a_note_erased_before_it_went_is_never_sent(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with gateway(redis, redis_url) as running:
        stub, sandbox = running.stub, running.sandbox
        answer = await stub.DeliverMessage(
            gw.DeliverMessageRequest(
                lead_id=LEAD, text="Oi", idempotency_key="k-gone", note="nota apagada"
            )
        )
        assert answer.note_kept
        # Erased while it waits to go with the others (LGPD): it never goes.
        erased = await stub.EraseData(gw.EraseGatewayDataRequest(delivery_keys=["k-gone"]))
        assert erased.erased["notes"] == 1
        await asyncio.sleep(2.0)  # past the moment it would have gone
        assert await redis.hlen(NOTES) == 0
    assert "nota apagada" not in notes_on(sandbox)
