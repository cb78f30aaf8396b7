"""With the bridge registered as a Kommo chat channel, replies go through the Chats API
(signed requests) instead of the Salesbot."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for


@pytest.fixture(scope="module")
def channel_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    channel = {
        "KOMMO_CHANNEL_ID": "bridge-channel",
        "KOMMO_CHANNEL_SECRET": "sandbox-channel-secret",
        "KOMMO_SCOPE_ID": "sandbox-scope",
    }
    with isolated_stack(tmp_path_factory, "chats", env=channel) as running:
        yield running


def test_replies_go_through_the_signed_chats_api(channel_stack: Stack) -> None:
    with httpx.Client(timeout=10.0) as http:
        lead, text = 9100014, "Oi, canal próprio"
        customer_writes(http, channel_stack, lead, text)
        reply = wait_for(
            lambda: [
                m
                for m in chat(http, channel_stack, lead)
                if m["direction"] == "outgoing" and text in m["text"]
            ],
            what="reply through the Chats API",
        )
        assert [m["via"] for m in reply] == ["chats_api"]
        stats = http.get(f"{channel_stack.sandbox_url}/_sandbox/stats").json()
        assert stats["chats_api_sends"] == 1
        assert stats["salesbot_runs"] == 0
