"""A proactive start outside working hours waits for the next window and says when."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import isolated_stack


def _closed_window(now: datetime) -> tuple[str, datetime]:
    """A one-hour window starting two hours from now (UTC), and when it opens."""
    opens = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    closes = opens.hour + 1
    return f"{opens.hour:02d}:00-{closes:02d}:00", opens


@pytest.fixture(scope="module")
def stack_and_opening(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, datetime]]:
    hours, opens = _closed_window(datetime.now(UTC))
    with isolated_stack(
        tmp_path_factory,
        "hours",
        env={"PROACTIVE_HOURS": hours, "PROACTIVE_DAYS": "mon-sun", "BRIDGE_TIMEZONE": "UTC"},
    ) as running:
        yield running, opens


def test_a_start_outside_working_hours_waits_and_the_api_says_when(
    stack_and_opening: tuple[Stack, datetime],
) -> None:
    stack, opens = stack_and_opening
    with httpx.Client(base_url=stack.edge_url, headers={"X-API-Key": stack.api_key}) as api:
        started = api.post("/start-proactive", json={"lead_id": 9100001, "trigger": "form"})
        again = api.post("/start-proactive", json={"lead_id": 9100001, "trigger": "form"})
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["status"] == "scheduled"
    assert body["scheduled_for"] == opens.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Asked again while it waits: the same start, and when it goes.
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "existing"
    assert again.json()["scheduled_for"] == body["scheduled_for"]
    time.sleep(1.0)
    received = httpx.get(f"{stack.standin_url}/_standin/received").json()["received"]
    assert not [r for r in received if r["body"]["event"] == "conversation.proactive"]
