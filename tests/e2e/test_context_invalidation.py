"""A lead or contact edited in Kommo is never answered from an old copy: Kommo's
`update_lead`/`responsible_lead`/`update_contact` webhooks (registered by the bridge) drop
the gateway's Redis copy and every conversation replica's own (CONTEXT_CACHE_SECONDS) before
the webhook is acknowledged, so the customer's next envelope already shows the change,
although both copies would otherwise live far longer."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from devstack.stack import Stack
from services.kommo_gateway.store import TOKENS
from tests.e2e.conftest import chat, customer_writes, envelopes, isolated_stack, wait_for

LEAD = 9100011
CONTACT = 4400011
# Users 10000002 … 10000008 are the sandbox's active vendedores.
VENDEDORES = (10000002, 10000003)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Copies that outlive the test many times over; two replicas of each service, so the
    # next turn may be another replica's (its own copy, or the gateway's shared one).
    with isolated_stack(
        tmp_path_factory,
        "context-invalidation",
        env={"CONTEXT_CACHE_SECONDS": "60", "KOMMO_CACHE_TTL_SECONDS": "3600"},
        scale={"conversation": 2, "kommo_gateway": 2},
    ) as running:
        yield running


def envelope_of(http: httpx.Client, stack: Stack, text: str) -> dict[str, Any]:
    return wait_for(
        lambda: next(
            (e for e in envelopes(http, stack) if any(m["text"] == text for m in e["messages"])),
            None,
        ),
        20,
        f"the envelope of {text!r}",
    )


def answered(http: httpx.Client, stack: Stack, text: str) -> dict[str, Any]:
    """The customer writes `text`; its envelope, once the bot's reply is in the chat (its
    write to the lead's reply field is done)."""
    customer_writes(http, stack, LEAD, text)
    envelope = envelope_of(http, stack, text)
    wait_for(
        lambda: any(
            m["direction"] == "outgoing" and text in m["text"] for m in chat(http, stack, LEAD)
        ),
        20,
        f"the answer to {text!r}",
    )
    return envelope


def kommo_api(http: httpx.Client, stack: Stack, method: str, path: str, body: Any) -> None:
    """A call to the sandbox's Kommo API with the account's token, as any integration or
    Kommo's own UI would make it (waiting out the shared rate limit)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        token = json.loads(client.get(TOKENS) or "{}")["access_token"]
    finally:
        client.close()

    def call() -> httpx.Response | None:
        answer = http.request(
            method,
            f"{stack.sandbox_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        return None if answer.status_code == 429 else answer

    answer = wait_for(call, what=f"{method} {path} within the rate limit")
    assert answer.status_code == 200, answer.text


def acknowledged(http: httpx.Client, stack: Stack, event: str, item: str) -> None:
    """Wait until the bridge acknowledged Kommo's `event` webhook about `item` (e.g.
    `leads[responsible][0][id]=9100011`): by then the copies are dropped."""
    key, value = item.split("=")

    def done() -> bool:
        for sent in http.get(f"{stack.sandbox_url}/_sandbox/webhooks-sent").json():
            body = dict(urllib.parse.parse_qsl(sent["body"]))
            if sent["event"] == event and body.get(key) == value and sent["status"] == 200:
                return True
        return False

    wait_for(done, 10, f"the bridge's answer to {event}")
    # Every replica hears the drop on its Redis channel a moment later.
    time.sleep(0.5)


def test_a_new_responsible_vendedor_is_in_the_very_next_envelope(
    stack: Stack, http: httpx.Client
) -> None:
    first = answered(http, stack, "Oi, quem me atende?")
    before = first["vendedor"]["id"]
    after = next(v for v in VENDEDORES if v != before)
    registered = http.post(
        f"{stack.edge_url}/webhooks/register", headers={"X-API-Key": stack.api_key}
    )
    assert registered.status_code == 200, registered.text
    assert {"update_lead", "responsible_lead"} <= set(registered.json()["events"])

    kommo_api(http, stack, "PATCH", f"/api/v4/leads/{LEAD}", {"responsible_user_id": after})
    acknowledged(http, stack, "responsible_lead", f"leads[responsible][0][id]={LEAD}")

    customer_writes(http, stack, LEAD, "Oi de novo")
    assert envelope_of(http, stack, "Oi de novo")["vendedor"]["id"] == after


def test_an_edited_contact_is_in_the_very_next_envelope(stack: Stack, http: httpx.Client) -> None:
    # The bridge's webhook is registered (above); the bot's reply writes the lead, not the
    # contact, so only the contact's own webhook can drop the contact's copies.
    first = answered(http, stack, "Oi, meu nome mudou")
    assert first["contact"]["id"] == CONTACT
    assert first["contact"]["name"] != "Maria Nova Silva"

    kommo_api(http, stack, "PATCH", f"/api/v4/contacts/{CONTACT}", {"name": "Maria Nova Silva"})
    acknowledged(http, stack, "update_contact", f"contacts[update][0][id]={CONTACT}")

    customer_writes(http, stack, LEAD, "Oi, agora sim")
    assert envelope_of(http, stack, "Oi, agora sim")["contact"]["name"] == "Maria Nova Silva"
