"""Settings of the Kommo sandbox, read from ``SANDBOX_*`` environment variables, and the
seeded ids the rest of the project names (Salesbots, chat templates, lead fields).

WhatsApp's 24-hour window (docs/kommo-api.md): ``SANDBOX_WINDOW_ORIGINS`` (comma-separated,
``none`` for no windowed origin; default ``waba,instagram,instagram_business,facebook,messenger``) are
the chat origins whose free-form messages reach the customer only within
``SANDBOX_WINDOW_SECONDS`` (default 86400) of the customer's last message.
``SANDBOX_TEMPLATES`` (a JSON list of ``{"id", "name", "content", "review_status",
"bot_id", "type"?, "waba_category"?, "waba_language"?}``) replaces the seeded chat templates, each sent
by running the Salesbot ``bot_id`` that holds it; the default is ``DEFAULT_TEMPLATES``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

# The Salesbot that sends the lead's reply field (free-form text): ``SandboxConfig.salesbot_id``.
REPLY_BOT = 7001
REPLY_FIELD_ID = 900001
# Seeded lead custom fields that feed template markers (``{{lead.cf.<id>}}``).
SELLER_NAME_FIELD_ID = 900010  # "Nome do vendedor", text
SCHEDULE_FIELD_ID = 900011  # "Agendamento", text
# Seeded WhatsApp chat templates and the Salesbot whose Message step holds each.
TEMPLATE_REOPEN_ID = 501  # "reabrir_conversa", approved: reopens a closed window
TEMPLATE_REOPEN_BOT = 7101
TEMPLATE_FORM_WELCOME_ID = 502  # "boas_vindas_formulario", approved: a form lead's first message
TEMPLATE_FORM_WELCOME_BOT = 7102
TEMPLATE_SCHEDULING_ID = 503  # "confirmacao_agendamento", approved
TEMPLATE_SCHEDULING_BOT = 7103
TEMPLATE_IN_REVIEW_ID = 504  # "em_revisao", still in Meta's review: never delivered
TEMPLATE_IN_REVIEW_BOT = 7104

DEFAULT_CHAT_ORIGIN = "waba"
# Origins with WhatsApp's (or Meta's) 24-hour customer-service window; QR-code WhatsApp
# (com.amocrm.amocrmwa), Telegram and the site chat (onlinechat) have none.
DEFAULT_WINDOW_ORIGINS = ("waba", "instagram", "instagram_business", "facebook", "messenger")
DEFAULT_WINDOW_SECONDS = 86400.0
# A template's review in Kommo; only an approved one is delivered.
ReviewStatus = Literal["draft", "review", "approved", "paused", "rejected"]
REVIEW_STATUSES: tuple[str, ...] = get_args(ReviewStatus)
TEMPLATE_TYPES = ("waba", "amocrm")
# SANDBOX_SALESBOT_ECHO_AUTHOR: how a Salesbot's message is tagged in its echo webhook.
ECHO_AUTHORS = ("bot", "user")


class ConfigError(ValueError):
    """A ``SANDBOX_*`` variable that cannot be used; the message names it."""


@dataclass(frozen=True)
class TemplateSeed:
    """A chat template the account starts with, held by the Salesbot ``bot_id``."""

    id: int
    name: str
    content: str
    review_status: str
    bot_id: int | None
    waba_category: str = "UTILITY"
    waba_language: str = "pt_BR"
    # "waba": a WhatsApp template (Meta reviews it; delivered outside the window once
    # approved); "amocrm": Kommo's own canned text, free text to WhatsApp.
    type: str = "waba"


DEFAULT_TEMPLATES = (
    TemplateSeed(
        TEMPLATE_REOPEN_ID,
        "reabrir_conversa",
        "Olá {{contact.name}}! Temos uma resposta para você sobre {{lead.name}}. "
        "Responda esta mensagem para continuarmos.",
        "approved",
        TEMPLATE_REOPEN_BOT,
    ),
    TemplateSeed(
        TEMPLATE_FORM_WELCOME_ID,
        "boas_vindas_formulario",
        f"Olá {{{{contact.name}}}}, aqui é {{{{lead.cf.{SELLER_NAME_FIELD_ID}}}}}. "
        "Recebemos seu formulário e vamos te ajudar!",
        "approved",
        TEMPLATE_FORM_WELCOME_BOT,
    ),
    TemplateSeed(
        TEMPLATE_SCHEDULING_ID,
        "confirmacao_agendamento",
        f"Olá {{{{contact.name}}}}! Seu agendamento: {{{{lead.cf.{SCHEDULE_FIELD_ID}}}}}.",
        "approved",
        TEMPLATE_SCHEDULING_BOT,
    ),
    TemplateSeed(
        TEMPLATE_IN_REVIEW_ID,
        "em_revisao",
        "Olá {{contact.name}}!",
        "review",
        TEMPLATE_IN_REVIEW_BOT,
    ),
)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that shapes one sandbox process; the defaults are the documented ones."""

    host: str = "127.0.0.1"
    port: int = 8100
    # Where Kommo-shaped webhooks are POSTed (secret in the query); empty = only recorded.
    bridge_webhook_url: str = ""
    subdomain: str = "previdas"
    account_id: int = 30000001
    client_id: str = "sandbox-client"
    # Fake credentials of a test double, public on purpose.
    client_secret: str = "sandbox-secret"  # noqa: S105
    redirect_uri: str = "http://127.0.0.1:8000/oauth/callback"
    # Valid at start (and again after a reset) so a bridge can bootstrap without a human.
    initial_refresh_token: str = "sandbox-refresh-0"  # noqa: S105
    auth_code: str = "sandbox-auth-code"
    access_token_ttl: float = 86400.0
    # Kommo allows 7 requests per second per integration; 0 = unlimited.
    rate_limit_rps: int = 7
    # Kommo blocks an account that keeps hitting the limit; 0 = never.
    block_after_429s: int = 0
    # Time a Salesbot run or a Chats API send takes to reach the chat and echo back.
    echo_delay: float = 0.2
    # The author type a Salesbot's message carries in its echo webhook: "bot", or "user" so
    # that a test sees the bridge recognise its own reply by its text alone.
    salesbot_echo_author: str = "bot"
    salesbot_id: int = REPLY_BOT
    reply_field_id: int = REPLY_FIELD_ID
    channel_secret: str = "sandbox-channel-secret"  # noqa: S105
    scope_id: str = "sandbox-scope"
    users: int = 9
    leads: int = 20
    # Kommo waits at most 5 s for a webhook answer and does not retry a Chats API hook.
    webhook_timeout: float = 5.0
    # Kommo retries a standard webhook that failed "for a while" (docs/kommo-api.md). Off by
    # default so a test sees exactly the deliveries it caused; the soak run turns it on.
    webhook_retries: int = 0
    webhook_retry_delay: float = 1.0
    # WhatsApp's customer-service window: free text into a closed one is not delivered.
    window_origins: tuple[str, ...] = DEFAULT_WINDOW_ORIGINS
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    templates: tuple[TemplateSeed, ...] = DEFAULT_TEMPLATES


def _text(raw: str) -> str:
    return raw


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _echo_author(raw: str) -> str:
    if raw not in ECHO_AUTHORS:
        raise ValueError(f"must be one of {', '.join(ECHO_AUTHORS)}")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    if raw.lower() == "none":
        return ()
    origins = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not origins:
        raise ValueError("name origins separated by commas, or 'none'")
    return origins


def _templates(raw: str) -> tuple[TemplateSeed, ...]:
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ValueError("must be a JSON list of templates")
    templates: list[TemplateSeed] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"template {index} is not an object")
        try:
            template = TemplateSeed(
                id=_strict_int(item["id"]),
                name=str(item["name"]),
                content=str(item["content"]),
                review_status=str(item.get("review_status", "approved")),
                bot_id=None if item.get("bot_id") is None else _strict_int(item["bot_id"]),
                waba_category=str(item.get("waba_category", "UTILITY")),
                waba_language=str(item.get("waba_language", "pt_BR")),
                type=str(item.get("type", "waba")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"template {index}: {exc!r}") from exc
        if template.type not in TEMPLATE_TYPES:
            raise ValueError(f"template {index}: type must be one of {TEMPLATE_TYPES}")
        if template.review_status not in REVIEW_STATUSES:
            raise ValueError(f"template {index}: review_status must be one of {REVIEW_STATUSES}")
        templates.append(template)
    return tuple(templates)


def _strict_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


_VARIABLES: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("SANDBOX_HOST", "host", _text),
    ("SANDBOX_PORT", "port", _count),
    ("SANDBOX_BRIDGE_WEBHOOK_URL", "bridge_webhook_url", _text),
    ("SANDBOX_SUBDOMAIN", "subdomain", _text),
    ("SANDBOX_ACCOUNT_ID", "account_id", _count),
    ("SANDBOX_CLIENT_ID", "client_id", _text),
    ("SANDBOX_CLIENT_SECRET", "client_secret", _text),
    ("SANDBOX_REDIRECT_URI", "redirect_uri", _text),
    ("SANDBOX_INITIAL_REFRESH_TOKEN", "initial_refresh_token", _text),
    ("SANDBOX_AUTH_CODE", "auth_code", _text),
    ("SANDBOX_ACCESS_TOKEN_TTL", "access_token_ttl", _seconds),
    ("SANDBOX_RATE_LIMIT_RPS", "rate_limit_rps", _count),
    ("SANDBOX_BLOCK_AFTER_429S", "block_after_429s", _count),
    ("SANDBOX_ECHO_DELAY", "echo_delay", _seconds),
    ("SANDBOX_SALESBOT_ECHO_AUTHOR", "salesbot_echo_author", _echo_author),
    ("SANDBOX_SALESBOT_ID", "salesbot_id", _count),
    ("SANDBOX_REPLY_FIELD_ID", "reply_field_id", _count),
    ("SANDBOX_CHANNEL_SECRET", "channel_secret", _text),
    ("SANDBOX_SCOPE_ID", "scope_id", _text),
    ("SANDBOX_USERS", "users", _count),
    ("SANDBOX_LEADS", "leads", _count),
    ("SANDBOX_WEBHOOK_RETRIES", "webhook_retries", _count),
    ("SANDBOX_WEBHOOK_RETRY_DELAY", "webhook_retry_delay", _seconds),
    ("SANDBOX_WINDOW_ORIGINS", "window_origins", _origins),
    ("SANDBOX_WINDOW_SECONDS", "window_seconds", _seconds),
    ("SANDBOX_TEMPLATES", "templates", _templates),
)


def config_from_env(environ: Mapping[str, str]) -> SandboxConfig:
    """Build the configuration; unset or empty variables keep their defaults."""
    changes: dict[str, Any] = {}
    for variable, field, parse in _VARIABLES:
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        try:
            changes[field] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{variable}={raw!r} is invalid: {exc}") from exc
    config = dataclasses.replace(SandboxConfig(), **changes)
    if config.users < 1:
        raise ConfigError("SANDBOX_USERS must be at least 1 (the account needs its admin)")
    if config.port > 65535:
        raise ConfigError(f"SANDBOX_PORT={config.port} is not a TCP port")
    check_templates(config)
    return config


def check_templates(config: SandboxConfig) -> None:
    """Template ids and their bots are unique, and no template bot is the reply bot."""
    ids = [template.id for template in config.templates]
    bots = [t.bot_id for t in config.templates if t.bot_id is not None]
    if len(set(ids)) != len(ids):
        raise ConfigError("SANDBOX_TEMPLATES: two templates share an id")
    if len(set(bots)) != len(bots):
        raise ConfigError("SANDBOX_TEMPLATES: two templates share a bot_id")
    if config.salesbot_id in bots:
        raise ConfigError(
            f"SANDBOX_TEMPLATES: bot {config.salesbot_id} is the reply bot (SANDBOX_SALESBOT_ID)"
        )
    if config.reply_field_id in (SELLER_NAME_FIELD_ID, SCHEDULE_FIELD_ID):
        raise ConfigError(
            f"SANDBOX_REPLY_FIELD_ID={config.reply_field_id} is a seeded template field"
        )
