"""Many conversations at once, over three conversation replicas: a slow n8n holds none of
them up, each conversation keeps its order, a reply waiting for Kommo delays no envelope,
and the work of a replica killed mid-way is finished once by a live one."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from devstack.stack import Stack
from services.kommo_gateway.store import lead_slot_key
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for

CUSTOMERS = 20
VENDEDOR_USER = 10000003  # an active vendedor of the sandbox's seed


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Kommo's budget is not what these tests measure: the sandbox lets every call through.
    with isolated_stack(
        tmp_path_factory,
        "concurrency",
        env={"KOMMO_RATE_LIMIT_RPS": "1000", "WORK_LEASE_SECONDS": "6"},
        scale={"conversation": 3},
        sandbox_env={"SANDBOX_RATE_LIMIT_RPS": "1000", "SANDBOX_ECHO_DELAY": "0.05"},
    ) as stack:
        yield stack


@pytest.fixture
def http(many: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as client:
        client.post(f"{many.standin_url}/_standin/config", json={"delay_seconds": 0})
        client.post(f"{many.standin_url}/_standin/reset")
        yield client
    # A fresh connection: the pooled one may have idled past the stand-in's keep-alive and
    # be closed by it just as this request goes ("Server disconnected", seen in CI).
    httpx.post(f"{many.standin_url}/_standin/config", json={"delay_seconds": 0}, timeout=30.0)


def new_leads(http: httpx.Client, stack: Stack, n: int) -> list[int]:
    leads = []
    for i in range(n):
        created = http.post(
            f"{stack.sandbox_url}/_sandbox/lead-event",
            json={"kind": "add", "name": f"Cliente {i}", "responsible_user_id": VENDEDOR_USER},
        )
        created.raise_for_status()
        leads.append(int(created.json()["lead_id"]))
    return leads


def received(http: httpx.Client, stack: Stack) -> list[dict[str, Any]]:
    answer = http.get(f"{stack.standin_url}/_standin/received").json()
    return [r for r in answer["received"] if r["body"].get("event") == "message.received"]


def of_leads(records: list[dict[str, Any]], leads: list[int]) -> list[dict[str, Any]]:
    wanted = set(leads)
    return [r for r in records if r["body"]["conversation"]["lead_id"] in wanted]


def bot_replies(http: httpx.Client, stack: Stack, lead: int) -> list[dict[str, Any]]:
    return [m for m in chat(http, stack, lead) if m["direction"] == "outgoing"]


def replied(http: httpx.Client, stack: Stack, lead: int) -> Callable[[], list[dict[str, Any]]]:
    return lambda: bot_replies(http, stack, lead)


def test_twenty_conversations_with_a_slow_n8n_are_handled_side_by_side(
    many: Stack, http: httpx.Client
) -> None:
    leads = new_leads(http, many, CUSTOMERS)
    http.post(f"{many.standin_url}/_standin/config", json={"delay_seconds": 2})
    for lead in leads:
        customer_writes(http, many, lead, f"oi, sou o lead {lead}")
    records = wait_for(
        lambda: (found := of_leads(received(http, many), leads)) and len(found) >= CUSTOMERS,
        timeout=30,
        what="an envelope of every conversation",
    )
    records = of_leads(received(http, many), leads)
    # Every envelope reached n8n while the others were still open there: none waited for
    # another's answer (one after another, the last would arrive 19 answers later).
    assert {r["body"]["conversation"]["lead_id"] for r in records} == set(leads)
    first_answer = min(r.get("answered_at") or float("inf") for r in records)
    assert max(r["arrived_at"] for r in records) < first_answer
    assert max(r["open_at_arrival"] for r in records) >= CUSTOMERS
    # And every customer got n8n's answer, once.
    for lead in leads:
        wait_for(replied(http, many, lead), timeout=30, what="replies")
    time.sleep(0.5)
    assert all(len(bot_replies(http, many, lead)) == 1 for lead in leads)


def test_interleaved_conversations_over_three_replicas_keep_their_order(
    many: Stack, http: httpx.Client
) -> None:
    leads = new_leads(http, many, CUSTOMERS)
    rounds = 3
    # Each customer's messages back to back (no debounce): consecutive events of one
    # conversation, which replicas reading one shared stream could apply out of order.
    for lead in leads:
        for r in range(rounds):
            customer_writes(http, many, lead, f"{lead} mensagem {r}")

    def said(lead: int) -> list[str]:
        mine = sorted(of_leads(received(http, many), [lead]), key=lambda x: x["arrived_at"])
        return [m["text"] for env in mine for m in env["body"]["messages"]]

    for lead in leads:
        wait_for(lambda: len(said(lead)) >= rounds, timeout=40, what=f"lead {lead}'s messages")  # noqa: B023
    for lead in leads:
        # Each message once, in the order the customer wrote them, across turns.
        assert said(lead) == [f"{lead} mensagem {r}" for r in range(rounds)]


def test_a_reply_stuck_waiting_for_kommo_delays_no_envelope(
    many: Stack, http: httpx.Client
) -> None:
    stuck, *others = new_leads(http, many, 11)
    store = redis.Redis.from_url(many.redis_url)
    # Another reply holds this lead's field in Kommo: the bridge's reply waits for it.
    store.set(lead_slot_key(stuck), "another-reply", px=60_000)
    try:
        customer_writes(http, many, stuck, "oi, minha resposta vai demorar")
        wait_for(lambda: of_leads(received(http, many), [stuck]), timeout=15, what="envelope")
        for lead in others:
            customer_writes(http, many, lead, "oi")
        wait_for(
            lambda: len(of_leads(received(http, many), others)) >= len(others),
            timeout=20,
            what="the other customers' envelopes",
        )
        # Every other envelope went to n8n (and back) while that reply still waited.
        assert bot_replies(http, many, stuck) == []
    finally:
        store.delete(lead_slot_key(stuck))
        store.close()
    wait_for(lambda: bot_replies(http, many, stuck), timeout=40, what="the stuck reply")
    time.sleep(0.5)
    assert len(bot_replies(http, many, stuck)) == 1


def test_work_of_a_killed_replica_is_finished_once_by_a_live_one(
    many: Stack, http: httpx.Client
) -> None:
    leads = new_leads(http, many, 12)
    http.post(f"{many.standin_url}/_standin/config", json={"delay_seconds": 3})
    for lead in leads:
        customer_writes(http, many, lead, "oi")
    wait_for(
        lambda: len(of_leads(received(http, many), leads)) >= len(leads),
        timeout=20,
        what="every envelope open at n8n",
    )
    # Mid-work: every envelope is open at n8n, a third of them held by this replica.
    victim = many.services["conversation"][0]
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        for lead in leads:
            wait_for(
                replied(http, many, lead),
                timeout=max(20 - (time.monotonic() - killed_at), 0.1),
                what=f"lead {lead}'s reply after the kill",
            )
        time.sleep(1.0)
        # Each customer answered exactly once, whoever finished the work.
        assert [len(bot_replies(http, many, lead)) for lead in leads] == [1] * len(leads)
    finally:
        many.restart_service(victim)
