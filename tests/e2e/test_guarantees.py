"""Guarantees no other test pins down alone (issue 22; each kills a mutation named in
tests/mutants/mutations.toml): one webhook carrying several messages of one conversation,
interleaved with others', is recorded in the webhook's order; the bridge's own reply,
echoed by a sandbox that tags Salesbot echoes as a user
(SANDBOX_SALESBOT_ECHO_AUTHOR=user), is recognised by its text alone — no takeover; an
envelope n8n does not take in time is POSTed again with the same id until it does."""

from __future__ import annotations

import random
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
import redis

from bridge.conversation.v1 import conversation_pb2, conversation_pb2_grpc
from devstack.stack import Stack
from sandbox.kommo.state import chat_id_of
from tests.e2e.conftest import chat, customer_writes, envelopes, isolated_stack, wait_for

# n8n gets this long to take an envelope (N8N_TIMEOUT_SECONDS).
N8N_TIMEOUT = 1.0
# Few lanes: a batch of twenty entries queues several deep in each, so entries of one
# conversation spread over lanes (the wrong key) would be applied out of order.
EVENT_LANES = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory,
        "guarantees",
        env={"EVENT_LANES": str(EVENT_LANES), "N8N_TIMEOUT_SECONDS": str(N8N_TIMEOUT)},
        sandbox_env={"SANDBOX_ECHO_DELAY": "0.1", "SANDBOX_SALESBOT_ECHO_AUTHOR": "user"},
    ) as running:
        yield running


def bot_replies(http: httpx.Client, stack: Stack, lead: int) -> list[str]:
    return [
        m["text"]
        for m in chat(http, stack, lead)
        if m["direction"] == "outgoing" and m["author_type"] == "bot"
    ]


def converse(http: httpx.Client, stack: Stack, lead: int, text: str) -> dict[str, Any]:
    """The customer writes and the bot answers; the webhook the sandbox sent."""
    before = len(bot_replies(http, stack, lead))
    sent = customer_writes(http, stack, lead, text)
    assert sent["bridge_status"] == 200
    wait_for(lambda: len(bot_replies(http, stack, lead)) > before, what=f"a reply to {text!r}")
    return sent


def history(api: httpx.Client, lead: int) -> list[dict[str, Any]]:
    found = api.get("/conversations/active", params={"lead_id": lead}).json()["conversations"]
    if not found:
        return []
    debug = api.get("/debug/conversations", params={"conversation_id": found[0]["id"]})
    return list(debug.json()["history"])


def one_webhook(templates: dict[int, str], messages: list[tuple[int, str]]) -> str:
    """A message[add] body with `messages` (lead, text) as items 0, 1, …, in that order,
    each shaped like the sandbox's own webhook for that lead (`templates`: its body)."""
    account: list[tuple[str, str]] = []
    items: dict[int, list[tuple[str, str]]] = {}
    for lead, body in templates.items():
        pairs = urllib.parse.parse_qsl(body, keep_blank_values=True)
        account = [(k, v) for k, v in pairs if k.startswith("account")]
        items[lead] = [(k.removeprefix("message[add][0]"), v) for k, v in pairs if "[add]" in k]
    now = str(int(time.time()))
    out = list(account)
    for index, (lead, text) in enumerate(messages):
        for key, value in items[lead]:
            if key == "[id]":
                value = str(uuid.uuid4())
            elif key == "[text]":
                value = text
            elif key == "[created_at]":
                value = now  # one second for all: only the webhook's order tells them apart
            out.append((f"message[add][{index}]{key}", value))
    return urllib.parse.urlencode(out)


def test_several_messages_of_one_conversation_in_one_webhook_keep_the_webhooks_order(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    """Leads the bridge knows: nothing waits in their partitions, so the ingest applies
    each message in the same call as its ack, in the webhook's order."""
    leads = [9100001, 9100002, 9100003, 9100004]
    templates = {lead: converse(http, stack, lead, f"início {lead}")["body"] for lead in leads}
    _webhook_order_kept(stack, http, api, templates)


def test_a_first_webhook_of_several_new_leads_keeps_each_ones_order(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    """Leads with no conversation yet: their messages go through the partitions' streams
    and the consumer's lanes, which apply them in the webhook's order too."""
    known = converse(http, stack, 9100005, "início 9100005")["body"]
    leads = [9100011, 9100012, 9100013, 9100014]
    assert not any(history(api, lead) for lead in leads)
    _webhook_order_kept(stack, http, api, {lead: first_contact(known, lead) for lead in leads})


def first_contact(template: str, lead: int) -> str:
    """The sandbox's webhook `template` of one lead made into seeded lead `lead`'s (its
    chat, contact and talk), as the sandbox would send it."""
    n = lead - 9100000
    ids = {
        "[element_id]": str(lead),
        "[entity_id]": str(lead),
        "[contact_id]": str(4400000 + n),
        "[talk_id]": str(5200 + n),
        "[chat_id]": chat_id_of(lead),
    }
    pairs = urllib.parse.parse_qsl(template, keep_blank_values=True)
    return urllib.parse.urlencode(
        [(k, ids.get(k.removeprefix("message[add][0]"), v)) for k, v in pairs]
    )


def _webhook_order_kept(
    stack: Stack, http: httpx.Client, api: httpx.Client, templates: dict[int, str]
) -> None:
    """One webhook with five messages of each lead, the leads interleaved (a fixed
    shuffle) and the first lead's first three side by side: each lead's history and
    envelopes hold its messages in the webhook's order."""
    leads = list(templates)
    per_lead = 5
    queue = {lead: [f"{lead}-{n}" for n in range(per_lead)] for lead in leads}
    order: list[tuple[int, str]] = [(leads[0], queue[leads[0]].pop(0)) for _ in range(3)]
    pick = random.Random(22)
    while any(queue.values()):
        lead = pick.choice([le for le in leads if queue[le]])
        order.append((lead, queue[lead].pop(0)))
    answer = http.post(
        stack.webhook_url,
        content=one_webhook(templates, order),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == len(order)

    for lead in leads:
        expected = [f"{lead}-{n}" for n in range(per_lead)]

        def recorded(le: int = lead) -> list[str] | None:
            texts = [
                h["text"]
                for h in history(api, le)
                if h["role"] == "customer" and h["text"].startswith(f"{le}-")
            ]
            return texts if len(texts) == per_lead else None

        assert wait_for(recorded, timeout=20, what=f"the messages of {lead}") == expected
        to_n8n = wait_for(
            lambda le=lead: (  # type: ignore[misc]
                t
                if len(
                    t := [
                        m["text"]
                        for e in envelopes(http, stack)
                        if e["conversation"]["lead_id"] == le
                        for m in e["messages"]
                        if m["text"].startswith(f"{le}-")
                    ]
                )
                == per_lead
                else None
            ),
            timeout=20,
            what=f"the envelopes of {lead}",
        )
        assert to_n8n == expected


def xadds(stack: Stack) -> int:
    """Stream entries Redis has made (scripts' own commands included)."""
    stats = redis.Redis.from_url(stack.redis_url).info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


def ingest(stack: Stack, bodies: list[bytes]) -> conversation_pb2.IngestAck:
    """One batch of webhook bodies, straight to a conversation replica's ingest stream."""
    address = stack.services["conversation"][0].address
    with grpc.insecure_channel(address) as channel:
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        batch = conversation_pb2.IngestBatch(seq=1, bodies=bodies, request_id_prefix="t-")
        return next(iter(stub.IngestWebhooks(iter([batch]), timeout=10)))


def test_a_trickle_is_applied_with_its_ack_and_a_flood_after_it(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    """A customer's message of a known conversation, in a batch of a few webhooks, is
    applied in its ack's own call: no stream entry. A batch of more (a flood) goes
    through the streams, applied after the ack; both reach the history, in order."""
    lead = 9100006
    template = converse(http, stack, lead, "início 9100006")["body"]
    before = xadds(stack)
    ack = ingest(stack, [one_webhook({lead: template}, [(lead, "trickle")]).encode()])
    assert [r.stored for r in ack.results] == [1]
    assert xadds(stack) == before, "a trickle skips the stream"
    flood = [one_webhook({lead: template}, [(lead, f"flood {n}")]).encode() for n in range(9)]
    ack = ingest(stack, flood)
    assert [r.stored for r in ack.results] == [1] * 9
    assert xadds(stack) == before + 9, "a flood is applied after its ack"
    wanted = ["trickle", *[f"flood {n}" for n in range(9)]]

    def recorded() -> list[str] | None:
        texts = [h["text"] for h in history(api, lead) if h["role"] == "customer"]
        return texts[1:] if len(texts) == 1 + len(wanted) else None

    assert wait_for(recorded, timeout=20, what="the trickle and the flood") == wanted


def counters(api: httpx.Client) -> dict[str, int]:
    return dict(api.get("/stats").json()["counters"])


def echoes_as_user(http: httpx.Client, stack: Stack, lead: int, text: str) -> bool:
    """Whether the sandbox sent the echo of the bot's `text` tagged as a user's."""
    for sent in http.get(f"{stack.sandbox_url}/_sandbox/webhooks-sent").json():
        item = dict(urllib.parse.parse_qsl(sent["body"]))
        if (
            item.get("message[add][0][entity_id]") == str(lead)
            and item.get("message[add][0][text]") == text
            and item.get("message[add][0][type]") == "outgoing"
            and item.get("message[add][0][author][type]") == "user"
        ):
            return True
    return False


def test_a_salesbot_echo_tagged_as_a_user_is_recognised_by_its_text(
    stack: Stack, http: httpx.Client, api: httpx.Client
) -> None:
    lead = 9100010
    before = counters(api)
    converse(http, stack, lead, "olá, quero saber do meu processo")
    reply = bot_replies(http, stack, lead)[-1]
    wait_for(lambda: echoes_as_user(http, stack, lead, reply), what="the echo, as a user's")
    # The echo is applied as the bridge's own message (or, were it not recognised, as a
    # person's: a takeover).
    wait_for(
        lambda: (
            (c := counters(api)).get("messages_bot", 0) > before.get("messages_bot", 0)
            or c.get("messages_human", 0) > before.get("messages_human", 0)
        ),
        what="the echo applied",
    )
    after = counters(api)
    assert after.get("messages_human", 0) == before.get("messages_human", 0)
    assert after.get("takeovers_auto", 0) == before.get("takeovers_auto", 0)
    status = api.post("/bot-control", json={"action": "status", "lead_id": lead}).json()
    assert status["bot_state"] == "active", status
    converse(http, stack, lead, "e quanto tempo demora?")  # still answered


def standin(http: httpx.Client, stack: Stack, **config: Any) -> None:
    http.post(f"{stack.standin_url}/_standin/config", json=config).raise_for_status()


def posts_with(http: httpx.Client, stack: Stack, text: str) -> list[dict[str, Any]]:
    """Every POST of an envelope carrying `text` that reached n8n, taken or not."""
    received = http.get(f"{stack.standin_url}/_standin/received").json()["received"]
    return [
        r for r in received if any(m.get("text") == text for m in r["body"].get("messages") or [])
    ]


def test_an_envelope_goes_with_the_same_id_until_n8n_takes_it(
    stack: Stack, http: httpx.Client
) -> None:
    lead, text = 9100011, "o n8n está lento hoje"
    # n8n holds each POST past the bridge's timeout, and answers none: not taken.
    standin(http, stack, auto_reply=False, delay_seconds=N8N_TIMEOUT + 0.5)
    try:
        customer_writes(http, stack, lead, text)
        wait_for(lambda: len(posts_with(http, stack, text)) >= 3, 20, "three POSTs of it")
    finally:
        standin(http, stack, auto_reply=True, delay_seconds=0)
    wait_for(lambda: bot_replies(http, stack, lead), 20, "the reply once n8n took it")
    posts = posts_with(http, stack, text)
    event_id = posts[0]["body"]["event_id"]
    assert {p["body"]["event_id"] for p in posts} == {event_id}
    # n8n (or a proxy in front of it) deduplicates on the Standard Webhooks id.
    assert [p["headers"]["webhook-id"] for p in posts] == [event_id] * len(posts)
