"""The rules in force, on a real Redis: the file's until the API sets some, versions with
optimistic concurrency, every replica seeing a change within its refresh time, and a
stored document that no longer validates never stopping the bot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.common.errors import Conflict, InvalidInput
from services.common.settings import ConfigurationError
from services.conversation.context import ContextCache, ContextChanges
from services.conversation.rulebook import RuleBook, load_file
from services.conversation.store.keys import BOT_RULES
from services.conversation.store.rules import RulesStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(redis: aioredis.Redis, clock: Clock, file_path: str = "") -> RuleBook:
    return RuleBook(RulesStore(redis), file_path, refresh_seconds=1.0, clock=clock)


async def test_the_file_then_the_api_and_every_replica_follows(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps({"account": {"keyword_finish": ["atendente"]}}))
    clock = Clock()
    first, second = book(redis, clock, str(rules_file)), book(redis, clock, str(rules_file))
    start = await second.current()
    assert (start.source, start.version) == ("file", 0)
    assert start.rules.account.keyword_finish == ["atendente"]

    written = await first.put(json.dumps({"account": {"trigger": "always"}}), None)
    assert (written.source, written.version) == ("api", 1)
    # The other replica keeps its copy until its refresh time is over, then reads it.
    assert (await second.current()).version == 0
    clock.now += 1.0
    seen = await second.current()
    assert (seen.source, seen.version) == ("api", 1)
    assert seen.rules.account.keyword_finish is None  # the API's document replaces the file's


async def test_a_change_over_a_stale_version_is_refused(redis: aioredis.Redis) -> None:
    rules = book(redis, Clock())
    await rules.put("{}", None)
    await rules.put("{}", 1)
    with pytest.raises(Conflict, match="now version 2"):
        await rules.put("{}", 1)
    assert (await rules.current()).version == 2


async def test_invalid_rules_are_refused_naming_the_fields(redis: aioredis.Redis) -> None:
    rules = book(redis, Clock())
    bad = {"account": {"trigger": "regex", "pattern": "(a+)+"}, "ignore": {"phones": ["1"]}}
    with pytest.raises(InvalidInput) as refused:
        await rules.put(json.dumps(bad), None)
    message = str(refused.value)
    assert "account.pattern:" in message and "ignore.phones:" in message
    assert "Value error" not in message
    assert await redis.exists(BOT_RULES) == 0  # nothing written


async def test_a_stored_document_that_no_longer_validates_falls_back(
    redis: aioredis.Redis,
) -> None:
    await redis.hset(BOT_RULES, mapping={"json": '{"account": {"trigger": "maybe"}}', "version": 4})
    current = await book(redis, Clock()).current()
    assert (current.source, current.version) == ("default", 4)
    assert current.rules.account.trigger is None  # the defaults: answer everyone


def test_a_bad_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_file(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"account": {"keywords": "preço"}}')
    with pytest.raises(ConfigurationError) as refused:
        load_file(str(broken))
    assert refused.value.variables == ("BOT_RULES_FILE",)
    assert "account.keywords" in refused.value.advice


async def test_replicas_hearing_the_changes_keep_their_copy_until_one_is_made(
    redis: aioredis.Redis,
) -> None:
    """While a replica hears every change (ContextChanges subscribed), its rules are not
    checked again a turn (issue 22: one HGET a turn); a change made on any replica is
    published and every copy is dropped at once."""
    replicas = []
    stopping = asyncio.Event()
    clock = Clock()  # the rules' refresh time; the copies keep their own (15 s)
    for _ in range(2):
        copies = ContextCache(15.0)
        listener = ContextChanges(redis, copies)
        replicas.append(
            (
                RuleBook(RulesStore(redis), "", refresh_seconds=1.0, clock=clock, copies=copies),
                listener,
                asyncio.create_task(listener.run(stopping)),
            )
        )
    (first, first_listener, _), (second, second_listener, _) = replicas
    try:
        await asyncio.wait_for(first_listener.subscribed.wait(), 5)
        await asyncio.wait_for(second_listener.subscribed.wait(), 5)
        assert (await second.current()).version == 0

        async def calls() -> int:
            stats = await redis.info("commandstats")
            return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")

        before = await calls()
        for _ in range(5):
            clock.now += 2.0  # past the refresh time: without the copies, an HGET each
            assert (await second.current()).version == 0
        assert await calls() - before == 0, "a kept copy costs nothing"

        await first.put(json.dumps({"account": {"trigger": "always"}}), None)
        # The refresh time does not pass: only the published change can tell it.
        for _ in range(100):
            if (await second.current()).version == 1:
                break
            await asyncio.sleep(0.02)
        assert (await second.current()).version == 1, "the change reached the other replica"
        assert (await first.current()).version == 1
    finally:
        stopping.set()
        await asyncio.gather(*(task for _, _, task in replicas))
