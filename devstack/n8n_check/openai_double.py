"""A local OpenAI-compatible chat model for `make n8n-check`: `POST /chat/completions`
(and `/v1/chat/completions`), answered as OpenAI does — a stream of SSE chunks when the
request says `"stream": true` (the n8n 1.123 chat model node asks so), one JSON object
otherwise. Every request body is recorded (`GET /_double/requests`) so the check can show
what the workflow sent the model.

The answers are deterministic Portuguese, like the workflow's prompts ask for: a first
message for a proactive start, a reply otherwise, and `[ATENDENTE]` first when the
customer asks for a person (the workflow turns that into a handoff).

    python -m devstack.n8n_check.openai_double   # OPENAI_DOUBLE_PORT, OPENAI_DOUBLE_API_KEY
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

log = logging.getLogger(__name__)

MODEL = "gpt-4o-mini"
HANDOFF_MARKER = "[ATENDENTE]"
# What a customer writes when they want a person (the workflow's prompt lists these cases).
_WANTS_A_PERSON = re.compile(
    r"falar com (uma |um )?(pessoa|atendente|humano|advogad)|atendente|pessoa de verdade",
    re.IGNORECASE,
)
# The proactive agent's system message asks for "a PRIMEIRA mensagem".
_PROACTIVE = "PRIMEIRA mensagem"
_NAME = re.compile(r"^Pessoa: (.+)$", re.MULTILINE)
_NEW_MESSAGES = "Mensagens novas do cliente"
# Words per SSE chunk: several chunks per answer, as a real stream has.
_CHUNK_WORDS = 4


@dataclass
class Recorder:
    api_key: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a multi-part content."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def answer_for(messages: list[dict[str, Any]]) -> str:
    system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    user = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user")
    found = _NAME.search(user)
    name = found.group(1).split()[0] if found and "não informado" not in found.group(1) else ""
    hello = f"Olá, {name}!" if name else "Olá!"
    if _PROACTIVE in system:
        return (
            f"{hello} Aqui é da Previdas. Vi o seu interesse e quero entender o seu caso. "
            "Pode me contar em poucas palavras o que aconteceu?"
        )
    new = user.split(_NEW_MESSAGES, 1)[-1]
    if _WANTS_A_PERSON.search(new):
        return (
            f"{HANDOFF_MARKER} Claro, {name or 'tudo bem'}! O(a) especialista responsável "
            "vai continuar o atendimento com você em breve."
        )
    asked = sum(1 for line in new.splitlines() if line.startswith("- "))
    return (
        f"{hello} Obrigada por explicar ({asked} mensagem(ns) recebida(s)). "
        "Você já teve algum pedido negado pelo INSS?"
    )


def _completion(answer: str, prompt_chars: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(answer, prompt_chars),
    }


def _usage(answer: str, prompt_chars: int) -> dict[str, int]:
    # About 4 characters a token: plausible figures for n8n's token counters.
    prompt, completion = prompt_chars // 4, len(answer) // 4
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chunks(answer: str, prompt_chars: int, include_usage: bool) -> Iterator[str]:
    chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())

    def event(delta: dict[str, Any], finish: str | None) -> str:
        body = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""}, None)
    words = answer.split(" ")
    for start in range(0, len(words), _CHUNK_WORDS):
        piece = " ".join(words[start : start + _CHUNK_WORDS])
        yield event({"content": piece if start == 0 else " " + piece}, None)
    yield event({}, "stop")
    if include_usage:
        usage = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [],
            "usage": _usage(answer, prompt_chars),
        }
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


def create_app(recorder: Recorder) -> FastAPI:
    app = FastAPI(title="OpenAI double (make n8n-check)")

    async def chat_completions(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {recorder.api_key}":
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=401)
        body = await request.json()
        messages = body.get("messages") or []
        recorder.requests.append({"path": request.url.path, "at": time.time(), "body": body})
        answer = answer_for(messages)
        prompt_chars = sum(len(_text(m.get("content"))) for m in messages)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _chunks(answer, prompt_chars, include_usage), media_type="text/event-stream"
            )
        return JSONResponse(_completion(answer, prompt_chars))

    for path in ("/chat/completions", "/v1/chat/completions"):
        app.add_api_route(path, chat_completions, methods=["POST"])

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "double"}]}

    @app.get("/_double/requests")
    async def requests() -> list[dict[str, Any]]:
        return recorder.requests

    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    recorder = Recorder(api_key=os.environ["OPENAI_DOUBLE_API_KEY"])
    log.info("OpenAI double starting")
    uvicorn.run(
        create_app(recorder),
        host="127.0.0.1",
        port=int(os.environ["OPENAI_DOUBLE_PORT"]),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
