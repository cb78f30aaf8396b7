"""How much of a contact's personal data the envelopes to n8n carry (docs/n8n-contract.md).

An n8n workflow usually hands the envelope to an LLM run by a third party; under Brazil's
LGPD the bridge sends only what the workflow needs. It never needs the phone or the e-mail
to answer (replies are addressed by `callback`), so by default both are masked: enough for a
person to recognise the contact, not enough to reach or identify them. Shared by every
service that builds envelopes (conversation, scheduling).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Numbers stored without a country code are Brazilian (the product's customers).
_DEFAULT_REGION = "BR"
_MASK = "*"
# Digits shown at the end of a masked phone.
_PHONE_TAIL = 2
# A number shorter than this is masked whole: its tail would be most of it.
_MIN_PHONE_DIGITS = 6


class Disclosure(enum.StrEnum):
    """What an envelope carries of one personal datum."""

    FULL = "full"  # as Kommo holds it
    MASKED = "masked"  # recognisable, not usable: +55 11 9****-**21, m***@g***.com
    OMIT = "omit"  # null


def mask_phone(phone: str, tail: int = _PHONE_TAIL) -> str:
    """`+55 11 98765-4321` → `+55 11 9****-**21`: the country and area codes and the first
    digit (mobile or landline) stay; the rest, but the last `tail` digits, is masked."""
    try:
        parsed = phonenumbers.parse(phone, _DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        digits = [c for c in phone if c.isdigit()]
        if len(digits) < _MIN_PHONE_DIGITS:
            return _MASK * 3
        return _MASK * (len(digits) - tail) + "".join(digits[-tail:])
    shown = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    prefix = f"+{parsed.country_code}"
    national = phonenumbers.national_significant_number(parsed)
    keep_head = phonenumbers.length_of_national_destination_code(parsed) + 1
    keep_from = len(national) - tail
    out, index = [prefix], 0
    for char in shown.removeprefix(prefix):
        if not char.isdigit():
            out.append(char)
            continue
        out.append(char if index < keep_head or index >= keep_from else _MASK)
        index += 1
    return "".join(out)


def mask_email(email: str) -> str:
    """`maria.souza@gmail.com` → `m***@g***.com`: first letters and the top-level domain."""
    local, at, domain = email.strip().rpartition("@")
    if not at or not local or not domain:
        return _MASK * 3
    host, dot, tld = domain.rpartition(".")
    masked_domain = f"{host[:1]}{_MASK * 3}{dot}{tld}" if dot and host else _MASK * 3
    return f"{local[:1]}{_MASK * 3}@{masked_domain}"


@dataclass(frozen=True, slots=True)
class ContactDisclosure:
    phone_policy: Disclosure = Disclosure.MASKED
    email_policy: Disclosure = Disclosure.MASKED

    def phone(self, value: str | None) -> str | None:
        return _apply(self.phone_policy, value, mask_phone)

    def email(self, value: str | None) -> str | None:
        return _apply(self.email_policy, value, mask_email)


def _apply(policy: Disclosure, value: str | None, mask: Callable[[str], str]) -> str | None:
    if not value or policy is Disclosure.OMIT:
        return None
    return value if policy is Disclosure.FULL else mask(value)


class ContactPrivacySettings(BaseSettings):
    """N8N_CONTACT_PHONE and N8N_CONTACT_EMAIL: for every service that builds envelopes."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    n8n_contact_phone: Disclosure = Field(
        default=Disclosure.MASKED,
        description="the contact's phone in envelopes: full, masked or omit (null)",
    )
    n8n_contact_email: Disclosure = Field(
        default=Disclosure.MASKED,
        description="the contact's e-mail in envelopes: full, masked or omit (null)",
    )

    @field_validator("n8n_contact_phone", "n8n_contact_email", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def contact_disclosure(self) -> ContactDisclosure:
        return ContactDisclosure(self.n8n_contact_phone, self.n8n_contact_email)
