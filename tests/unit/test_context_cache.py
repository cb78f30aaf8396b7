"""A replica's copies of a turn's lead, contact and vendedor: young copies only, bounded
in number, dropped by name."""

from __future__ import annotations

from services.conversation.context import (
    CONTACT,
    CONTACT_JSON,
    LEAD,
    VENDEDOR,
    ContextCache,
    apply_change,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_copy_is_used_while_it_is_young() -> None:
    clock = Clock()
    cache = ContextCache(15, clock=clock)
    cache.put(LEAD, 9100001, "lead")
    clock.now += 14.9
    assert cache.get(LEAD, 9100001) == "lead"
    clock.now += 0.1
    assert cache.get(LEAD, 9100001) is None
    assert len(cache) == 0


def test_kinds_are_apart_and_nothing_is_kept_when_off_or_without_an_id() -> None:
    cache = ContextCache(15)
    cache.put(LEAD, 7, "lead 7")
    assert cache.get(CONTACT, 7) is None
    cache.put(CONTACT, 0, "no id")
    assert cache.get(CONTACT, 0) is None
    off = ContextCache(0)
    off.put(LEAD, 7, "lead 7")
    assert off.get(LEAD, 7) is None


def test_the_oldest_copies_go_past_the_bound() -> None:
    cache = ContextCache(15, max_entries=3)
    for lead in (1, 2, 3):
        cache.put(LEAD, lead, lead)
    cache.put(LEAD, 1, "read again")  # now the youngest
    cache.put(LEAD, 4, 4)
    assert [cache.get(LEAD, i) for i in (1, 2, 3, 4)] == ["read again", None, 3, 4]


def test_a_change_drops_the_copies_it_names_and_ignores_the_rest() -> None:
    cache = ContextCache(15)
    cache.put(LEAD, 9100001, "lead")
    cache.put(CONTACT, 4400001, "contact")
    cache.put(VENDEDOR, 5, "vendedor")
    apply_change(cache, "lead:9100001 contact:4400001 lead:x nonsense account:3 contact:")
    assert cache.get(LEAD, 9100001) is None
    assert cache.get(CONTACT, 4400001) is None
    assert cache.get(VENDEDOR, 5) == "vendedor"


def test_a_contacts_envelope_form_goes_with_the_contact() -> None:
    cache = ContextCache(15)
    cache.put(CONTACT, 4400001, "contact")
    cache.put(CONTACT_JSON, 4400001, ("contact", {"phone": "+55 11 9****-**21"}))
    cache.put(CONTACT_JSON, 4400002, ("other", {"phone": "+55 21 9****-**00"}))
    apply_change(cache, "contact:4400001")
    assert cache.get(CONTACT_JSON, 4400001) is None
    assert cache.get(CONTACT_JSON, 4400002) is not None


def test_what_is_made_from_a_copy_is_made_again_for_a_new_copy() -> None:
    cache = ContextCache(15)
    made: list[str] = []

    def make(name: str) -> dict[str, str]:
        made.append(name)
        return {"name": name}

    first, second = object(), object()
    assert cache.made_from(CONTACT_JSON, 4400001, first, lambda: make("a")) == {"name": "a"}
    assert cache.made_from(CONTACT_JSON, 4400001, first, lambda: make("b")) == {"name": "a"}
    assert made == ["a"]
    # Another copy of the contact (read again after a change): made again.
    assert cache.made_from(CONTACT_JSON, 4400001, second, lambda: make("c")) == {"name": "c"}
    assert made == ["a", "c"]
