"""Kommo calls of one kind share list requests, and Kommo's budget is spent by priority:
the gateway's client against the Kommo sandbox (in-process) and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from sandbox.kommo import sandbox_of
from sandbox.kommo.runtime import Sandbox
from services.common.errors import NotFound
from services.kommo_gateway.coalescer import Coalescer, Outcome
from services.kommo_gateway.kommo_client import KommoClient
from services.kommo_gateway.ratelimit import (
    Budget,
    BudgetBusy,
    Departure,
    Priority,
    RateLimiter,
    call_deadline,
)
from services.kommo_gateway.tokens import TokenManager
from tests.integration.sandbox_kommo import CONFIG, gateway_settings, sandbox_app

FIRST_LEAD = 9100001
UNKNOWN_LEAD = 9199999


@dataclass
class Gateway:
    kommo: KommoClient
    sandbox: Sandbox

    def calls(self, path: str) -> int:
        return int(self.sandbox.stats()["by_path"].get(path, 0))


@pytest.fixture
async def gateway(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Gateway]:
    app = sandbox_app()
    settings = gateway_settings(redis_url, 7)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    limiter = RateLimiter(redis, settings.kommo_rate_limit_rps)
    budget = Budget(limiter, aging_seconds=2.0, call_seconds=0.5)
    tokens = TokenManager(settings, redis, http, limiter)
    kommo = KommoClient(settings, http, tokens, limiter, budget)
    await tokens.bootstrap()
    try:
        yield Gateway(kommo, sandbox_of(app))
    finally:
        await kommo.aclose()
        await budget.aclose()
        await http.aclose()
        await sandbox_of(app).aclose()


async def _settled(calls: Sequence[asyncio.Task[Any]]) -> list[object]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def test_concurrent_lead_reads_share_one_list_call_and_an_unknown_id_fails_alone(
    gateway: Gateway,
) -> None:
    ids = [FIRST_LEAD + n % 10 for n in range(30)] + [UNKNOWN_LEAD]
    answers = await _settled([asyncio.create_task(gateway.kommo.lead(i)) for i in ids])
    for lead_id, answer in zip(ids[:-1], answers[:-1], strict=True):
        assert isinstance(answer, dict) and answer["id"] == lead_id
        assert answer["_embedded"]["contacts"], "read with its contacts"
    assert isinstance(answers[-1], NotFound)
    assert str(UNKNOWN_LEAD) in str(answers[-1])
    assert gateway.calls("/api/v4/leads") <= 2  # the first may leave alone


async def test_a_note_kommo_refuses_fails_alone_and_the_others_are_written(
    gateway: Gateway,
) -> None:
    leads = [FIRST_LEAD + n for n in range(8)]
    calls = [asyncio.create_task(gateway.kommo.add_note(i, f"nota {i}")) for i in leads]
    calls.insert(3, asyncio.create_task(gateway.kommo.add_note(UNKNOWN_LEAD, "perdida")))
    answers = await _settled(calls)
    refused = answers.pop(3)
    assert isinstance(refused, NotFound) and str(UNKNOWN_LEAD) in str(refused)
    assert all(isinstance(a, int) and a > 0 for a in answers), answers
    assert len(set(answers)) == len(leads)
    written = {(n.entity_id, n.params["text"]) for n in gateway.sandbox.state.notes}
    assert {(i, f"nota {i}") for i in leads} <= written
    assert all(entity != UNKNOWN_LEAD for entity, _ in written)
    assert gateway.calls("/api/v4/leads/notes") < len(leads)


async def test_reply_writes_and_bot_runs_go_in_lists(gateway: Gateway) -> None:
    leads = [FIRST_LEAD + n for n in range(12)]
    field = CONFIG.reply_field_id
    await _settled(
        [asyncio.create_task(gateway.kommo.set_lead_field(i, field, f"oi {i}")) for i in leads]
    )
    runs = await _settled(
        [asyncio.create_task(gateway.kommo.run_salesbot(CONFIG.salesbot_id, i)) for i in leads]
    )
    assert runs == [None] * len(leads)
    assert gateway.calls("/api/v4/leads") <= 2
    assert gateway.calls("/api/v4/bots/run") <= 2
    assert len(gateway.sandbox.activity.salesbot_runs) == len(leads)


def _recorder(
    budget: Budget, sent: list[str], name: str, priority: Priority
) -> Coalescer[int, int]:
    """A coalescer of one item a request that records the order of its departures."""

    async def send(batch: list[int], departure: Departure) -> list[Outcome[int]]:
        await departure.settle()
        sent.append(name)
        return list(batch)

    return Coalescer(name, budget, 1, priority, send)


async def test_replies_leave_before_notes_that_waited_as_long(redis: aioredis.Redis) -> None:
    budget = Budget(RateLimiter(redis, 20), aging_seconds=60.0, call_seconds=0.0)
    sent: list[str] = []
    notes = _recorder(budget, sent, "note", Priority.RECORD)
    replies = _recorder(budget, sent, "reply", Priority.REPLY)
    try:
        await asyncio.gather(
            *(notes.submit(n) for n in range(4)), *(replies.submit(n) for n in range(4))
        )
    finally:
        await budget.aclose()
    assert sent == ["reply"] * 4 + ["note"] * 4


async def test_a_flood_of_replies_does_not_starve_a_note(redis: aioredis.Redis) -> None:
    budget = Budget(RateLimiter(redis, 20), aging_seconds=0.2, call_seconds=0.0)
    sent: list[str] = []
    notes = _recorder(budget, sent, "note", Priority.RECORD)
    replies = _recorder(budget, sent, "reply", Priority.REPLY)
    flood = 40

    async def keep_replies_waiting() -> None:
        # Always two fresh replies queued: without aging the note would never go.
        pending = {asyncio.create_task(replies.submit(n)) for n in range(2)}
        for n in range(2, flood):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending |= {asyncio.create_task(replies.submit(n)) for _ in done}
        await asyncio.gather(*pending)

    try:
        await asyncio.gather(notes.submit(1), keep_replies_waiting())
    finally:
        await budget.aclose()
    assert "note" in sent
    assert sent.index("note") < len(sent) - 2, sent


async def test_a_call_that_cannot_leave_before_its_deadline_is_refused_at_once(
    redis: aioredis.Redis,
) -> None:
    budget = Budget(RateLimiter(redis, 2), aging_seconds=60.0, call_seconds=0.0)
    sent: list[str] = []
    replies = _recorder(budget, sent, "reply", Priority.REPLY)
    notes = _recorder(budget, sent, "note", Priority.RECORD)
    try:
        ahead = [asyncio.create_task(replies.submit(n)) for n in range(6)]
        await asyncio.sleep(0)
        call_deadline.set(time.monotonic() + 1.0)
        with pytest.raises(BudgetBusy) as refused:
            await notes.submit(1)
        assert refused.value.retry_after_seconds >= 2  # six departures ahead at 2 a second
        assert "try again in" in str(refused.value)
        call_deadline.set(None)
        assert await asyncio.gather(*ahead) == list(range(6))
    finally:
        await budget.aclose()
    assert sent == ["reply"] * 6


async def test_a_call_overtaken_while_waiting_is_refused_before_its_deadline(
    redis: aioredis.Redis,
) -> None:
    budget = Budget(RateLimiter(redis, 2), aging_seconds=60.0, call_seconds=0.0)
    sent: list[str] = []
    replies = _recorder(budget, sent, "reply", Priority.REPLY)
    notes = _recorder(budget, sent, "note", Priority.RECORD)
    try:
        first = asyncio.create_task(replies.submit(0))
        await first  # the budget is now busy for half a second
        call_deadline.set(time.monotonic() + 1.2)
        note = asyncio.create_task(notes.submit(1))
        call_deadline.set(None)
        await asyncio.sleep(0)
        # Replies arriving after the note go first and push it past its deadline.
        overtaking = [asyncio.create_task(replies.submit(n)) for n in range(1, 6)]
        with pytest.raises(BudgetBusy):
            await note
        await asyncio.gather(*overtaking)
    finally:
        await budget.aclose()
    assert "note" not in sent
