"""Fixtures of the sandbox's tests: sandbox apps that are closed after each test."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sandbox.kommo import create_app, sandbox_of
from tests.sandbox.kommo_app import BASE_CONFIG, Kommo, OpenKommo


@pytest.fixture
async def open_kommo() -> AsyncIterator[OpenKommo]:
    opened: list[Kommo] = []

    async def open_(**overrides: Any) -> Kommo:
        config = dataclasses.replace(BASE_CONFIG, **overrides)
        caught: list[httpx.Request] = []
        holder: list[Kommo] = []

        def bridge(request: httpx.Request) -> httpx.Response:
            caught.append(request)
            return httpx.Response(holder[0].bridge_status if holder else 200)

        app = create_app(config, webhook_transport=httpx.MockTransport(bridge))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://previdas.sandbox.test"
        )
        kommo = Kommo(client=client, sandbox=sandbox_of(app), config=config, webhooks=caught)
        holder.append(kommo)
        opened.append(kommo)
        return kommo

    yield open_
    for kommo in opened:
        await kommo.client.aclose()
        await kommo.sandbox.aclose()


@pytest.fixture
async def kommo(open_kommo: OpenKommo) -> Kommo:
    return await open_kommo()
