"""The sandbox retries a failed webhook as Kommo does, when told to (the soak run)."""

from __future__ import annotations

import asyncio

import httpx

from sandbox.kommo.webhooks import WebhookSender

URL = "http://bridge.test/webhooks/kommo?secret=s"


def bridge_failing(times: int) -> tuple[httpx.MockTransport, list[int]]:
    answered: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        answered.append(503 if len(answered) < times else 200)
        return httpx.Response(answered[-1])

    return httpx.MockTransport(answer), answered


async def settled(sender: WebhookSender) -> None:
    """Until the background retries are done (polled: the sender exposes no event)."""
    for _ in range(200):
        if not sender.retries_pending:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("retries still pending after 2 s")


async def test_a_failed_webhook_is_delivered_again_until_it_is_taken() -> None:
    transport, answered = bridge_failing(2)
    sender = WebhookSender(1.0, transport, retries=5, retry_delay=0.01)
    (first,) = await sender.deliver("message", [URL], "a=1")
    assert first.status == 503  # the caller hears the first attempt at once
    await settled(sender)
    assert answered == [503, 503, 200]
    assert (sender.retried, sender.given_up) == (2, 0)
    await sender.aclose()


async def test_retries_run_out_and_are_counted() -> None:
    transport, answered = bridge_failing(10)
    sender = WebhookSender(1.0, transport, retries=2, retry_delay=0.01)
    await sender.deliver("message", [URL], "a=1")
    await settled(sender)
    assert answered == [503, 503, 503]
    assert (sender.retried, sender.given_up) == (2, 1)
    await sender.aclose()


async def test_without_retries_a_failure_is_final() -> None:
    transport, answered = bridge_failing(1)
    sender = WebhookSender(1.0, transport)
    await sender.deliver("message", [URL], "a=1")
    assert sender.retries_pending == 0 and answered == [503]
    await sender.aclose()
