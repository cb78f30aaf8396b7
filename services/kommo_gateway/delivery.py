"""Getting a reply to the customer exactly once.

Kommo's REST API cannot send a chat message. By default the text is written to a lead
field that a one-step Salesbot sends; the bot reads the field asynchronously, so a
lead's field belongs to one reply for `kommo_reply_spacing_seconds` (a Redis slot).
Running the bot is not idempotent: after a 5xx or a timeout the bot runs again only when
the lead's events show no message a bot sent while the slot was ours. Kommo's events carry
no text (docs/kommo-api.md), so any bot message in that window is taken for ours: the slot
keeps every other reply of ours out of it, and a user's message says who wrote it.
With a registered channel, the Chats API is used instead (signed requests).

A WhatsApp template can only be sent by a Salesbot whose Message step holds it (a
template send): its markers are the lead's fields when the bot runs, so the given lead
fields are written (not the reply field), then that bot is run, with the same slot, the
same evidence and the same once-per-key as a reply; never through the Chats API.

The bridge's own echo webhook would be evidence too, but it reaches the conversation
service, not the gateway; the events suffice, and cost one call only after a failed run.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import httpx
import redis.asyncio as aioredis

from services.common.errors import Unavailable, UpstreamError
from services.kommo_gateway.kommo_client import KommoClient
from services.kommo_gateway.notes import Note, Notes
from services.kommo_gateway.ratelimit import Priority
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.store import (
    DELIVERY_TTL_SECONDS,
    NOTES,
    NOTES_DUE,
    cache_key,
    delivery_attempt_key,
    delivery_key,
    lead_slot_key,
)

log = logging.getLogger(__name__)

_SLOT_WAIT_STEP_SECONDS = 0.05
_SLOT_WAIT_MAX_SECONDS = 60.0
# Held while a delivery writes the field and runs the bot (rate-limit waits included);
# shortened to the spacing once the bot has been started. Expires if the holder dies.
_SLOT_HOLD_MS = 60_000
_SLOT_HOLD_SECONDS = _SLOT_HOLD_MS / 1000
_MAX_RUNS = 3
# A first run this soon after the begin took the slot goes on the begin's record of it
# (the hold, from then, still covers the grace period); later, it is recorded anew.
_PREPARED_SECONDS = 5.0
# Kommo serves at most 100 events a page. The evidence window is a few seconds of one
# lead's outgoing messages, so one page holds them all.
_EVENTS_PAGE_LIMIT = 100
OUTGOING_CHAT_MESSAGE = "outgoing_chat_message"
INCOMING_CHAT_MESSAGE = "incoming_chat_message"
# `created_by` of an event no user caused: a bot's (ours) or the system's.
_NO_USER = 0

# Compare-and-set on a lock we own: shorten (or release) only our own hold.
_EXPIRE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# A delivery begins (issue 22: one call where there were four): a key already sent is
# not sent again; otherwise one attempt per key at a time holds its lock, and a Salesbot
# delivery takes its lead's slot when it is free (KEYS[3]; else it waits for it). KEYS:
# the delivery's state, its attempt lock[, the lead's slot]. ARGV: owner, hold (ms)[,
# the state of a run of unknown outcome (JSON), its lifetime (s)]. Returns {1, state}
# sent before, {2} another attempt holds the lock, {0, state or false, 1 if the slot was
# taken}: the lock is ours. With the slot taken and no earlier run of unknown outcome on
# record, the given state is recorded already (what _BEFORE_RUN records, issue 22: one
# call fewer when the bot runs soon after): the run may go at once.
_BEGIN = """
local state = redis.call('GET', KEYS[1])
local status = state and cjson.decode(state).status
if status == 'sent' then return {1, state} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
local slot = 0
if #KEYS >= 3 and redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
  slot = 1
  if ARGV[3] and status ~= 'unknown' then
    redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  end
end
return {0, state or false, slot}
"""

# Before the bot runs: the lead's slot, if still ours, held for the whole grace period,
# and the run recorded as of unknown outcome. KEYS: the slot, the delivery's state. ARGV:
# owner, hold (ms), state (JSON), its lifetime (s). Returns 0 when the slot is not ours.
_BEFORE_RUN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return 1
"""

# The message went out: the delivery is sent (the record that makes it once per key),
# with its note kept to be added (notes.py); the lead's slot, if any, waits the spacing
# from now and the attempt lock is released, each only if still ours; and notes already
# added are taken off (they ride here rather than in a call of their own). KEYS: the
# state, the lock, the slot (unused when ARGV[3] is ''), NOTES, NOTES_DUE. ARGV: state
# (JSON), its lifetime (s), slot owner or '', spacing (ms), lock owner, the note (JSON, ''
# = none), its member, its lease end (ms), then the members of the notes to take off.
_SENT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('PEXPIRE', KEYS[2], 1) end
for i = 9, #ARGV do
  redis.call('HDEL', KEYS[4], ARGV[i])
  redis.call('ZREM', KEYS[5], ARGV[i])
end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[7], ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[7])
end
return 1
"""


def chats_api_headers(secret: str, method: str, path: str, body: bytes) -> dict[str, str]:
    content_type = "application/json"
    date = formatdate(usegmt=True)
    md5 = hashlib.md5(body).hexdigest()  # noqa: S324  # Kommo's signature scheme, not security
    to_sign = "\n".join([method.upper(), md5, content_type, date, path])
    signature = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha1).hexdigest()
    return {
        "Date": date,
        "Content-Type": content_type,
        "Content-MD5": md5,
        "X-Signature": signature,
    }


@dataclass(frozen=True)
class Outgoing:
    """One message for the customer of a lead (DeliverMessageRequest, validated)."""

    lead_id: int
    text: str
    key: str
    chat_id: str = ""
    # The Salesbot to run; 0 = the reply bot (KOMMO_SALESBOT_ID).
    salesbot_id: int = 0
    # Lead custom fields written before the run: (field id, value).
    lead_fields: tuple[tuple[int, str], ...] = ()
    # The bot sends an approved WhatsApp template: the reply field is not written.
    template: bool = False
    # Added to the lead once the message is out (notes.py); "" = none.
    note: str = ""


class Delivery:
    def __init__(
        self,
        settings: GatewaySettings,
        redis: aioredis.Redis,
        kommo: KommoClient,
        http: httpx.AsyncClient,
        notes: Notes | None = None,
    ) -> None:
        self._settings = settings
        # Where a delivered message's note goes (None: notes are not kept, the caller
        # adds them).
        self._notes = notes
        self._redis = redis
        self._kommo = kommo
        self._http = http
        self._expire_if_owner = redis.register_script(_EXPIRE_IF_OWNER)
        self._begin = redis.register_script(_BEGIN)
        self._before_run = redis.register_script(_BEFORE_RUN)
        self._sent = redis.register_script(_SENT)

    def method(self, out: Outgoing) -> str:
        """How `out` goes: "salesbot" or "chats_api" (when configured). A template, or a
        text naming its bot, always goes by a Salesbot."""
        if out.template or out.salesbot_id or not self._settings.uses_chats_api:
            return "salesbot"
        return "chats_api"

    async def deliver(self, out: Outgoing) -> tuple[str, str, bool]:
        """Returns (status, method, note kept): status "sent" or "already_sent"; the note
        kept when `out.note` was (or, already sent, was then) recorded to be added."""
        method = self.method(out)
        key = out.key
        # One attempt per key at a time, across replicas: a caller that gave up on a slow
        # attempt and retried must not start a second one beside it.
        owner = uuid.uuid4().hex
        attempt_lock = delivery_attempt_key(key)
        keys = [delivery_key(key), attempt_lock]
        args: list[str | int] = [owner, _SLOT_HOLD_MS]
        begun_at = time.time()
        if method == "salesbot":
            keys.append(lead_slot_key(out.lead_id))
            # Recorded as a run of unknown outcome from now if the slot is ours now.
            args += [
                json.dumps(_unknown((begun_at, begun_at + _SLOT_HOLD_SECONDS))),
                DELIVERY_TTL_SECONDS,
            ]
        begun = await self._begin(keys=keys, args=args)
        if int(begun[0]) == 1:
            before = json.loads(begun[1]) if len(begun) > 1 and begun[1] else {}
            return "already_sent", method, bool(out.note) and bool(before.get("note"))
        if int(begun[0]) == 2:
            raise Unavailable("this reply is being delivered right now; ask again shortly")
        state: dict[str, Any] = json.loads(begun[1]) if len(begun) > 1 and begun[1] else {}
        recorded = False
        try:
            if method == "chats_api":
                if out.lead_fields:
                    await self._write_fields(out, list(out.lead_fields))
                await self._send_chats_api(out.chat_id or str(out.lead_id), out.text, key)
            else:
                slot_taken = len(begun) > 2 and int(begun[2]) == 1
                # The begin recorded the run's state (see _BEGIN).
                prerecorded = begun_at if slot_taken and state.get("status") != "unknown" else None
                recorded = await self._send_salesbot(out, state, owner, slot_taken, prerecorded)
            if not recorded:
                await self._record_sent(out, owner)
                recorded = True
        finally:
            if not recorded:
                await self._expire_if_owner(keys=[attempt_lock], args=[owner, 1])
        return "sent", method, self._keeps_note(out)

    def _keeps_note(self, out: Outgoing) -> bool:
        return bool(out.note.strip()) and out.lead_id > 0 and self._notes is not None

    async def _record_sent(
        self, out: Outgoing, attempt: str, slot_owner: str = "", spacing_ms: int = 0
    ) -> None:
        """The delivery recorded as sent, its note kept and added from now on (notes.py),
        the attempt lock `attempt` released and the lead's slot (held by `slot_owner`)
        waiting `spacing_ms`, in one call that also takes off the notes added since."""
        notes = self._notes
        note: Note | None = None
        lease = 0
        record: dict[str, Any] = {"status": "sent", "at": time.time()}
        if notes is not None and self._keeps_note(out):
            note, lease = Note(out.lead_id, out.note), notes.lease_end()
            record["note"] = 1
        done = notes.take_done() if notes is not None else []
        try:
            await self._sent(
                keys=[
                    delivery_key(out.key),
                    delivery_attempt_key(out.key),
                    lead_slot_key(out.lead_id),
                    NOTES,
                    NOTES_DUE,
                ],
                args=[
                    json.dumps(record),
                    DELIVERY_TTL_SECONDS,
                    slot_owner,
                    spacing_ms,
                    attempt,
                    "" if note is None else note.encode(),
                    out.key,
                    lease,
                    *done,
                ],
            )
        except BaseException:
            if notes is not None and done:
                notes.put_back(done)
            raise
        if notes is not None and note is not None:
            notes.add_soon(out.key, note, lease)

    async def _put_back(self, key: str, state: dict[str, Any]) -> None:
        if state:
            await self._set_state(key, state)
        else:
            await self._redis.delete(delivery_key(key))

    async def _set_state(self, key: str, state: dict[str, Any]) -> None:
        await self._redis.set(delivery_key(key), json.dumps(state), ex=DELIVERY_TTL_SECONDS)

    async def _write_fields(self, out: Outgoing, values: list[tuple[int, str]]) -> None:
        """One PATCH of the lead (through the coalescer's list write)."""
        await self._kommo.update_fields("leads", out.lead_id, values)
        if out.lead_fields:
            # The cached copy of the lead no longer has these values (the reply field's
            # is never read from it).
            await self._redis.delete(cache_key("lead", out.lead_id))

    async def _send_salesbot(
        self,
        out: Outgoing,
        state: dict[str, Any],
        attempt: str,
        slot_taken: bool,
        prerecorded: float | None = None,
    ) -> bool:
        """Runs the bot (once, unless its outcome is unknown); True when the run that went
        out also recorded the delivery as sent and let go of the slot and of the attempt
        lock `attempt` (one call), False when the caller records it. `slot_taken`: the
        lead's slot is ours already (taken by the begin, with `attempt` as its owner).
        `prerecorded`: when the begin took the slot and recorded a run of unknown outcome
        from then (`state` is what it found before): a first run soon after needs no
        record of its own, and a failure before any run puts `state` back."""
        s = self._settings
        lead_id, key = out.lead_id, out.key
        bot_id = out.salesbot_id or s.kommo_salesbot_id
        # One write: the reply field with the lead fields beside it, or, for a template,
        # the lead fields alone (none: nothing to write, the bot is only run).
        writes = list(out.lead_fields)
        if not out.template:
            writes.insert(0, (s.kommo_reply_field_id, out.text))
        slot = lead_slot_key(lead_id)
        owner = attempt if slot_taken else await self._take_lead_slot(lead_id)
        spacing_ms = max(int(s.kommo_reply_spacing_seconds * 1000), 1)
        window: tuple[float, float] | None = None
        released = False
        try:
            if state.get("status") == "unknown" and await self._went_out_earlier(lead_id, state):
                return False
            for run in range(1, _MAX_RUNS + 1):
                if writes:
                    await self._write_fields(out, writes)
                since = time.time()
                if run == 1 and prerecorded is not None and since - prerecorded < _PREPARED_SECONDS:
                    # The begin's record stands: our hold, from then, still covers the
                    # whole grace period.
                    window = (prerecorded, prerecorded + _SLOT_HOLD_SECONDS)
                    since = prerecorded
                # Renewed so that the whole grace period falls inside our hold.
                elif not await self._before_run(
                    keys=[slot, delivery_key(key)],
                    args=[
                        owner,
                        _SLOT_HOLD_MS,
                        json.dumps(_unknown((since, since + _SLOT_HOLD_SECONDS))),
                        DELIVERY_TTL_SECONDS,
                    ],
                ):
                    raise Unavailable(f"lead {lead_id}: the reply slot expired before the run")
                else:
                    window = (since, since + _SLOT_HOLD_SECONDS)
                try:
                    await self._kommo.run_salesbot(bot_id, lead_id)
                except Unavailable as exc:
                    # The bot may have sent it anyway: look before running it again.
                    log.warning("salesbot run of unknown outcome (%s); checking", exc)
                    await asyncio.sleep(s.kommo_delivery_grace_seconds)
                    if await self._went_out(lead_id, since, min(window[1], time.time())):
                        return False
                    if run == _MAX_RUNS:
                        raise
                    continue
                # Sent: recorded, and the next reply to this lead waits the spacing from
                # now (the bot reads the field some time after it was started).
                await self._record_sent(out, attempt, owner, spacing_ms)
                released = True
                return True
            return False
        except BaseException:
            if window is not None and not released:
                # Left unknown: a later attempt may count only what a bot sent before the
                # slot could pass to another reply of ours.
                await self._set_state(key, _unknown((window[0], min(window[1], time.time()))))
            elif prerecorded is not None and not released:
                # No bot ran: the begin's record of a run goes (what was there before
                # stays), so the next attempt runs it without looking for evidence.
                await self._put_back(key, state)
            raise
        finally:
            if not released:
                # The bot reads the field some time after it was started: the next reply
                # to this lead waits the spacing from now, not from when we took the slot.
                await self._expire_if_owner(keys=[slot], args=[owner, spacing_ms])

    async def _went_out_earlier(self, lead_id: int, state: dict[str, Any]) -> bool:
        """Whether the run of an earlier attempt that ended unknown did send the reply."""
        since = float(state.get("since", 0))
        until = float(state.get("until", since + _SLOT_HOLD_SECONDS))
        # A run started just before that attempt died still gets its grace period.
        await asyncio.sleep(
            max(0.0, since + self._settings.kommo_delivery_grace_seconds - time.time())
        )
        return await self._went_out(lead_id, since, until)

    async def _went_out(self, lead_id: int, since: float, until: float) -> bool:
        """Whether a bot, not a user, sent a chat message on the lead between ``since`` (a
        run's start) and ``until`` (while the lead's reply slot was ours, so no other reply
        of ours was in flight), both widened by the clock-skew allowance: Kommo's clock is
        not ours and its events carry whole seconds. Kommo's events say who wrote a message
        but not its text: any bot message in the window is taken for ours.
        """
        skew = self._settings.kommo_evidence_skew_seconds
        earliest, latest = int(since - skew), until + skew
        body = await self._kommo.get_json(
            "/api/v4/events",
            {
                "filter[entity]": "lead",
                "filter[entity_id][]": lead_id,
                "filter[type][]": OUTGOING_CHAT_MESSAGE,
                "filter[created_at][from]": earliest,
                "limit": _EVENTS_PAGE_LIMIT,
            },
            priority=Priority.REPLY,
        )
        for event in (body or {}).get("_embedded", {}).get("events", []):
            created_at = int(event.get("created_at") or 0)
            if (
                event.get("type") == OUTGOING_CHAT_MESSAGE
                and event.get("created_by") == _NO_USER
                and earliest <= created_at <= latest
            ):
                log.info("salesbot run went out after all (message event %s)", event.get("id"))
                return True
        return False

    async def _take_lead_slot(self, lead_id: int) -> str:
        """Wait until this lead's reply field is free, then hold it; returns our owner id."""
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + _SLOT_WAIT_MAX_SECONDS
        while not await self._redis.set(lead_slot_key(lead_id), owner, nx=True, px=_SLOT_HOLD_MS):
            if time.monotonic() > deadline:
                raise Unavailable(f"lead {lead_id} is busy with another reply; try again")
            await asyncio.sleep(_SLOT_WAIT_STEP_SECONDS)
        return owner

    async def _send_chats_api(self, conversation_ref: str, text: str, key: str) -> None:
        s = self._settings
        path = f"/v2/origin/custom/{s.kommo_scope_id}"
        body = json.dumps(
            {
                "event_type": "new_message",
                "payload": {
                    "timestamp": int(time.time()),
                    "msec_timestamp": int(time.time() * 1000),
                    "msgid": key or uuid.uuid4().hex,
                    "conversation_id": conversation_ref,
                    "sender": {"id": s.kommo_channel_id, "ref_id": s.kommo_channel_id},
                    "message": {"type": "text", "text": text},
                    "silent": False,
                },
            },
            ensure_ascii=False,
        ).encode()
        headers = chats_api_headers(s.kommo_channel_secret, "POST", path, body)
        try:
            response = await self._http.post(
                f"{s.kommo_amojo_base_url.rstrip('/')}{path}",
                content=body,
                headers=headers,
                timeout=s.kommo_timeout_seconds,
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"Kommo Chats API unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise Unavailable(f"Kommo Chats API answered {response.status_code}")
        if not response.is_success:
            raise UpstreamError(
                f"Kommo Chats API refused the message ({response.status_code}): "
                f"{response.text[:200]}"
            )


def _unknown(window: tuple[float, float]) -> dict[str, Any]:
    """A run of unknown outcome: it started at ``since``; the lead's slot was ours until
    ``until`` at the latest."""
    return {"status": "unknown", "since": window[0], "until": window[1]}
