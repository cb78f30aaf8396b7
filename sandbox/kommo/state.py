"""The sandbox's Kommo account, held in memory: every record Kommo would keep in its
database for one account (``records.py``), the id sequences new records take from, and how
users, leads, chat messages and events are added. ``seed.py`` builds the account it starts as.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandbox.kommo.custom_fields import (
    AREA_ENUMS,
    EMAIL_WORK,
    PHONE_MOB,
    CustomFieldDef,
    FieldEnum,
    FieldValue,
    FieldValues,
)
from sandbox.kommo.ids import (
    AREA_FIELD_ID,
    EMAIL_FIELD_ID,
    FIRST_CONTACT_ID,
    FIRST_LEAD_ID,
    FIRST_NOTE_ID,
    FIRST_SUBSCRIPTION_ID,
    FIRST_TALK_ID,
    FIRST_TASK_ID,
    FIRST_TEMPLATE_ID,
    FIRST_USER_ID,
    PHONE_FIELD_ID,
)
from sandbox.kommo.records import (
    INCOMING_CHAT_MESSAGE,
    ChatMessage,
    ChatTemplate,
    Contact,
    Event,
    Lead,
    Note,
    Pipeline,
    Tag,
    Task,
    User,
    WebhookSubscription,
)

# Chat ids and external author ids must be stable per lead/contact across restarts.
_CHAT_NAMESPACE = uuid.UUID("6f0c7a52-3c1e-4c53-9a53-2b8f5d1a0b01")


def chat_id_of(lead_id: int) -> str:
    """The chat of a lead the sandbox made (seeded or added): a UUID derived from its id."""
    return str(uuid.uuid5(_CHAT_NAMESPACE, f"chat-{lead_id}"))


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
            PHONE_FIELD_ID: [FieldValue(value=phone, enum_id=PHONE_MOB.id, enum_code="MOB")]
        }
        if email is not None:
            contact_fields[EMAIL_FIELD_ID] = [
                FieldValue(value=email, enum_id=EMAIL_WORK.id, enum_code="WORK")
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
            area_enum = _enum_by_value(AREA_ENUMS, area)
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
            chat_id=chat_id_of(lead_id),
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


def _enum_by_value(enums: Sequence[FieldEnum], value: str) -> FieldEnum:
    return next(enum for enum in enums if enum.value == value)
