"""The sandbox's Kommo account, held in memory, and the deterministic seed it starts from.

The seed is the same on every start so tests can name ids:

- users ``10000001`` … (``SANDBOX_USERS``, default 9, Portuguese names, e-mails
  ``@previdas.com.br``): ``10000001`` (Ana Beatriz Carvalho) is the only admin; the last
  user (``10000009`` by default, Mariana Souza Azevedo) is inactive when there are two or
  more. Users added later continue the sequence.
- leads ``9100001`` … (``SANDBOX_LEADS``, default 20); lead ``9100000 + n`` has the main
  contact ``4400000 + n`` whose PHONE is a Brazilian mobile in E.164 (``+55DD9XXXXXXXX``);
  every third contact (``4400003``, ``4400006`` …) has no EMAIL.
- responsible user of lead ``n``: the active non-admin users in turn (``9100001`` →
  ``10000002`` … ``9100007`` → ``10000008``, ``9100008`` → ``10000002`` …), except the last
  lead, which belongs to the inactive user (a vendedor who left the company). A contact has
  its lead's responsible user.
- the "Área" select field (``900002``): ``previdenciario``, ``trabalhista``, ``bpc-loas`` in
  turn, except every fifth lead (``9100005``, ``9100010`` …), which has none and, with the
  reply field empty too, ``custom_fields_values: null``.
- the reply field ("Resposta do bot", textarea, ``SANDBOX_REPLY_FIELD_ID``, default
  ``900001``) is empty on every lead, and so are "Nome do vendedor" (``900010``) and
  "Agendamento" (``900011``), text fields that feed template markers.
- pipeline ``8100001`` with statuses ``71000001`` … ``71000005``, ``142`` (won), ``143`` (lost).
- each lead has one chat: ``chat_id`` a UUID derived from the lead id, ``talk_id`` ``5200 + n``,
  origin ``waba`` (WhatsApp Business). Its customer wrote one hour before the seed was made
  (``customer_last_wrote_at``; no visible message), so WhatsApp's 24-hour window is open for a
  test session; a lead added later (``/_sandbox/lead-event``) has a customer who never wrote.
- chat templates (``SANDBOX_TEMPLATES``, default ``config.DEFAULT_TEMPLATES``): ``501``
  reabrir_conversa, ``502`` boas_vindas_formulario, ``503`` confirmacao_agendamento (approved)
  and ``504`` em_revisao (in review), held by the Salesbots ``7101`` … ``7104``.
"""

from __future__ import annotations

import time
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandbox.kommo.config import (
    DEFAULT_CHAT_ORIGIN,
    SCHEDULE_FIELD_ID,
    SELLER_NAME_FIELD_ID,
    SandboxConfig,
    TemplateSeed,
)

FIRST_USER_ID = 10000001
FIRST_LEAD_ID = 9100001
FIRST_CONTACT_ID = 4400001
FIRST_TALK_ID = 5201
FIRST_NOTE_ID = 60000001
FIRST_TASK_ID = 30000001
FIRST_SUBSCRIPTION_ID = 1001
AREA_FIELD_ID = 900002
PHONE_FIELD_ID = 700001
EMAIL_FIELD_ID = 700002
PIPELINE_ID = 8100001
STATUS_WON = 142
STATUS_LOST = 143
# Fixed so that a restart gives the same created_at/updated_at to every seeded entity.
SEED_EPOCH = 1761955200
# A seeded lead's customer last wrote this long before the seed: the window is open.
SEEDED_CUSTOMER_WROTE_AGO = 3600.0
# Chat templates created through the API take ids from here on.
FIRST_TEMPLATE_ID = 601
USER_DOMAIN = "previdas.com.br"

# Chat ids and external author ids must be stable per lead/contact across restarts.
_CHAT_NAMESPACE = uuid.UUID("6f0c7a52-3c1e-4c53-9a53-2b8f5d1a0b01")


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
class FieldEnum:
    id: int
    value: str
    code: str | None = None


@dataclass(frozen=True)
class CustomFieldDef:
    id: int
    name: str
    type: str
    code: str | None = None
    enums: tuple[FieldEnum, ...] = ()


@dataclass(frozen=True)
class FieldValue:
    """One stored value of a custom field, as Kommo renders it."""

    value: str
    enum_id: int | None = None
    enum_code: str | None = None


@dataclass(frozen=True)
class FieldValueInput:
    value: object
    enum_id: int | None = None
    enum_code: str | None = None


@dataclass(frozen=True)
class FieldWrite:
    """One ``custom_fields_values`` item of a PATCH; ``values`` empty or None clears."""

    field_id: int | None
    field_code: str | None
    values: Sequence[FieldValueInput] | None


class FieldWriteError(Exception):
    """A custom field write Kommo would refuse with a validation error."""

    def __init__(self, path: str, detail: str, code: str = "NotSupportedChoice") -> None:
        super().__init__(detail)
        self.path = path
        self.detail = detail
        self.code = code


FieldValues = dict[int, list[FieldValue]]


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


@dataclass
class IdSequence:
    next_id: int

    def take(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value


@dataclass
class AccountState:
    """Everything Kommo would keep in its database for one account."""

    account_id: int
    subdomain: str
    name: str
    users: dict[int, User]
    leads: dict[int, Lead]
    contacts: dict[int, Contact]
    lead_fields: dict[int, CustomFieldDef]
    contact_fields: dict[int, CustomFieldDef]
    pipeline: Pipeline
    tags: tuple[Tag, ...]
    notes: list[Note] = field(default_factory=list)
    tasks: dict[int, Task] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    chats: dict[int, list[ChatMessage]] = field(default_factory=dict)
    subscriptions: list[WebhookSubscription] = field(default_factory=list)
    templates: dict[int, ChatTemplate] = field(default_factory=dict)
    template_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_TEMPLATE_ID))
    user_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_USER_ID))
    lead_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_LEAD_ID))
    contact_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_CONTACT_ID))
    talk_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_TALK_ID))
    note_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_NOTE_ID))
    task_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_TASK_ID))
    event_ids: IdSequence = field(default_factory=lambda: IdSequence(1))
    subscription_ids: IdSequence = field(default_factory=lambda: IdSequence(FIRST_SUBSCRIPTION_ID))

    @property
    def admin(self) -> User:
        return next(user for user in self.users.values() if user.is_admin)

    def lead_by_conversation(self, conversation_id: str) -> Lead | None:
        """The lead a Chats API conversation id points at: its chat id or its id."""
        for lead in self.leads.values():
            if conversation_id in (lead.chat_id, str(lead.id)):
                return lead
        return None

    def template_of_bot(self, bot_id: int) -> ChatTemplate | None:
        """The template the Salesbot ``bot_id`` sends, if it holds one."""
        return next((t for t in self.templates.values() if t.bot_id == bot_id), None)

    def add_message(self, message: ChatMessage) -> None:
        self.chats.setdefault(message.lead_id, []).append(message)

    def add_event(
        self,
        event_type: str,
        entity_id: int,
        created_at: int,
        value_after: list[dict[str, object]],
        created_by: int = 0,
        seeded: bool = False,
    ) -> Event:
        # Kommo's event ids are 26-character strings, not numbers.
        event = Event(
            id=f"01sandbox{self.event_ids.take():017d}",
            type=event_type,
            entity_id=entity_id,
            entity_type="lead",
            created_at=created_at,
            value_after=value_after,
            created_by=created_by,
            seeded=seeded,
        )
        self.events.append(event)
        return event

    def customer_wrote_at(self, lead: Lead, at: float | None) -> None:
        """The lead's customer last wrote at `at` (None: never), as a message nobody
        sees in the chat: the window follows it, and Kommo's events show it (an incoming
        chat message event, how an integration learns when the customer last wrote)."""
        lead.customer_last_wrote_at = at
        self.events = [
            e
            for e in self.events
            if not (e.type == INCOMING_CHAT_MESSAGE and e.entity_id == lead.id and e.seeded)
        ]
        if at is not None:
            self.add_event(
                INCOMING_CHAT_MESSAGE,
                lead.id,
                int(at),
                [
                    {
                        "message": {
                            "id": str(uuid.uuid4()),
                            "origin": lead.chat_origin,
                            "talk_id": lead.talk_id,
                        }
                    }
                ],
                seeded=True,
            )

    def add_user(
        self, name: str, email: str, *, is_admin: bool = False, is_active: bool = True
    ) -> User:
        user = User(
            id=self.user_ids.take(),
            name=name,
            email=email,
            is_admin=is_admin,
            is_active=is_active,
        )
        self.users[user.id] = user
        return user

    def add_lead(
        self,
        *,
        name: str,
        contact_name: str,
        phone: str,
        email: str | None,
        responsible_user_id: int,
        status_id: int,
        price: int,
        area: str | None,
        tags: list[Tag],
        created_at: int,
    ) -> Lead:
        """A lead with its main contact and its chat, as a WhatsApp conversation makes one."""
        first_name, _, last_name = contact_name.partition(" ")
        contact_fields: FieldValues = {
            PHONE_FIELD_ID: [FieldValue(value=phone, enum_id=_PHONE_MOB.id, enum_code="MOB")]
        }
        if email is not None:
            contact_fields[EMAIL_FIELD_ID] = [
                FieldValue(value=email, enum_id=_EMAIL_WORK.id, enum_code="WORK")
            ]
        contact_id = self.contact_ids.take()
        contact = Contact(
            id=contact_id,
            name=contact_name,
            first_name=first_name,
            last_name=last_name,
            responsible_user_id=responsible_user_id,
            created_at=created_at,
            updated_at=created_at,
            fields=contact_fields,
            amojo_id=str(uuid.uuid5(_CHAT_NAMESPACE, f"contact-{contact_id}")),
        )
        self.contacts[contact.id] = contact
        return self.add_lead_of(
            contact,
            name=name,
            responsible_user_id=responsible_user_id,
            status_id=status_id,
            price=price,
            area=area,
            tags=tags,
            created_at=created_at,
        )

    def add_lead_of(
        self,
        contact: Contact,
        *,
        name: str,
        responsible_user_id: int,
        status_id: int,
        price: int,
        area: str | None,
        tags: list[Tag],
        created_at: int,
    ) -> Lead:
        """A lead whose main contact is `contact` (a known customer's next deal), with
        its own chat."""
        lead_id = self.lead_ids.take()
        lead_fields: FieldValues = {}
        if area is not None:
            area_enum = _enum_by_value(_AREA_ENUMS, area)
            lead_fields[AREA_FIELD_ID] = [FieldValue(value=area_enum.value, enum_id=area_enum.id)]
        lead = Lead(
            id=lead_id,
            name=name,
            price=price,
            responsible_user_id=responsible_user_id,
            status_id=status_id,
            pipeline_id=self.pipeline.id,
            created_at=created_at,
            updated_at=created_at,
            fields=lead_fields,
            contact_ids=[contact.id],
            tags=tags,
            chat_id=str(uuid.uuid5(_CHAT_NAMESPACE, f"chat-{lead_id}")),
            talk_id=self.talk_ids.take(),
        )
        self.leads[lead.id] = lead
        return lead

    def leads_of_contacts(self) -> dict[int, list[int]]:
        """Each contact's leads (those naming it among their contacts), in lead order:
        Kommo's `_embedded.leads` of a contact read `with=leads`."""
        leads: dict[int, list[int]] = {}
        for lead in self.leads.values():
            for contact_id in lead.contact_ids:
                leads.setdefault(contact_id, []).append(lead.id)
        return leads


def apply_field_writes(
    definitions: dict[int, CustomFieldDef],
    current: FieldValues,
    writes: Sequence[FieldWrite],
    path_prefix: str = "custom_fields_values",
) -> FieldValues:
    """The field values after ``writes``, or FieldWriteError; ``current`` is left untouched.

    Kommo replaces all values of each field written and leaves the other fields alone; an
    empty value clears the field.
    """
    updated = dict(current)
    for index, write in enumerate(writes):
        definition = _find_definition(definitions, write)
        if definition is None:
            raise FieldWriteError(
                f"{path_prefix}.{index}.field_id", "Field not found in the account", "NotFound"
            )
        values = [
            _coerce_value(definition, value, f"{path_prefix}.{index}.values.{position}")
            for position, value in enumerate(write.values or ())
        ]
        kept = [value for value in values if value.value != ""]
        if kept:
            updated[definition.id] = kept
        else:
            updated.pop(definition.id, None)
    return updated


def _find_definition(
    definitions: dict[int, CustomFieldDef], write: FieldWrite
) -> CustomFieldDef | None:
    if write.field_id is not None:
        return definitions.get(write.field_id)
    if write.field_code is not None:
        return next((d for d in definitions.values() if d.code == write.field_code.upper()), None)
    return None


def _coerce_value(definition: CustomFieldDef, value: FieldValueInput, path: str) -> FieldValue:
    raw = "" if value.value is None else str(value.value)
    if definition.type == "select":
        for enum in definition.enums:
            if value.enum_id == enum.id or (value.enum_id is None and raw == enum.value):
                return FieldValue(value=enum.value, enum_id=enum.id)
        raise FieldWriteError(f"{path}.value", f"{raw!r} is not an option of this field")
    if definition.type == "multitext":
        enum_code = (value.enum_code or "WORK").upper()
        for enum in definition.enums:
            if value.enum_id == enum.id or (value.enum_id is None and enum_code == enum.code):
                return FieldValue(value=raw, enum_id=enum.id, enum_code=enum.code)
        raise FieldWriteError(f"{path}.enum_code", f"{enum_code!r} is not a valid enum_code")
    return FieldValue(value=raw)


def _enum_by_value(enums: Sequence[FieldEnum], value: str) -> FieldEnum:
    return next(enum for enum in enums if enum.value == value)


AREAS = ("previdenciario", "trabalhista", "bpc-loas")
_AREA_ENUMS = (
    FieldEnum(800001, "previdenciario"),
    FieldEnum(800002, "trabalhista"),
    FieldEnum(800003, "bpc-loas"),
    FieldEnum(800004, "civel"),
)
_AREA_TITLES = {
    "previdenciario": "Aposentadoria",
    "trabalhista": "Reclamação trabalhista",
    "bpc-loas": "BPC/LOAS",
}
_PHONE_MOB = FieldEnum(710001, "MOB", "MOB")
_PHONE_ENUMS = (
    FieldEnum(710002, "WORK", "WORK"),
    _PHONE_MOB,
    FieldEnum(710003, "HOME", "HOME"),
    FieldEnum(710004, "OTHER", "OTHER"),
)
_EMAIL_WORK = FieldEnum(720001, "WORK", "WORK")
_EMAIL_ENUMS = (_EMAIL_WORK, FieldEnum(720002, "PRIV", "PRIV"), FieldEnum(720003, "OTHER", "OTHER"))

_USER_NAMES = (
    "Ana Beatriz Carvalho",
    "Bruno Henrique Oliveira",
    "Camila Ferreira Santos",
    "Diego Almeida Rocha",
    "Fernanda Lima Costa",
    "Gustavo Ribeiro Martins",
    "Juliana Pereira Gomes",
    "Lucas Mendes Barbosa",
    "Mariana Souza Azevedo",
    "Rafael Teixeira Nunes",
    "Patrícia Moreira Dias",
    "Thiago Cardoso Freitas",
)
_CUSTOMER_FIRST_NAMES = (
    "Maria", "José", "Antônia", "João", "Francisca", "Antônio", "Raimunda", "Francisco",
    "Luzia", "Sebastião", "Terezinha", "Carlos", "Conceição", "Paulo", "Aparecida", "Pedro",
    "Rosângela", "Manoel", "Sônia", "Luiz", "Cícera", "Geraldo", "Marlene", "Benedito",
)  # fmt: skip
_CUSTOMER_LAST_NAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
    "Lima", "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Araújo", "Nascimento",
    "Barbosa", "Rocha", "Dias", "Moreira", "Cavalcanti",
)  # fmt: skip
_AREA_CODES = (11, 11, 21, 11, 31, 11, 19, 11, 41, 11, 71, 11, 81, 11, 61)
_EMAIL_DOMAINS = ("gmail.com", "hotmail.com", "outlook.com.br", "yahoo.com.br")
_STATUS_CYCLE = (
    71000002, 71000002, 71000003, 71000001, 71000004,
    71000002, 71000005, 71000003, STATUS_WON, 71000002, STATUS_LOST,
)  # fmt: skip
_PRICES = (0, 1500, 3000, 4500, 0, 2500, 6000)


def _lead_fields(reply_field_id: int) -> dict[int, CustomFieldDef]:
    return {
        reply_field_id: CustomFieldDef(reply_field_id, "Resposta do bot", "textarea"),
        AREA_FIELD_ID: CustomFieldDef(AREA_FIELD_ID, "Área", "select", enums=_AREA_ENUMS),
        SELLER_NAME_FIELD_ID: CustomFieldDef(SELLER_NAME_FIELD_ID, "Nome do vendedor", "text"),
        SCHEDULE_FIELD_ID: CustomFieldDef(SCHEDULE_FIELD_ID, "Agendamento", "text"),
    }


def _contact_fields() -> dict[int, CustomFieldDef]:
    return {
        PHONE_FIELD_ID: CustomFieldDef(
            PHONE_FIELD_ID, "Telefone", "multitext", code="PHONE", enums=_PHONE_ENUMS
        ),
        EMAIL_FIELD_ID: CustomFieldDef(
            EMAIL_FIELD_ID, "E-mail", "multitext", code="EMAIL", enums=_EMAIL_ENUMS
        ),
    }


def _pipeline() -> Pipeline:
    return Pipeline(
        id=PIPELINE_ID,
        name="Funil Previdas",
        statuses=(
            Status(71000001, "Leads de entrada", 10, type=1),
            Status(71000002, "Primeiro contato", 20),
            Status(71000003, "Triagem de documentos", 30),
            Status(71000004, "Análise do caso", 40),
            Status(71000005, "Proposta enviada", 50),
            Status(STATUS_WON, "Contrato fechado", 10000),
            Status(STATUS_LOST, "Perdido", 11000),
        ),
    )


def ascii_slug(text: str) -> str:
    """``"Antônia Araújo"`` → ``"antonia.araujo"``, for e-mail addresses."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return ".".join(plain.lower().split())


def mobile_phone(n: int) -> str:
    """A deterministic Brazilian mobile number in E.164 (``+55`` DDD ``9`` + 8 digits)."""
    area_code = _AREA_CODES[(n - 1) % len(_AREA_CODES)]
    # Subscriber numbers of mobiles start with 7, 8 or 9 after the leading 9.
    subscriber = 71000000 + (n * 2718281) % 28999999
    return f"+55{area_code}9{subscriber}"


def seed(config: SandboxConfig, *, now: float | None = None) -> AccountState:
    """The account as it starts; ``now`` (default: the clock) dates the seeded customers'
    last messages, one hour before it."""
    seeded_at = time.time() if now is None else now
    state = AccountState(
        account_id=config.account_id,
        subdomain=config.subdomain,
        name="Previdas",
        users={},
        leads={},
        contacts={},
        lead_fields=_lead_fields(config.reply_field_id),
        contact_fields=_contact_fields(),
        pipeline=_pipeline(),
        tags=(Tag(50001, "whatsapp"), Tag(50002, "indicação"), Tag(50003, "retorno")),
        templates={template.id: ChatTemplate.seeded(template) for template in config.templates},
    )
    if config.templates:
        state.template_ids.next_id = max(FIRST_TEMPLATE_ID, max(t.id for t in config.templates) + 1)
    for index in range(config.users):
        if index < len(_USER_NAMES):
            name = _USER_NAMES[index]
            first, *_, last = name.split()
            email = f"{ascii_slug(first + ' ' + last)}@{USER_DOMAIN}"
        else:
            name = f"Vendedor {index + 1}"
            email = f"vendedor{index + 1}@{USER_DOMAIN}"
        is_last = index == config.users - 1
        state.add_user(
            name, email, is_admin=index == 0, is_active=not (is_last and config.users >= 2)
        )
    admin = state.admin
    inactive = [user for user in state.users.values() if not user.is_active]
    owners = [user.id for user in state.users.values() if user.is_active and not user.is_admin]
    owners = owners or [admin.id]
    for n in range(1, config.leads + 1):
        first, last = _customer_name(n)
        contact_name = f"{first} {last}"
        area = None if n % 5 == 0 else AREAS[(n - 1) % len(AREAS)]
        is_last_lead = n == config.leads
        responsible = inactive[0].id if is_last_lead and inactive else owners[(n - 1) % len(owners)]
        title = _AREA_TITLES[area] if area else "Consulta"
        contact_email = (
            None if n % 3 == 0 else f"{ascii_slug(contact_name)}@{_EMAIL_DOMAINS[n % 4]}"
        )
        tags = [state.tags[0]] + ([state.tags[1]] if n % 4 == 0 else [])
        lead = state.add_lead(
            name=f"{title} — {contact_name}",
            contact_name=contact_name,
            phone=mobile_phone(n),
            email=contact_email,
            responsible_user_id=responsible,
            status_id=_STATUS_CYCLE[(n - 1) % len(_STATUS_CYCLE)],
            price=_PRICES[(n - 1) % len(_PRICES)],
            area=area,
            tags=tags,
            created_at=SEED_EPOCH + n * 5400,
        )
        state.customer_wrote_at(lead, seeded_at - SEEDED_CUSTOMER_WROTE_AGO)
    return state


def _customer_name(n: int) -> tuple[str, str]:
    """Varied names: first and last names advance at co-prime strides."""
    first = _CUSTOMER_FIRST_NAMES[(n - 1) % len(_CUSTOMER_FIRST_NAMES)]
    last = _CUSTOMER_LAST_NAMES[(n * 5 - 1) % len(_CUSTOMER_LAST_NAMES)]
    return first, last
