"""Bot rules applied: what the AI bot does with one turn of a WhatsApp conversation, and
how its reply reads there. Plain data, no I/O.

The document users edit (`BotRules`, its fields, bounds and validation) is in
rules_document.py, and how keywords and phones are read in rules_matching.py. Here: the
rules in force for a lead's pipeline and stage (`effective`, `resolve`), the opening
hours (`closure`), the decision for one turn of customer messages (`decide`), and the
cutting of a reply into WhatsApp-sized messages (`split_reply`, `typing_pause`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal

from services.conversation.patterns import compile_pattern
from services.conversation.proactive_policy import WorkingHours
from services.conversation.rules_document import (
    ACCOUNT,
    BUILT_IN,
    BotRules,
    EffectiveRules,
    Hours,
    OutOfHours,
    SplitReplies,
    check_time_zone,
    check_working_window,
    merge_nested,
)
from services.conversation.rules_matching import MATCH_MAX_CHARS, matched_keyword

Action = Literal["answer", "ignore", "not_triggered", "finish", "hold"]


# ---------------------------------------------------------------------------------------
# The rules in force for a lead
# ---------------------------------------------------------------------------------------


def effective(rules: BotRules, pipeline_id: int, stage_id: int) -> tuple[EffectiveRules, str]:
    """The rules for a lead in this pipeline and stage, and the narrowest scope that has an
    override for it ("account", "pipeline 123" or "stage 456")."""
    rule_set, _, scope = resolve(rules, pipeline_id, stage_id)
    return rule_set, scope


def resolve(
    rules: BotRules, pipeline_id: int, stage_id: int
) -> tuple[EffectiveRules, dict[str, str], str]:
    """The merged rules, the scope each field came from, and the narrowest scope."""
    layers = [(ACCOUNT, rules.account)]
    if (pipeline := rules.pipelines.get(pipeline_id)) is not None:
        layers.append((f"pipeline {pipeline_id}", pipeline))
    if (stage := rules.stages.get(stage_id)) is not None:
        layers.append((f"stage {stage_id}", stage))
    values = dict(BUILT_IN)
    origin = dict.fromkeys(values, ACCOUNT)
    for scope, rule_set in layers:
        for name in values:
            value = getattr(rule_set, name)
            if value is None:
                continue
            if isinstance(value, (OutOfHours, SplitReplies)):
                value = merge_nested(values[name], value)
            values[name], origin[name] = value, scope
    out_of_hours, split = values["out_of_hours"], values["split"]
    # Each scope was checked merged over the account; a stage over a pipeline over the
    # account can still meet two halves that do not fit: the safe reading is taken.
    if out_of_hours.enabled and not (out_of_hours.reply and out_of_hours.reply.strip()):
        values["out_of_hours"] = out_of_hours.model_copy(update={"enabled": False})
    if split.min_pause_seconds > split.max_pause_seconds:
        values["split"] = split.model_copy(update={"min_pause_seconds": split.max_pause_seconds})
    return EffectiveRules.model_construct(**values), origin, layers[-1][0]


# ---------------------------------------------------------------------------------------
# Opening hours
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoursDefaults:
    """The bridge's own hours (BRIDGE_TIMEZONE, PROACTIVE_HOURS, PROACTIVE_DAYS), for what
    the rules' `hours` leaves unset. Checked here, so that a bad setting fails at start."""

    timezone: str
    hours: str
    days: str

    def __post_init__(self) -> None:
        check_time_zone(self.timezone)
        check_working_window(self.hours)
        WorkingHours.parse(self.hours, self.days, self.timezone)


@lru_cache(maxsize=64)
def _opening(hours: str, days: str, timezone: str) -> WorkingHours:
    return WorkingHours.parse(hours, days, timezone)


@dataclass(frozen=True, slots=True)
class Closure:
    period: str  # ISO local start of the closed period: the same for all of it
    reopens: datetime  # the next opening, in the rules' time zone


def closure(hours: Hours, defaults: HoursDefaults, now: datetime) -> Closure | None:
    """The closed period `now` falls in, or None when the business is open. A night, a
    weekend and a holiday that touch are one period."""
    opening = _opening(
        hours.hours or defaults.hours,
        hours.days or defaults.days,
        hours.timezone or defaults.timezone,
    )
    holidays = frozenset(hours.holidays)
    now = now.astimezone(UTC)
    today = now.astimezone(opening.zone).date()

    def window(day: date) -> tuple[datetime, datetime] | None:
        if day.weekday() not in opening.days or day in holidays:
            return None
        start = datetime.combine(day, opening.opens, tzinfo=opening.zone)
        if opening.until_midnight:
            end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=opening.zone)
        else:
            end = datetime.combine(day, opening.closes, tzinfo=opening.zone)
        return start, end

    todays = window(today)
    if todays is not None and todays[0].astimezone(UTC) <= now < todays[1].astimezone(UTC):
        return None
    # Every week has an open day (the days are never empty) and each holiday can close at
    # most one of them, so both searches end within this many days.
    horizon = 7 * (len(holidays) + 1) + 1
    reopens = closed_since = None
    for offset in range(horizon):
        ahead = window(today + timedelta(days=offset))
        if reopens is None and ahead and ahead[0].astimezone(UTC) > now:
            reopens = ahead[0]
        behind = window(today - timedelta(days=offset))
        if closed_since is None and behind and behind[1].astimezone(UTC) <= now:
            closed_since = behind[1]
        if reopens is not None and closed_since is not None:
            return Closure(closed_since.isoformat(timespec="minutes"), reopens)
    raise ValueError("no opening found around the holidays")  # unreachable, see above


# ---------------------------------------------------------------------------------------
# The decision for one turn
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnFacts:
    """What the service knows of a turn. A session is the stretch of a conversation the
    trigger judged once: it starts with its first customer messages (`session_started`
    False) and ends when `expire_minutes` pass without the bot."""

    now: datetime  # aware
    texts: list[str]  # this turn's customer messages, in order
    session_started: bool  # False = these are the first customer messages of a (new) session
    session_engaged: bool | None  # the trigger's verdict for this session (None = not yet)
    last_bot_activity: datetime | None  # the bot's last turn sent or received, if any
    phones: list[str]  # the contact's phones as Kommo gives them (any format)
    contact_id: int
    tags: list[str]  # the lead's tags
    pipeline_id: int
    stage_id: int
    out_of_hours_replied_for: str | None  # the closed period already answered, if any

    def __post_init__(self) -> None:
        for name in ("now", "last_bot_activity"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be an aware datetime")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a turn. `action`: answer (to n8n now), ignore (never to n8n, recorded
    as ignored), not_triggered (the session stays with people), finish (hand over to a
    person), hold (out of hours: to n8n by itself at `hold_until`). The service stores
    `engaged` as the session's verdict and `period` once `out_of_hours_reply` is sent."""

    action: Action
    reason: str  # why, in a sentence for logs and the dashboard
    rule: str  # the scope that decided: "account" (also the ignore list), "pipeline 123"…
    expired: bool = False  # the session restarts: its history for n8n restarts
    engaged: bool | None = None  # the session's trigger verdict, to remember
    out_of_hours_reply: str | None = None  # to send now; None once sent for this period
    period: str | None = None  # the closed period now is in (Closure.period)
    hold_until: datetime | None = None  # "hold": when the message goes to n8n by itself
    forward_out_of_hours: bool = False  # "answer" although closed (mode forward)


def decide(
    rules: BotRules,
    facts: TurnFacts,
    defaults: HoursDefaults,
) -> Decision:
    """What the bot does with one turn of customer messages. In this order: the ignore
    list, the session's expiry, keyword_finish, the trigger, the opening hours."""
    ignored = rules.ignore.reason(facts)
    if ignored is not None:
        return Decision("ignore", ignored, ACCOUNT, engaged=facts.session_engaged)
    rule_set, origin, scope = resolve(rules, facts.pipeline_id, facts.stage_id)
    expired = (
        rule_set.expire_minutes is not None
        and facts.last_bot_activity is not None
        and facts.now - facts.last_bot_activity >= timedelta(minutes=rule_set.expire_minutes)
    )
    verdict = None if expired else facts.session_engaged
    finish = matched_keyword(rule_set.keyword_finish, facts.texts)
    if finish is not None:
        return Decision(
            "finish", f"keyword_finish {finish!r}", origin["keyword_finish"], expired, verdict
        )
    first_messages = expired or not facts.session_started
    engaged, why = _judge(rule_set, verdict, first_messages, facts.texts)
    if not engaged:
        return Decision("not_triggered", why, origin["trigger"], expired, engaged=False)
    if rule_set.out_of_hours.enabled:
        closed = closure(rules.hours, defaults, facts.now)
        if closed is not None:
            return _out_of_hours(rule_set.out_of_hours, closed, facts, origin, expired)
    return Decision("answer", why, scope, expired, engaged=True)


def _judge(
    rule_set: EffectiveRules, verdict: bool | None, first_messages: bool, texts: list[str]
) -> tuple[bool, str]:
    if rule_set.trigger == "always":
        return True, "trigger: always"
    if verdict is not None:
        if verdict:
            return True, "trigger: the session's first message matched"
        return False, "trigger: the session's first message did not match; it stays with people"
    if not first_messages:
        # Only a session begun before the trigger judged sessions (an upgrade) has no
        # verdict past its first messages: the bot keeps what it was already answering.
        return True, "trigger: the session began before the trigger; it stays with the bot"
    if rule_set.trigger == "keyword":
        keyword = matched_keyword(rule_set.keywords, texts)
        if keyword is None:
            return False, "trigger: first message matched no keyword"
        return True, f"trigger: first message matched keyword {keyword!r}"
    if rule_set.pattern is None:
        return False, "trigger: no pattern is set"
    regex = compile_pattern(rule_set.pattern)
    if any(regex.search(text[:MATCH_MAX_CHARS]) for text in texts):
        return True, "trigger: first message matched the pattern"
    return False, "trigger: first message did not match the pattern"


def _out_of_hours(
    settings: OutOfHours,
    closed: Closure,
    facts: TurnFacts,
    origin: dict[str, str],
    expired: bool,
) -> Decision:
    reason = f"out of hours (closed until {closed.reopens:%Y-%m-%d %H:%M} {closed.reopens.tzinfo})"
    reply = settings.reply if facts.out_of_hours_replied_for != closed.period else None
    hold = settings.mode == "hold"
    return Decision(
        "hold" if hold else "answer",
        reason,
        origin["out_of_hours"],
        expired,
        engaged=True,
        out_of_hours_reply=reply,
        period=closed.period,
        hold_until=closed.reopens if hold else None,
        forward_out_of_hours=not hold,
    )


# ---------------------------------------------------------------------------------------
# Replies that read like WhatsApp
# ---------------------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_ENDS = (".", "!", "?", "…")
_CLOSERS = ")\"'”»"


def split_reply(text: str, max_chars: int) -> list[str]:
    """The reply as messages of at most `max_chars`: cut at paragraph breaks first, then at
    the last sentence end, line break or space that fits. A word or link longer than
    `max_chars` is never cut: it goes whole in a message of its own. Joined with blank lines
    the parts hold every character of the text but spaces."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    parts: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        rest = paragraph.strip()
        while len(rest) > max_chars:
            cut = _cut(rest, max_chars)
            parts.append(rest[:cut].rstrip())
            rest = rest[cut:].lstrip()
        if rest:
            parts.append(rest)
    return parts


def shortest_split(rules: BotRules) -> int:
    """The shortest `split.max_chars` any pipeline or stage may have: a reply no longer,
    in one paragraph, goes as one message whatever the lead's pipeline and stage."""
    scopes = [rules.account, *rules.pipelines.values(), *rules.stages.values()]
    lengths = [SplitReplies().max_chars]
    lengths += [scope.split.max_chars for scope in scopes if scope.split is not None]
    return min(lengths)


def _cut(text: str, limit: int) -> int:
    """Where to cut `text` (no leading space, longer than `limit`): at a space, so that the
    head fits in `limit` when a space allows it."""
    spaces = [i for i in range(1, limit + 1) if text[i].isspace()]
    if not spaces:
        # The first word is too long: it goes whole (up to the first space, or all of it).
        return next((i for i in range(limit + 1, len(text)) if text[i].isspace()), len(text))
    # A sentence end or a line break reads better, unless it leaves the message half empty.
    natural = [
        i for i in spaces if i >= limit // 2 and (text[i] == "\n" or _ends_sentence(text, i))
    ]
    return (natural or spaces)[-1]


def _ends_sentence(text: str, end: int) -> bool:
    """Whether text[:end] ends a sentence: . ! ? or …, maybe closed by a quote or bracket."""
    head = text[:end].rstrip().rstrip(_CLOSERS)
    return head.endswith(_SENTENCE_ENDS)


def typing_pause(part: str, split: SplitReplies) -> float:
    """Seconds of "typing…" before a message: its length at `seconds_per_char`, clamped."""
    pause = len(part) * split.seconds_per_char
    return min(max(pause, split.min_pause_seconds), split.max_pause_seconds)
