"""The n8n stand-in's HTTP app.

`delay_seconds` makes it a slow (or busy) n8n: each envelope is answered only after that
long, as a workflow whose webhook responds when its last node finishes. Held envelopes
never wait for each other: each request sleeps on its own, so many are open at once, and
every envelope records when it arrived, how many envelope requests were open at that
moment (itself included) and when it was answered (`/_standin/received`).

Like the example workflow (examples/n8n/bridge-reply-workflow.json), a proactive envelope
whose WhatsApp window is closed (`conversation.window_open` false) is answered with the
first of `proactive:<trigger>` and `proactive` that the envelope's `templates` lists,
instead of text; without one, with text as always (the bridge then keeps it)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


@dataclass
class StandinConfig:
    api_key: str
    down: bool = False
    auto_reply: bool = True
    reply_delay: float = 0.0
    reply_prefix: str = "Olá"
    # Answer with handoff: true (the AI asks for a person).
    handoff: bool = False
    # Answer every envelope with this status instead of 200 (a broken workflow).
    status: int = 200
    # Like the example workflow's "Enviar resposta ao bridge" node (retryOnFail): a reply
    # the bridge could not take (unreachable, 5xx, 429) is tried again, 2 s apart.
    reply_tries: int = 3
    reply_retry_wait: float = 2.0
    # Hold each envelope's answer this long (STANDIN_DELAY_SECONDS); its reply to the
    # bridge goes when the hold ends, like the last nodes of such a workflow.
    delay_seconds: float = 0.0


class ConfigUpdate(BaseModel):
    down: bool | None = None
    auto_reply: bool | None = None
    reply_delay: float | None = None
    status: int | None = None
    handoff: bool | None = None
    delay_seconds: float | None = Field(default=None, ge=0)


@dataclass
class State:
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    replies: list[dict[str, Any]] = field(default_factory=list)
    # Envelope requests being answered now, and the most there were at once.
    open: int = 0
    max_open: int = 0


def reply_text(envelope: dict[str, Any], prefix: str) -> str:
    contact = envelope.get("contact") or {}
    name = str(contact.get("name") or "").split(" ")[0]
    greeting = f"{prefix}, {name}!" if name else f"{prefix}!"
    if envelope.get("event") == "conversation.proactive":
        vendedor = (envelope.get("vendedor") or {}).get("name", "a equipe")
        return f"{greeting} Sou {vendedor} ({envelope.get('trigger')}). Como posso ajudar?"
    texts = [m.get("text") or f"[{m.get('type')}]" for m in envelope.get("messages") or []]
    return f"{greeting} Recebemos: {' / '.join(texts)}"


def proactive_template(envelope: dict[str, Any]) -> str | None:
    """The template a proactive start into a closed window answers with, as the example
    workflow picks it; None: answer with text."""
    if envelope.get("event") != "conversation.proactive":
        return None
    if (envelope.get("conversation") or {}).get("window_open") is not False:
        return None
    offered = {t.get("purpose") for t in envelope.get("templates") or [] if isinstance(t, dict)}
    for purpose in (f"proactive:{envelope.get('trigger')}", "proactive"):
        if purpose in offered:
            return purpose
    return None


def create_app(config: StandinConfig) -> FastAPI:
    app = FastAPI(title="n8n stand-in")
    state = State()
    # aiohttp, like the bridge's n8n client: on a shared machine the stand-in's replies
    # should cost what n8n's would, not httpx's tenfold.
    sessions: list[aiohttp.ClientSession] = []
    tasks: set[asyncio.Task[None]] = set()

    async def answer(envelope: dict[str, Any], request_id: str) -> None:
        if config.reply_delay:
            await asyncio.sleep(config.reply_delay)
        callback = envelope["callback"]
        body: dict[str, Any] = {"reply_token": callback["reply_token"]}
        template = proactive_template(envelope)
        if template:
            # Free text would not reach the customer: the template is the first message.
            body["template"] = template
        else:
            body["text"] = reply_text(envelope, config.reply_prefix)
        if config.handoff:
            body |= {"handoff": True, "handoff_reason": "cliente pediu para falar com um advogado"}
        # Like the example workflow: the flow's request id goes back with the reply.
        headers = {"X-API-Key": config.api_key}
        if request_id:
            headers["X-Request-ID"] = request_id
        if not sessions:
            sessions.append(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)))
        for attempt in range(1, max(1, config.reply_tries) + 1):
            try:
                async with sessions[0].post(callback["url"], json=body, headers=headers) as answer:
                    status = answer.status
                    outcome: dict[str, Any] = {
                        "status": status,
                        "body": json.loads(await answer.read()),
                    }
                final = status < 500 and status != 429
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                outcome, final = {"status": None, "error": type(exc).__name__}, False
            state.replies.append({**outcome, "attempt": attempt})
            if final:
                return
            await asyncio.sleep(config.reply_retry_wait)

    @app.post("/webhook/bridge")
    async def webhook(request: Request) -> JSONResponse:
        if config.down:
            state.refused += 1
            return JSONResponse({"message": "workflow unavailable"}, status_code=503)
        if config.status != 200:
            state.refused += 1
            return JSONResponse({"message": "workflow error"}, status_code=config.status)
        arrived_at = time.time()
        state.open += 1
        state.max_open = max(state.max_open, state.open)
        record: dict[str, Any] = {"open_at_arrival": state.open}
        try:
            raw = await request.body()
            envelope = json.loads(raw)
            record |= {
                "headers": dict(request.headers),
                "body": envelope,
                "raw": raw.decode(),
                "received_at": time.time(),
                "arrived_at": arrived_at,
            }
            state.received.append(record)
            # Held until the wall clock the stamps use has moved on by the delay: the
            # loop's monotonic sleep may wake a hair early by that clock.
            answer_at = arrived_at + config.delay_seconds
            while (left := answer_at - time.time()) > 0:  # noqa: ASYNC110 - a clock, not an event
                await asyncio.sleep(left)
            if config.auto_reply and envelope.get("event") in (
                "message.received",
                "conversation.proactive",
            ):
                reply = answer(envelope, request.headers.get("x-request-id", ""))
                task = asyncio.create_task(reply)
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            record["answered_at"] = time.time()
            return JSONResponse({"message": "Workflow was started"})
        finally:
            state.open -= 1

    @app.get("/_standin/received")
    async def received() -> dict[str, Any]:
        return {
            "received": state.received,
            "refused": state.refused,
            "replies": state.replies,
            "open": state.open,
            "max_open": state.max_open,
        }

    @app.post("/_standin/config")
    async def configure(update: ConfigUpdate) -> dict[str, Any]:
        for key, value in update.model_dump(exclude_none=True).items():
            setattr(config, key, value)
        return {
            "down": config.down,
            "auto_reply": config.auto_reply,
            "reply_delay": config.reply_delay,
            "status": config.status,
            "handoff": config.handoff,
            "delay_seconds": config.delay_seconds,
        }

    @app.post("/_standin/reset")
    async def reset() -> dict[str, str]:
        state.received.clear()
        state.replies.clear()
        state.refused = 0
        # Requests held open now still count: they are open.
        state.max_open = state.open
        return {"status": "reset"}

    return app
