"""Performance reports end to end (issue 23): conversations through the sandbox and the
stand-in, then `GET /reports` by vendedor, pipeline, stage and day, as JSON and CSV, in
BRIDGE_TIMEZONE, against what the script did."""

from __future__ import annotations

import csv
import io
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for

TIMEZONE = "America/Manaus"  # UTC-4: not UTC, nor the default
PIPELINE = "8100001"
# Seeded leads and their responsible users (sandbox/kommo/seed.py).
# 9100001 and 9100008 are 10000002's, 9100002 is 10000003's, 9100003 10000004's,
# 9100004 10000005's.
TAKEN_BY_A_PERSON, TAKEN_THROUGH_THE_API, TWO_MESSAGES = 9100001, 9100002, 9100008
HANDED_OFF_BY_THE_AI, STARTED_BY_A_FORM = 9100003, 9100004


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "reports",
        env={
            "MESSAGE_DEBOUNCE_SECONDS": "0.3",
            "BRIDGE_TIMEZONE": TIMEZONE,
            "PROACTIVE_HOURS": "00:00-24:00",
            "PROACTIVE_DAYS": "mon-sun",
            # A replica killed with work in hand: its partitions and leases are taken
            # over within seconds.
            "VISIBILITY_TIMEOUT_SECONDS": "2",
            "WORK_LEASE_SECONDS": "4",
        },
        scale={"conversation": 2},
    ) as running:
        yield running


def bot_replies(http: httpx.Client, stack: Stack, lead: int) -> int:
    return sum(
        1
        for m in chat(http, stack, lead)
        if m["direction"] == "outgoing" and m["author_type"] == "bot"
    )


def converse(http: httpx.Client, stack: Stack, lead: int, text: str) -> dict[str, Any]:
    """The customer writes and the bot answers; what the sandbox sent the bridge."""
    before = bot_replies(http, stack, lead)
    sent = customer_writes(http, stack, lead, text)
    wait_for(lambda: bot_replies(http, stack, lead) > before, what=f"a reply to {text!r}")
    return sent


def bot_state(api: httpx.Client, lead: int) -> str:
    """The lead's bot state; "" while it has no conversation yet."""
    answer = api.post("/bot-control", json={"action": "status", "lead_id": lead})
    return "" if answer.status_code == 404 else str(answer.json()["bot_state"])


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["group"]: row for row in report["rows"]}


def test_a_day_of_conversations_is_reported_by_vendedor_pipeline_stage_and_day(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    # A conversation a person takes over by replying in Kommo.
    converse(http, stack, TAKEN_BY_A_PERSON, "Olá, quero saber da aposentadoria")
    answer = http.post(
        f"{stack.sandbox_url}/_sandbox/user-message",
        json={"lead_id": TAKEN_BY_A_PERSON, "user_id": 10000002, "text": "Oi! Sou a Bruna."},
    )
    assert answer.status_code == 200
    wait_for(lambda: bot_state(api, TAKEN_BY_A_PERSON) == "paused", what="the takeover")
    # One taken over through the API.
    converse(http, stack, TAKEN_THROUGH_THE_API, "bom dia")
    paused = api.post("/bot-control", json={"action": "pause", "lead_id": TAKEN_THROUGH_THE_API})
    assert paused.json()["bot_state"] == "paused"
    # One with two turns (the first message of a new conversation is counted once its
    # turn knows whose the conversation is).
    converse(http, stack, TWO_MESSAGES, "boa tarde")
    second = converse(http, stack, TWO_MESSAGES, "e o INSS?")
    # Kommo delivers that webhook twice more: counted once.
    for _ in range(2):
        assert httpx.post(stack.webhook_url, content=second["body"]).status_code == 200
    # One the AI hands to a person.
    config = f"{stack.standin_url}/_standin/config"
    http.post(config, json={"handoff": True}).raise_for_status()
    try:
        converse(http, stack, HANDED_OFF_BY_THE_AI, "quero falar com um advogado")
    finally:
        http.post(config, json={"handoff": False}).raise_for_status()
    wait_for(lambda: bot_state(api, HANDED_OFF_BY_THE_AI) == "paused", what="the handoff")
    # An agendamento of 10000003's lead, confirmed (n8n says so twice: counted once).
    slot = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    asked = api.post(
        "/agendamento/request", json={"lead_id": TAKEN_THROUGH_THE_API, "requested_at": slot}
    )
    assert asked.status_code == 201, asked.text
    for _ in range(2):
        confirmed = api.post(
            f"/agendamento/{asked.json()['id']}/status", json={"status": "confirmed"}
        )
        assert confirmed.status_code == 200, confirmed.text
    # One a proactive trigger opened.
    started = api.post("/start-proactive", json={"lead_id": STARTED_BY_A_FORM, "trigger": "form"})
    assert started.status_code == 201, started.text
    wait_for(lambda: bot_replies(http, stack, STARTED_BY_A_FORM) == 1, what="its first message")

    def counted() -> dict[str, Any] | None:
        report: dict[str, Any] = api.get("/reports", params={"group_by": "vendedor"}).json()
        counted = rows(report)
        ready = counted.get("10000003", {}).get("takeovers_api")
        return report if ready and counted.get("10000005", {}).get("bot_messages") else None

    by_vendedor = wait_for(counted, what="the report")
    today = datetime.now(ZoneInfo(TIMEZONE)).date().isoformat()
    assert by_vendedor["timezone"] == TIMEZONE and by_vendedor["to"] == today
    bruno, carla = rows(by_vendedor)["10000002"], rows(by_vendedor)["10000003"]
    assert bruno["conversations_started"] == 2
    assert bruno["customer_messages"] == 3
    assert bruno["bot_messages"] == 3 and bruno["replies"] == 3
    assert bruno["human_messages"] == 1 and bruno["takeovers_human"] == 1
    assert bruno["takeovers_api"] == 0
    assert carla["conversations_started"] == 1 and carla["customer_messages"] == 1
    assert carla["bot_messages"] == 1 and carla["takeovers_api"] == 1
    assert carla["takeovers_human"] == 0
    assert (carla["agendamentos_requested"], carla["agendamentos_confirmed"]) == (1, 1)
    assert bruno["agendamentos_requested"] == 0 and by_vendedor["incomplete"] == []
    assert 0 < bruno["reply_p50_seconds"] <= bruno["reply_p90_seconds"] < 10
    # n8n (the stand-in) answers within the reply's time.
    assert 0 < bruno["n8n_answer_p50_seconds"] <= bruno["reply_p50_seconds"]
    assert rows(by_vendedor)["10000005"]["conversations_started"] == 1
    assert rows(by_vendedor)["10000005"]["bot_messages"] == 1  # n8n's first message
    dani = rows(by_vendedor)["10000004"]
    assert (dani["conversations_started"], dani["customer_messages"]) == (1, 1)
    assert (dani["handoffs_ai"], dani["bot_messages"]) == (1, 1)
    assert set(rows(by_vendedor)) == {"10000002", "10000003", "10000004", "10000005"}
    by_trigger = api.get("/reports", params={"group_by": "trigger"}).json()
    assert rows(by_trigger)["form"]["conversations_started"] == 1
    assert rows(by_trigger)["-"]["conversations_started"] == 4

    total = by_vendedor["total"]
    assert (total["conversations_started"], total["customer_messages"]) == (5, 5)
    assert total["handoffs_ai"] == 1
    by_pipeline = api.get("/reports", params={"group_by": "pipeline"}).json()
    assert list(rows(by_pipeline)) == [PIPELINE]
    assert {k: v for k, v in rows(by_pipeline)[PIPELINE].items() if k != "group"} == {
        k: v for k, v in total.items() if k != "group"
    }
    by_day = api.get("/reports", params={"group_by": "day", "from": today, "to": today}).json()
    assert list(rows(by_day)) == [today]
    assert rows(by_day)[today]["customer_messages"] == 5
    by_stage = api.get("/reports", params={"group_by": "stage"}).json()
    assert all(group.startswith(f"{PIPELINE}:") for group in rows(by_stage))
    assert sum(r["customer_messages"] for r in by_stage["rows"]) == 5

    # Filtered: one vendedor's pipelines.
    one = api.get("/reports", params={"group_by": "pipeline", "vendedor": "10000003"}).json()
    assert rows(one)[PIPELINE]["customer_messages"] == 1
    assert one["total"]["takeovers_api"] == 1

    # The CSV carries the same numbers, as numbers.
    answer = api.get("/reports", params={"group_by": "vendedor", "format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["vendedor"] for r in table] == [r["group"] for r in by_vendedor["rows"]]
    for line in table:
        row = rows(by_vendedor)[line["vendedor"]]
        assert int(line["customer_messages"]) == row["customer_messages"]
        assert int(line["takeovers_api"]) == row["takeovers_api"]
        assert float(line["reply_p50_seconds"]) == pytest.approx(row["reply_p50_seconds"])

    # Bad requests say what is wrong.
    for params in (
        {"group_by": "year"},
        {"from": "2026-02-30"},
        {"from": today, "to": "2020-01-01"},
        {"from": "2024-01-01", "to": today},
    ):
        refused = api.get("/reports", params=params)
        assert refused.status_code == 400, params
        assert refused.json()["error"], params


def test_a_replica_killed_mid_way_neither_loses_nor_doubles_a_count(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    """Runs after the day above: its counts plus these, exactly."""
    before = api.get("/reports").json()["total"]
    leads = list(range(9100010, 9100016))
    victim = stack.services["conversation"][0]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda lead: customer_writes(http, stack, lead, f"antes {lead}"), leads))
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(5)

    def kommo_delivers(lead: int) -> None:
        # Kommo retries a webhook that was not acknowledged: so does this.
        sent = customer_writes(http, stack, lead, f"durante {lead}")
        while sent["bridge_status"] != 200:
            time.sleep(0.5)
            sent["bridge_status"] = httpx.post(stack.webhook_url, content=sent["body"]).status_code

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(kommo_delivers, leads))

    def answered() -> bool:
        return all(bot_replies(http, stack, lead) >= 1 for lead in leads)

    wait_for(answered, timeout=40, what="a reply to every customer")
    wait_for(
        lambda: (
            api.get("/reports").json()["total"]["customer_messages"] - before["customer_messages"]
            >= 2 * len(leads)
        ),
        timeout=20,
        what="every message counted",
    )

    def every_reply_counted() -> bool:
        # Every reply the customers got, counted once (the two messages of a lead may
        # have gone to n8n as one turn).
        sent = api.get("/reports").json()["total"]["bot_messages"] - before["bot_messages"]
        return bool(sent == sum(bot_replies(http, stack, lead) for lead in leads))

    wait_for(every_reply_counted, timeout=20, what="every reply counted")
    time.sleep(3)  # a count made twice would show by now
    assert every_reply_counted()
    after = api.get("/reports").json()["total"]
    assert after["customer_messages"] - before["customer_messages"] == 2 * len(leads)
    assert after["conversations_started"] - before["conversations_started"] == len(leads)
