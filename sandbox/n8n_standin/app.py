"""The n8n stand-in's HTTP app."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

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


class ConfigUpdate(BaseModel):
    down: bool | None = None
    auto_reply: bool | None = None
    reply_delay: float | None = None
    status: int | None = None
    handoff: bool | None = None


@dataclass
class State:
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    replies: list[dict[str, Any]] = field(default_factory=list)


def reply_text(envelope: dict[str, Any], prefix: str) -> str:
    contact = envelope.get("contact") or {}
    name = str(contact.get("name") or "").split(" ")[0]
    greeting = f"{prefix}, {name}!" if name else f"{prefix}!"
    if envelope.get("event") == "conversation.proactive":
        vendedor = (envelope.get("vendedor") or {}).get("name", "a equipe")
        return f"{greeting} Sou {vendedor} ({envelope.get('trigger')}). Como posso ajudar?"
    texts = [m.get("text") or f"[{m.get('type')}]" for m in envelope.get("messages") or []]
    return f"{greeting} Recebemos: {' / '.join(texts)}"


def create_app(config: StandinConfig) -> FastAPI:
    app = FastAPI(title="n8n stand-in")
    state = State()
    http = httpx.AsyncClient(timeout=30.0)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(envelope: dict[str, Any], request_id: str) -> None:
        if config.reply_delay:
            await asyncio.sleep(config.reply_delay)
        callback = envelope["callback"]
        body: dict[str, Any] = {
            "reply_token": callback["reply_token"],
            "text": reply_text(envelope, config.reply_prefix),
        }
        if config.handoff:
            body |= {"handoff": True, "handoff_reason": "cliente pediu para falar com um advogado"}
        # Like the example workflow: the flow's request id goes back with the reply.
        headers = {"X-API-Key": config.api_key}
        if request_id:
            headers["X-Request-ID"] = request_id
        for attempt in range(1, max(1, config.reply_tries) + 1):
            try:
                response = await http.post(callback["url"], json=body, headers=headers)
                outcome: dict[str, Any] = {"status": response.status_code, "body": response.json()}
                final = response.status_code < 500 and response.status_code != 429
            except (httpx.HTTPError, ValueError) as exc:
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
        raw = await request.body()
        envelope = json.loads(raw)
        state.received.append(
            {
                "headers": dict(request.headers),
                "body": envelope,
                "raw": raw.decode(),
                "received_at": time.time(),
            }
        )
        if config.auto_reply and envelope.get("event") in (
            "message.received",
            "conversation.proactive",
        ):
            task = asyncio.create_task(answer(envelope, request.headers.get("x-request-id", "")))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return JSONResponse({"message": "Workflow was started"})

    @app.get("/_standin/received")
    async def received() -> dict[str, Any]:
        return {"received": state.received, "refused": state.refused, "replies": state.replies}

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
        }

    @app.post("/_standin/reset")
    async def reset() -> dict[str, str]:
        state.received.clear()
        state.replies.clear()
        state.refused = 0
        return {"status": "reset"}

    return app
