"""Vendedores through the edge: synced from a large Kommo account, custom ones kept
across restarts, lookups by lead, contact and conversation, and answers from the cache
while Kommo is down."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import customer_writes, envelopes, isolated_stack, wait_for

USERS = 600  # three pages of 250


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "vendedores",
        env={"VENDEDOR_FALLBACK": "round_robin", "KOMMO_RATE_LIMIT_RPS": "20"},
        sandbox_env={"SANDBOX_USERS": str(USERS), "SANDBOX_RATE_LIMIT_RPS": "20"},
    ) as running:
        yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}, timeout=30
    ) as client:
        yield client


def _by_id(listing: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {v["id"]: v for v in listing["vendedores"]}


def test_every_page_of_kommo_users_is_synced(stack: Stack, api: httpx.Client) -> None:
    report = api.post("/vendedores/sincronizar").json()
    assert report["total"] >= USERS
    real = api.get("/vendedores/reais").json()
    assert real["total"] == USERS
    assert real["age_seconds"] is not None and real["age_seconds"] < 60
    users = _by_id(real)
    assert users[10000001]["is_admin"] is True
    assert users[10000000 + USERS]["active"] is False
    assert all(v["source"] == "kommo" for v in users.values())
    assert api.post("/sincronizar/vendedores").json()["added"] == 0, "the alias syncs too"


def test_a_user_deactivated_or_removed_in_kommo_is_kept_but_inactive(
    stack: Stack, api: httpx.Client
) -> None:
    with httpx.Client(base_url=stack.sandbox_url, timeout=10) as sandbox:
        sandbox.patch("/_sandbox/users/10000003", json={"is_active": False}).raise_for_status()
        sandbox.delete("/_sandbox/users/10000004").raise_for_status()
    report = api.post("/vendedores/sincronizar").json()
    assert report["deactivated"] == 2
    users = _by_id(api.get("/vendedores").json())
    assert users[10000003]["active"] is False
    assert users[10000004]["active"] is False, "history stays; no new work"


def test_custom_vendedores_are_validated_and_survive_a_restart(
    stack: Stack, api: httpx.Client
) -> None:
    bad = api.post("/vendedores/adicionar", json={"name": "Sem Contato"})
    assert bad.status_code == 400
    assert "email or a phone" in bad.json()["error"]
    assert api.post("/vendedores/adicionar", json={"email": "x@y.com"}).status_code == 422
    created = api.post(
        "/vendedores/adicionar",
        json={"name": "Joana Prado", "phone": "(11) 91234-5678", "areas": ["Previdenciário"]},
    )
    assert created.status_code == 201, created.text
    joana = created.json()
    assert joana["source"] == "custom"
    assert joana["phone"] == "+5511912345678"
    assert joana["areas"] == ["previdenciario"]

    old = stack.services["vendedor"][0]
    old.signal(signal.SIGTERM)
    assert old.popen.wait(10) == 0
    stack.restart_service(old)
    custom = api.get("/vendedores").json()["vendedores"]
    assert [v["name"] for v in custom if v["source"] == "custom"] == ["Joana Prado"]


def test_areas_are_editable(stack: Stack, api: httpx.Client) -> None:
    updated = api.put("/vendedores/10000005/areas", json={"areas": ["Trabalhista", "BPC LOAS"]})
    assert updated.status_code == 200
    assert updated.json()["areas"] == ["bpc-loas", "trabalhista"]
    assert api.put("/vendedores/123/areas", json={"areas": []}).status_code == 404


def test_the_dynamic_list_merges_real_and_custom_real_winning(
    stack: Stack, api: httpx.Client
) -> None:
    real_email = _by_id(api.get("/vendedores/reais").json())[10000006]["email"]
    api.post("/vendedores/adicionar", json={"name": "Duplicado", "email": real_email})
    dynamic = api.get("/vendedores/dinamicos").json()["vendedores"]
    assert [v["source"] for v in dynamic if v["email"] == real_email] == ["kommo"]
    assert any(v["source"] == "custom" for v in dynamic)


def test_lookups_by_lead_contact_and_conversation(stack: Stack, api: httpx.Client) -> None:
    by_lead = api.get("/vendedor/lead/9100001").json()
    assert by_lead["id"] == 10000002
    assert by_lead["matched_by"] == "responsible"
    assert api.get("/vendedor/contato/4400001").json()["id"] == 10000002
    with httpx.Client(timeout=10) as http:
        customer_writes(http, stack, 9100006, "quem é meu vendedor?")
        envelope = wait_for(
            lambda: next(
                (e for e in envelopes(http, stack) if e["conversation"]["lead_id"] == 9100006),
                None,
            ),
            what="the conversation",
        )
    by_conversation = api.get(f"/vendedor/conversa/{envelope['conversation']['id']}").json()
    assert by_conversation["lead_id"] == 9100006
    assert by_conversation["id"] == api.get("/vendedor/lead/9100006").json()["id"]
    missing = api.get("/vendedor/conversa/nao-existe")
    assert missing.status_code == 404


def test_a_lead_of_a_departed_vendedor_gets_the_round_robin_fallback(
    stack: Stack, api: httpx.Client
) -> None:
    picks = [api.get("/vendedor/lead/9100020").json() for _ in range(3)]
    assert all(p["matched_by"] == "fallback_round_robin" for p in picks)
    assert all(p["active"] for p in picks)
    assert len({p["id"] for p in picks}) == 3, "turns go round"
    assert api.get("/vendedor/lead/9999999").status_code == 404


def test_kommo_down_the_lists_answer_from_the_cache_with_their_age(
    stack: Stack, api: httpx.Client
) -> None:
    with httpx.Client(base_url=stack.sandbox_url, timeout=10) as sandbox:
        sandbox.post("/_sandbox/faults", json={"down": True}).raise_for_status()
        try:
            failed = api.post("/vendedores/sincronizar")
            assert failed.status_code == 503
            listing = api.get("/vendedores/reais")
            assert listing.status_code == 200
            body = listing.json()
            assert body["total"] == USERS
            assert body["age_seconds"] > 0
            assert "UNAVAILABLE" in body["sync_error"]
        finally:
            sandbox.post("/_sandbox/faults", json={"down": False}).raise_for_status()
