"""The n8n stand-in as a slow n8n: with a delay it answers each envelope only after that
long, holding many open at once (a busy n8n never answers one envelope after another),
and records for each when it arrived, how many were open then, and when it was answered."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devstack.processes import ROOT, free_port
from sandbox.n8n_standin.app import StandinConfig, create_app

DELAY = 1.0
SENDERS = 20


def envelope(n: int) -> dict[str, Any]:
    # Not a message: the stand-in would answer it through a /send-response nobody serves.
    return {"event": "scheduling.requested", "event_id": f"evt-{n:03d}"}


@pytest.fixture
async def standin() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(StandinConfig(api_key="k"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://standin") as client:
        yield client


async def test_envelopes_are_held_side_by_side_and_each_answered_after_the_delay(
    standin: httpx.AsyncClient,
) -> None:
    configured = await standin.post("/_standin/config", json={"delay_seconds": DELAY})
    assert configured.json()["delay_seconds"] == DELAY

    answers = await asyncio.gather(
        *(standin.post("/webhook/bridge", json=envelope(n)) for n in range(SENDERS))
    )

    assert [a.status_code for a in answers] == [200] * SENDERS
    seen = (await standin.get("/_standin/received")).json()
    records = seen["received"]
    assert sorted(r["body"]["event_id"] for r in records) == [
        envelope(n)["event_id"] for n in range(SENDERS)
    ]
    # Every envelope arrived while the ones before it were still held: none waited for
    # another to be answered.
    assert sorted(r["open_at_arrival"] for r in records) == list(range(1, SENDERS + 1))
    assert (seen["max_open"], seen["open"]) == (SENDERS, 0)
    for r in records:
        assert r["answered_at"] - r["arrived_at"] >= DELAY
        assert r["arrived_at"] <= r["received_at"] <= r["answered_at"]


async def test_without_a_delay_envelopes_are_answered_at_once_one_open_at_a_time(
    standin: httpx.AsyncClient,
) -> None:
    for n in range(3):
        assert (await standin.post("/webhook/bridge", json=envelope(n))).status_code == 200
    seen = (await standin.get("/_standin/received")).json()
    assert [r["open_at_arrival"] for r in seen["received"]] == [1, 1, 1]
    assert seen["max_open"] == 1
    assert all("answered_at" in r and "headers" in r and "raw" in r for r in seen["received"])


async def test_reset_forgets_the_most_open_at_once(standin: httpx.AsyncClient) -> None:
    await standin.post("/_standin/config", json={"delay_seconds": 0.2})
    await asyncio.gather(*(standin.post("/webhook/bridge", json=envelope(n)) for n in range(4)))
    assert (await standin.get("/_standin/received")).json()["max_open"] == 4
    await standin.post("/_standin/reset")
    assert (await standin.get("/_standin/received")).json() | {"replies": []} == {
        "received": [],
        "refused": 0,
        "replies": [],
        "open": 0,
        "max_open": 0,
    }


async def test_a_negative_delay_is_refused(standin: httpx.AsyncClient) -> None:
    answer = await standin.post("/_standin/config", json={"delay_seconds": -1})
    assert answer.status_code == 422
    assert (await standin.post("/_standin/config", json={})).json()["delay_seconds"] == 0


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox.n8n_standin"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_process_takes_its_delay_from_standin_delay_seconds() -> None:
    port = free_port()
    process = _start({"STANDIN_PORT": str(port), "STANDIN_DELAY_SECONDS": "0.5"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                config = httpx.post(f"{url}/_standin/config", json={}, timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the stand-in did not start"
                time.sleep(0.1)
        assert config["delay_seconds"] == 0.5
        assert httpx.post(f"{url}/webhook/bridge", json=envelope(1), timeout=10).status_code == 200
        (record,) = httpx.get(f"{url}/_standin/received", timeout=5).json()["received"]
        assert record["answered_at"] - record["arrived_at"] >= 0.5
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_a_bad_standin_delay_stops_the_start_with_one_line_naming_it() -> None:
    process = _start({"STANDIN_PORT": str(free_port()), "STANDIN_DELAY_SECONDS": "soon"})
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr.strip().splitlines() == [
        "n8n stand-in: STANDIN_DELAY_SECONDS must be a number of seconds ≥ 0, got 'soon'"
    ]
