"""The edge's access and server bounds against the running system (issue 19, items 7 and
9): n8n's key only answers; the debug endpoints are off outside the sandbox; /health says
little without the key and costs one round of checks however often it is asked; a client
that never finishes its request is cut off."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import Launcher, Process, free_port
from devstack.stack import Stack
from tests.e2e.conftest import customer_writes, wait_for

READ_TIMEOUT_SECONDS = 1.0
HEALTH_CACHE_SECONDS = 3.0
MAX_HEADER_BYTES = 8192


@pytest.fixture(scope="module")
def production_edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """A second edge on the stack's services, configured as in production: not the
    sandbox, EDGE_DEBUG_ENDPOINTS unset; short server bounds so the test can wait them
    out."""
    port = free_port()
    launcher = Launcher(tmp_path_factory.mktemp("production-edge"), {})
    edge = launcher.start(
        "edge_api",
        "services.edge_api",
        {
            **stack.service_env(),
            "REDIS_URL": stack.redis_url,
            "EDGE_HOST": "127.0.0.1",
            "EDGE_PORT": str(port),
            "EDGE_API_KEY": stack.api_key,
            "EDGE_N8N_API_KEY": stack.n8n_api_key,
            "KOMMO_WEBHOOK_SECRET": stack.webhook_secret,
            "EDGE_PUBLIC_URL": "https://bridge.test",
            "KOMMO_SANDBOX": "false",
            "EDGE_REQUEST_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_SECONDS),
            "EDGE_HEALTH_CACHE_SECONDS": str(HEALTH_CACHE_SECONDS),
            "EDGE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        },
        port,
        "http",
        ready_path="/version",
    )
    try:
        launcher.wait_ready(edge)
        yield edge
    finally:
        launcher.stop_all()


def url(edge: Process, path: str) -> str:
    return f"http://{edge.address}{path}"


# n8n's key


def test_the_stack_gives_n8n_a_key_of_its_own_and_the_stand_in_answers_with_it(
    stack: Stack, http: httpx.Client
) -> None:
    assert stack.n8n_api_key and stack.n8n_api_key != stack.api_key
    lead = 9100012
    customer_writes(http, stack, lead, "resposta com a chave do n8n")

    def reply() -> dict[str, Any] | None:
        replies = http.get(f"{stack.standin_url}/_standin/received").json()["replies"]
        return next(
            (
                r
                for r in replies
                if isinstance(r.get("body"), dict) and r["body"].get("lead_id") == lead
            ),
            None,
        )

    # The stand-in sends STANDIN_API_KEY, which the stack sets to n8n's key.
    answered = wait_for(reply, what="the stand-in's reply")
    assert answered["status"] == 200, answered
    assert answered["body"]["status"] in ("delivered", "queued"), answered


def test_n8n_key_answers_send_response_and_the_scheduling_status(
    stack: Stack, http: httpx.Client
) -> None:
    n8n = {"X-API-Key": stack.n8n_api_key}
    reply = http.post(
        f"{stack.edge_url}/send-response", json={"reply_token": "nope", "text": "oi"}, headers=n8n
    )
    # Past the key: the token is looked up (and unknown).
    assert reply.status_code == 404, reply.text
    assert "reply_token" in reply.json()["error"]
    status = http.post(
        f"{stack.edge_url}/agendamento/nope/status", json={"status": "confirmed"}, headers=n8n
    )
    assert status.status_code == 404, status.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/vendedores"),
        ("GET", "/bot-rules"),
        ("PUT", "/bot-rules"),
        ("DELETE", "/leads/9100001/data"),
        ("DELETE", "/reset/conversations"),
        ("GET", "/debug/conversations"),
        ("GET", "/conversations/active"),
        ("POST", "/bot-control"),
        ("POST", "/agendamento/request"),
        ("GET", "/agendamento/nope"),
        ("GET", "/dashboard/data"),
        ("GET", "/webhooks/test"),
        ("GET", "/health"),
    ],
)
def test_n8n_key_is_refused_everywhere_else_with_403(
    stack: Stack, http: httpx.Client, method: str, path: str
) -> None:
    answer = http.request(
        method, f"{stack.edge_url}{path}", headers={"X-API-Key": stack.n8n_api_key}, json={}
    )
    assert answer.status_code == 403, answer.text
    assert answer.json() == {
        "error": "this key (EDGE_N8N_API_KEY) may only answer: POST /send-response, "
        "POST /agendamento/{agendamento_id}/status; everything else needs EDGE_API_KEY",
        "status": 403,
    }


def test_n8n_key_opens_no_browser_link(stack: Stack, http: httpx.Client) -> None:
    answer = http.get(f"{stack.edge_url}/oauth/authorize", params={"api_key": stack.n8n_api_key})
    assert answer.status_code == 403, answer.text


def test_the_operator_key_still_opens_everything(stack: Stack, http: httpx.Client) -> None:
    operator = {"X-API-Key": stack.api_key}
    assert http.get(f"{stack.edge_url}/vendedores", headers=operator).status_code == 200
    assert http.get(f"{stack.edge_url}/bot-rules", headers=operator).status_code == 200
    reply = http.post(
        f"{stack.edge_url}/send-response",
        json={"reply_token": "nope", "text": "oi"},
        headers=operator,
    )
    assert reply.status_code == 404


# /health


def test_health_without_a_key_says_only_up_or_degraded(stack: Stack, http: httpx.Client) -> None:
    public = http.get(f"{stack.edge_url}/health")
    assert public.json() == {"status": "ok"}
    assert public.status_code == 200
    full = http.get(f"{stack.edge_url}/health", headers={"X-API-Key": stack.api_key})
    assert full.status_code == 200
    assert full.json()["status"] == "ok"
    assert full.json()["services"]["conversation"] == "SERVING"
    assert "problems" in full.json() and "kommo" in full.json()
    wrong = http.get(f"{stack.edge_url}/health", headers={"X-API-Key": "not-the-key"})
    assert wrong.status_code == 401


def work_status_calls(stack: Stack) -> float:
    """GetWorkStatus calls the conversation replicas served (one per /health check)."""
    total = 0.0
    for process in stack.services["conversation"]:
        text = httpx.get(f"http://127.0.0.1:{process.metrics_port}/metrics").text
        for line in text.splitlines():
            if line.startswith("bridge_grpc_requests_total{") and "GetWorkStatus" in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_flood_of_health_calls_costs_one_round_of_checks(
    stack: Stack, production_edge: Process
) -> None:
    before = work_status_calls(stack)
    answers: list[int] = []

    def ask() -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(10):
                answers.append(client.get(url(production_edge, "/health")).status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert len(answers) == 80 and set(answers) == {200}, answers
    # One round per EDGE_HEALTH_CACHE_SECONDS, however many asked.
    assert elapsed < HEALTH_CACHE_SECONDS, "the flood outlasted the cache: no conclusion"
    assert work_status_calls(stack) - before <= 1


# Debug endpoints


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/debug/conversations"),
        ("DELETE", "/reset/conversations"),
        ("GET", "/webhooks/test"),
    ],
)
def test_debug_endpoints_are_off_unless_switched_on(
    stack: Stack, production_edge: Process, method: str, path: str
) -> None:
    with httpx.Client(timeout=10) as http:
        answer = http.request(
            method, url(production_edge, path), headers={"X-API-Key": stack.api_key}
        )
        assert answer.status_code == 404, answer.text
        assert "set EDGE_DEBUG_ENDPOINTS=true to turn them on" in answer.json()["error"]
        # Without the key, not even that.
        assert http.request(method, url(production_edge, path)).status_code == 401
        # The sandbox's edge has them on.
        on = http.request(method, f"{stack.edge_url}{path}", headers={"X-API-Key": stack.api_key})
        assert on.status_code == 200, on.text


# The HTTP server's bounds


def read_until_closed(sock: socket.socket, drip: bytes, limit: float) -> tuple[bytes, float]:
    """Send `drip` a byte every 0.2 s until the edge closes the connection; what it
    answered and how long the connection lasted."""
    started = time.monotonic()
    sock.settimeout(0.2)
    received = b""
    position = 0
    while time.monotonic() - started < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if position < len(drip):
                sock.sendall(drip[position : position + 1])
                position += 1
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def connect(edge: Process) -> socket.socket:
    host, port = edge.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def test_a_client_that_never_finishes_its_headers_is_cut_off(production_edge: Process) -> None:
    with connect(production_edge) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: edge\r\n")
        received, lasted = read_until_closed(sock, b"X-Slow: " + b"a" * 200, limit=10)
    assert lasted < READ_TIMEOUT_SECONDS + 1.5, lasted
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b'"status": 408' in received
    # The edge is fine.
    assert httpx.get(url(production_edge, "/version")).status_code == 200


def test_a_connection_that_sends_nothing_is_closed(production_edge: Process) -> None:
    with connect(production_edge) as sock:
        received, lasted = read_until_closed(sock, b"", limit=10)
    assert lasted < READ_TIMEOUT_SECONDS + 1.5, lasted
    assert received.startswith(b"HTTP/1.1 408 "), received


def test_a_body_that_never_arrives_is_cut_off(production_edge: Process, stack: Stack) -> None:
    with connect(production_edge) as sock:
        sock.sendall(
            b"POST /send-response HTTP/1.1\r\nHost: edge\r\ncontent-type: application/json\r\n"
            b"content-length: 500\r\nx-api-key: " + stack.api_key.encode() + b"\r\n\r\n{"
        )
        _, lasted = read_until_closed(sock, b'"text": "' + b"a" * 400, limit=10)
    assert lasted < READ_TIMEOUT_SECONDS + 1.5, lasted


def test_headers_over_the_limit_are_431_and_under_it_pass(production_edge: Process) -> None:
    big = httpx.get(url(production_edge, "/version"), headers={"X-Big": "a" * MAX_HEADER_BYTES})
    assert big.status_code == 431
    assert big.json()["status"] == 431
    one_line = b"GET /version HTTP/1.1\r\nHost: edge\r\nX-Endless: " + b"a" * 100_000
    with connect(production_edge) as sock:
        sock.sendall(one_line)
        received, _ = read_until_closed(sock, b"", limit=5)
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]
    fine = httpx.get(url(production_edge, "/version"), headers={"X-Fine": "a" * 4000})
    assert fine.status_code == 200


def test_a_large_body_sent_at_once_is_not_taken_for_headers(
    production_edge: Process, stack: Stack
) -> None:
    # Well over the header limit, in the same reads as the headers: read whole, answered.
    text = "x" * 9000
    answer = httpx.post(
        url(production_edge, "/send-response"),
        json={"reply_token": "nope", "text": text, "note": "n" * 9000},
        headers={"X-API-Key": stack.api_key},
    )
    assert answer.status_code == 404, answer.text


def test_the_log_of_the_production_edge_holds_no_key(
    production_edge: Process, stack: Stack
) -> None:
    log = Path(production_edge.log_path).read_text(errors="replace")
    assert stack.api_key not in log and stack.n8n_api_key not in log
    assert re.search(r"edge listening", log)
