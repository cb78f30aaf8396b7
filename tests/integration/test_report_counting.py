"""The reports' counts (issue 23), against a real Redis: each in the script of the change
it counts, never twice for one change or one message, under the conversation's vendedor,
pipeline, stage, origin and trigger, in the day of BRIDGE_TIMEZONE, kept 13 months."""

from __future__ import annotations

from datetime import date

import redis.asyncio as aioredis

from services.common.due_queue import now_ms, text
from services.common.report_store import ReportStore
from services.common.reports import REPORT_SECONDS, Query, day_key
from services.conversation import reports
from services.conversation.store.bot_state import BotStore
from services.conversation.store.conversations import Applied, ConversationStore
from services.conversation.store.proactive import ProactiveStore
from services.scheduling import reports as scheduling_reports
from services.scheduling.store import SchedulingStore
from tests.integration.test_conversation_store import _message

TIMEZONE = "America/Sao_Paulo"


async def _today(redis: aioredis.Redis, store: ConversationStore) -> dict[str, int]:
    reader = ReportStore(redis, store.report_days, reports.FIGURES)
    [(_, counts)] = await reader.read_days([store.report_days.today()])
    return counts


async def test_a_new_conversations_first_message_is_counted_once_with_whose_it_is(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, timezone=TIMEZONE)
    first = _message("c1", "m1", 9, counter="messages_customer", origin="waba")
    assert await store.apply_message(**first) == Applied.APPLIED
    # Kommo redelivers it: applied once, counted once.
    assert await store.apply_message(**first) == Applied.DUPLICATE
    # Nobody knows whose the conversation is yet: nothing reported, the count waits.
    assert await _today(redis, store) == {}
    [claim] = await store.turns.claim(10, 5000)
    assert await store.commit_turn(
        conversation_id="c1",
        claim=claim,
        consumed=1,
        reply_token="tok",
        event_id="ev",
        payload="{}",
        url="http://n8n",
        check_after_ms=0,
        turn_started_ms=now_ms(),
        fields={"vendedor_id": 10000002, "pipeline_id": 8100001, "stage_id": 71000001},
        counters={"decision_answer": 1},
    )
    whose = "|10000002|8100001|71000001|waba|-"
    assert await _today(redis, store) == {
        f"messages_customer{whose}": 1,
        f"decision_answer{whose}": 1,
        f"conversations_started{whose}": 1,
    }
    # The next message knows whose the conversation is: counted with its apply.
    second = _message("c1", "m2", 9, counter="messages_customer", to_inbox=False)
    assert await store.apply_message(**second) == Applied.APPLIED
    counts = await _today(redis, store)
    assert counts[f"messages_customer{whose}"] == 2
    assert counts[f"conversations_started{whose}"] == 1
    # Kept 13 months and a margin, counts only.
    today = store.report_days.key()
    assert 399 * 86400 < await redis.ttl(today) <= REPORT_SECONDS


async def test_a_takeover_is_counted_in_its_state_change_once(redis: aioredis.Redis) -> None:
    store = ConversationStore(redis, timezone=TIMEZONE)
    bots = BotStore(redis, timezone=TIMEZONE)
    await store.apply_message(**_message("c2", "m1", 9))
    await store.record_decision("c2", {"vendedor_id": 7, "pipeline_id": 81, "stage_id": 71})
    for _ in range(2):  # tried again: the state did not change the second time
        await bots.set_state("c2", "paused", "Ana", "/assumir", 0, "takeovers_command")
    await bots.set_state("c2", "active", "Ana", "/liberar", 0, "resumes_command")
    # A handoff is counted each time one happens.
    for _ in range(2):
        await bots.set_state("c2", "paused", "n8n", "pediu", 0, "handoffs_ai", count_always=True)
    counts = await _today(redis, store)
    assert counts["takeovers_command|7|81|71|-|-"] == 1
    assert counts["resumes_command|7|81|71|-|-"] == 1
    assert counts["handoffs_ai|7|81|71|-|-"] == 2
    assert (await bots.counters())["takeovers_command"] == 1
    # An erased conversation changes nothing and counts nothing.
    assert await bots.set_state("gone", "paused", "Ana", "x", 0, "takeovers_command") is None
    assert (await bots.counters())["takeovers_command"] == 1


async def test_a_proactive_start_counts_the_conversation_it_opens_under_its_trigger(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, timezone=TIMEZONE)
    starts = ProactiveStore(redis, timezone=TIMEZONE)
    for _ in range(2):  # a second start of the same lead opens nothing
        await starts.ensure_conversation("c3", 9, 8, "form", (10000004, 8100001, 71000002))
    assert await _today(redis, store) == {
        "conversations_started|10000004|8100001|71000002|-|form": 1
    }
    # Its first turn does not count it again.
    await store.apply_message(**_message("c3", "m1", 9, counter="messages_customer"))
    [claim] = await store.turns.claim(10, 5000)
    assert await store.commit_turn(
        conversation_id="c3",
        claim=claim,
        consumed=1,
        reply_token="tok3",
        event_id="ev3",
        payload="{}",
        url="http://n8n",
        check_after_ms=0,
        turn_started_ms=now_ms(),
    )
    counts = await _today(redis, store)
    assert counts["conversations_started|10000004|8100001|71000002|-|form"] == 1
    assert counts["messages_customer|10000004|8100001|71000002|-|form"] == 1


async def test_the_report_reads_a_range_of_days_in_one_round_trip(redis: aioredis.Redis) -> None:
    await redis.hset(
        day_key(reports.DAY_PREFIX, date(2026, 12, 1)), "messages_customer|1|2|3|waba|-", 4
    )
    reader = ReportStore(redis, reports.report_days(TIMEZONE), reports.FIGURES)
    days = await reader.read_days([date(2026, 11, 30), date(2026, 12, 1)])
    assert days == [
        (date(2026, 11, 30), {}),
        (date(2026, 12, 1), {"messages_customer|1|2|3|waba|-": 4}),
    ]


async def test_settled_periods_are_summed_once_and_today_is_read_as_it_is(
    redis: aioredis.Redis,
) -> None:
    today, settled = date(2026, 12, 6), date(2026, 12, 5)
    for day, n in ((date(2026, 11, 3), 2), (date(2026, 12, 5), 3), (today, 4)):
        await redis.hset(day_key(reports.DAY_PREFIX, day), "messages_customer|7|81|71|waba|-", n)
    query = Query.parse(today, "2026-11-01", "2026-12-06", "vendedor", {})
    reader = ReportStore(redis, reports.report_days(TIMEZONE), reports.FIGURES)
    first = await reader.report(query, settled)
    assert first.rows[0].group == "7" and first.rows[0].values["customer_messages"] == 9
    # November (a whole settled month) and Dec 1-5 are kept; today is not.
    kept = sorted(text(k) for k in await redis.keys(f"{reader.sums_prefix}*"))
    assert kept == [
        f"{reader.sums_prefix}2026-11-01:2026-11-30:vendedor:-",
        f"{reader.sums_prefix}2026-12-01:2026-12-05:vendedor:-",
    ]
    # What changes after: a settled day's sums stay as kept, today's are read anew.
    await redis.hset(
        day_key(reports.DAY_PREFIX, date(2026, 11, 3)), "messages_customer|7|81|71|waba|-", 99
    )
    await redis.hset(day_key(reports.DAY_PREFIX, today), "messages_customer|7|81|71|waba|-", 5)
    again = await reader.report(query, settled)
    assert again.rows[0].values["customer_messages"] == 10
    # Another grouping or filter has sums of its own.
    filtered = Query.parse(today, "2026-11-01", "2026-12-06", "day", {"vendedor": "8"})
    assert (await reader.report(filtered, settled)).rows == []
    by_day = await reader.report(Query.parse(today, "2026-11-01", "2026-12-06", "day", {}), settled)
    assert [(r.group, r.values["customer_messages"]) for r in by_day.rows] == [
        ("2026-11-03", 99),  # summed anew: a day grouping keeps sums of its own
        ("2026-12-05", 3),
        ("2026-12-06", 5),
    ]
    by_week = await reader.report(
        Query.parse(today, "2026-11-01", "2026-12-06", "week", {}), settled
    )
    assert [r.group for r in by_week.rows] == ["2026-11-02", "2026-11-30"]


async def test_an_agendamento_is_counted_when_requested_and_once_when_it_is_settled(
    redis: aioredis.Redis,
) -> None:
    store = SchedulingStore(redis, timezone=TIMEZONE)
    owner = scheduling_reports.owner(10000003, 8100001, 71000002)
    record = {"id": "req-1", "lead_id": "9100002", "status": "pending"}
    await store.create("req-1", record, now_ms(), owner=owner)
    await store.update("req-1", status="delivered", attempts=1)
    for _ in range(2):  # n8n reports it twice
        await store.update("req-1", status="confirmed", detail="")
    await store.create("req-2", {**record, "id": "req-2"}, now_ms(), owner=owner)
    await store.update("req-2", status="failed", detail="n8n refused it")
    await store.update("gone", status="confirmed")  # erased meanwhile: nothing
    reader = ReportStore(redis, store.report_days, scheduling_reports.FIGURES)
    [(_, counts)] = await reader.read_days([store.report_days.today()])
    whose = "|10000003|8100001|71000002|-|-"
    assert counts == {
        f"agendamentos_requested{whose}": 2,
        f"agendamentos_confirmed{whose}": 1,
        f"agendamentos_failed{whose}": 1,
    }
    assert (await store.get("req-1"))["status"] == "confirmed"
    today = store.report_days.today()
    report = await reader.report(Query.parse(today, "", "", "vendedor", {}))
    assert report.rows[0].group == "10000003"
    assert report.rows[0].values == {
        "agendamentos_requested": 2.0,
        "agendamentos_confirmed": 1.0,
        "agendamentos_failed": 1.0,
    }


async def test_a_reply_refused_for_good_is_counted_once_as_a_delivery_failure(
    redis: aioredis.Redis,
) -> None:
    store = ConversationStore(redis, timezone=TIMEZONE)
    await store.apply_message(**_message("c4", "m1", 9))
    await store.record_decision("c4", {"vendedor_id": 7, "pipeline_id": 81, "stage_id": 71})
    job = {"conversation_id": "c4", "lead_id": "9", "text": "oi"}
    assert await store.begin_reply("key-4", "job-4", job, 60_000) is None
    assert await store.reply_failed("job-4", "Kommo: 400 the chat is closed")
    assert not await store.reply_failed("job-4", "again")  # tried again: counted once
    assert not await store.reply_failed("gone", "no such job")
    counts = await _today(redis, store)
    assert counts["replies_failed|7|81|71|-|-"] == 1
    assert (await store.reply_job("job-4"))["state"] == "failed"
