"""Work that keeps failing never loops forever, never breaks the others, and shows.

The poison is written straight into Redis (the events stream, as the ingest path stores
events), past the edge's own validation, so that this holds whatever reaches the queue:
a lead id beyond int64 (10^30) whose turn cannot be built, and an event that cannot be
read at all. Retries are quick here (WORK_RETRY_*), the number of tries is the default.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from devstack.stack import Stack
from services.conversation.store.keys import EVENTS_STREAM
from services.conversation.webhook_events import MessageEvent
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for

HUGE_LEAD = 10**30
GOOD_LEAD = 9100001
FIXED_LEAD = 9100005  # a lead of the sandbox account
MAX_ATTEMPTS = 5  # the default (SPEC: dead-lettered after 5 tries)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "poison",
        env={
            "WORK_RETRY_BASE_SECONDS": "0.05",
            "WORK_RETRY_MAX_SECONDS": "0.2",
            "VISIBILITY_TIMEOUT_SECONDS": "0.6",
            # n8n down is retried for a while (the failing state lasts), then parked.
            "N8N_RETRY_SCHEDULE": "0,1,1,1,1,1,1,1,1,1,1,1",
        },
    ) as running:
        yield running


@pytest.fixture
def store(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def write_event(store: redis.Redis, event: dict[str, Any]) -> None:
    """An event as the ingest path stores it, without going through the edge."""
    store.xadd(EVENTS_STREAM, {"e": json.dumps(event)})


def customer_message(lead_id: int, text: str) -> dict[str, Any]:
    message_id = uuid.uuid4().hex
    return MessageEvent(
        message_id=message_id,
        chat_id=f"chat-{message_id}",
        talk_id=0,
        contact_id=0,
        lead_id=lead_id,
        text=text,
        created_at=int(time.time()),
        direction="incoming",
        author_id="",
        author_type="contact",
        author_name="Cliente",
        origin="waba",
        message_type="text",
        attachment=None,
    ).to_dict()


def dead_letter(api: httpx.Client, kind: str, **match: Any) -> dict[str, Any] | None:
    for letter in api.get("/dead-letters").json()["dead_letters"]:
        if letter["kind"] == kind and all(letter.get(k) == v for k, v in match.items()):
            return dict(letter)
    return None


def bot_replies(http: httpx.Client, stack: Stack, lead: int) -> list[str]:
    return [
        m["text"]
        for m in chat(http, stack, lead)
        if m["direction"] == "outgoing" and m["author_type"] == "bot"
    ]


def health(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.edge_url}/health", headers={"X-API-Key": stack.api_key}, timeout=10)


def test_failing_n8n_deliveries_turn_health_red_until_they_go_through(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    assert health(stack).status_code == 200
    http.post(f"{stack.standin_url}/_standin/config", json={"down": True}).raise_for_status()
    try:
        customer_writes(http, stack, GOOD_LEAD, "Oi, alguém aí?")
        red = wait_for(
            lambda: (answer := health(stack)).status_code == 503 and answer.json(),
            timeout=20,
            what="/health to say the delivery is failing",
        )
        assert red["status"] == "degraded"
        assert red["work"]["failing"] >= 1, red
        assert any("failing" in p for p in red["problems"]), red["problems"]
        assert red["services"]["conversation"] == "SERVING", "nothing is down: work fails"
        board = api.get("/dashboard/data").json()
        assert board["health"]["status"] == "degraded"
        assert any(a["reason"] == "failing" for a in board["attention"]), board["attention"]
    finally:
        http.post(f"{stack.standin_url}/_standin/config", json={"down": False})
    wait_for(
        lambda: bot_replies(http, stack, GOOD_LEAD), timeout=30, what="the reply once n8n is up"
    )
    green = wait_for(
        lambda: (answer := health(stack)).status_code == 200 and answer.json(),
        timeout=20,
        what="/health back to ok",
    )
    assert green["status"] == "ok"
    assert green["work"] == {
        "failing": 0,
        "dead_letters": 0,
        "dead_letters_recent": 0,
        "recent_seconds": 86400.0,
    }


def test_a_poison_turn_is_parked_after_five_tries_and_the_others_go_on(
    stack: Stack, http: httpx.Client, api: httpx.Client, store: redis.Redis
) -> None:
    write_event(store, customer_message(HUGE_LEAD, "Oi, id enorme"))
    letter = wait_for(lambda: dead_letter(api, "turn"), timeout=30, what="the poison turn parked")
    assert letter["attempts"] == MAX_ATTEMPTS
    assert letter["last_error"].startswith("ValueError"), letter
    assert "Traceback" not in letter["last_error"]
    conversation_id = letter["conversation_id"]
    assert letter["id"] == f"turn:{conversation_id}"

    # Parked, it is tried no more; meanwhile the others are served.
    customer_writes(http, stack, GOOD_LEAD + 1, "Oi, quero saber dos planos")
    wait_for(lambda: bot_replies(http, stack, GOOD_LEAD + 1), timeout=20, what="another customer")

    # One bad record never breaks a listing, the stats or the dashboard.
    active = api.get("/conversations/active")
    assert active.status_code == 200, active.text
    assert active.json()["skipped"] == 1
    assert GOOD_LEAD + 1 in [c["lead_id"] for c in active.json()["conversations"]]
    assert api.get("/stats?hours=1").status_code == 200
    assert api.get("/debug/conversations").status_code == 200
    board = api.get("/dashboard/data").json()
    flagged = {a["conversation_id"]: a for a in board["attention"]}
    assert flagged[conversation_id]["reason"] == "dead_letter"
    assert "ValueError" in flagged[conversation_id]["detail"]

    # A recent dead letter keeps health red, for people to look.
    red = health(stack)
    assert red.status_code == 503
    assert red.json()["work"]["dead_letters_recent"] >= 1

    # One ERROR line per try, the traceback with the first only.
    lines = [
        json.loads(line)
        for path in stack.config.log_dir.glob("conversation*.log")
        for line in path.read_text().splitlines()
        if conversation_id in line and line.startswith("{")
    ]
    failures = [x for x in lines if x.get("work") == "turn" and x["level"] == "error"]
    assert [x["attempt"] for x in failures] == list(range(1, MAX_ATTEMPTS + 1))
    assert sum(1 for x in failures if "exc" in x) == 1

    # Fixed by hand, replayed, it goes through: no longer a dead letter, health green.
    store.hset(f"conv:c:{conversation_id}", "lead_id", FIXED_LEAD)
    replayed = api.post(f"/dead-letters/{letter['id']}/replay")
    assert replayed.status_code == 200, replayed.text
    wait_for(lambda: bot_replies(http, stack, FIXED_LEAD), timeout=20, what="the replayed turn")
    wait_for(lambda: dead_letter(api, "turn") is None, what="the dead letter gone")
    assert api.post(f"/dead-letters/{letter['id']}/replay").status_code == 404


def test_an_unreadable_event_is_parked_with_its_reason_and_can_be_replayed(
    stack: Stack, api: httpx.Client, store: redis.Redis
) -> None:
    write_event(store, {"kind": "message", "not": "an event"})
    letter = wait_for(lambda: dead_letter(api, "event"), timeout=30, what="the event parked")
    assert letter["attempts"] == MAX_ATTEMPTS
    assert letter["last_error"].startswith("TypeError"), letter
    assert store.xlen(EVENTS_STREAM) == 0, "parked events leave the stream"
    assert api.post(f"/dead-letters/{letter['id']}/replay").status_code == 200
    # Still unreadable: back on the stream, tried again, parked again.
    again = wait_for(
        lambda: (d := dead_letter(api, "event")) and d["id"] != letter["id"] and d,
        timeout=30,
        what="the replayed event parked again",
    )
    assert again["attempts"] == MAX_ATTEMPTS
