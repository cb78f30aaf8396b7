"""Kommo's ~7 requests a second spent well, across real processes (edge, three gateway
replicas, the Kommo sandbox enforcing 7 req/s): an operator's burst is served in a few
list calls, never a 504, and one token refresh serves everyone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.gateway_helpers import account, gateway_stack, sandbox_stats

FIRST_LEAD = 9100001
BURST = 40


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(
        tmp_path_factory,
        "budget",
        {"KOMMO_RATE_LIMIT_RPS": "7"},
        {"SANDBOX_RATE_LIMIT_RPS": "7"},
    ) as running:
        yield running


def _concurrently(stack: Stack, method: str, paths: list[str]) -> list[httpx.Response]:
    headers = {"X-API-Key": stack.api_key}
    with (
        httpx.Client(base_url=stack.edge_url, headers=headers, timeout=30) as http,
        ThreadPoolExecutor(len(paths)) as pool,
    ):
        return list(pool.map(lambda path: http.request(method, path), paths))


def test_an_operators_burst_of_notes_is_written_in_a_few_list_calls(
    budget_stack: Stack,
) -> None:
    with httpx.Client(timeout=10) as http:
        account(budget_stack.services["kommo_gateway"][0].address)  # a token to begin with
        before = sandbox_stats(http, budget_stack)
        leads = [FIRST_LEAD + n % 20 for n in range(BURST)]
        answers = _concurrently(budget_stack, "POST", [f"/create-test-note/{i}" for i in leads])
        after = sandbox_stats(http, budget_stack)
    assert [a.status_code for a in answers] == [200] * BURST, [a.text for a in answers]
    note_ids = {a.json()["note_id"] for a in answers}
    assert len(note_ids) == BURST and 0 not in note_ids
    assert after["rate_limited_429"] == before["rate_limited_429"]
    requests = after["requests"] - before["requests"]
    assert requests < BURST, f"{requests} Kommo requests for {BURST} notes"


def test_reads_after_a_token_expiry_share_one_refresh_and_few_list_calls(
    budget_stack: Stack,
) -> None:
    reads = 20
    with httpx.Client(timeout=10) as http:
        account(budget_stack.services["kommo_gateway"][1].address)
        http.post(f"{budget_stack.sandbox_url}/_sandbox/expire-tokens").raise_for_status()
        before = sandbox_stats(http, budget_stack)
        # Leads not read before: the gateway's cache does not answer for Kommo.
        leads = [FIRST_LEAD + 20 - reads + n for n in range(reads)]
        answers = _concurrently(budget_stack, "GET", [f"/test-kommo-lead/{i}" for i in leads])
        after = sandbox_stats(http, budget_stack)
    assert [a.status_code for a in answers] == [200] * reads, [a.text for a in answers]
    assert [a.json()["lead"]["id"] for a in answers] == leads
    assert after["token_refreshes"] == before["token_refreshes"] + 1
    assert after["refused_refresh_tokens"] == before["refused_refresh_tokens"]
    assert after["rate_limited_429"] == before["rate_limited_429"]
    lead_gets = after["by_path"].get("/api/v4/leads", 0) - before["by_path"].get("/api/v4/leads", 0)
    assert lead_gets < reads, f"{lead_gets} lead GETs for {reads} concurrent reads"


def test_a_burst_beyond_what_fits_in_the_deadline_is_told_when_to_come_back(
    budget_stack: Stack,
) -> None:
    """Account reads cannot be batched: 60 of them at 7 a second do not fit in the
    edge's 5 s deadline. Each is either answered or refused at once with Retry-After
    (the gateway's estimate, as its message says); none is left to time out (504), none
    fails."""
    burst = 60
    answers = _concurrently(budget_stack, "GET", ["/test-kommo-connectivity"] * burst)
    statuses = [a.status_code for a in answers]
    assert 504 not in statuses and not any(s >= 500 and s != 503 for s in statuses), statuses
    refused = [a for a in answers if a.status_code == 429]
    assert refused, "60 account reads cannot all fit in 5 s at 7 a second"
    for answer in refused:
        told = re.search(r"try again in (\d+) s", answer.json()["error"])
        assert told, answer.text
        # The gateway's own figure, not a default: the edge's header says the same.
        assert answer.headers["retry-after"] == told.group(1), (answer.headers, answer.text)
    assert statuses.count(200) + len(refused) == burst, statuses
