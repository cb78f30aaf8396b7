"""Kommo OAuth across three gateway replicas: one refresh for everyone, nobody blocked
by a dead or frozen lock holder, a revoked token reported and re-authorised."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlparse

import grpc
import httpx
import pytest
import redis

from devstack.stack import Stack
from tests.e2e.conftest import wait_for
from tests.e2e.gateway_helpers import account, gateway_stack, sandbox_stats, status


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Kommo request a second: a refresh waits for its slot while holding the lock,
    which gives a test the moment to kill or freeze the holder."""
    with gateway_stack(
        tmp_path_factory,
        "slow",
        {"KOMMO_RATE_LIMIT_RPS": "1", "KOMMO_REFRESH_LOCK_SECONDS": "2"},
        {"SANDBOX_RATE_LIMIT_RPS": "7"},
    ) as running:
        yield running


def _holder_appears(stack: Stack) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    wait_for(lambda: client.exists("gw:refresh-lock"), timeout=10, what="the refresh lock")


def _start_call(address: str, results: list[object]) -> threading.Thread:
    def call() -> None:
        try:
            results.append(account(address, timeout=30))
        except grpc.RpcError as exc:
            results.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_a_replica_killed_holding_the_refresh_lock_does_not_block_the_others(
    slow_stack: Stack,
) -> None:
    with httpx.Client(timeout=10) as http:
        a, b, c = slow_stack.services["kommo_gateway"]
        account(b.address)  # a valid token to begin with
        before = sandbox_stats(http, slow_stack)
        http.post(f"{slow_stack.sandbox_url}/_sandbox/expire-tokens").raise_for_status()
        _start_call(a.address, [])
        _holder_appears(slow_stack)
        a.popen.send_signal(signal.SIGKILL)
        a.popen.wait(5)
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(account, [b.address, c.address]))
        assert all(answer.subdomain == "previdas" for answer in answers)
        assert time.monotonic() - started < 15
        after = sandbox_stats(http, slow_stack)
        assert after["token_refreshes"] == before["token_refreshes"] + 1
        assert after["refused_refresh_tokens"] == before["refused_refresh_tokens"]
        slow_stack.services["kommo_gateway"].remove(a)


def test_a_replica_frozen_past_its_lock_stands_down_when_it_wakes(slow_stack: Stack) -> None:
    with httpx.Client(timeout=10) as http:
        replicas = slow_stack.services["kommo_gateway"]
        if len(replicas) < 3:
            replicas.append(slow_stack.start_service("kommo_gateway"))
            slow_stack.launcher.wait_ready(replicas[-1])
        a, b, c = replicas[:3]
        account(b.address)
        before = sandbox_stats(http, slow_stack)
        http.post(f"{slow_stack.sandbox_url}/_sandbox/expire-tokens").raise_for_status()
        frozen_result: list[object] = []
        frozen_call = _start_call(a.address, frozen_result)
        _holder_appears(slow_stack)
        a.popen.send_signal(signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(account, [b.address, c.address]))
            assert all(answer.subdomain == "previdas" for answer in answers)
        finally:
            a.popen.send_signal(signal.SIGCONT)
        frozen_call.join(30)
        assert frozen_result and not isinstance(frozen_result[0], Exception), frozen_result
        after = sandbox_stats(http, slow_stack)
        assert after["token_refreshes"] == before["token_refreshes"] + 1
        assert after["refused_refresh_tokens"] == before["refused_refresh_tokens"]
        assert status(a.address).token_state == "ok"


@pytest.fixture(scope="module")
def fast_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(
        tmp_path_factory,
        "fast",
        {
            "KOMMO_RATE_LIMIT_RPS": "20",
            "KOMMO_REFRESH_LOCK_SECONDS": "2",
            "KOMMO_BREAKER_COOLDOWN_SECONDS": "1",
            "KOMMO_BLOCKED_BACKOFF_SECONDS": "2",
        },
        {"SANDBOX_RATE_LIMIT_RPS": "20"},
    ) as running:
        yield running


def test_fifty_concurrent_calls_meeting_an_expired_token_refresh_it_once(
    fast_stack: Stack,
) -> None:
    with httpx.Client(timeout=10) as http:
        addresses = [p.address for p in fast_stack.services["kommo_gateway"]]
        account(addresses[0])
        before = sandbox_stats(http, fast_stack)
        http.post(f"{fast_stack.sandbox_url}/_sandbox/expire-tokens").raise_for_status()
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(account, [addresses[i % 3] for i in range(50)]))
        assert len(answers) == 50
        after = sandbox_stats(http, fast_stack)
        assert after["token_refreshes"] == before["token_refreshes"] + 1
        assert after["refused_refresh_tokens"] == before["refused_refresh_tokens"]
        assert after["rate_limited_429"] == before["rate_limited_429"]


def test_a_burst_of_notes_arrives_complete_in_list_calls_without_429(
    fast_stack: Stack,
) -> None:
    from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
    from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc

    lead = 9100015
    addresses = [p.address for p in fast_stack.services["kommo_gateway"]]
    channels = [grpc.insecure_channel(a) for a in addresses]
    stubs = [kommo_gateway_pb2_grpc.KommoGatewayStub(ch) for ch in channels]
    with httpx.Client(timeout=10) as http:
        before = sandbox_stats(http, fast_stack)
        with ThreadPoolExecutor(100) as pool:
            list(
                pool.map(
                    lambda i: stubs[i % 3].AddNote(
                        gw.AddNoteRequest(lead_id=lead, text=f"nota {i}"), timeout=60
                    ),
                    range(100),
                )
            )
        for channel in channels:
            channel.close()
        after = sandbox_stats(http, fast_stack)
        notes = http.get(f"{fast_stack.sandbox_url}/_sandbox/leads/{lead}").json()["notes"]
    assert sorted(n["params"]["text"] for n in notes) == sorted(f"nota {i}" for i in range(100))
    assert after["rate_limited_429"] == before["rate_limited_429"]
    sent = after["by_path"]["/api/v4/leads/notes"] - before["by_path"].get("/api/v4/leads/notes", 0)
    assert sent < 100 / 3, f"{sent} note requests for 100 notes on 3 replicas"


def test_calls_that_cannot_be_batched_keep_to_the_limit_in_every_second(
    fast_stack: Stack,
) -> None:
    addresses = [p.address for p in fast_stack.services["kommo_gateway"]]
    with httpx.Client(timeout=10) as http:
        before = sandbox_stats(http, fast_stack)
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(lambda i: account(addresses[i % 3], timeout=60), range(100)))
        after = sandbox_stats(http, fast_stack)
    assert all(answer.subdomain == "previdas" for answer in answers)
    assert after["requests"] - before["requests"] >= 100
    assert after["rate_limited_429"] == before["rate_limited_429"]
    assert after["max_requests_in_any_second"] <= 20


def _faults(http: httpx.Client, stack: Stack, **faults: object) -> None:
    http.post(f"{stack.sandbox_url}/_sandbox/faults", json=faults).raise_for_status()


def _unavailable(address: str) -> str:
    with pytest.raises(grpc.RpcError) as failure:
        account(address, timeout=15)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    return str(failure.value.details())


def test_kommo_down_opens_the_circuit_and_a_trial_closes_it(fast_stack: Stack) -> None:
    address = fast_stack.services["kommo_gateway"][1].address
    with httpx.Client(timeout=10) as http:
        _faults(http, fast_stack, down=True)
        try:
            _unavailable(address)  # its retries meet the failures that open the circuit
            assert status(address).breaker == "open"
            sent = sandbox_stats(http, fast_stack)["requests"]
            assert "circuit open" in _unavailable(address)
            assert sandbox_stats(http, fast_stack)["requests"] == sent, "no call while open"
        finally:
            _faults(http, fast_stack, down=False)
        time.sleep(1.1)
        assert account(address).subdomain == "previdas"
        assert status(address).breaker == "closed"


def test_a_blocked_account_is_its_own_loud_state(fast_stack: Stack) -> None:
    address = fast_stack.services["kommo_gateway"][2].address
    other = fast_stack.services["kommo_gateway"][0].address
    with httpx.Client(timeout=10) as http:
        _faults(http, fast_stack, blocked=True)
        try:
            assert "blocked" in _unavailable(address)
            assert status(other).blocked, "every replica knows"
            health = http.get(
                f"{fast_stack.edge_url}/health", headers={"X-API-Key": fast_stack.api_key}
            ).json()
            assert health["status"] == "degraded"
            assert "support" in health["kommo"]["detail"]
            sent = sandbox_stats(http, fast_stack)["requests"]
            assert "blocked" in _unavailable(other)
            assert sandbox_stats(http, fast_stack)["requests"] == sent
        finally:
            _faults(http, fast_stack, blocked=False)
        wait_for(lambda: not status(address).blocked, timeout=5, what="the block to lapse")
        assert account(address).subdomain == "previdas"


def test_kommo_checks_at_the_edge(fast_stack: Stack) -> None:
    headers = {"X-API-Key": fast_stack.api_key}
    edge = fast_stack.edge_url
    with httpx.Client(timeout=10) as http:
        check = http.get(f"{edge}/test-kommo-connectivity", headers=headers)
        assert check.status_code == 200
        assert check.json()["ok"] is True
        assert check.json()["account"]["subdomain"] == "previdas"
        assert http.get(f"{edge}/test-integration", headers=headers).json()["ok"] is True
        note = http.post(f"{edge}/create-test-note/9100016", headers=headers)
        assert note.status_code == 200
        texts = [
            n["params"]["text"]
            for n in http.get(f"{fast_stack.sandbox_url}/_sandbox/leads/9100016").json()["notes"]
        ]
        assert note.json()["text"] in texts
        lead = http.get(f"{edge}/test-kommo-lead/9100016", headers=headers).json()
        assert lead["lead"]["id"] == 9100016
        assert lead["contact"]["has_phone"] is True
        assert lead["vendedor"]["id"] == lead["lead"]["responsible_user_id"]
        missing = http.get(f"{edge}/test-kommo-lead/9999999", headers=headers)
        assert missing.status_code == 404
        assert "9999999" in missing.json()["error"]
        assert http.get(f"{edge}/test-kommo-lead/9100016").status_code == 401
        assert http.get(f"{edge}/test-kommo-lead/0", headers=headers).status_code == 422


def test_a_revoked_refresh_token_is_reported_fails_fast_and_is_reauthorised(
    fast_stack: Stack,
) -> None:
    address = fast_stack.services["kommo_gateway"][0].address
    with httpx.Client(timeout=10) as http:
        http.post(f"{fast_stack.sandbox_url}/_sandbox/revoke-refresh-tokens").raise_for_status()
        http.post(f"{fast_stack.sandbox_url}/_sandbox/expire-tokens").raise_for_status()

        def refused() -> bool:
            try:
                account(address, timeout=10)
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.UNAUTHENTICATED
            return False

        wait_for(refused, timeout=15, what="the refused state")
        assert status(address).token_state == "refresh_refused"

        headers = {"X-API-Key": fast_stack.api_key}
        health = http.get(
            f"{fast_stack.edge_url}/health", headers={"X-API-Key": fast_stack.api_key}
        ).json()
        assert health["status"] == "degraded"
        assert health["kommo"]["token_state"] == "refresh_refused"
        check = http.get(f"{fast_stack.edge_url}/test-kommo-connectivity", headers=headers)
        assert check.status_code == 503
        assert "/oauth/authorize" in check.json()["advice"]

        # Fail fast: no more calls reach Kommo while the account needs a human.
        requests_before = sandbox_stats(http, fast_stack)["requests"]
        for _ in range(20):
            with pytest.raises(grpc.RpcError):
                account(address, timeout=5)
        assert sandbox_stats(http, fast_stack)["requests"] == requests_before

        # Authorise again through the edge, as an operator would in a browser.
        consent = http.get(
            f"{fast_stack.edge_url}/oauth/authorize", params={"api_key": fast_stack.api_key}
        )
        assert consent.status_code == 302
        approved = http.get(consent.headers["location"])
        assert approved.status_code == 302
        callback = urlparse(approved.headers["location"])
        assert callback.path == "/oauth/callback"
        done = http.get(approved.headers["location"])
        assert done.status_code == 200, done.text
        assert "autorizado" in done.text
        replay = http.get(approved.headers["location"])
        assert replay.status_code == 400
        assert "state" in replay.json()["error"]
        assert parse_qs(callback.query)["state"]
        assert account(address).subdomain == "previdas"
        assert status(address).token_state == "ok"
        assert (
            http.get(
                f"{fast_stack.edge_url}/health", headers={"X-API-Key": fast_stack.api_key}
            ).json()["status"]
            == "ok"
        )


def test_custom_fields_are_written_and_read_back_fresh(fast_stack: Stack) -> None:
    from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
    from bridge.kommo_gateway.v1 import kommo_gateway_pb2_grpc

    address = fast_stack.services["kommo_gateway"][0].address
    with grpc.insecure_channel(address) as channel:
        stub = kommo_gateway_pb2_grpc.KommoGatewayStub(channel)

        def area() -> list[str]:
            lead = stub.GetLead(gw.GetLeadRequest(lead_id=9100018), timeout=10)
            return [v for f in lead.custom_fields if f.field_id == 900002 for v in f.values]

        before = area()  # now cached
        new = "trabalhista" if before != ["trabalhista"] else "previdenciario"
        stub.UpdateFields(
            gw.UpdateFieldsRequest(
                entity="leads",
                entity_id=9100018,
                values=[gw.FieldValue(field_id=900002, value=new)],
            ),
            timeout=10,
        )
        assert area() == [new]
        with pytest.raises(grpc.RpcError) as bad:
            stub.UpdateFields(gw.UpdateFieldsRequest(entity="tasks", entity_id=1), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
