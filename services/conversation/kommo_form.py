"""Kommo's webhook body: `application/x-www-form-urlencoded` with PHP-style bracketed keys.

`parse_form` gives the same pairs as `urllib.parse.parse_qsl(text, keep_blank_values=True)`
(the tests check it with hypothesis) but decodes each distinct key once: Kommo repeats
the same few dozen keys in every body, and percent-decoding them was the largest cost
of the webhook path.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

from services.common.errors import InvalidInput

Tree = dict[str, Any]


@lru_cache(maxsize=4096)
def _decode_key(raw: str) -> str:
    return unquote_plus(raw) if ("%" in raw or "+" in raw) else raw


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


@lru_cache(maxsize=4096)
def _key_path(key: str) -> tuple[str, ...]:
    """`message[add][0][author][id]` → ("message", "add", "0", "author", "id")."""
    head, bracket, rest = key.partition("[")
    if not bracket:
        return (key,)
    if not rest.endswith("]"):
        raise InvalidInput(f"malformed key {key!r}")
    return (head, *rest[:-1].split("]["))


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
