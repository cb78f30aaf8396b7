"""The bot rules document: what users write (through PUT /bot-rules, or a file at start)
to say when the AI bot answers a WhatsApp conversation, for whom, and how its replies
read. Its model, its bounds and its validation by pydantic: a document that passes is
one the decision for a turn (rules.py) can always apply. Plain data, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from services.conversation.rules_matching import (
    DEFAULT_PHONE_REGION,
    MAX_PHONE_CHARS,
    check_keyword,
    normalize_phone,
)
from services.conversation.templates import TemplateRef, check_purposes

if TYPE_CHECKING:
    from services.conversation.rules import TurnFacts

# Bounds on one document, so that a PUT cannot make every turn (or the service's memory) pay
# for an oversized one.
MAX_KEYWORDS = 200
MAX_KEYWORD_CHARS = 100
MAX_OVERRIDES = 500  # per map: pipelines, stages
MAX_PHONES = 2000
MAX_CONTACT_IDS = 2000
MAX_TAGS = 500
MAX_TAG_CHARS = 100
MAX_IGNORED_SCOPES = 500  # per list: ignored pipelines, ignored stages
MAX_HOLIDAYS = 1000
MAX_EXPIRE_MINUTES = 366 * 24 * 60
MAX_REPLY_CHARS = 1000

ACCOUNT = "account"
Trigger = Literal["always", "keyword", "regex"]
OutOfHoursMode = Literal["forward", "hold"]

KommoId = Annotated[
    int,
    Field(
        ge=KOMMO_ID_MIN,
        le=KOMMO_ID_MAX,
        description=f"a Kommo id: an integer from {KOMMO_ID_MIN} to {KOMMO_ID_MAX}",
    ),
]
Keyword = Annotated[
    str, Field(min_length=1, max_length=MAX_KEYWORD_CHARS), AfterValidator(check_keyword)
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


def _merged(base: Nested, layers: Sequence[Nested | None]) -> Nested:
    for layer in layers:
        base = merge_nested(base, layer)
    return base


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
BUILT_IN: Final = dict(EffectiveRules())
_BUILT_IN_OUT_OF_HOURS: Final = OutOfHours()
_BUILT_IN_SPLIT: Final = SplitReplies()


_PHONE_TAIL = 4  # digits shown at the end of a phone in a reason


def _masked(e164: str) -> str:
    """+5511987654321 → "+55 11 9****-4321": recognisable in a log, not usable."""
    return mask_phone(e164, tail=_PHONE_TAIL)


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


def check_working_window(hours: str) -> str:
    """The opening hours as written (08:00-18:00), or ValueError saying why they are not."""
    opening = WorkingHours.parse(hours, "mon-sun", "UTC")
    if not opening.until_midnight and opening.closes <= opening.opens:
        raise ValueError(
            f"hours {hours!r} close before they open; a window across midnight is not "
            "supported: use e.g. 08:00-18:00, or 00:00-24:00 for all day"
        )
    return hours


def check_time_zone(name: str) -> str:
    """The name of an IANA time zone as written, or ValueError when it is not one."""
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
        return None if value is None else check_time_zone(value)

    @field_validator("hours")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        return None if value is None else check_working_window(value)

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
