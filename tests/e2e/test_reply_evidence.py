"""A Salesbot run of unknown outcome is delivered exactly once, judged by the evidence real
Kommo gives: the lead's outgoing chat message events, which say who wrote (a bot or a user)
but carry no text. One gateway and the Kommo sandbox as real processes, nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc
from devstack.processes import Launcher, free_port
from devstack.redis_server import RedisServer
from devstack.stack import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_REFRESH_TOKEN,
    SANDBOX_REPLY_FIELD_ID,
    SANDBOX_SALESBOT_ID,
)
from tests.e2e.conftest import wait_for

BOT_RUN = "/api/v4/bots/run"
REDIRECT_URI = "http://127.0.0.1:8000/oauth/callback"
SALESBOT_USER = 10000002
# The bot needs ECHO_DELAY to send; the grace period is far above it, and the spacing above
# the skew allowance plus a whole second, so a previous reply's message never counts.
ECHO_DELAY = "0.2"
GATEWAY_ENV = {
    "KOMMO_REPLY_SPACING_SECONDS": "2.5",
    "KOMMO_DELIVERY_GRACE_SECONDS": "2",
    "KOMMO_EVIDENCE_SKEW_SECONDS": "1",
}
DELIVERY_DEADLINE_SECONDS = 60.0


@dataclass
class Kommo:
    """The sandbox's control endpoints and the gateway's DeliverMessage."""

    sandbox_url: str
    gateway_address: str
    http: httpx.Client

    def fail_bot_run(self, *, after_sending: bool) -> None:
        rule: dict[str, Any] = {"path_prefix": BOT_RUN, "status": 502, "method": "POST"}
        if after_sending:
            rule |= {"apply_effect": True, "await_effect": True}
        self.control("POST", "/faults", json={"fail_next": [rule]})

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.http.request(method, f"{self.sandbox_url}/_sandbox{path}", **kwargs)
        answer.raise_for_status()
        return answer.json()

    def deliver(self, lead_id: int, text: str, key: str) -> gw.DeliverMessageResponse:
        with grpc.insecure_channel(self.gateway_address) as channel:
            stub = kommo_gateway_pb2_grpc.KommoGatewayStub(channel)
            request = gw.DeliverMessageRequest(lead_id=lead_id, text=text, idempotency_key=key)
            return stub.DeliverMessage(request, timeout=DELIVERY_DEADLINE_SECONDS)

    def outgoing(self, lead_id: int) -> list[dict[str, Any]]:
        chat = self.control("GET", f"/chats/{lead_id}")
        return [message for message in chat if message["direction"] == "outgoing"]

    def bot_run_statuses(self) -> list[int]:
        return [
            request["status"]
            for request in self.control("GET", "/requests")
            if request["path"] == BOT_RUN
        ]


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(sandbox URL, gateway address), with a Redis of their own."""
    logs = tmp_path_factory.mktemp("reply-evidence-logs")
    redis_server = RedisServer(free_port(), tmp_path_factory.mktemp("reply-evidence-redis"))
    redis_server.start()
    launcher = Launcher(logs, {"REDIS_URL": redis_server.url, "LOG_LEVEL": "INFO"})
    try:
        sandbox_port, gateway_port = free_port(), free_port()
        sandbox = launcher.start(
            "kommo-sandbox",
            "sandbox.kommo",
            {
                "SANDBOX_PORT": str(sandbox_port),
                "SANDBOX_ECHO_DELAY": ECHO_DELAY,
                "SANDBOX_REDIRECT_URI": REDIRECT_URI,
            },
            sandbox_port,
            "http",
            ready_path="/_sandbox/stats",
        )
        launcher.wait_ready(sandbox)
        sandbox_url = f"http://{sandbox.address}"
        gateway = launcher.start(
            "kommo_gateway",
            "services.kommo_gateway",
            {
                "GRPC_HOST": "127.0.0.1",
                "GRPC_PORT": str(gateway_port),
                "METRICS_PORT": "0",
                "KOMMO_BASE_URL": sandbox_url,
                "KOMMO_SANDBOX": "true",
                "KOMMO_SUBDOMAIN": "previdas",
                "KOMMO_CLIENT_ID": SANDBOX_CLIENT_ID,
                "KOMMO_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
                "KOMMO_REDIRECT_URI": REDIRECT_URI,
                "KOMMO_REFRESH_TOKEN": SANDBOX_REFRESH_TOKEN,
                "KOMMO_SALESBOT_ID": SANDBOX_SALESBOT_ID,
                "KOMMO_REPLY_FIELD_ID": SANDBOX_REPLY_FIELD_ID,
                **GATEWAY_ENV,
            },
            gateway_port,
            "grpc",
        )
        launcher.wait_ready(gateway)
        yield sandbox_url, gateway.address
    finally:
        launcher.stop_all()
        redis_server.stop()


@pytest.fixture
def kommo(processes: tuple[str, str]) -> Iterator[Kommo]:
    sandbox_url, gateway_address = processes
    with httpx.Client(timeout=10.0) as http:
        kommo = Kommo(sandbox_url, gateway_address, http)
        # Back to the seed: no faults, no chats, no recorded requests (tokens stay valid).
        kommo.control("POST", "/reset")
        yield kommo


def test_a_run_that_fails_after_sending_is_delivered_once(kommo: Kommo) -> None:
    lead = 9100003
    kommo.fail_bot_run(after_sending=True)
    text = "Recebemos seus documentos e já estamos analisando."
    answer = kommo.deliver(lead, text, "evidence-after-send")
    assert answer.status == "sent" and answer.method == "salesbot"
    # The bot message event, written by no user after the run, was the evidence: the bot
    # was not run again (the delivery answers only after it has decided).
    assert kommo.bot_run_statuses() == [502]
    assert [m["text"] for m in kommo.outgoing(lead)] == [text]
    # And the event that proved it carried no text.
    (event,) = [
        e
        for e in kommo.control("GET", "/events")
        if e["entity_id"] == lead and e["type"] == "outgoing_chat_message"
    ]
    assert event["created_by"] == 0 and "text" not in event["value_after"][0]["message"]


def test_a_run_that_fails_before_sending_is_run_again_and_delivered_once(kommo: Kommo) -> None:
    lead = 9100004
    kommo.fail_bot_run(after_sending=False)
    text = "Sua consulta foi marcada para quinta-feira."
    answer = kommo.deliver(lead, text, "evidence-before-send")
    assert answer.status == "sent"
    assert kommo.bot_run_statuses() == [502, 202]
    wait_for(lambda: kommo.outgoing(lead), what="the reply in the chat")
    assert [m["text"] for m in kommo.outgoing(lead)] == [text]
    # The failed call never reached the bot: the one run there is the second call's.
    assert [run["outcome"] for run in kommo.control("GET", "/salesbot-runs")] == ["sent"]


def test_a_salespersons_message_meanwhile_is_not_taken_for_the_reply(kommo: Kommo) -> None:
    lead = 9100006
    kommo.fail_bot_run(after_sending=False)
    text = "Pode enviar a carteira de trabalho por aqui."
    with ThreadPoolExecutor(1) as pool:
        delivering = pool.submit(kommo.deliver, lead, text, "evidence-person-meanwhile")
        # Once the run has failed, during the grace period, a salesperson writes on the lead.
        wait_for(lambda: kommo.bot_run_statuses() == [502], what="the failed run")
        kommo.control(
            "POST",
            "/user-message",
            json={"lead_id": lead, "user_id": SALESBOT_USER, "text": "Oi, aqui é o Bruno."},
        )
        answer = delivering.result(timeout=DELIVERY_DEADLINE_SECONDS)
    assert answer.status == "sent"
    # The person's message (created_by = their user id) did not count: the bot ran again.
    assert kommo.bot_run_statuses() == [502, 202]
    wait_for(lambda: len(kommo.outgoing(lead)) == 2, what="the reply after the person's")
    assert [m["text"] for m in kommo.outgoing(lead)] == ["Oi, aqui é o Bruno.", text]
    events = [
        e
        for e in kommo.control("GET", "/events")
        if e["entity_id"] == lead and e["type"] == "outgoing_chat_message"
    ]
    assert [e["created_by"] for e in events] == [SALESBOT_USER, 0]
