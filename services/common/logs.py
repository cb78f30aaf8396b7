"""JSON logs on stdout, with request ids, secrets and phone numbers masked.

Masking happens in the formatter, after the message is rendered, so no call site can
leak a secret or a customer's phone by formatting it into a message or an extra field.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


@contextmanager
def flow(rid: str) -> Iterator[None]:
    """Background work carries on a flow started elsewhere (a webhook, an API call):
    its log lines, and the gRPC calls it makes, get that flow's request id."""
    token = request_id.set(rid)
    try:
        yield
    finally:
        request_id.reset(token)


# A phone as customers and Kommo write it: + or digits, with spaces, dots, dashes or
# parentheses, at least 10 digits (a Brazilian number with its area code; Kommo's ids
# are shorter). Masked to its last 4 digits.
_PHONE = re.compile(r"(?<![\w/.-])\+?\d[\d\s().-]{8,}\d(?![\w/])")
_MIN_PHONE_DIGITS = 10
_MIN_SECRET_LENGTH = 4


def mask_phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    if len(digits) < _MIN_PHONE_DIGITS:
        return match.group(0)
    return "*" * (len(digits) - 4) + digits[-4:]


class Masker:
    """Replaces registered secrets and anything shaped like a phone number."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add_secrets(self, secrets: Iterable[str]) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= _MIN_SECRET_LENGTH)
        if self._secrets:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub("***", text)
        return _PHONE.sub(mask_phone, text)


masker = Masker()

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return masker(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(service: str, level: str, secrets: Iterable[str] = ()) -> None:
    masker.add_secrets(secrets)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access logs would print every webhook URL, and with it the webhook secret.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
