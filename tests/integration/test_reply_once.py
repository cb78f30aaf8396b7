"""One reply per reply token, fenced in the script that stores the reply job: two answers
from n8n to one envelope that both pass the service's first look ("seen this key?")
— two replicas at the same moment — still make one job; the other is told the first's.
(tests/e2e/test_edge_api.py sends its two answers one after the other: the first look
alone refuses the second there.)"""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from services.common.due_queue import now_ms
from services.conversation.store import REPLIES_DUE, ConversationStore


async def test_two_answers_racing_past_the_first_look_make_one_reply_job(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis)
    await store.apply_message(
        conversation_id="c1",
        message_id="m1",
        inbox_entry=json.dumps({"id": "m1", "seq": "1-0", "created_at": 1}),
        history_entry=json.dumps({"role": "customer", "text": "oi"}),
        at_ms=now_ms(),
        due_ms=now_ms(),
        lead_id=9,
        contact_id=8,
        chat_id="chat",
        talk_id=7,
        to_inbox=True,
        history_max=10,
    )
    assert await store.reply_for_key("token") is None  # both answers looked: not seen
    job = {"conversation_id": "c1", "lead_id": "9", "text": "Olá!"}
    first, second = await asyncio.gather(
        store.begin_reply("token", "job-a", job, 60_000),
        store.begin_reply("token", "job-b", job, 60_000),
    )
    # Whichever script ran first stored its job; the other was told that one.
    assert None in (first, second) and {first, second} - {None} <= {"job-a", "job-b"}
    winner = "job-a" if second == "job-a" else "job-b"
    loser = "job-b" if winner == "job-a" else "job-a"
    assert {first, second} == {None, winner}, (first, second)
    assert await store.reply_for_key("token") == winner
    assert await store.reply_job(loser) == {}, "no second job"
    assert await redis.zscore(REPLIES_DUE, loser) is None, "no second job queued"
