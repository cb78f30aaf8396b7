"""Bot rules: when the bot answers, for whom, and how its replies are cut."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.kommo_ids import KOMMO_ID_MAX
from services.conversation import pattern_check, rules_document, rules_matching
from services.conversation.patterns import compile_pattern
from services.conversation.rules import (
    Decision,
    HoursDefaults,
    TurnFacts,
    decide,
    effective,
    shortest_split,
    split_reply,
    typing_pause,
)
from services.conversation.rules_document import BotRules, SplitReplies
from services.conversation.rules_matching import normalize_phone

SP = ZoneInfo("America/Sao_Paulo")
DEFAULTS = HoursDefaults("America/Sao_Paulo", "08:00-20:00", "mon-sat")
PIPELINE, STAGE = 7100001, 71000001


def at_sp(day: date, hour: int, minute: int = 0) -> datetime:
    """A São Paulo wall-clock time, given as the UTC instant the bridge would see."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SP).astimezone(UTC)


# 2026-11-23 is a Monday.
MON, TUE, WED, THU, FRI, SAT, SUN = (date(2026, 11, 23) + timedelta(days=i) for i in range(7))
NEXT_MON, NEXT_TUE, NEXT_WED, NEXT_THU = (date(2026, 11, 30) + timedelta(days=i) for i in range(4))


def facts(**changes: Any) -> TurnFacts:
    base = TurnFacts(
        now=at_sp(WED, 12),
        texts=["oi"],
        session_started=False,
        session_engaged=None,
        last_bot_activity=None,
        phones=["+55 11 91234-5678"],
        contact_id=4400001,
        tags=["novo"],
        pipeline_id=PIPELINE,
        stage_id=STAGE,
        out_of_hours_replied_for=None,
    )
    return dataclasses.replace(base, **changes)


def bot_rules(**document: Any) -> BotRules:
    return BotRules.model_validate(document)


def refusal(document: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    """The first error's location and message for a document that must be refused."""
    with pytest.raises(ValidationError) as caught:
        BotRules.model_validate(document)
    error = caught.value.errors()[0]
    return tuple(error["loc"]), error["msg"]


# -- scopes ------------------------------------------------------------------------------

LAYERED = {
    "account": {
        "trigger": "keyword",
        "keywords": ["preço"],
        "keyword_finish": ["atendente"],
        "expire_minutes": 60,
    },
    "pipelines": {str(PIPELINE): {"keywords": ["orçamento"], "expire_minutes": 30}},
    "stages": {"71000002": {"trigger": "always", "expire_minutes": None}},
}


def test_a_stage_overrides_its_pipeline_which_overrides_the_account_field_by_field() -> None:
    layered = bot_rules(**LAYERED)
    merged, scope = effective(layered, PIPELINE, 71000002)
    assert scope == "stage 71000002"
    assert merged.trigger == "always"  # the stage's
    assert merged.keywords == ["orçamento"]  # the pipeline's
    assert merged.expire_minutes == 30  # the stage left it null: the pipeline's
    assert merged.keyword_finish == ["atendente"]  # the account's


CLOSED_HOLD = {
    "enabled": True,
    "mode": "hold",
    "reply": "Nosso horário é de 8h às 18h.",
}


def test_a_scopes_nested_object_changes_only_the_fields_it_names() -> None:
    layered = bot_rules(
        account={"out_of_hours": CLOSED_HOLD, "split": {"max_chars": 300}},
        pipelines={str(PIPELINE): {"split": {"max_pause_seconds": 2}}},
        stages={str(STAGE): {"out_of_hours": {"reply": "Voltamos às 8h!"}}},
    )
    merged, scope = effective(layered, PIPELINE, STAGE)
    assert scope == f"stage {STAGE}"
    # Only the text changed for the stage: handling out of hours stays on, and held.
    assert (merged.out_of_hours.enabled, merged.out_of_hours.mode) == (True, "hold")
    assert merged.out_of_hours.reply == "Voltamos às 8h!"
    assert (merged.split.max_chars, merged.split.max_pause_seconds) == (300, 2)
    assert merged.split.min_pause_seconds == 1.0  # the built-in default, named nowhere
    night = decide(layered, facts(now=at_sp(WED, 22)), DEFAULTS)
    assert (night.action, night.out_of_hours_reply, night.rule) == (
        "hold",
        "Voltamos às 8h!",
        f"stage {STAGE}",
    )


def test_a_stage_may_turn_on_what_the_account_describes() -> None:
    account = {**CLOSED_HOLD, "enabled": False}
    layered = bot_rules(
        account={"out_of_hours": account},
        stages={str(STAGE): {"out_of_hours": {"enabled": True}}},
    )
    assert decide(layered, facts(now=at_sp(WED, 22)), DEFAULTS).action == "hold"
    assert decide(layered, facts(now=at_sp(WED, 22), stage_id=71000009), DEFAULTS).action == (
        "answer"
    )


def test_two_halves_that_do_not_fit_take_the_safe_reading() -> None:
    # Each scope fits the account; a stage over this pipeline meets min 5 > max 3.
    layered = bot_rules(
        pipelines={str(PIPELINE): {"split": {"min_pause_seconds": 5}}},
        stages={str(STAGE): {"split": {"max_pause_seconds": 3}}},
    )
    merged, _ = effective(layered, PIPELINE, STAGE)
    assert (merged.split.min_pause_seconds, merged.split.max_pause_seconds) == (3, 3)


def test_a_stored_document_keeps_what_each_scope_named() -> None:
    # Stored as the API stores it: the fields a scope left out stay out, so they keep
    # merging over the wider scope after a round trip.
    layered = bot_rules(
        account={"out_of_hours": CLOSED_HOLD},
        stages={str(STAGE): {"out_of_hours": {"reply": "Voltamos às 8h!"}}},
    )
    stored = BotRules.model_validate_json(layered.model_dump_json(exclude_unset=True))
    assert effective(stored, PIPELINE, STAGE) == effective(layered, PIPELINE, STAGE)
    assert effective(stored, PIPELINE, STAGE)[0].out_of_hours.enabled is True


def test_without_overrides_for_the_lead_the_account_rules_apply() -> None:
    layered = bot_rules(**LAYERED)
    in_pipeline, scope = effective(layered, PIPELINE, STAGE)
    assert (scope, in_pipeline.trigger, in_pipeline.keywords) == (
        "pipeline 7100001",
        "keyword",
        ["orçamento"],
    )
    elsewhere, scope = effective(layered, 7100009, STAGE)
    assert (scope, elsewhere.keywords, elsewhere.expire_minutes) == ("account", ["preço"], 60)
    stage_elsewhere, scope = effective(layered, 7100009, 71000002)
    assert (scope, stage_elsewhere.keywords, stage_elsewhere.expire_minutes) == (
        "stage 71000002",
        ["preço"],
        60,
    )


def test_the_built_in_defaults_answer_everyone_and_split_long_replies() -> None:
    merged, scope = effective(BotRules(), PIPELINE, STAGE)
    assert scope == "account"
    assert merged.trigger == "always"
    assert merged.keyword_finish == []
    assert merged.expire_minutes is None
    assert merged.out_of_hours.enabled is False
    assert merged.split.enabled and merged.split.max_chars == 600
    assert decide(BotRules(), facts(), DEFAULTS).action == "answer"


def test_the_decision_names_the_scope_of_the_rule_that_decided() -> None:
    layered = bot_rules(**LAYERED)
    not_matched = decide(layered, facts(texts=["oi"]), DEFAULTS)
    assert (not_matched.action, not_matched.rule) == ("not_triggered", "account")
    finished = decide(layered, facts(texts=["atendente"], stage_id=71000002), DEFAULTS)
    assert (finished.action, finished.rule) == ("finish", "account")
    answered = decide(layered, facts(stage_id=71000002), DEFAULTS)
    assert (answered.action, answered.rule) == ("answer", "stage 71000002")


# -- keywords ----------------------------------------------------------------------------


def test_keywords_ignore_accents_and_case() -> None:
    assert rules_matching.matched_keyword(["preço"], ["Qual o PRECO?"]) == "preço"
    assert rules_matching.matched_keyword(["orcamento"], ["quero um orçamento"]) == "orcamento"
    assert rules_matching.matched_keyword(["Atendente"], ["ATENDENTE!"]) == "Atendente"


def test_keywords_match_whole_words_and_phrases_only() -> None:
    assert rules_matching.matched_keyword(["preço"], ["preçoxyz"]) is None
    assert rules_matching.matched_keyword(["preço"], ["superpreço"]) is None
    assert rules_matching.matched_keyword(["quanto custa"], ["e quanto   custa?"]) == "quanto custa"
    assert rules_matching.matched_keyword(["quanto custa"], ["quantocusta"]) is None
    assert rules_matching.matched_keyword(["oi", "preço"], ["nada", "o preço."]) == "preço"


def test_a_keyword_needs_a_letter_or_a_digit() -> None:
    location, message = refusal({"account": {"keywords": ["?!"]}})
    assert location == ("account", "keywords", 0)
    assert "letter or digit" in message


# -- regular expressions -------------------------------------------------------------------

CATASTROPHIC = [
    (r"(a+)+", pattern_check.NESTED_QUANTIFIER),
    (r"(a*)*", pattern_check.NESTED_QUANTIFIER),
    (r"(.*a){20}", pattern_check.NESTED_QUANTIFIER),
    (r"(\w+\s?)*$", pattern_check.NESTED_QUANTIFIER),
    (r"(\d{1,3})+", pattern_check.NESTED_QUANTIFIER),
    (r"(a|aa)+", pattern_check.OVERLAPPING_ALTERNATIVES),
    (r"(a|a)*", pattern_check.OVERLAPPING_ALTERNATIVES),
    (r"(ab?b?)+", pattern_check.OVERLAPPING_ALTERNATIVES),
    (r"(?:ab|\wb)+", pattern_check.OVERLAPPING_ALTERNATIVES),
    (r"(a?)*", pattern_check.EMPTY_REPEAT),
    (r".*a.*b", pattern_check.COMPETING_QUANTIFIERS),
    (r"\w+\s*\w+x", pattern_check.COMPETING_QUANTIFIERS),
    (r"(\w+)?\w+x", pattern_check.COMPETING_QUANTIFIERS),
    (r"[a-z]{0,50}[a-z]{0,50}x", pattern_check.COMPETING_QUANTIFIERS),
]


@pytest.mark.parametrize(("pattern", "why"), CATASTROPHIC)
def test_backtracking_shapes_are_refused_naming_the_field(pattern: str, why: str) -> None:
    location, message = refusal({"stages": {"71000002": {"trigger": "regex", "pattern": pattern}}})
    assert location == ("stages", "71000002", "pattern")
    assert message == f"Value error, the pattern {why}"


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"(a)?(?(1)b|c)", "backreference"),
        (r"(?=a)b", "lookahead or lookbehind"),
        (r"a(?!b)", "lookahead or lookbehind"),
        (r"(?<=a)b", "lookahead or lookbehind"),
        (r"(?<!a)b", "lookahead or lookbehind"),
        (r"(preço", "not a regular expression"),
        ("a" * 301, "at most 300"),
    ],
)
def test_lookarounds_backreferences_bad_syntax_and_long_patterns_are_refused(
    pattern: str, why: str
) -> None:
    location, message = refusal({"account": {"trigger": "regex", "pattern": pattern}})
    assert location == ("account", "pattern")
    assert why in message


@pytest.mark.parametrize(
    "pattern",
    [
        r"\b(pre[cç]o|valor|quanto custa)\b",
        r"^(oi|ol[aá])\b",
        r"\d{3}\.?\d{3}\.?\d{3}-?\d{2}",
        r"quero.*comprar",
        r".*quero.*",  # a trailing .* cannot fail, so it cannot backtrack
        r"\b\d+\s*reais\b",  # \d+ and \s* share no character
        r"\w+@\w+\.com",
        r"(foo|foobar)+",  # after "foo", "bar" and a new "foo" start differently
        r"(?:bom dia|boa tarde|boa noite)+",  # the alternatives part at "m", "a t", "a n"
        r"(\w\s?)+$",
        "a" * 300,
    ],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    assert BotRules.model_validate({"account": {"trigger": "regex", "pattern": pattern}})


def test_patterns_are_compiled_once_case_insensitively() -> None:
    pattern = r"\bvalor\b"
    assert compile_pattern(pattern) is compile_pattern(pattern)
    assert compile_pattern(pattern).search("Qual o VALOR?")


def test_a_regex_trigger_answers_first_messages_that_match() -> None:
    regex = bot_rules(account={"trigger": "regex", "pattern": r"\b(pre[cç]o|valor)\b"})
    matched = decide(regex, facts(texts=["Qual o VALOR?"]), DEFAULTS)
    assert (matched.action, matched.engaged) == ("answer", True)
    assert matched.reason == "trigger: first message matched the pattern"
    other = decide(regex, facts(texts=["bom dia"]), DEFAULTS)
    assert (other.action, other.engaged) == ("not_triggered", False)


def test_a_pattern_of_competing_bounded_repeats_decides_a_long_message_at_once() -> None:
    # Accepted (no repeat is open-ended); Python's `re` did not finish on 4,096 letters
    # within pytest's timeout, RE2 answers in a millisecond.
    regex = bot_rules(account={"trigger": "regex", "pattern": r"[a-z]{0,32}" * 4 + "!"})
    assert decide(regex, facts(texts=["a" * 4096]), DEFAULTS).action == "not_triggered"
    assert decide(regex, facts(texts=["a" * 4095 + "!"]), DEFAULTS).action == "answer"


def test_only_the_first_4096_characters_of_a_message_are_matched() -> None:
    regex = bot_rules(account={"trigger": "regex", "pattern": r"\bvalor\b"})
    late = "x " * 2100 + "valor"
    assert decide(regex, facts(texts=[late]), DEFAULTS).action == "not_triggered"
    early = "valor " + "x" * 5000
    assert decide(regex, facts(texts=[early]), DEFAULTS).action == "answer"
    assert rules_matching.matched_keyword(["valor"], [late]) is None


# -- phones and the ignore list ------------------------------------------------------------


def test_a_phone_typed_in_any_format_is_one_number() -> None:
    typed = ["+55 (11) 98765-4321", "5511987654321", "011 98765-4321", "(11) 98765-4321"]
    assert {normalize_phone(raw) for raw in typed} == {"+5511987654321"}
    # WhatsApp's old 8-digit form of a Brazilian mobile is the same line.
    assert normalize_phone("+55 11 8765-4321") == "+5511987654321"
    assert normalize_phone("(11) 3456-7890") == "+551134567890"  # a landline keeps 8
    assert normalize_phone("abc") is None
    assert normalize_phone("123") is None
    assert normalize_phone("912 345 678", region="PT") == "+351912345678"


def test_ignored_phones_are_stored_in_e164_and_a_bad_one_is_named_by_position() -> None:
    listed = bot_rules(ignore={"phones": ["+55 (11) 98765-4321", "011 98765-4321"]})
    assert listed.ignore.phones == ["+5511987654321"]
    location, message = refusal({"ignore": {"phones": ["+55 11 98765-4321", "98765"]}})
    assert location == ("ignore", "phones")
    assert "entry 1 ('98765') is not a valid phone number" in message


def test_the_phone_region_is_part_of_the_ignore_list() -> None:
    document = {"ignore": {"phone_region": "PT", "phones": ["912 345 678"]}}
    portuguese = BotRules.model_validate(document)
    assert portuguese.ignore.phones == ["+351912345678"]
    # Kommo's contact phones are read in the same country.
    assert decide(portuguese, facts(phones=["912345678"]), DEFAULTS).action == "ignore"
    with pytest.raises(ValidationError):
        BotRules.model_validate({"ignore": {"phones": ["912 345 678"]}})


def test_an_ignored_phone_matches_the_contact_in_another_format_and_is_masked() -> None:
    listed = bot_rules(ignore={"phones": ["+55 (11) 98765-4321"]})
    decision = decide(listed, facts(phones=["+1 650 253 0000", "011 98765-4321"]), DEFAULTS)
    assert decision.action == "ignore"
    assert decision.reason == "ignore list: phone +55 11 9****-4321"
    assert decide(listed, facts(phones=["+55 11 98765-4322"]), DEFAULTS).action == "answer"


@pytest.mark.parametrize(
    ("ignore", "reason"),
    [
        ({"contact_ids": [4400001]}, "ignore list: contact 4400001"),
        ({"tags": ["NOVO"]}, "ignore list: tag 'Novo'"),
        ({"pipelines": [PIPELINE]}, f"ignore list: pipeline {PIPELINE}"),
        ({"stages": [STAGE]}, f"ignore list: stage {STAGE}"),
    ],
)
def test_the_ignore_list_by_contact_tag_pipeline_and_stage(
    ignore: dict[str, Any], reason: str
) -> None:
    decision = decide(bot_rules(ignore=ignore), facts(tags=["Novo"]), DEFAULTS)
    assert (decision.action, decision.reason, decision.rule) == ("ignore", reason, "account")


def test_others_are_not_ignored() -> None:
    ignore = {"contact_ids": [4400002], "tags": ["vip"], "pipelines": [7100002], "stages": [143]}
    assert decide(bot_rules(ignore=ignore), facts(), DEFAULTS).action == "answer"


def test_an_ignored_contact_gets_nothing_not_even_the_out_of_hours_reply() -> None:
    closed = bot_rules(
        account={
            "keyword_finish": ["atendente"],
            "out_of_hours": {"enabled": True, "reply": "Fechado", "mode": "hold"},
        },
        ignore={"contact_ids": [4400001]},
    )
    decision = decide(closed, facts(now=at_sp(SUN, 12), texts=["atendente"]), DEFAULTS)
    assert decision == Decision("ignore", "ignore list: contact 4400001", "account")


# -- the trigger, the session --------------------------------------------------------------

KEYWORD = {"account": {"trigger": "keyword", "keywords": ["preço", "orçamento"]}}


def test_a_keyword_trigger_judges_the_first_messages_of_a_session() -> None:
    keyword = bot_rules(**KEYWORD)
    matched = decide(keyword, facts(texts=["oi", "qual o preco?"]), DEFAULTS)
    assert (matched.action, matched.engaged) == ("answer", True)
    assert matched.reason == "trigger: first message matched keyword 'preço'"
    other = decide(keyword, facts(texts=["bom dia"]), DEFAULTS)
    assert (other.action, other.engaged) == ("not_triggered", False)
    assert other.reason == "trigger: first message matched no keyword"


def test_a_session_that_did_not_match_stays_with_people_whatever_comes_next() -> None:
    later = facts(texts=["qual o preço?"], session_started=True, session_engaged=False)
    decision = decide(bot_rules(**KEYWORD), later, DEFAULTS)
    assert (decision.action, decision.engaged) == ("not_triggered", False)


def test_an_engaged_session_keeps_the_bot_without_the_keyword() -> None:
    later = facts(texts=["e o prazo?"], session_started=True, session_engaged=True)
    decision = decide(bot_rules(**KEYWORD), later, DEFAULTS)
    assert (decision.action, decision.engaged) == ("answer", True)


def test_a_session_begun_before_the_trigger_keeps_the_bot() -> None:
    later = facts(texts=["e o prazo?"], session_started=True, session_engaged=None)
    decision = decide(bot_rules(**KEYWORD), later, DEFAULTS)
    assert (decision.action, decision.engaged) == ("answer", True)
    assert "began before the trigger" in decision.reason


def test_trigger_always_answers_even_a_session_once_not_matched() -> None:
    later = facts(session_started=True, session_engaged=False)
    decision = decide(BotRules(), later, DEFAULTS)
    assert (decision.action, decision.engaged) == ("answer", True)


def test_a_session_untouched_for_expire_minutes_restarts_and_is_judged_again() -> None:
    keyword = bot_rules(account={**KEYWORD["account"], "expire_minutes": 60})
    now = at_sp(WED, 12)
    stale = facts(
        now=now,
        texts=["qual o preço?"],
        session_started=True,
        session_engaged=False,
        last_bot_activity=now - timedelta(minutes=60),
    )
    restarted = decide(keyword, stale, DEFAULTS)
    assert (restarted.action, restarted.expired, restarted.engaged) == ("answer", True, True)
    recent = dataclasses.replace(stale, last_bot_activity=now - timedelta(minutes=59))
    kept = decide(keyword, recent, DEFAULTS)
    assert (kept.action, kept.expired, kept.engaged) == ("not_triggered", False, False)
    engaged = dataclasses.replace(stale, texts=["bom dia"], session_engaged=True)
    judged_again = decide(keyword, engaged, DEFAULTS)
    assert (judged_again.action, judged_again.expired) == ("not_triggered", True)


def test_without_expire_minutes_a_session_never_restarts() -> None:
    now = at_sp(WED, 12)
    old = facts(now=now, session_started=True, last_bot_activity=now - timedelta(days=400))
    assert decide(BotRules(), old, DEFAULTS).expired is False


def test_keyword_finish_on_any_message_of_the_turn_hands_over_to_a_person() -> None:
    finishing = bot_rules(
        account={**KEYWORD["account"], "keyword_finish": ["atendente", "falar com alguém"]}
    )
    turn = facts(texts=["oi", "quero FALAR com alguem"], session_started=True, session_engaged=True)
    decision = decide(finishing, turn, DEFAULTS)
    assert (decision.action, decision.reason) == ("finish", "keyword_finish 'falar com alguém'")
    first = decide(finishing, facts(texts=["um atendente, por favor"]), DEFAULTS)
    assert first.action == "finish", "it comes before the trigger"
    assert decide(finishing, facts(texts=["atendentes"]), DEFAULTS).action == "not_triggered"


# -- opening hours -------------------------------------------------------------------------

BUSINESS = {"timezone": "America/Sao_Paulo", "hours": "08:00-18:00", "days": "mon-fri"}


def closed_rules(mode: str = "hold", **hours: Any) -> BotRules:
    return bot_rules(
        account={"out_of_hours": {"enabled": True, "reply": "Estamos fechados", "mode": mode}},
        hours={**BUSINESS, **hours},
    )


def test_open_hours_answer_without_a_reply() -> None:
    decision = decide(closed_rules(), facts(now=at_sp(WED, 12)), DEFAULTS)
    assert decision == Decision("answer", "trigger: always", "account", engaged=True)


def test_out_of_hours_replies_once_per_night() -> None:
    night = closed_rules()
    first = decide(night, facts(now=at_sp(TUE, 22)), DEFAULTS)
    assert first.out_of_hours_reply == "Estamos fechados"
    assert first.period == "2026-11-24T18:00-03:00"
    same_night = facts(now=at_sp(WED, 2), out_of_hours_replied_for=first.period)
    second = decide(night, same_night, DEFAULTS)
    assert (second.period, second.out_of_hours_reply) == (first.period, None)
    next_night = facts(now=at_sp(WED, 19), out_of_hours_replied_for=first.period)
    third = decide(night, next_night, DEFAULTS)
    assert third.period == "2026-11-25T18:00-03:00"
    assert third.out_of_hours_reply == "Estamos fechados"


def test_a_weekend_is_one_closed_period() -> None:
    weekend = closed_rules()
    moments = [at_sp(FRI, 18), at_sp(SAT, 12), at_sp(SUN, 23, 59), at_sp(NEXT_MON, 7, 59)]
    periods = {decide(weekend, facts(now=now), DEFAULTS).period for now in moments}
    assert periods == {"2026-11-27T18:00-03:00"}
    assert decide(weekend, facts(now=at_sp(NEXT_MON, 8)), DEFAULTS).period is None


def test_a_holiday_is_closed_all_day_and_joins_the_nights_around_it() -> None:
    holiday = closed_rules(holidays=[NEXT_WED.isoformat()])
    for now in (at_sp(NEXT_TUE, 19), at_sp(NEXT_WED, 12), at_sp(NEXT_THU, 7)):
        decision = decide(holiday, facts(now=now), DEFAULTS)
        assert decision.action == "hold"
        assert decision.period == "2026-12-01T18:00-03:00"
        assert decision.hold_until == datetime(2026, 12, 3, 8, 0, tzinfo=SP)


def test_a_holiday_next_to_a_weekend_extends_it() -> None:
    long_weekend = closed_rules(holidays=[NEXT_MON.isoformat()])
    decision = decide(long_weekend, facts(now=at_sp(SAT, 10)), DEFAULTS)
    assert decision.period == "2026-11-27T18:00-03:00"
    assert decision.hold_until == datetime(2026, 12, 1, 8, 0, tzinfo=SP)


def test_hold_waits_for_the_next_opening() -> None:
    decision = decide(closed_rules("hold"), facts(now=at_sp(SAT, 10)), DEFAULTS)
    assert decision.action == "hold"
    assert decision.hold_until == datetime(2026, 11, 30, 8, 0, tzinfo=SP)
    assert decision.reason == "out of hours (closed until 2026-11-30 08:00 America/Sao_Paulo)"
    assert decision.forward_out_of_hours is False


def test_forward_sends_to_n8n_at_once_with_the_reply() -> None:
    decision = decide(closed_rules("forward"), facts(now=at_sp(SAT, 10)), DEFAULTS)
    assert decision.action == "answer"
    assert decision.forward_out_of_hours is True
    assert decision.hold_until is None
    assert decision.out_of_hours_reply == "Estamos fechados"


def test_out_of_hours_off_answers_at_any_hour() -> None:
    assert decide(BotRules(), facts(now=at_sp(SUN, 3)), DEFAULTS).action == "answer"


def test_a_session_that_did_not_match_gets_no_out_of_hours_reply() -> None:
    keyword = bot_rules(
        account={
            **KEYWORD["account"],
            "out_of_hours": {"enabled": True, "reply": "Fechado"},
        },
        hours=BUSINESS,
    )
    decision = decide(keyword, facts(now=at_sp(SUN, 3), texts=["oi"]), DEFAULTS)
    assert (decision.action, decision.out_of_hours_reply) == ("not_triggered", None)


def test_hours_are_read_in_the_rules_time_zone_from_a_utc_now() -> None:
    business = closed_rules()
    four_pm_in_sao_paulo = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
    assert decide(business, facts(now=four_pm_in_sao_paulo), DEFAULTS).action == "answer"
    seven_am_in_sao_paulo = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    early = decide(business, facts(now=seven_am_in_sao_paulo), DEFAULTS)
    assert early.action == "hold"
    assert early.hold_until == datetime(2026, 11, 25, 11, 0, tzinfo=UTC)


def test_hours_left_unset_come_from_the_bridge_settings() -> None:
    unset = bot_rules(
        account={"out_of_hours": {"enabled": True, "reply": "Fechado", "mode": "hold"}}
    )
    assert decide(unset, facts(now=at_sp(SAT, 19)), DEFAULTS).action == "answer"  # mon-sat 8-20
    sunday = decide(unset, facts(now=at_sp(SUN, 12)), DEFAULTS)
    assert sunday.period == "2026-11-28T20:00-03:00"
    in_utc = HoursDefaults("UTC", "08:00-20:00", "mon-sat")
    at_utc = decide(unset, facts(now=datetime(2026, 11, 25, 21, 0, tzinfo=UTC)), in_utc)
    assert at_utc.hold_until == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def test_all_day_hours_close_only_on_closed_days() -> None:
    all_day = closed_rules(hours="00:00-24:00")
    assert decide(all_day, facts(now=at_sp(FRI, 23, 59)), DEFAULTS).action == "answer"
    saturday = decide(all_day, facts(now=at_sp(SAT, 0)), DEFAULTS)
    assert saturday.period == "2026-11-28T00:00-03:00"
    assert saturday.hold_until == datetime(2026, 11, 30, 0, 0, tzinfo=SP)


def test_the_bridge_hours_and_the_facts_are_checked() -> None:
    with pytest.raises(ValueError, match="08:00-20:00"):
        HoursDefaults("America/Sao_Paulo", "8h-20h", "mon-sat")
    with pytest.raises(ValueError, match="not a time zone"):
        HoursDefaults("Mars/Olympus", "08:00-20:00", "mon-sat")
    with pytest.raises(ValueError, match="across midnight"):
        HoursDefaults("UTC", "20:00-08:00", "mon-sat")
    with pytest.raises(ValueError, match="aware"):
        facts(now=datetime(2026, 11, 25, 12, 0))


# -- replies that read like WhatsApp -------------------------------------------------------

URL = "https://previdas.com.br/beneficios/aposentadoria?utm_source=whatsapp&lead=9100001"


def test_a_reply_is_split_at_paragraphs_first() -> None:
    reply = "Olá, Maria!\n\n  Recebi o seu pedido.\n \nVou verificar e já volto."
    assert split_reply(reply, 600) == [
        "Olá, Maria!",
        "Recebi o seu pedido.",
        "Vou verificar e já volto.",
    ]
    assert split_reply("Uma linha\noutra linha", 600) == ["Uma linha\noutra linha"]
    assert split_reply(" \n\n ", 600) == []


def test_a_long_paragraph_is_cut_at_the_last_sentence_end_that_fits() -> None:
    reply = (
        "O benefício foi negado em março. Podemos recorrer em até trinta dias. Envie os documentos."
    )
    assert split_reply(reply, 75) == [
        "O benefício foi negado em março. Podemos recorrer em até trinta dias.",
        "Envie os documentos.",
    ]


def test_without_a_sentence_end_it_is_cut_at_the_last_space() -> None:
    reply = "Oi. " + "palavra " * 30
    parts = split_reply(reply, 100)
    assert parts[0] != "Oi.", "a sentence end that leaves the message half empty is skipped"
    assert all(len(part) <= 100 for part in parts)
    assert all(word == "palavra" for part in parts[1:] for word in part.split())


def test_a_link_is_never_cut() -> None:
    reply = f"Veja os detalhes em {URL} e me diga se ficou alguma dúvida sobre o processo."
    parts = split_reply(reply, 100)
    assert len(parts) > 1
    assert any(URL in part for part in parts)


def test_a_link_longer_than_a_message_goes_whole_in_its_own() -> None:
    assert split_reply(f"Acesse {URL} agora.", 50) == ["Acesse", URL, "agora."]


@given(
    text=st.text(alphabet=st.sampled_from([*"abç .!?\n/:-", "\t", "\xa0", "…"]), max_size=600),
    max_chars=st.integers(min_value=1, max_value=120),
)
def test_splitting_loses_no_word_and_respects_the_limit(text: str, max_chars: int) -> None:
    parts = split_reply(text, max_chars)
    assert [word for part in parts for word in part.split()] == text.split()
    assert "".join("\n\n".join(parts).split()) == "".join(text.split())
    for part in parts:
        assert part and part == part.strip()
        assert len(part) <= max_chars or not any(c.isspace() for c in part)
        assert "\n\n" not in part


def test_typing_pause_follows_the_length_within_bounds() -> None:
    split = SplitReplies(seconds_per_char=0.03, min_pause_seconds=1.0, max_pause_seconds=6.0)
    assert typing_pause("a" * 10, split) == 1.0
    assert typing_pause("a" * 100, split) == pytest.approx(3.0)
    assert typing_pause("a" * 1000, split) == 6.0


# -- the document --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({"pipelines": {"0": {}}}, ("pipelines", "0", "[key]")),
        ({"stages": {str(KOMMO_ID_MAX + 1): {}}}, ("stages", str(KOMMO_ID_MAX + 1), "[key]")),
        ({"ignore": {"contact_ids": [0]}}, ("ignore", "contact_ids", 0)),
        ({"ignore": {"stages": [-5]}}, ("ignore", "stages", 0)),
    ],
)
def test_kommo_ids_out_of_range_are_refused(
    document: dict[str, Any], location: tuple[str | int, ...]
) -> None:
    assert refusal(document)[0] == location


def test_the_largest_kommo_id_is_accepted() -> None:
    assert KOMMO_ID_MAX in bot_rules(pipelines={str(KOMMO_ID_MAX): {}}).pipelines


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({"account": {"keywords": [f"k{i}" for i in range(201)]}}, ("account", "keywords")),
        ({"account": {"keyword_finish": ["x" * 101]}}, ("account", "keyword_finish", 0)),
        ({"pipelines": {str(i): {} for i in range(1, 502)}}, ("pipelines",)),
        ({"ignore": {"phones": ["+5511987654321"] * 2001}}, ("ignore", "phones")),
        ({"ignore": {"tags": ["t"] * 501}}, ("ignore", "tags")),
        ({"hours": {"holidays": ["2026-12-25"] * 1001}}, ("hours", "holidays")),
        (
            {"account": {"out_of_hours": {"enabled": True, "reply": "x" * 1001}}},
            ("account", "out_of_hours", "reply"),
        ),
        ({"account": {"split": {"max_chars": 10}}}, ("account", "split", "max_chars")),
    ],
)
def test_sizes_are_bounded(document: dict[str, Any], location: tuple[str | int, ...]) -> None:
    assert refusal(document)[0] == location


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({"colour": "blue"}, ("colour",)),
        ({"account": {"triger": "always"}}, ("account", "triger")),
        ({"stages": {"71000002": {"reply": "x"}}}, ("stages", "71000002", "reply")),
        ({"ignore": {"emails": []}}, ("ignore", "emails")),
        ({"hours": {"tz": "UTC"}}, ("hours", "tz")),
        ({"account": {"split": {"chars": 5}}}, ("account", "split", "chars")),
    ],
)
def test_unknown_fields_are_refused(
    document: dict[str, Any], location: tuple[str | int, ...]
) -> None:
    location_found, message = refusal(document)
    assert (location_found, message) == (location, "Extra inputs are not permitted")


@pytest.mark.parametrize(
    ("document", "location", "words"),
    [
        ({"account": {"expire_minutes": 0}}, ("account", "expire_minutes"), "greater than"),
        ({"account": {"trigger": "sometimes"}}, ("account", "trigger"), "always"),
        (
            {"account": {"out_of_hours": {"enabled": True}}},
            (),
            "account.out_of_hours.reply: the message sent out of hours is required",
        ),
        (
            {"account": {"split": {"min_pause_seconds": 7}}},
            (),
            "account.split: min_pause_seconds cannot be more than max_pause_seconds",
        ),
        # A scope's nested object is checked merged over the account's.
        (
            {"stages": {"71000002": {"out_of_hours": {"enabled": True}}}},
            (),
            "stages.71000002.out_of_hours.reply: the message sent out of hours is required "
            "when enabled, here or in account",
        ),
        (
            {"pipelines": {"7100001": {"split": {"min_pause_seconds": 7}}}},
            (),
            "pipelines.7100001.split: min_pause_seconds cannot be more than max_pause_seconds",
        ),
        ({"account": {"trigger": "keyword"}}, (), "account: trigger 'keyword' needs keywords"),
        (
            {"pipelines": {"7100001": {"trigger": "regex"}}},
            (),
            "pipelines.7100001: trigger 'regex' needs a pattern, here or in account",
        ),
        (
            {"account": {"trigger": "keyword", "keywords": []}},
            ("account",),
            "at least one keyword",
        ),
        ({"hours": {"timezone": "Mars/Olympus"}}, ("hours", "timezone"), "IANA"),
        ({"hours": {"hours": "8h-18h"}}, ("hours", "hours"), "08:00-20:00"),
        ({"hours": {"hours": "18:00-08:00"}}, ("hours", "hours"), "across midnight"),
        ({"hours": {"days": "seg-sex"}}, ("hours", "days"), "mon-sat"),
        ({"ignore": {"tags": ["  "]}}, ("ignore", "tags"), "blank"),
    ],
)
def test_invalid_values_are_refused_with_a_message_naming_them(
    document: dict[str, Any], location: tuple[str | int, ...], words: str
) -> None:
    location_found, message = refusal(document)
    assert location_found == location
    assert words in message


def test_the_openapi_example_is_valid_and_every_field_is_described() -> None:
    schema = BotRules.model_json_schema()
    example = BotRules.model_validate(schema["examples"][0])
    assert example.pipelines[7100001].keywords == ["preço", "orçamento", "quanto custa"]
    models = [schema, *schema["$defs"].values()]
    undescribed = [
        f"{model['title']}.{name}"
        for model in models
        for name, field in model.get("properties", {}).items()
        if not field.get("description")
    ]
    assert undescribed == []


def test_rules_survive_a_round_trip_through_json() -> None:
    example = BotRules.model_validate(BotRules.model_json_schema()["examples"][0])
    stored = example.model_dump_json()
    assert BotRules.model_validate_json(stored) == example
    assert decide(BotRules.model_validate_json(stored), facts(contact_id=4400002), DEFAULTS) == (
        Decision("ignore", "ignore list: contact 4400002", "account")
    )


def test_the_documented_example_is_valid_rules() -> None:
    # docs/bot-control.md's first example under "Bot rules": a PUT /bot-rules whose body
    # is the curl's -d '…'.
    page = (Path(__file__).parents[2] / "docs" / "bot-control.md").read_text()
    section = page[page.index("## Bot rules") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    assert 'curl -X PUT "$BRIDGE/bot-rules"' in block.group(1)
    body = re.search(r"-d '(.*?)'", block.group(1), re.S)
    assert body is not None
    example_rules = BotRules.model_validate_json(body.group(1))
    assert example_rules.account.trigger == "keyword"
    assert example_rules.ignore.phones == ["+5511987654321"]


def test_phones_are_parsed_only_when_the_ignore_list_has_phones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[str] = []
    real = rules_matching.normalize_phone

    def counting(raw: str, region: str = "BR") -> str | None:
        parsed.append(raw)
        return real(raw, region)

    monkeypatch.setattr(rules_document, "normalize_phone", counting)
    assert decide(bot_rules(ignore={"contact_ids": [4400009]}), facts(), DEFAULTS).action == (
        "answer"
    )
    assert parsed == []
    listed = bot_rules(ignore={"phones": ["+55 11 91234-5678"]})
    parsed.clear()  # the list's own entry, when the rules were read
    assert decide(listed, facts(), DEFAULTS).action == "ignore"
    assert parsed == ["+55 11 91234-5678"]  # the customer's


def test_the_shortest_split_is_the_least_max_chars_of_any_scope() -> None:
    """A reply no longer than it, in one paragraph, is one message whatever the lead's
    pipeline and stage: the reply path then needs no look at the conversation first."""
    assert shortest_split(BotRules()) == SplitReplies().max_chars
    layered = BotRules.model_validate(
        {
            "account": {"split": {"max_chars": 900}},
            "pipelines": {str(PIPELINE): {"split": {"max_chars": 300}}},
            "stages": {str(STAGE): {"split": {"enabled": False, "max_chars": 200}}},
        }
    )
    assert shortest_split(layered) == 200
    wide = BotRules.model_validate({"account": {"split": {"max_chars": 900}}})
    # The built-in length counts too: short of the merge, the safe side.
    assert shortest_split(wide) == SplitReplies().max_chars
