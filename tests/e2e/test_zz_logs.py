"""Runs after the other end-to-end tests of the package (file order): nothing secret
and no customer's phone number in any log line the stack wrote."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx

from devstack.stack import SANDBOX_CLIENT_SECRET, SANDBOX_REFRESH_TOKEN, Stack


def test_logs_hold_no_secret_token_or_phone_number(stack: Stack, http: httpx.Client) -> None:
    contact = http.get(f"{stack.sandbox_url}/_sandbox/leads/9100001").json()["lead"]
    assert contact  # the stack served traffic; its logs are worth reading
    canaries = {
        stack.api_key,
        stack.n8n_api_key,
        stack.webhook_secret,
        SANDBOX_CLIENT_SECRET,
        SANDBOX_REFRESH_TOKEN,
    }
    if password := urlsplit(stack.redis_url).password:
        canaries.add(password)
    # Not inside a longer token: a random hex request id ("f0a552379641412e") holds digit
    # runs that look like a Brazilian number.
    phone = re.compile(r"(?<![0-9A-Za-z])\+?55\s?\d{2}\s?9?\d{4}-?\d{4}(?![0-9A-Za-z])")
    logs = {p.name: p.log() for ps in stack.services.values() for p in ps}
    assert logs and all(logs.values())
    for name, text in logs.items():
        for canary in canaries:
            assert canary not in text, f"a secret leaked into the {name} log"
        assert not phone.search(text), f"a phone number leaked into the {name} log"
        assert "Bearer " not in text
