"""The bot's rules: who may silence it, and the commands vendedores type. Plain data."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidInput
from services.common.kommo_ids import parse_kommo_id

ACTIVE = "active"
PAUSED = "paused"

# Authors of outgoing messages that are not people: the bridge's own Salesbot, other
# bots, Kommo itself. Anything else writing in the chat is a person from the team.
_NOT_HUMAN = frozenset({"bot", "salesbot", "system", "widget", "integration", "external", ""})


@dataclass(frozen=True, slots=True)
class Command:
    action: str  # "pause" or "resume"
    lead_id: int  # 0 = the conversation the command was typed in


def parse_command(text: str, assume: str, release: str) -> Command | None:
    """`/assumir 123` → pause lead 123; `/liberar` → resume this conversation.

    None when the text is not a command at all (an ordinary message).
    """
    words = text.strip().split()
    if not words:
        return None
    verb = words[0].lower()
    if verb not in (assume.lower(), release.lower()):
        return None
    action = "pause" if verb == assume.lower() else "resume"
    if len(words) == 1:
        return Command(action, 0)
    if len(words) > 2:
        raise InvalidInput(f"usage: {words[0]} <lead id>, e.g. {words[0]} 9100001")
    return Command(action, parse_kommo_id(words[1].removeprefix("#"), f"{words[0]}: the lead id"))


def written_by_a_person(author_type: str) -> bool:
    return author_type.strip().lower() not in _NOT_HUMAN
