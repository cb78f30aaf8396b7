"""How the bot rules read customer text and phones: a keyword is found as a whole word or
phrase, whatever its case and accents (`matched_keyword`); a phone written in any format
is read as E.164 (`normalize_phone`). Plain functions, no I/O; used by the document's
validation (rules_document.py) and by the decision for a turn (rules.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import phonenumbers

# Customer text is cut to this before any keyword or pattern is matched: a match costs at
# most this much, whatever a customer pastes.
MATCH_MAX_CHARS = 4096

# The longest phone read, in the ignore list or from a contact: a longer one is not a phone.
MAX_PHONE_CHARS = 40

# Numbers written without a country code are Brazilian (the product's customers).
DEFAULT_PHONE_REGION = "BR"
# The validation context key that overrides it: `model_validate(d, context={...: "PT"})`.


def _fold(text: str) -> str:
    """Lower case without accents: "Preço" and "preco" read the same."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@lru_cache(maxsize=4096)
def _keyword_regex(keyword: str) -> re.Pattern[str]:
    """A whole word or phrase: no letter or digit may touch either end ("preço" is not in
    "preçoxyz"); any run of spaces between its words matches."""
    folded = _fold(keyword)
    body = r"\s+".join(re.escape(word) for word in folded.split())
    before = r"(?<!\w)" if re.match(r"\w", folded) else ""
    after = r"(?!\w)" if re.search(r"\w$", folded) else ""
    return re.compile(before + body + after)


def matched_keyword(keywords: Sequence[str], texts: Sequence[str]) -> str | None:
    """The first keyword (as written in the rules) found in any of the texts, if any."""
    folded = [_fold(text[:MATCH_MAX_CHARS]) for text in texts]
    for keyword in keywords:
        regex = _keyword_regex(keyword)
        if any(regex.search(text) for text in folded):
            return keyword
    return None


def check_keyword(keyword: str) -> str:
    """The keyword trimmed, or ValueError when it has no letter or digit."""
    keyword = keyword.strip()
    if not any(c.isalnum() for c in _fold(keyword)):
        raise ValueError(f"a keyword needs at least one letter or digit, got {keyword!r}")
    return keyword


def normalize_phone(raw: str, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """The E.164 form (+5511987654321) of a phone written in any format, or None when it is
    not a valid number; `region` is the country of numbers written without a code."""
    if len(raw) > MAX_PHONE_CHARS:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        fixed = _with_ninth_digit(number)
        if fixed is None:
            return None
        number = fixed
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _with_ninth_digit(number: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber | None:
    """Brazilian mobiles gained a ninth digit (a leading 9) in 2012-2016, but WhatsApp still
    reports many accounts in the old 8-digit form (+55 11 8765-4321), and Kommo stores the
    phone WhatsApp gives. Such a number is invalid today; with the 9 it is the same line."""
    national = phonenumbers.national_significant_number(number)
    if number.country_code != 55 or len(national) != 10 or national[2] not in "6789":
        return None
    fixed = phonenumbers.parse(f"+55{national[:2]}9{national[2:]}")
    return fixed if phonenumbers.is_valid_number(fixed) else None
