"""Bot rules: when the AI bot answers a WhatsApp conversation, for whom, and how
its replies read. Plain data, no I/O.

Three parts: the document users edit (`BotRules`, through PUT /bot-rules or a file at start,
validated by pydantic), the decision for one turn of customer messages (`decide`), and the
cutting of a reply into WhatsApp-sized messages (`split_reply`, `typing_pause`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Any, Final, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.common.kommo_ids import KOMMO_ID_MAX, KOMMO_ID_MIN
from services.common.privacy import mask_phone
from services.conversation.patterns import (
    MAX_PATTERN_CHARS,
    compile_pattern,
)
from services.conversation.proactive_policy import WorkingHours
from services.conversation.templates import TemplateRef, check_purposes

# Bounds on one document, so that a PUT cannot make every turn (or the service's memory) pay
# for an oversized one.
MAX_KEYWORDS = 200
MAX_KEYWORD_CHARS = 100
MAX_OVERRIDES = 500  # per map: pipelines, stages
MAX_PHONES = 2000
MAX_PHONE_CHARS = 40
MAX_CONTACT_IDS = 2000
MAX_TAGS = 500
MAX_TAG_CHARS = 100
MAX_IGNORED_SCOPES = 500  # per list: ignored pipelines, ignored stages
MAX_HOLIDAYS = 1000
MAX_EXPIRE_MINUTES = 366 * 24 * 60
MAX_REPLY_CHARS = 1000
# Customer text is cut to this before any keyword or pattern is matched: a match costs at
# most this much, whatever a customer pastes.
MATCH_MAX_CHARS = 4096

# Numbers written without a country code are Brazilian (the product's customers).
DEFAULT_PHONE_REGION = "BR"
# The validation context key that overrides it: `model_validate(d, context={...: "PT"})`.

ACCOUNT = "account"
Trigger = Literal["always", "keyword", "regex"]
OutOfHoursMode = Literal["forward", "hold"]
Action = Literal["answer", "ignore", "not_triggered", "finish", "hold"]


# ---------------------------------------------------------------------------------------
# Text matching: keywords, phones
# ---------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """Lower case without accents: "Preço" and "preco" read the same."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@lru_cache(maxsize=4096)
def _keyword_regex(keyword: str) -> re.Pattern[str]:
    """A whole word or phrase: no letter or digit may touch either end ("preço" is not in
    "preçoxyz"); any run of spaces between its words matches."""
    folded = _fold(keyword)
    body = r"\s+".join(re.escape(word) for word in folded.split())
    before = r"(?<!\w)" if re.match(r"\w", folded) else ""
    after = r"(?!\w)" if re.search(r"\w$", folded) else ""
    return re.compile(before + body + after)


def matched_keyword(keywords: Sequence[str], texts: Sequence[str]) -> str | None:
    """The first keyword (as written in the rules) found in any of the texts, if any."""
    folded = [_fold(text[:MATCH_MAX_CHARS]) for text in texts]
    for keyword in keywords:
        regex = _keyword_regex(keyword)
        if any(regex.search(text) for text in folded):
            return keyword
    return None


def _check_keyword(keyword: str) -> str:
    keyword = keyword.strip()
    if not any(c.isalnum() for c in _fold(keyword)):
        raise ValueError(f"a keyword needs at least one letter or digit, got {keyword!r}")
    return keyword


def normalize_phone(raw: str, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """The E.164 form (+5511987654321) of a phone written in any format, or None when it is
    not a valid number; `region` is the country of numbers written without a code."""
    if len(raw) > MAX_PHONE_CHARS:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        fixed = _with_ninth_digit(number)
        if fixed is None:
            return None
        number = fixed
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _with_ninth_digit(number: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber | None:
    """Brazilian mobiles gained a ninth digit (a leading 9) in 2012-2016, but WhatsApp still
    reports many accounts in the old 8-digit form (+55 11 8765-4321), and Kommo stores the
    phone WhatsApp gives. Such a number is invalid today; with the 9 it is the same line."""
    national = phonenumbers.national_significant_number(number)
    if number.country_code != 55 or len(national) != 10 or national[2] not in "6789":
        return None
    fixed = phonenumbers.parse(f"+55{national[:2]}9{national[2:]}")
    return fixed if phonenumbers.is_valid_number(fixed) else None


_PHONE_TAIL = 4  # digits shown at the end of a phone in a reason


def _masked(e164: str) -> str:
    """+5511987654321 → "+55 11 9****-4321": recognisable in a log, not usable."""
    return mask_phone(e164, tail=_PHONE_TAIL)


# ---------------------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------------------

KommoId = Annotated[
    int,
    Field(
        ge=KOMMO_ID_MIN,
        le=KOMMO_ID_MAX,
        description=f"a Kommo id: an integer from {KOMMO_ID_MIN} to {KOMMO_ID_MAX}",
    ),
]
Keyword = Annotated[
    str, Field(min_length=1, max_length=MAX_KEYWORD_CHARS), AfterValidator(_check_keyword)
]
_KEYWORD_MATCHING = (
    "case- and accent-insensitive, whole words: 'preço' matches 'Qual o preco?' but not 'precos'"
)


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class OutOfHours(_Document):
    """What the bot does with a message that arrives while the business is closed."""

    enabled: bool = Field(
        default=False, description="answer out of hours differently (see reply and mode)"
    )
    reply: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REPLY_CHARS,
        description="the message sent to the customer out of hours, once per closed period "
        "(a night, a weekend, a holiday); required when enabled",
    )
    mode: OutOfHoursMode = Field(
        default="forward",
        description="forward: the message still goes to the AI at once; hold: it waits for "
        "the opening hour and then goes by itself",
    )


class SplitReplies(_Document):
    """How a long AI reply is sent: in several messages, with a typing pause before each."""

    enabled: bool = Field(default=True, description="split long replies into several messages")
    max_chars: int = Field(
        default=600,
        ge=50,
        le=4096,
        description="the longest message; a reply is cut at paragraphs first, then at the last "
        "sentence end or space (never inside a word or a link)",
    )
    seconds_per_char: float = Field(
        default=0.03, ge=0, le=1, description="typing pause per character of the next message"
    )
    min_pause_seconds: float = Field(default=1.0, ge=0, le=60, description="shortest pause")
    max_pause_seconds: float = Field(default=6.0, ge=0, le=60, description="longest pause")


# A nested object of a scope (out_of_hours, split) names only the fields it changes: the
# others keep the wider scope's values. What must hold across its fields is checked on the
# merged object (`_merged_problem`), where every field has its value.
Nested = TypeVar("Nested", OutOfHours, SplitReplies)


def merge_nested(wider: Nested, narrower: Nested | None) -> Nested:
    """`narrower`'s own fields (those it was given) over `wider`'s."""
    if narrower is None:
        return wider
    given = {name: getattr(narrower, name) for name in narrower.model_fields_set}
    return type(wider).model_construct(**{**dict(wider), **given})


def _merged_problem(out_of_hours: OutOfHours, split: SplitReplies) -> str | None:
    if out_of_hours.enabled and not (out_of_hours.reply and out_of_hours.reply.strip()):
        return "out_of_hours.reply: the message sent out of hours is required when enabled"
    if split.min_pause_seconds > split.max_pause_seconds:
        return "split: min_pause_seconds cannot be more than max_pause_seconds"
    return None


class RuleSet(_Document):
    """Rules for the account, a pipeline or a stage. In a pipeline or stage, a field left
    out (null) keeps the value of the wider scope: stage over pipeline over account."""

    trigger: Trigger | None = Field(
        default=None,
        description="which conversations the bot takes: always (all); keyword or regex (only "
        "those whose first customer message of the session matches; the others stay with "
        "people until the session expires). Account default: always",
    )
    keywords: list[Keyword] | None = Field(
        default=None,
        max_length=MAX_KEYWORDS,
        description=f"the words or phrases of trigger 'keyword', {_KEYWORD_MATCHING}",
    )
    pattern: str | None = Field(
        default=None,
        description="the regular expression of trigger 'regex' (Python's syntax), "
        f"case-insensitive, at most {MAX_PATTERN_CHARS} characters; matched in time linear "
        "in the text (RE2). Refused: backreferences, lookarounds, atomic groups and "
        "possessive quantifiers (RE2 cannot match them), nested or competing quantifiers "
        "((a+)+, .*a.*b), counted repeats that add up to more than "
        f"{MAX_PATTERN_CHARS} characters, and \\b where the characters around it are unclear",
    )
    keyword_finish: list[Keyword] | None = Field(
        default=None,
        max_length=MAX_KEYWORDS,
        description=f"a customer message with one of these hands the conversation to a "
        f"person ({_KEYWORD_MATCHING}). Account default: none",
    )
    expire_minutes: float | None = Field(
        default=None,
        ge=0.05,
        le=MAX_EXPIRE_MINUTES,
        description="a conversation the bot has not touched for this long (minutes, "
        "fractions allowed: 0.5 = 30 s) starts a fresh session: its history for the AI "
        "restarts and the trigger judges it again. Account default: never",
    )
    out_of_hours: OutOfHours | None = Field(
        default=None,
        description="out-of-hours behaviour (the hours are in `hours`); in a pipeline or "
        "stage, the fields given change the wider scope's, the others keep its values. "
        "Account default: off",
    )
    split: SplitReplies | None = Field(
        default=None,
        description="splitting of long replies; in a pipeline or stage, the fields given "
        "change the wider scope's, the others keep its values. Account default: on, 600 "
        "characters",
    )

    @field_validator("pattern")
    @classmethod
    def _bounded(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_pattern(pattern)
        return pattern

    @model_validator(mode="after")
    def _keywords_for_trigger(self) -> RuleSet:
        if self.trigger == "keyword" and self.keywords == []:
            raise ValueError("trigger 'keyword' needs at least one keyword")
        return self


class EffectiveRules(RuleSet):
    """The rules for one pipeline and stage, every field filled (`effective`)."""

    trigger: Trigger = "always"
    keywords: list[str] = Field(default_factory=list)
    keyword_finish: list[str] = Field(default_factory=list)
    out_of_hours: OutOfHours = Field(default_factory=OutOfHours)
    split: SplitReplies = Field(default_factory=SplitReplies)
    # pattern stays None when unset; expire_minutes None = never.


# The account's defaults: answer everyone, no finish keyword, no expiry, out of hours off,
# split on.
_BUILT_IN: Final = dict(EffectiveRules())
_BUILT_IN_OUT_OF_HOURS: Final = OutOfHours()
_BUILT_IN_SPLIT: Final = SplitReplies()


class IgnoreList(_Document):
    """Conversations the bot never answers: they never reach the AI, not even out of hours."""

    phone_region: str = Field(
        default=DEFAULT_PHONE_REGION,
        pattern=r"^[A-Z]{2}$",
        description="the country (ISO 3166 code) of phones written without one, here and in "
        "Kommo's contacts",
    )
    phones: list[Annotated[str, Field(min_length=1, max_length=MAX_PHONE_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_PHONES,
        description="the contact's phones in any format (+55 11 98765-4321, 5511987654321, "
        "(11) 98765-4321); stored in E.164",
    )
    contact_ids: list[KommoId] = Field(
        default_factory=list, max_length=MAX_CONTACT_IDS, description="Kommo contact ids"
    )
    tags: list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="lead tags (case-insensitive)",
    )
    pipelines: list[KommoId] = Field(
        default_factory=list, max_length=MAX_IGNORED_SCOPES, description="Kommo pipeline ids"
    )
    stages: list[KommoId] = Field(
        default_factory=list,
        max_length=MAX_IGNORED_SCOPES,
        description="Kommo stage (status) ids",
    )

    _phones: frozenset[str] = PrivateAttr(default=frozenset())
    _tags: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("phones")
    @classmethod
    def _e164(cls, phones: list[str], info: ValidationInfo) -> list[str]:
        region = info.data.get("phone_region", DEFAULT_PHONE_REGION)
        numbers = []
        for position, raw in enumerate(phones):
            number = normalize_phone(raw, region)
            if number is None:
                raise ValueError(
                    f"entry {position} ({raw!r}) is not a valid phone number: write it with "
                    "the area code, e.g. +55 11 98765-4321"
                )
            numbers.append(number)
        return list(dict.fromkeys(numbers))

    @field_validator("tags")
    @classmethod
    def _tags_named(cls, tags: list[str]) -> list[str]:
        for position, tag in enumerate(tags):
            if not tag.strip():
                raise ValueError(f"entry {position} is blank")
        return [tag.strip() for tag in tags]

    def model_post_init(self, context: Any, /) -> None:
        self._phones = frozenset(self.phones)
        self._tags = frozenset(tag.casefold() for tag in self.tags)

    def reason(self, facts: TurnFacts) -> str | None:
        """Why the conversation is ignored, or None when it is not."""
        if facts.contact_id in self.contact_ids:
            return f"ignore list: contact {facts.contact_id}"
        # Parsing a phone costs more than the rest of the decision: only with phones listed.
        for raw in facts.phones if self._phones else ():
            number = normalize_phone(raw, self.phone_region)
            if number is not None and number in self._phones:
                return f"ignore list: phone {_masked(number)}"
        for tag in facts.tags:
            if tag.strip().casefold() in self._tags:
                return f"ignore list: tag {tag.strip()!r}"
        if facts.pipeline_id in self.pipelines:
            return f"ignore list: pipeline {facts.pipeline_id}"
        if facts.stage_id in self.stages:
            return f"ignore list: stage {facts.stage_id}"
        return None


def _working_window(hours: str) -> str:
    opening = WorkingHours.parse(hours, "mon-sun", "UTC")
    if not opening.until_midnight and opening.closes <= opening.opens:
        raise ValueError(
            f"hours {hours!r} close before they open; a window across midnight is not "
            "supported: use e.g. 08:00-18:00, or 00:00-24:00 for all day"
        )
    return hours


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{name!r} is not a time zone: use an IANA name such as America/Sao_Paulo"
        ) from exc
    return name


class Hours(_Document):
    """When the business is open, for out_of_hours; unset fields use the bridge's settings."""

    timezone: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="IANA time zone of the hours and holidays, e.g. America/Sao_Paulo; "
        "null = BRIDGE_TIMEZONE",
    )
    hours: str | None = Field(
        default=None,
        max_length=20,
        description="opening hours, e.g. 08:00-18:00 (00:00-24:00 = all day); "
        "null = PROACTIVE_HOURS",
    )
    days: str | None = Field(
        default=None,
        max_length=60,
        description="open days, e.g. mon-fri or mon,wed,fri; null = PROACTIVE_DAYS",
    )
    holidays: list[date] = Field(
        default_factory=list,
        max_length=MAX_HOLIDAYS,
        description="whole days closed (in the time zone above), e.g. 2026-12-25",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _time_zone(value)

    @field_validator("hours")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        return None if value is None else _working_window(value)

    @field_validator("days")
    @classmethod
    def _days(cls, value: str | None) -> str | None:
        if value is not None:
            WorkingHours.parse("00:00-24:00", value, "UTC")
        return value

    @field_validator("holidays")
    @classmethod
    def _sorted(cls, holidays: list[date]) -> list[date]:
        return sorted(set(holidays))


# A whole account's rules, for the OpenAPI description (PUT /bot-rules).
EXAMPLE_RULES: Final[dict[str, Any]] = {
    "account": {
        "trigger": "always",
        "keyword_finish": ["atendente", "falar com uma pessoa"],
        "expire_minutes": 1440,
        "out_of_hours": {
            "enabled": True,
            "reply": "Olá! Nosso atendimento é de segunda a sexta, das 8h às "
            "18h. Já recebemos a sua mensagem e respondemos assim que abrirmos.",
            "mode": "hold",
        },
        "split": {"enabled": True, "max_chars": 600},
    },
    "pipelines": {
        "7100001": {
            "trigger": "keyword",
            "keywords": ["preço", "orçamento", "quanto custa"],
        }
    },
    "stages": {"71000002": {"trigger": "regex", "pattern": r"\b(cpf|rg)\b"}},
    "ignore": {
        "phones": ["+55 11 98765-4321"],
        "contact_ids": [4400002],
        "tags": ["não atender"],
        "pipelines": [],
        "stages": [143],
    },
    "hours": {
        "timezone": "America/Sao_Paulo",
        "hours": "08:00-18:00",
        "days": "mon-fri",
        "holidays": ["2026-12-25", "2027-01-01"],
    },
    "templates": {
        "reopen": {"salesbot_id": 7101, "template_id": 501},
        "proactive": {"salesbot_id": 7102, "template_id": 502, "fields": {"900010": "vendedor"}},
    },
}


class BotRules(_Document):
    """When the AI bot answers a WhatsApp conversation, for whom, and how its replies read."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_RULES]})

    account: RuleSet = Field(
        default_factory=RuleSet,
        description="the rules everywhere, unless a pipeline or stage overrides them",
    )
    pipelines: dict[KommoId, RuleSet] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDES,
        description="overrides by Kommo pipeline id, field by field over the account",
    )
    # Kommo's won (142) and lost (143) statuses have the same id in every pipeline: an
    # override of those applies in all of them.
    stages: dict[KommoId, RuleSet] = Field(
        default_factory=dict,
        max_length=MAX_OVERRIDES,
        description="overrides by Kommo stage (status) id, field by field over the "
        "pipeline's and the account's",
    )
    ignore: IgnoreList = Field(
        default_factory=IgnoreList, description="contacts and leads the bot never answers"
    )
    hours: Hours = Field(default_factory=Hours, description="opening hours, for out_of_hours")
    templates: dict[str, TemplateRef] = Field(
        default_factory=dict,
        description="approved WhatsApp templates by purpose (reopen, scheduling_confirmation, "
        "proactive, proactive:<trigger>): what goes when WhatsApp's 24-hour window is closed",
    )

    @field_validator("templates")
    @classmethod
    def _purposes(cls, value: dict[str, TemplateRef]) -> dict[str, TemplateRef]:
        check_purposes(value)
        return value

    @model_validator(mode="after")
    def _triggers_complete(self) -> BotRules:
        """A keyword or regex trigger must find its keywords or pattern in its own scope or
        the account's (a stage's may also come from a pipeline, checked at each turn)."""
        scopes = [
            (ACCOUNT, self.account),
            *((f"pipelines.{k}", v) for k, v in self.pipelines.items()),
            *((f"stages.{k}", v) for k, v in self.stages.items()),
        ]
        for name, rule_set in scopes:
            trigger = rule_set.trigger or self.account.trigger or "always"
            keywords = rule_set.keywords if rule_set.keywords is not None else self.account.keywords
            pattern = rule_set.pattern or self.account.pattern
            where = "" if name == ACCOUNT else ", here or in account"
            if trigger == "keyword" and not keywords:
                raise ValueError(f"{name}: trigger 'keyword' needs keywords{where}")
            if trigger == "regex" and pattern is None:
                raise ValueError(f"{name}: trigger 'regex' needs a pattern{where}")
            layers = [self.account] if name == ACCOUNT else [self.account, rule_set]
            problem = _merged_problem(
                _merged(_BUILT_IN_OUT_OF_HOURS, [r.out_of_hours for r in layers]),
                _merged(_BUILT_IN_SPLIT, [r.split for r in layers]),
            )
            if problem is not None:
                raise ValueError(f"{name}.{problem}{where}")
        return self


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
    values = dict(_BUILT_IN)
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


def _merged(base: Nested, layers: Sequence[Nested | None]) -> Nested:
    for layer in layers:
        base = merge_nested(base, layer)
    return base


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
        _time_zone(self.timezone)
        _working_window(self.hours)
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
