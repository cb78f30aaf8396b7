"""What must never reach the model: the contact's phone and e-mail, URLs (the bridge's
callback), tokens and keys, the bridge's own reply field, and files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# A run of digits with phone punctuation, 10 digits or more: a phone (or a CPF).
_PHONE = re.compile(r"\+?\d[\d ().-]{8,}\d")
_PHONE_DIGITS = 10
_URL = re.compile(r"https?://|www\.")
# Reply tokens and event ids are 32 hex characters.
_TOKEN = re.compile(r"\b[0-9a-f]{32}\b")
_FIELD_NAMES = ("reply_token", "callback", "status_callback", "idempotency_key")
REPLY_FIELD = "Resposta do bot"


@dataclass(frozen=True)
class ModelCall:
    """One request to the chat model, as the double recorded it."""

    body: dict[str, Any]

    def _chars(self, role: str) -> int:
        return sum(len(text_of(m.get("content"))) for m in self.messages if m.get("role") == role)

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages") or []
        return [m for m in messages if isinstance(m, dict)]

    @property
    def system_chars(self) -> int:
        return self._chars("system")

    @property
    def user_chars(self) -> int:
        return self._chars("user")

    @property
    def streamed(self) -> bool:
        return bool(self.body.get("stream"))

    def text(self) -> str:
        return "\n".join(text_of(m.get("content")) for m in self.messages)


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def leaks(call: ModelCall, secrets: Iterable[str] = ()) -> list[str]:
    """What in this request should not be there, named (never quoted: it is personal data)."""
    found: list[str] = []
    raw = json.dumps(call.body, ensure_ascii=False)
    for message in call.messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") != "text" for p in content
        ):
            found.append("a file")
    if _EMAIL.search(raw):
        found.append("an e-mail address")
    if any(
        len(re.sub(r"\D", "", match.group())) >= _PHONE_DIGITS for match in _PHONE.finditer(raw)
    ):
        found.append("a phone number")
    if _URL.search(raw):
        found.append("a URL")
    if _TOKEN.search(raw) or any(name in raw for name in _FIELD_NAMES):
        found.append("a token or callback")
    if any(secret and secret in raw for secret in secrets):
        found.append("a secret of the bridge")
    if REPLY_FIELD in raw:
        found.append(f"the lead field {REPLY_FIELD!r}")
    return found
