"""The one loader of the store's Lua scripts (store/lua/*.lua).

Every script file is read once, at import: the libraries (`_lib.lua`: life, expire, own,
touch, recount, bump, settle; `_apply.lua`: apply_message; `_reply.lua`: begin_reply;
the last two call `_lib`'s) are put in front of each script that calls one of their
functions (`_lib` first), and the @NAME@ placeholders are replaced with the key names of keys.py. Each class registers the
scripts it runs on its own client with `register`, so every class gets its scripts the
same way. Each file starts with a header naming its KEYS and ARGV, and what it returns.
"""

from __future__ import annotations

import re
from pathlib import Path

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from services.common.reports import REPORT_SECONDS
from services.conversation.store.keys import (
    BOT_STATE_AWAITING,
    BOT_STATE_PAUSED,
    BOT_STATES,
    BY_CHAT_PREFIX,
    BY_CONTACT_PREFIX,
    BY_LEAD_PREFIX,
    CONVERSATION_PREFIX,
    CONVERSATIONS,
)

LUA_DIR = Path(__file__).with_name("lua")
# The libraries, in the order they go in front of a script: a later one may call an
# earlier one's functions.
LIBRARIES = ("_lib", "_apply", "_reply")

# What the scripts' @NAME@ placeholders stand for.
_PLACEHOLDERS = {
    "@CONV@": CONVERSATION_PREFIX,
    "@STATES@": BOT_STATES,
    "@PAUSED@": str(BOT_STATE_PAUSED),
    "@AWAITING@": str(BOT_STATE_AWAITING),
    "@INDEX@": CONVERSATIONS,
    "@LEAD@": BY_LEAD_PREFIX,
    "@CONTACT@": BY_CONTACT_PREFIX,
    "@CHAT@": BY_CHAT_PREFIX,
    "@REPORT_SECONDS@": str(REPORT_SECONDS),
}


def _fill(source: str) -> str:
    for placeholder, value in _PLACEHOLDERS.items():
        source = source.replace(placeholder, value)
    return source


def _code(source: str) -> str:
    """The source without its comments (to see which functions it calls)."""
    return re.sub(r"--[^\n]*", "", source)


def _calls(library: str) -> re.Pattern[str]:
    """What a call of one of `library`'s functions looks like."""
    functions = re.findall(r"^local function (\w+)\(", library, flags=re.MULTILINE)
    return re.compile(r"\b(?:%s)\(" % "|".join(functions))  # noqa: UP031


def _load() -> dict[str, str]:
    files = {path.stem: path.read_text(encoding="utf-8") for path in LUA_DIR.glob("*.lua")}
    libraries = [files.pop(name) for name in LIBRARIES]
    patterns = [_calls(library) for library in libraries]
    loaded = {}
    for name, source in files.items():
        code = _code(source)
        wanted: list[str] = []
        # The last library first: what it calls brings in the ones before it.
        for library, calls in reversed(list(zip(libraries, patterns, strict=True))):
            if calls.search(code) or any(calls.search(_code(w)) for w in wanted):
                wanted.insert(0, library)
        loaded[name] = _fill("\n".join([*wanted, source]))
    return loaded


SOURCES = _load()


def source(name: str) -> str:
    """The script `name` (lua/<name>.lua) as Redis runs it."""
    return SOURCES[name]


def register(redis: aioredis.Redis, name: str) -> AsyncScript:
    """The script `name` (lua/<name>.lua) registered on this client."""
    return redis.register_script(SOURCES[name])


def flat(mapping: dict[str, str]) -> list[str]:
    """Field/value pairs as a script's ARGV takes them."""
    out: list[str] = []
    for field, value in mapping.items():
        out.extend((field, value))
    return out
