"""The parts of `make n8n-check` that decide PASS or FAIL: what counts as personal data
in a request to the model, and the doubles answering as OpenAI and Supabase do."""

from __future__ import annotations

import json

import httpx
from fastapi import FastAPI

from devstack.n8n_check import openai_double, supabase_double
from devstack.n8n_check.privacy import ModelCall, leaks


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://double")


def _call(user: str, system: str = "Você é a assistente.") -> ModelCall:
    return ModelCall(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
    )


def test_a_prompt_built_from_names_and_messages_is_clean() -> None:
    call = _call("Pessoa: Maria Souza\nLead: #9100001\nHoje é 24/11/2026.\n- Oi, tudo bem?")
    assert leaks(call, ["s3cr3t-key"]) == []
    assert (call.system_chars, call.user_chars, call.streamed) == (20, 69, True)


def test_personal_data_and_ways_back_to_the_bridge_are_named() -> None:
    assert leaks(_call("telefone +55 11 98765-4321")) == ["a phone number"]
    assert leaks(_call("maria.souza@gmail.com")) == ["an e-mail address"]
    assert leaks(_call("http://127.0.0.1:8000/send-response")) == ["a URL"]
    assert leaks(_call("token 9f2c5e0d1a2b3c4d5e6f708192a3b4c5")) == ["a token or callback"]
    assert leaks(_call("chave s3cr3t-key"), ["s3cr3t-key"]) == ["a secret of the bridge"]
    assert leaks(_call('{"Resposta do bot": "Olá"}')) == ["the lead field 'Resposta do bot'"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with_file = ModelCall({"messages": [{"role": "user", "content": [image]}]})
    assert leaks(with_file) == ["a file"]


async def test_the_openai_double_streams_when_asked_and_records_the_request() -> None:
    recorder = openai_double.Recorder(api_key="k")
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [
            {"role": "system", "content": "Você é a assistente."},
            {"role": "user", "content": "Pessoa: Maria Souza\n\nMensagens novas do cliente:\n- Oi"},
        ],
    }
    key = {"Authorization": "Bearer k"}
    async with _client(openai_double.create_app(recorder)) as client:
        refused = await client.post("/v1/chat/completions", json=body)
        streamed = await client.post("/v1/chat/completions", json=body, headers=key)
        plain = await client.post("/chat/completions", json={**body, "stream": False}, headers=key)
    assert refused.status_code == 401
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in streamed.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.startswith("Olá, Maria!") and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert plain.json()["choices"][0]["message"]["content"] == text
    assert [r["path"] for r in recorder.requests] == ["/v1/chat/completions", "/chat/completions"]


def test_the_openai_double_hands_off_when_the_customer_asks_for_a_person() -> None:
    ask = "Pessoa: João\n\nMensagens novas do cliente:\n- Quero falar com uma pessoa"
    answer = openai_double.answer_for([{"role": "user", "content": ask}])
    assert answer.startswith(openai_double.HANDOFF_MARKER)
    proactive = [{"role": "system", "content": "Escreva a PRIMEIRA mensagem"}]
    assert not openai_double.answer_for(proactive).startswith(openai_double.HANDOFF_MARKER)


async def test_the_supabase_double_refuses_a_repeated_event_id_like_a_unique_column() -> None:
    table = supabase_double.Table(service_key="srv")
    headers = {"apikey": "srv", "Authorization": "Bearer srv"}
    row = {"event_id": "e1", "lead_id": 9100001}
    async with _client(supabase_double.create_app(table)) as client:
        refused = await client.post("/rest/v1/agenda", json=[row])
        created = await client.post("/rest/v1/agenda", json=[row], headers=headers)
        again = await client.post("/rest/v1/agenda", json=[row], headers=headers)
    assert refused.status_code == 401
    assert created.status_code == 201 and created.json()[0]["event_id"] == "e1"
    assert again.status_code == 409 and again.json()["code"] == "23505"
    assert len(table.rows) == 1
