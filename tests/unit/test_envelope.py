"""Building the envelope for n8n: order, history bounds, echo fingerprints."""

from __future__ import annotations

from services.conversation import envelope
from services.conversation.events import MessageEvent


def _event(**overrides: object) -> MessageEvent:
    fields: dict[str, object] = {
        "message_id": "m1",
        "chat_id": "chat-1",
        "talk_id": 1,
        "contact_id": 2,
        "lead_id": 3,
        "text": "oi",
        "created_at": 1764000000,
        "direction": "incoming",
        "author_id": "a",
        "author_type": "external",
        "author_name": "Maria",
        "origin": "waba",
        "message_type": "text",
        "attachment": None,
    }
    fields.update(overrides)
    return MessageEvent(**fields)  # type: ignore[arg-type]


def test_a_conversation_follows_its_lead_whoever_sees_it_first() -> None:
    a = envelope.conversation_id_for(_event(message_id="x"))
    assert a == envelope.conversation_id_for(_event(message_id="y", text="outra"))
    assert a == envelope.conversation_id_for(_event(chat_id="chat-2")), "a new chat, same lead"
    assert a == envelope.conversation_for_lead(3), "the same as a proactive start's"
    assert a != envelope.conversation_id_for(_event(lead_id=4)), "the same chat, another lead"


def test_a_message_without_a_lead_is_placed_by_its_chat() -> None:
    a = envelope.conversation_id_for(_event(lead_id=0))
    assert a == envelope.conversation_id_for(_event(lead_id=0, message_id="y"))
    assert a != envelope.conversation_id_for(_event(lead_id=0, chat_id="chat-2"))
    assert a != envelope.conversation_id_for(_event())


def test_messages_are_ordered_by_kommo_time_then_arrival() -> None:
    entries = [
        {"id": "c", "created_at": 20, "seq": "5-0"},
        {"id": "b", "created_at": 10, "seq": "9-0"},
        {"id": "a", "created_at": 10, "seq": "3-1"},
    ]
    assert [e["id"] for e in envelope.order_messages(entries)] == ["a", "b", "c"]


def test_history_keeps_the_newest_turns_within_the_budget() -> None:
    history = [{"role": "customer", "text": "x" * 100, "message_id": str(i)} for i in range(10)]
    kept = envelope.bounded_history(history, exclude_ids={"9"}, max_chars=250)
    assert len(kept) == 2
    assert all("message_id" not in e for e in kept)


def test_echo_fingerprint_survives_what_kommo_does_to_text() -> None:
    sent = "Olá Maria! 😀  Tudo bem?\n"
    echoed = "Olá Maria!  Tudo bem?"
    assert envelope.text_fingerprint(sent) == envelope.text_fingerprint(echoed)
    assert envelope.text_fingerprint(sent) != envelope.text_fingerprint("Olá João!")
