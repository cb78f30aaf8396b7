"""LGPD through real processes: a conversation built by the real flow (a customer writes
in the sandbox, n8n answers, Kommo delivers, the echo comes back), an agendamento for the
lead, then DELETE /leads/{id}/data — and a SCAN of every key in Redis, values included,
finds nothing of that lead: not its id, its conversation's, its contact's, its chat's,
its phone nor any message text. Only the webhook dedupe markers (Kommo message ids)
stay, by design."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from devstack.stack import Stack
from services.conversation.settings import ConversationSettings
from services.conversation.store.keys import event_streams
from tests.e2e.conftest import (
    chat,
    customer_writes,
    envelopes,
    isolated_stack,
    lead_snapshot,
    wait_for,
)
from tests.integration.test_retention import leftovers

EVENT_PARTITIONS = ConversationSettings.model_fields["event_partitions"].default

LEAD = 9100001


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A Redis of its own: the scan must see only this test's data.
    with isolated_stack(tmp_path_factory, "erase", sandbox_env={"SANDBOX_ECHO_DELAY": "0.1"}) as s:
        yield s


def _api(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=30)


def _settled(client: redis.Redis, conversation_id: str, echoes: list[str]) -> bool:
    """The customer's message applied, the bot's echoes taken in (the ingest recognises
    the echo of the bridge's own send and keeps nothing of it but its dedupe marker), and
    no work left queued."""
    return (
        client.scard(f"conv:c:{conversation_id}:applied") >= 1
        and all(client.exists(f"conv:seen:{message_id}") for message_id in echoes)
        and not any(client.xlen(s) for s in event_streams(EVENT_PARTITIONS))
        and all(
            client.zcard(q) == 0
            for q in ("conv:replies:due", "conv:notify:due", "conv:outbox:due", "sched:outbox:due")
        )
    )


def test_erasing_a_lead_leaves_nothing_of_it_in_redis(own_stack: Stack) -> None:
    stack = own_stack
    client = redis.Redis.from_url(stack.redis_url)
    text = "Oi, meu CPF é 123 e quero revisar a aposentadoria"
    with httpx.Client(timeout=10) as http, _api(stack) as api:
        customer_writes(http, stack, LEAD, text)
        envelope: dict[str, Any] = wait_for(
            lambda: next(
                (
                    e
                    for e in envelopes(http, stack)
                    if any(m.get("text") == text for m in e["messages"])
                ),
                None,
            ),
            what="envelope at n8n",
        )
        replies = wait_for(
            lambda: [m for m in chat(http, stack, LEAD) if m["direction"] == "outgoing"],
            what="the bot's reply in the chat",
        )
        conversation_id = envelope["conversation"]["id"]
        contact_id = envelope["contact"]["id"]
        chat_id = envelope["conversation"]["chat_id"]
        agendamento = api.post(
            "/agendamento/request", json={"lead_id": LEAD, "preference": "terça à tarde"}
        )
        assert agendamento.status_code in (200, 201), agendamento.text
        wait_for(
            lambda: _settled(client, conversation_id, [m["id"] for m in replies]),
            timeout=20,
            what="work settled",
        )
        cached = client.get(f"gw:cache:contact:{contact_id}")
        assert cached, "the gateway holds a copy of the contact"
        phone = json.loads(cached)["body"]["custom_fields_values"][0]["values"][0]["value"]
        # Added by the gateway after the delivery answered (notes kept a moment go together).
        wait_for(
            lambda: lead_snapshot(http, stack, LEAD)["notes"], what="the reply noted on the lead"
        )

        needles = (
            str(LEAD),
            conversation_id,
            str(contact_id),
            chat_id,
            phone,
            phone.lstrip("+"),
            text,
            replies[0]["text"],
        )
        assert leftovers(client, *needles), "the flow stored the lead's data"

        answer = api.delete(f"/leads/{LEAD}/data")
        assert answer.status_code == 200, answer.text
        erased = answer.json()
        assert erased["lead_id"] == LEAD
        assert erased["conversations"] == 1
        assert erased["erased"]["conversation"]["messages"] >= 2
        assert erased["erased"]["scheduling"]["requests"] == 1
        assert erased["erased"]["kommo_gateway"]["cached_leads"] == 1
        assert erased["erased"]["kommo_gateway"]["cached_contacts"] == 1

        assert leftovers(client, *needles) == {}
        listed = api.get("/conversations/active", params={"lead_id": LEAD}).json()
        assert listed["conversations"] == []
        # Idempotent: the same erase again finds nothing and says so.
        again = api.delete(f"/leads/{LEAD}/data")
        assert again.status_code == 200
        assert again.json()["conversations"] == 0
        assert all(not any(kinds.values()) for kinds in again.json()["erased"].values())
        # In the same shape as the first: every service, every kind, each counted.
        assert {service: set(kinds) for service, kinds in again.json()["erased"].items()} == {
            service: set(kinds) for service, kinds in erased["erased"].items()
        }
        assert set(erased["erased"]["conversation"]) >= {
            "conversations", "messages", "keys", "queued_work", "failure_records",
            "webhook_events",
        }  # fmt: skip


def test_erase_needs_the_api_key_and_a_kommo_id(own_stack: Stack) -> None:
    with httpx.Client(base_url=own_stack.edge_url, timeout=10) as http:
        assert http.delete(f"/leads/{LEAD}/data").status_code == 401
        assert http.delete(f"/contacts/{LEAD}/data").status_code == 401
    with _api(own_stack) as api:
        assert api.delete("/leads/0/data").status_code == 422
        assert api.delete("/contacts/abc/data").status_code == 422
