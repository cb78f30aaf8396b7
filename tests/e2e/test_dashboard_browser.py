"""The operator's dashboard in a real headless Chromium against the running stack.

Messages flow (replies, a takeover by a person, a dead letter), then the figures the
page shows must be the ones the API gives. Runs wherever Debian's Chromium is
installed; `.ci/run` installs it. The screenshot goes to pytest's temporary folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from sandbox.kommo.config import (
    SCHEDULE_FIELD_ID,
    TEMPLATE_REOPEN_BOT,
    TEMPLATE_REOPEN_ID,
    TEMPLATE_SCHEDULING_BOT,
    TEMPLATE_SCHEDULING_ID,
)
from tests.e2e.browser_helpers import chromium, needs_chromium, watched_page
from tests.e2e.conftest import customer_writes, isolated_stack, wait_for

pytestmark = needs_chromium

PERSON = 10000002  # a user of the sandbox account
# Approved WhatsApp templates of the sandbox, for the "WhatsApp window" card.
TEMPLATES = {
    "templates": {
        "reopen": {"salesbot_id": TEMPLATE_REOPEN_BOT, "template_id": TEMPLATE_REOPEN_ID},
        "scheduling_confirmation": {
            "salesbot_id": TEMPLATE_SCHEDULING_BOT,
            "template_id": TEMPLATE_SCHEDULING_ID,
            "fields": {str(SCHEDULE_FIELD_ID): "horario"},
        },
    }
}


@pytest.fixture(scope="module")
def dash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory, "dashboard", env={"N8N_RETRY_SCHEDULE": "0,0.2,0.2"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # The wrong-key test earns its 401 on purpose.
    with watched_page(browser, expected_statuses=(401,)) as opened:
        yield opened


def api(http: httpx.Client, stack: Stack, path: str) -> dict[str, Any]:
    answer = http.get(f"{stack.edge_url}{path}", headers={"X-API-Key": stack.api_key})
    answer.raise_for_status()
    return dict(answer.json())


def metric(page: Any, name: str) -> str:
    return str(page.locator(f'[data-metric="{name}"]').first.inner_text()).strip()


def seconds(shown: str) -> float:
    return 0.0 if shown == "–" else float(shown.removesuffix(" s"))


def expected_from_api(http: httpx.Client, stack: Stack) -> dict[str, Any]:
    stats = api(http, stack, "/stats?hours=6")
    health = http.get(
        f"{stack.edge_url}/health", headers={"X-API-Key": stack.api_key}
    ).json()  # 503 while degraded: still read
    vendedores = api(http, stack, "/vendedores")["vendedores"]
    takeovers = stats["takeovers"]
    window = stats["window"]
    whatsapp = stats["whatsapp"]
    return {
        "conversations.active": str(stats["conversations"].get("active", 0)),
        "conversations.paused": str(stats["conversations"].get("paused", 0)),
        "conversations.awaiting_reply": str(stats["conversations"].get("awaiting_reply", 0)),
        "takeovers.total": str(sum(takeovers.values())),
        "takeovers.automatic": str(takeovers["automatic"]),
        "messages.in": str(stats["messages"]["in"]),
        "messages.out": str(stats["messages"]["out"]),
        "window.messages_in": str(window["messages_in"]),
        "window.messages_out": str(window["messages_out"]),
        "window.takeovers": str(window["takeovers"]),
        "window.replies": str(window["replies"]),
        "window.dead_lettered": str(window["dead_lettered"]),
        "n8n.dead_letters": str(stats["n8n"]["dead_letters"]),
        "webhooks.refused": str(sum(stats["webhooks"]["refused"].values())),
        "webhooks.items_skipped": str(sum(stats["webhooks"]["items_skipped"].values())),
        "whatsapp.template_sends": str(whatsapp["template_sends"]),
        "whatsapp.replies_window_closed": str(whatsapp["replies_window_closed"]),
        "whatsapp.replies_waiting_for_customer": str(whatsapp["replies_waiting_for_customer"]),
        "whatsapp.late_replies_to_vendedor": str(whatsapp["late_replies_to_vendedor"]),
        "latency.median": round(stats["median_reply_seconds"], 2),
        "latency.p95": round(window["reply_p95_seconds"], 2),
        "kommo.token_state": health["kommo"]["token_state"],
        "vendedores.active_total": f"{sum(v['active'] for v in vendedores)} / {len(vendedores)}",
        "services.conversation": health["services"]["conversation"],
        "services.vendedor": health["services"]["vendedor"],
    }


def shown_on_page(page: Any, expected: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, value in expected.items():
        text = metric(page, name)
        shown[name] = round(seconds(text), 2) if isinstance(value, float) else text
    return shown


def matches(page: Any, http: httpx.Client, stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page against a fresh answer of the API, until they agree (the page refreshes
    every second) or 15 s pass; then the last pair, for the assertion to show."""
    deadline = time.monotonic() + 15
    while True:
        expected = expected_from_api(http, stack)
        shown = shown_on_page(page, expected)
        close = all(
            abs(shown[k] - v) <= 0.011 if isinstance(v, float) else shown[k] == v
            for k, v in expected.items()
        )
        if close or time.monotonic() > deadline:
            return shown, expected
        time.sleep(0.3)


def test_the_page_shows_what_the_api_says_after_messages_flow(
    dash_stack: Stack, http: httpx.Client, page: Any, tmp_path: Any
) -> None:
    stack = dash_stack
    page.goto(f"{stack.edge_url}/dashboard?refresh=1#key={stack.api_key}")
    page.wait_for_selector("body[data-loaded]")
    assert "key=" not in page.url, "the key must leave the address bar"
    assert metric(page, "messages.in") == "0"

    for lead in (9100001, 9100002, 9100003):
        customer_writes(http, stack, lead, "Oi, quero saber dos planos")
    wait_for(
        lambda: api(http, stack, "/stats")["messages"]["out"] == 3, timeout=20, what="3 replies"
    )
    answer = http.post(
        f"{stack.sandbox_url}/_sandbox/user-message",
        json={"lead_id": 9100002, "user_id": PERSON, "text": "Deixa comigo"},
    )
    answer.raise_for_status()
    wait_for(lambda: api(http, stack, "/stats")["takeovers"]["automatic"] == 1, what="a takeover")
    http.post(f"{stack.standin_url}/_standin/config", json={"down": True}).raise_for_status()
    try:
        customer_writes(http, stack, 9100004, "Alguém aí?")
        wait_for(
            lambda: api(http, stack, "/stats")["n8n"]["dead_letters"] == 1,
            timeout=20,
            what="a dead letter",
        )
    finally:
        http.post(f"{stack.standin_url}/_standin/config", json={"down": False})

    # Kommo's odd bodies: one with nothing usable (refused), one with a part skipped.
    hook = {"content-type": "application/x-www-form-urlencoded"}
    refused = http.post(
        stack.webhook_url, content="account[subdomain]=previdas&foo[=1", headers=hook
    )
    assert refused.status_code == 400
    skipped = http.post(
        stack.webhook_url,
        content="account[subdomain]=previdas&foo=1&leads[add][0][id]=9100005",
        headers=hook,
    )
    assert skipped.status_code == 200

    # WhatsApp's 24-hour window: n8n answers one lead with a template, and a reply to a
    # lead whose customer never wrote finds the window closed (the reopen template goes,
    # the reply waits for the customer).
    operator = {"X-API-Key": stack.api_key}
    put = http.put(f"{stack.edge_url}/bot-rules", json=TEMPLATES, headers=operator)
    assert put.status_code == 200, put.text
    template = http.post(
        f"{stack.edge_url}/send-response",
        json={
            "lead_id": 9100007,
            "template": "scheduling_confirmation",
            "variables": {"horario": "terça, 10h"},
        },
        headers=operator,
    )
    assert template.json()["status"] == "delivered", template.text
    http.post(
        f"{stack.sandbox_url}/_sandbox/leads/9100006/chat", json={"customer_last_wrote_at": None}
    ).raise_for_status()
    late = http.post(
        f"{stack.edge_url}/send-response",
        json={"lead_id": 9100006, "text": "Olá! Sua consulta está confirmada."},
        headers=operator,
    )
    assert late.json()["status"] == "waiting_for_customer", late.text

    shown, expected = matches(page, http, stack)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert shown == expected
    # The figures are the traffic above, not zeros that happen to agree.
    assert expected["messages.in"] == "4"
    assert expected["messages.out"] == "3"
    assert expected["window.messages_in"] == "4"
    assert expected["takeovers.total"] == "1"
    assert expected["conversations.paused"] == "1"
    assert expected["n8n.dead_letters"] == "1"
    assert (expected["webhooks.refused"], expected["webhooks.items_skipped"]) == ("1", "1")
    assert expected["whatsapp.template_sends"] == "2"  # the answer's and the reopen
    assert expected["whatsapp.replies_window_closed"] == "1"
    assert expected["whatsapp.replies_waiting_for_customer"] == "1"
    assert expected["whatsapp.late_replies_to_vendedor"] == "0"
    reasons_shown = metric(page, "webhooks.reasons")
    assert "refused not_a_webhook" not in reasons_shown  # it had an account
    assert "refused no_valid_event: 1" in reasons_shown
    assert "skipped unexpected_field: 1" in reasons_shown
    assert expected["latency.median"] > 0
    # The header says what /health says: a fresh dead letter keeps it red, with why.
    assert page.locator("#overall").inner_text() == "degraded"
    assert "dead letter" in page.locator("#problems").inner_text()
    # The conversations to look at: the one taken over, the one whose envelope was parked.
    reasons = page.locator("#attention tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.reason, r.children[1].textContent])"
    )
    assert ["taken_over", "9100002"] in reasons, reasons
    assert ["dead_letter", "9100004"] in reasons, reasons
    # The charts drew the bucket with the traffic: bars for messages, dots for latency.
    assert page.locator("#throughput rect.in").count() >= 1
    assert page.locator("#throughput rect.out").count() >= 1
    assert page.locator("#latency circle.p50").count() >= 1

    # Replayed once n8n is back, the dead letter is gone and the header turns green.
    (letter,) = api(http, stack, "/dead-letters")["dead_letters"]
    replayed = http.post(
        f"{stack.edge_url}/dead-letters/{letter['id']}/replay",
        headers={"X-API-Key": stack.api_key},
    )
    assert replayed.status_code == 200, replayed.text
    wait_for(
        lambda: page.locator("#overall").inner_text() == "ok", timeout=20, what="a green header"
    )
    assert page.locator("#problems").inner_text() == ""


def test_a_wrong_key_asks_for_the_right_one(dash_stack: Stack, page: Any) -> None:
    page.goto(f"{dash_stack.edge_url}/dashboard#key=not-the-key")
    page.wait_for_selector("#key-form:not([hidden])")
    assert page.locator("#key-error").inner_text() == "That key was refused."
    assert page.locator("#panels").is_hidden()
    page.fill("#key", dash_stack.api_key)
    page.click("#key-form button")
    page.wait_for_selector("body[data-loaded]")
    assert page.locator("#key-form").is_hidden()


def test_a_service_down_shows_on_its_own_card_and_the_rest_stays(
    dash_stack: Stack, http: httpx.Client, page: Any
) -> None:
    page.goto(f"{dash_stack.edge_url}/dashboard?refresh=1#key={dash_stack.api_key}")
    page.wait_for_selector("body[data-loaded]")
    (vendedor,) = dash_stack.services["vendedor"]
    vendedor.stop()
    try:
        wait_for(
            lambda: metric(page, "vendedores.active_total") == "unavailable",
            timeout=15,
            what="the vendedores card to say unavailable",
        )
        assert metric(page, "services.vendedor").startswith("UNREACHABLE")
        assert page.locator("#overall").inner_text() == "degraded"
        assert "service vendedor" in page.locator("#problems").inner_text()
        assert metric(page, "messages.in") == str(api(http, dash_stack, "/stats")["messages"]["in"])
    finally:
        dash_stack.restart_service(vendedor)
    wait_for(
        lambda: metric(page, "services.vendedor") == "SERVING",
        timeout=20,
        what="the vendedor service back on the page",
    )
