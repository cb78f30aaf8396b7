"""Kommo's webhook body: `application/x-www-form-urlencoded` with PHP-style bracketed keys.

`parse_form` gives the same pairs as `urllib.parse.parse_qsl(text, keep_blank_values=True)`
(the tests check it with hypothesis) but decodes each distinct key once: Kommo repeats
the same few dozen keys in every body, and percent-decoding them was the largest cost
of the webhook path. Only short keys are cached: the keys are the sender's to choose, and
a cache of long junk keys would hold megabytes for good.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from services.common.errors import InvalidInput

Tree = dict[str, Any]


# Kommo's longest keys (`message[add][0][attachment][file_name]`, custom fields of a lead
# event) stay well under this; a longer key is decoded each time, never kept.
_CACHED_KEY_CHARS = 160
_CACHED_KEYS = 2048


def _decode(raw: str) -> str:
    return unquote_plus(raw) if ("%" in raw or "+" in raw) else raw


_decode_cached = lru_cache(maxsize=_CACHED_KEYS)(_decode)


def _decode_key(raw: str) -> str:
    return _decode_cached(raw) if len(raw) <= _CACHED_KEY_CHARS else _decode(raw)


def parse_form(body: bytes, max_fields: int) -> list[tuple[str, str]]:
    """Split a form body into decoded (key, value) pairs, refusing more than max_fields."""
    pieces = body.decode("utf-8", "replace").split("&")
    if len(pieces) > max_fields and sum(1 for p in pieces if p) > max_fields:
        raise InvalidInput(f"too many form fields (more than {max_fields})")
    pairs: list[tuple[str, str]] = []
    for piece in pieces:
        if not piece:
            continue
        key, _, value = piece.partition("=")
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        pairs.append((_decode_key(key), value))
    return pairs


def _split_key(key: str) -> tuple[str, ...]:
    """`message[add][0][author][id]` → ("message", "add", "0", "author", "id"). A key
    with unbalanced brackets stays whole: it is one unexpected field, skipped by the
    webhook parser like any other, and the rest of the body is kept."""
    head, bracket, rest = key.partition("[")
    if not bracket or not rest.endswith("]"):
        return (key,)
    return (head, *rest[:-1].split("]["))


_split_cached = lru_cache(maxsize=_CACHED_KEYS)(_split_key)


def _key_path(key: str) -> tuple[str, ...]:
    return _split_cached(key) if len(key) <= _CACHED_KEY_CHARS else _split_key(key)


def nest(pairs: list[tuple[str, str]]) -> Tree:
    """Build the nested structure PHP would: every level a dict keyed by the bracket text."""
    root: Tree = {}
    for key, value in pairs:
        path = _key_path(key)
        node = root
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return root
