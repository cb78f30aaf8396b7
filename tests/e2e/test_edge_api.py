"""The edge's own endpoints against the running system."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlencode

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from devstack.processes import ROOT
from devstack.stack import Stack
from tests.e2e.conftest import SIGNING_SECRET, customer_writes, envelopes, wait_for


def test_health_reports_every_service_redis_and_the_sandbox(
    stack: Stack, http: httpx.Client
) -> None:
    answer = http.get(f"{stack.edge_url}/health", headers={"X-API-Key": stack.api_key})
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert body["services"] == {
        "conversation": "SERVING",
        "kommo_gateway": "SERVING",
        "vendedor": "SERVING",
        "scheduling": "SERVING",
    }
    assert body["redis"] == "ok"
    assert body["kommo"]["mode"] == "sandbox"
    assert body["kommo"]["token_state"] == "ok"


def test_version_and_openapi_are_public(stack: Stack, http: httpx.Client) -> None:
    assert http.get(f"{stack.edge_url}/version").json()["version"]
    schema = http.get(f"{stack.edge_url}/openapi.json").json()
    assert "/webhooks/kommo" in schema["paths"]
    assert "/send-response" in schema["paths"]
    assert http.get(f"{stack.edge_url}/docs").status_code == 200


def test_webhook_status_says_where_to_register_and_when_the_last_arrived(
    stack: Stack, http: httpx.Client
) -> None:
    assert http.get(f"{stack.edge_url}/webhooks/test").status_code == 401
    customer_writes(http, stack, 9100006, "status do webhook")
    body = http.get(f"{stack.edge_url}/webhooks/test", headers={"X-API-Key": stack.api_key}).json()
    assert body["register_in_kommo"] == stack.webhook_url
    assert body["last_received_at"] is not None
    assert body["seconds_since_last"] < 60
    assert body["received_total"] >= 1


def test_send_response_requires_the_api_key_and_a_known_token(
    stack: Stack, http: httpx.Client
) -> None:
    url = f"{stack.edge_url}/send-response"
    body = {"reply_token": "nope", "text": "oi"}
    assert http.post(url, json=body).status_code == 401
    assert http.post(url, json=body, headers={"X-API-Key": "wrong-key"}).status_code == 401
    answer = http.post(url, json=body, headers={"X-API-Key": stack.api_key})
    assert answer.status_code == 404
    assert "reply_token" in answer.json()["error"]
    missing = http.post(url, json={"text": "oi"}, headers={"X-API-Key": stack.api_key})
    assert missing.status_code == 422


def test_the_same_reply_token_twice_delivers_once(stack: Stack, http: httpx.Client) -> None:
    http.post(f"{stack.standin_url}/_standin/config", json={"auto_reply": False})
    lead, text = 9100007, "quero uma resposta só"
    try:
        customer_writes(http, stack, lead, text)
        envelope = wait_for(
            lambda: next(
                (e for e in envelopes(http, stack) if e["messages"][0]["text"] == text), None
            ),
            what="envelope",
        )
    finally:
        http.post(f"{stack.standin_url}/_standin/config", json={"auto_reply": True})
    reply = {"reply_token": envelope["callback"]["reply_token"], "text": "Resposta única"}
    headers = {"X-API-Key": stack.api_key}
    first = http.post(f"{stack.edge_url}/send-response", json=reply, headers=headers)
    second = http.post(f"{stack.edge_url}/send-response", json=reply, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "delivered"
    assert second.status_code == 200 and second.json()["status"] == "duplicate"
    assert second.json()["delivery_id"] == first.json()["delivery_id"]
    runs = http.get(f"{stack.sandbox_url}/_sandbox/salesbot-runs").json()
    assert sum(1 for r in runs if r.get("lead_id") == lead) == 1


def test_envelopes_to_n8n_carry_a_valid_standard_webhooks_signature(
    stack: Stack, http: httpx.Client
) -> None:
    text = "mensagem assinada"
    customer_writes(http, stack, 9100017, text)
    received = wait_for(
        lambda: next(
            (
                r
                for r in http.get(f"{stack.standin_url}/_standin/received").json()["received"]
                if r["body"]["messages"][0]["text"] == text
            ),
            None,
        ),
        what="the envelope",
    )
    headers = received["headers"]
    assert headers["webhook-id"] == received["body"]["event_id"]
    Webhook(SIGNING_SECRET).verify(
        received["raw"],
        {
            "webhook-id": headers["webhook-id"],
            "webhook-timestamp": headers["webhook-timestamp"],
            "webhook-signature": headers["webhook-signature"],
        },
    )


def test_every_process_exposes_prometheus_metrics(stack: Stack, http: httpx.Client) -> None:
    customer_writes(http, stack, 9100019, "métricas")
    headers = {"X-API-Key": stack.api_key}
    # One call that reaches the scheduling service, so each service has served something.
    assert http.get(f"{stack.edge_url}/agendamento/nope", headers=headers).status_code == 404
    wait_for(
        lambda: "bridge_n8n_deliveries_total" in collect(stack, "conversation"),
        what="conversation metrics",
    )
    edge = http.get(f"{stack.edge_url}/metrics")
    assert edge.status_code == 200
    assert 'bridge_http_requests_total{route="/webhooks/kommo",status="200"}' in edge.text
    for name in ("conversation", "kommo_gateway", "vendedor", "scheduling"):
        # A sample line, not just the HELP text every registry prints.
        assert "bridge_grpc_requests_total{" in collect(stack, name), name
    assert 'code="NOT_FOUND",method="GetAgendamento"' in collect(stack, "scheduling")
    assert 'bridge_kommo_requests_total{status="200"}' in collect(stack, "kommo_gateway")


def collect(stack: Stack, service: str) -> str:
    return "".join(
        httpx.get(f"http://127.0.0.1:{p.metrics_port}/metrics").text
        for p in stack.services[service]
    )


def test_the_webhook_is_registered_in_kommo_by_the_bridge(stack: Stack) -> None:
    env = {**os.environ, "EDGE_URL": stack.edge_url, "EDGE_API_KEY": stack.api_key}
    done = subprocess.run(
        [sys.executable, "-m", "devstack.kommo_webhook"],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    registered = json.loads(done.stdout)
    assert registered["destination"] == stack.webhook_url
    # The work (chat messages, new leads, stage moves), and every change to a lead or a
    # contact: each drops the bridge's copies of it.
    events = [
        "add_message",
        "add_lead",
        "status_lead",
        "update_lead",
        "responsible_lead",
        "delete_lead",
        "update_contact",
        "responsible_contact",
        "delete_contact",
    ]
    assert registered["events"] == events
    status = httpx.get(
        f"{stack.edge_url}/webhooks/test", headers={"X-API-Key": stack.api_key}
    ).json()
    assert status["events"] == events
    assert status["registered_in_kommo"] == [{"events": events, "disabled": False}]


def test_assumir_with_an_id_outside_kommos_range_is_400_not_502(
    stack: Stack, http: httpx.Client
) -> None:
    headers = {"X-API-Key": stack.api_key}
    for lead in ("99999999999999999999999", "-5", "9007199254740992"):
        answer = http.post(
            f"{stack.edge_url}/vendedor/comandos",
            json={"command": f"/assumir {lead}"},
            headers=headers,
        )
        assert answer.status_code == 400, answer.text
        assert answer.json() == {
            "error": "/assumir: the lead id must be an integer from 1 to 9007199254740991 "
            f"(a Kommo id), got '{lead}'",
            "status": 400,
        }
    assert http.get(f"{stack.edge_url}/conversations/active", headers=headers).status_code == 200


def test_a_webhook_with_an_id_outside_kommos_range_is_refused_and_nothing_breaks(
    stack: Stack, http: httpx.Client
) -> None:
    headers = {"X-API-Key": stack.api_key}
    for field, value in (("element_id", "-5"), ("contact_id", "1" + "0" * 30)):
        body = {
            "account[subdomain]": "previdas",
            "message[add][0][id]": f"out-of-range-{field}",
            "message[add][0][chat_id]": f"chat-out-of-range-{field}",
            "message[add][0][element_type]": "2",
            "message[add][0][element_id]": "9100018",
            "message[add][0][text]": "oi",
            f"message[add][0][{field}]": value,
        }
        answer = http.post(
            stack.webhook_url,
            content=urlencode(body),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 400, answer.text
        assert f"message[add][0][{field}] must be an integer from 1 to" in answer.json()["error"]
    listing = http.get(f"{stack.edge_url}/conversations/active?page_size=500", headers=headers)
    assert listing.status_code == 200
    assert not [
        c for c in listing.json()["conversations"] if "out-of-range" in (c["chat_id"] or "")
    ]


def test_a_note_on_a_lead_kommo_does_not_have_is_404(stack: Stack, http: httpx.Client) -> None:
    unknown = 8_888_888_888
    answer = http.post(
        f"{stack.edge_url}/create-test-note/{unknown}", headers={"X-API-Key": stack.api_key}
    )
    assert answer.status_code == 404, answer.text
    assert answer.json() == {
        "error": f"lead {unknown} not found in Kommo: no note written",
        "status": 404,
    }


def test_service_metrics_listen_only_where_the_service_does(stack: Stack) -> None:
    # The stack starts every service with GRPC_HOST=127.0.0.1 and no METRICS_HOST.
    for name in ("conversation", "kommo_gateway", "vendedor", "scheduling"):
        for process in stack.services[name]:
            port = process.metrics_port
            assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
            # Another loopback address reaches a listener on 0.0.0.0, not one on 127.0.0.1.
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.2:{port}/metrics", timeout=2)


def test_send_response_answers_the_same_on_its_fast_path_and_off_it(
    stack: Stack, http: httpx.Client
) -> None:
    """n8n's plain reply is served outside FastAPI (reply_fast_path.py); everything else
    goes through it with the body already read. Either way the answer is the documented
    one: the error shape, the request id, the route's metrics label."""
    url = f"{stack.edge_url}/send-response"
    key = {"X-API-Key": stack.api_key}
    # Served on the fast path: a valid body with a valid key; the service's refusal
    # mapped as the route maps it.
    unknown = http.post(url, json={"reply_token": "nope", "text": "oi"}, headers=key)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "unknown or expired reply_token", "status": 404}
    assert unknown.headers["x-request-id"]
    mine = http.post(
        url,
        json={"reply_token": "nope", "text": "oi"},
        headers={**key, "X-Request-ID": "rid-fast-path"},
    )
    assert mine.headers["x-request-id"] == "rid-fast-path"
    # Handed to FastAPI: a body that is not JSON, one that does not validate, another
    # content type, no key.
    broken = http.post(
        url, content=b'{"reply_token": ', headers={**key, "content-type": "application/json"}
    )
    assert broken.status_code == 422
    assert broken.json()["fields"] == [
        {"field": "body", "problem": broken.json()["fields"][0]["problem"]}
    ]
    invalid = http.post(url, json={"text": "oi"}, headers=key)
    assert invalid.status_code == 422
    assert "reply_token, conversation_id or lead_id" in invalid.json()["error"]
    form = http.post(url, data={"reply_token": "nope", "text": "oi"}, headers=key)
    assert form.status_code == 422
    assert http.post(url, json={"reply_token": "nope", "text": "oi"}).json() == {
        "error": "missing or wrong X-API-Key",
        "status": 401,
    }
    # A body sent in chunks past the limit (no Content-Length to refuse it early).
    too_big = http.post(
        url,
        content=iter([b'{"reply_token": "nope", "text": "', b"a" * 1_100_000, b'"}']),
        headers={**key, "content-type": "application/json"},
    )
    assert too_big.status_code == 413
    assert too_big.json()["status"] == 413
    metrics = http.get(f"{stack.edge_url}/metrics").text
    assert 'route="/send-response",status="404"' in metrics
