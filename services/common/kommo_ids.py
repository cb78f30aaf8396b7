"""What a Kommo id is: the one range every boundary of the bridge checks.

Kommo's ids (leads, contacts, users, talks, statuses, pipelines) are positive integers,
eight or nine digits today. The upper bound is JavaScript's `Number.MAX_SAFE_INTEGER`,
not int64's: every envelope carries ids as JSON numbers to n8n, whose workflows (like
Kommo's own web app and the dashboard) are JavaScript, where a larger id silently becomes
another number. It also fits every `int64` field of the protos, so an id that passes
here can never overflow a protobuf message further in.
"""

from __future__ import annotations

from services.common.errors import InvalidInput

KOMMO_ID_MIN = 1
KOMMO_ID_MAX = 2**53 - 1  # 9007199254740991

_MAX_DIGITS = len(str(KOMMO_ID_MAX))
_SHOWN_CHARS = 40


def is_kommo_id(value: int) -> bool:
    return KOMMO_ID_MIN <= value <= KOMMO_ID_MAX


def parse_kommo_id(text: str, what: str) -> int:
    """The id written in `text` (decimal digits), or InvalidInput naming `what`."""
    digits = text.lstrip("0")
    # ASCII only: str.isdigit() alone also accepts "²" (which int() refuses) and "١٢".
    # Length before int(): int() of thousands of digits is slow, and refused past 4,300.
    if (
        not (text.isascii() and text.isdigit())
        or len(digits) > _MAX_DIGITS
        or not is_kommo_id(value := int(digits or "0"))
    ):
        shown = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"
        raise InvalidInput(
            f"{what} must be an integer from {KOMMO_ID_MIN} to {KOMMO_ID_MAX} "
            f"(a Kommo id), got {shown!r}"
        )
    return value
