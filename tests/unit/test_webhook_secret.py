"""The webhook's secret check: any query string is compared as bytes, never raises."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote_from_bytes

from hypothesis import given
from hypothesis import strategies as st

from services.edge_api.webhook import KommoWebhook

SECRET = "s3cr3t-of-the-webhook-ção"


def webhook() -> KommoWebhook:
    return KommoWebhook(cast(Any, None), SECRET, 1 << 20)


def test_the_secret_passes_however_it_is_escaped() -> None:
    raw = SECRET.encode()
    assert webhook()._secret_ok(b"secret=" + quote_from_bytes(raw).encode())
    assert webhook()._secret_ok(b"a=1&secret=" + quote_from_bytes(raw, safe="").encode())


def test_invalid_escapes_are_refused_not_crashed_on() -> None:
    for query in (b"secret=%FF", b"secret=%E0%A4", b"secret=%", b"secret=\xff", b"%FF=%FE"):
        assert not webhook()._secret_ok(query)


@given(st.binary(max_size=200))
def test_any_query_string_gets_an_answer(query: bytes) -> None:
    assert webhook()._secret_ok(query) is (query == b"secret=" + SECRET.encode())
