"""The records of the sandbox's Kommo account, as Kommo keeps them: users, contacts,
leads, the pipeline and its statuses, chat messages and templates, notes, tasks, events and
webhook subscriptions. ``state.py`` holds them; ``render.py`` turns them into API JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.kommo.config import DEFAULT_CHAT_ORIGIN, TemplateSeed
from sandbox.kommo.custom_fields import FieldValues
from sandbox.kommo.ids import SEED_EPOCH

# Kommo's event type of a message the customer wrote in a chat.
INCOMING_CHAT_MESSAGE = "incoming_chat_message"


@dataclass
class User:
    """A Kommo user: a vendedor of the account."""

    id: int
    name: str
    email: str
    is_admin: bool = False
    is_active: bool = True
    is_free: bool = False
    lang: str = "pt"
    group_id: int = 0


@dataclass(frozen=True)
class Tag:
    id: int
    name: str


@dataclass
class Contact:
    id: int
    name: str
    first_name: str
    last_name: str
    responsible_user_id: int
    created_at: int
    updated_at: int
    fields: FieldValues
    # The customer's id on the chat side; it is the author id of their messages.
    amojo_id: str


@dataclass
class Lead:
    id: int
    name: str
    price: int
    responsible_user_id: int
    status_id: int
    pipeline_id: int
    created_at: int
    updated_at: int
    fields: FieldValues
    contact_ids: list[int]
    tags: list[Tag]
    chat_id: str
    talk_id: int
    group_id: int = 0
    # The chat's channel (a webhook's ``origin``) and when its customer last wrote (Unix
    # seconds, None = never): WhatsApp's 24-hour window (sandbox/kommo/whatsapp.py).
    chat_origin: str = DEFAULT_CHAT_ORIGIN
    customer_last_wrote_at: float | None = None

    @property
    def main_contact_id(self) -> int | None:
        return self.contact_ids[0] if self.contact_ids else None

    def field_text(self, field_id: int) -> str:
        values = self.fields.get(field_id) or []
        return values[0].value if values else ""


@dataclass(frozen=True)
class Status:
    id: int
    name: str
    sort: int
    type: int = 0


@dataclass(frozen=True)
class Pipeline:
    id: int
    name: str
    statuses: tuple[Status, ...]

    def has_status(self, status_id: int) -> bool:
        return any(status.id == status_id for status in self.statuses)


@dataclass(frozen=True)
class Attachment:
    type: str
    link: str
    file_name: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """A message in a lead's chat, whichever side wrote it."""

    id: str
    lead_id: int
    direction: str
    author_type: str
    author_id: str
    author_name: str
    text: str
    at: float
    via: str
    message_type: str = "text"
    attachment: Attachment | None = None
    ref_id: str | None = None
    # False when the channel refused it (free text outside WhatsApp's 24-hour window); the
    # message still shows in the chat and echoes, as in Kommo.
    delivered: bool = True
    failure: str = ""
    template_id: int | None = None


@dataclass
class ChatTemplate:
    """A chat template of the account (``/api/v4/chats/templates``); ``bot_id`` is the
    Salesbot whose Message step sends it (None: no bot holds it)."""

    id: int
    name: str
    content: str
    review_status: str
    bot_id: int | None
    created_at: int
    updated_at: int
    type: str = "waba"
    waba_category: str = "UTILITY"
    waba_language: str = "pt_BR"
    waba_header: str | None = None
    waba_footer: str | None = None
    waba_examples: dict[str, str] = field(default_factory=dict)
    buttons: list[dict[str, object]] = field(default_factory=list)

    @classmethod
    def seeded(cls, seed: TemplateSeed) -> ChatTemplate:
        return cls(
            id=seed.id,
            name=seed.name,
            content=seed.content,
            review_status=seed.review_status,
            bot_id=seed.bot_id,
            created_at=SEED_EPOCH,
            updated_at=SEED_EPOCH,
            type=seed.type,
            waba_category=seed.waba_category,
            waba_language=seed.waba_language,
        )


@dataclass
class Note:
    id: int
    entity_id: int
    entity_type: str
    note_type: str
    params: dict[str, object]
    created_at: int
    created_by: int
    responsible_user_id: int


@dataclass
class Task:
    id: int
    text: str
    complete_till: int
    entity_id: int | None
    entity_type: str | None
    responsible_user_id: int
    task_type_id: int
    created_at: int
    created_by: int
    is_completed: bool = False
    duration: int = 0


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    entity_id: int
    entity_type: str
    created_at: int
    value_after: list[dict[str, object]]
    # 0 when a bot, a customer or the system caused it; the user's id when a user did.
    created_by: int = 0
    # Stands for when the customer last wrote, set by the seed or a test (not a message
    # of the chat): replaced when that time is set again.
    seeded: bool = False


@dataclass
class WebhookSubscription:
    id: int
    destination: str
    settings: list[str]
    created_at: int
    sort: int = 1
    disabled: bool = False
