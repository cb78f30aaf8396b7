"""Batching across gateway replicas: replicas sharing one real Redis (each with its own
connections, Budget and Handoff), the holder of the dispatch lease sending every
replica's list calls, against the Kommo sandbox (in-process) or a recording Kommo."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from devstack.processes import ROOT
from sandbox.kommo import sandbox_of
from sandbox.kommo.runtime import Sandbox
from services.common.errors import NotFound, Unavailable
from services.kommo_gateway.coalescer import Coalescer, Outcome
from services.kommo_gateway.handoff import Handoff
from services.kommo_gateway.kommo_client import KommoClient
from services.kommo_gateway.ratelimit import (
    Budget,
    BudgetBusy,
    Departure,
    Priority,
    RateLimiter,
    call_deadline,
)
from services.kommo_gateway.store import (
    BATCH_INFLIGHT,
    BATCH_KEEP_SECONDS,
    BATCH_LEASE,
    BATCH_QUEUE,
)
from services.kommo_gateway.tokens import TokenManager
from tests.integration.sandbox_kommo import gateway_settings, sandbox_app

FIRST_LEAD = 9100001
UNKNOWN_LEAD = 9199999
# Short, so that a dead holder is replaced quickly; renewed every 0.2 s.
LEASE_SECONDS = 0.6
# Bounds a wait that would otherwise hang the test if the behaviour were broken.
LIVENESS_SECONDS = 30.0


async def _settled(calls: Sequence[Awaitable[Any]]) -> list[object]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + LIVENESS_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# Replicas of the whole gateway client against one sandbox.


@dataclass
class Gateway:
    replicas: list[KommoClient]
    handoffs: list[Handoff]
    limiter: RateLimiter
    sandbox: Sandbox

    def calls(self, path: str) -> int:
        return int(self.sandbox.stats()["by_path"].get(path, 0))

    async def budget_taken_for_a_second(self) -> None:
        """The next departure is a second away (1 request a second): whatever is handed
        over meanwhile waits for it."""
        await (await self.limiter.acquire()).settle()


@pytest.fixture
async def gateway(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Gateway]:
    app = sandbox_app()
    settings = gateway_settings(redis_url, 1)
    closing: list[Callable[[], Awaitable[None]]] = []
    replicas: list[KommoClient] = []
    handoffs: list[Handoff] = []
    for _ in range(3):
        own_redis = aioredis.Redis.from_url(redis_url)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        limiter = RateLimiter(own_redis, settings.kommo_rate_limit_rps)
        budget = Budget(limiter, aging_seconds=2.0, call_seconds=0.5)
        tokens = TokenManager(settings, own_redis, http, limiter)
        handoff = Handoff(own_redis, LEASE_SECONDS)
        kommo = KommoClient(settings, http, tokens, limiter, budget, handoff)
        await tokens.bootstrap()
        # The first replica takes the dispatch lease; the others hand their calls over.
        await handoff.ready()
        replicas.append(kommo)
        handoffs.append(handoff)
        closing += [kommo.aclose, handoff.aclose, budget.aclose, http.aclose, own_redis.aclose]
    try:
        yield Gateway(replicas, handoffs, RateLimiter(redis, 1), sandbox_of(app))
    finally:
        for close in closing:
            await close()
        await sandbox_of(app).aclose()


async def test_reads_on_three_replicas_leave_in_one_list_call_each_with_its_own_answer(
    gateway: Gateway, redis: aioredis.Redis
) -> None:
    assert [h.holds for h in gateway.handoffs] == [True, False, False]
    await gateway.budget_taken_for_a_second()
    ids = [FIRST_LEAD + n % 10 for n in range(30)] + [UNKNOWN_LEAD]
    answers = await _settled(
        [gateway.replicas[n % 3].lead(lead_id) for n, lead_id in enumerate(ids)]
    )
    for lead_id, answer in zip(ids[:-1], answers[:-1], strict=True):
        assert isinstance(answer, dict) and answer["id"] == lead_id
        assert answer["_embedded"]["contacts"], "read with its contacts"
    assert isinstance(answers[-1], NotFound) and str(UNKNOWN_LEAD) in str(answers[-1])
    assert gateway.calls("/api/v4/leads") == 1
    keys = [key async for key in redis.scan_iter("gw:batch*")]
    assert keys, "the hand-off went through Redis"
    for key in keys:
        assert 0 < await redis.pttl(key) <= BATCH_KEEP_SECONDS * 1000, key


async def test_a_note_kommo_refuses_fails_alone_and_the_others_are_written_once(
    gateway: Gateway,
) -> None:
    await gateway.budget_taken_for_a_second()
    leads = [FIRST_LEAD + n for n in range(8)]
    calls = [gateway.replicas[n % 3].add_note(i, f"nota {i}") for n, i in enumerate(leads)]
    calls.insert(4, gateway.replicas[2].add_note(UNKNOWN_LEAD, "perdida"))
    answers = await _settled(calls)
    refused = answers.pop(4)
    assert isinstance(refused, NotFound) and str(UNKNOWN_LEAD) in str(refused)
    assert all(isinstance(a, int) and a > 0 for a in answers), answers
    assert len(set(answers)) == len(leads)
    written = [(n.entity_id, n.params["text"]) for n in gateway.sandbox.state.notes]
    assert sorted(written) == [(i, f"nota {i}") for i in leads]
    # All in one request, which Kommo refused for the unknown lead; the others again.
    assert gateway.calls("/api/v4/leads/notes") == 2


# Replicas of the batching alone, with a recording Kommo.


@dataclass
class Replica:
    redis: aioredis.Redis
    handoff: Handoff
    budget: Budget
    coalescers: list[Coalescer[Any, Any]] = field(default_factory=list)

    def coalescer(
        self, kind: str, priority: Priority, send: Callable[..., Awaitable[list[Outcome[Any]]]]
    ) -> Coalescer[Any, Any]:
        coalescer: Coalescer[Any, Any] = Coalescer(
            kind, self.budget, 1, priority, send, handoff=self.handoff
        )
        self.coalescers.append(coalescer)
        return coalescer

    async def aclose(self) -> None:
        for coalescer in self.coalescers:
            await coalescer.aclose()
        await self.handoff.aclose()
        await self.budget.aclose()
        await self.redis.aclose()


@asynccontextmanager
async def _replicas(
    redis_url: str, count: int, per_second: int = 20, call_seconds: float = 0.0
) -> AsyncIterator[list[Replica]]:
    replicas = []
    for _ in range(count):
        own_redis = aioredis.Redis.from_url(redis_url)
        budget = Budget(RateLimiter(own_redis, per_second), 60.0, call_seconds)
        replicas.append(Replica(own_redis, Handoff(own_redis, LEASE_SECONDS), budget))
    try:
        yield replicas
    finally:
        for replica in replicas:
            await replica.aclose()


def _recorder(
    sent: list[tuple[str, list[Any]]], kind: str, gate: asyncio.Event | None = None
) -> Callable[[list[Any], Departure], Awaitable[list[Outcome[Any]]]]:
    """A Kommo that records each batch (after `gate` opens, when given) and answers each
    item with itself."""

    async def send(batch: list[Any], departure: Departure) -> list[Outcome[Any]]:
        await departure.settle()
        sent.append((kind, batch))
        if gate is not None:
            await gate.wait()
        return list(batch)

    return send


async def test_a_call_is_refused_at_once_counting_the_callers_queued_on_every_replica(
    redis: aioredis.Redis, redis_url: str
) -> None:
    sent: list[tuple[str, list[Any]]] = []
    gate = asyncio.Event()
    async with _replicas(redis_url, 3, per_second=2) as replicas:
        replies = [
            r.coalescer("reply", Priority.REPLY, _recorder(sent, "reply", gate)) for r in replicas
        ]
        notes = [r.coalescer("note", Priority.RECORD, _recorder(sent, "note")) for r in replicas]
        for replica in replicas:
            await replica.handoff.ready()
        # Six replies queued on the first two replicas, none on the third.
        ahead = [asyncio.create_task(replies[n % 2].submit(n)) for n in range(6)]
        await _eventually(
            lambda: _equals(redis.scard(BATCH_INFLIGHT), 3), "the handed-over replies"
        )
        call_deadline.set(time.monotonic() + 1.0)
        try:
            with pytest.raises(BudgetBusy) as refused:
                await notes[2].submit(1)
        finally:
            call_deadline.set(None)
        # Counted from the replies ahead (2 a second), not from the third replica's
        # empty queue (which would say 1 s).
        assert refused.value.retry_after_seconds >= 2
        gate.set()
        assert await asyncio.gather(*ahead) == list(range(6))
    assert [kind for kind, _ in sent] == ["reply"] * 6


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_caller_that_gives_up_before_its_item_is_pulled_takes_it_back(
    redis: aioredis.Redis, redis_url: str
) -> None:
    sent: list[tuple[str, list[Any]]] = []
    # A holder that pulls nothing any more and whose lease has not run out yet.
    await redis.set(BATCH_LEASE, "a replica that stopped", px=60_000)
    async with _replicas(redis_url, 1, call_seconds=0.2) as (replica,):
        notes = replica.coalescer("note", Priority.RECORD, _recorder(sent, "note"))
        await replica.handoff.ready()
        assert not replica.handoff.holds
        call_deadline.set(time.monotonic() + 0.5)
        try:
            with pytest.raises(BudgetBusy):
                await notes.submit(1)
        finally:
            call_deadline.set(None)
        assert await redis.llen(BATCH_QUEUE) == 0
        await redis.delete(BATCH_LEASE)
        await _eventually(_async(lambda: replica.handoff.holds), "the lease taken")
        assert await notes.submit(2) == 2
    assert sent == [("note", [2])], "the item taken back never left"


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


async def test_a_caller_whose_item_was_pulled_waits_its_call_share_then_gets_unavailable(
    redis: aioredis.Redis, redis_url: str
) -> None:
    sent: list[tuple[str, list[Any]]] = []
    gate = asyncio.Event()
    async with _replicas(redis_url, 2, call_seconds=0.3) as replicas:
        notes = [
            r.coalescer("note", Priority.RECORD, _recorder(sent, "note", gate)) for r in replicas
        ]
        await replicas[0].handoff.ready()
        await replicas[1].handoff.ready()
        call_deadline.set(time.monotonic() + 0.8)
        try:
            with pytest.raises(Unavailable, match="outcome unknown"):
                await notes[1].submit(1)
        finally:
            call_deadline.set(None)
        assert sent == [("note", [1])], "pulled and sent once"
        gate.set()


async def test_a_holder_killed_mid_batch_is_replaced_and_its_callers_get_unavailable(
    redis: aioredis.Redis, redis_url: str
) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.hung_dispatcher",
        redis_url,
        "Salesbot run",
        str(LEASE_SECONDS),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    sent: list[tuple[str, list[Any]]] = []
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), LIVENESS_SECONDS)
        assert line == b"holding\n"
        async with _replicas(redis_url, 1) as (replica,):
            runs = replica.coalescer("Salesbot run", Priority.REPLY, _recorder(sent, "run"))
            await replica.handoff.ready()
            assert not replica.handoff.holds
            leads = [FIRST_LEAD + n for n in range(5)]
            # No deadline: only the replica taking over can answer them.
            calls = [asyncio.create_task(runs.submit((7, lead))) for lead in leads]
            sending: list[int] = []
            while len(sending) < len(leads):
                batch = await asyncio.wait_for(holder.stdout.readline(), LIVENESS_SECONDS)
                sending += [lead for _, lead in json.loads(batch)]
            assert sorted(sending) == leads
            holder.kill()
            await holder.wait()
            answers = await asyncio.wait_for(_settled(calls), LIVENESS_SECONDS)
            assert all(isinstance(a, Unavailable) for a in answers), answers
            await _eventually(_async(lambda: replica.handoff.holds), "the lease taken over")
            assert await runs.submit((7, UNKNOWN_LEAD)) == (7, UNKNOWN_LEAD)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    # The runs the dead holder may have sent are never sent again.
    assert sent == [("run", [(7, UNKNOWN_LEAD)])]
