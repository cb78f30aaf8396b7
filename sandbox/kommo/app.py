"""Assembly of the Kommo sandbox: one FastAPI app, its gate, its routers, its error mapping."""

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from sandbox.kommo import (
    routes_bots,
    routes_chats,
    routes_control,
    routes_crm,
    routes_events_webhooks,
    routes_notes_tasks,
    routes_oauth,
    routes_templates,
)
from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.gate import KommoGate
from sandbox.kommo.responses import (
    KommoProblem,
    ValidationIssue,
    reason,
    validation_problem,
)
from sandbox.kommo.runtime import Sandbox


def _issues(errors: Sequence[Mapping[str, Any]]) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        # A list body's first location part is the item index, Kommo's request_id.
        request_id = location.pop(0) if location and location[0].isdigit() else "0"
        code = "FieldMissing" if error.get("type") == "missing" else "InvalidType"
        issues.append(ValidationIssue(request_id, ".".join(location), str(error.get("msg")), code))
    return issues


async def _to_problem(request: Request, exc: Exception) -> Response:
    """The one place an error becomes an answer, in Kommo's problem+json shape."""
    del request
    if isinstance(exc, KommoProblem):
        return exc.response()
    if isinstance(exc, RequestValidationError | pydantic.ValidationError):
        return validation_problem(_issues(exc.errors())).response()
    if isinstance(exc, StarletteHTTPException):
        return KommoProblem(exc.status_code, reason(exc.status_code)).response()
    raise exc


def create_app(
    config: SandboxConfig, *, webhook_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The sandbox app; ``webhook_transport`` lets tests catch webhooks without a server."""
    sandbox = Sandbox(config, webhook_transport)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        del app
        yield
        await sandbox.aclose()

    app = FastAPI(
        title="Kommo sandbox",
        lifespan=lifespan,
        docs_url="/_sandbox/docs",
        redoc_url=None,
        openapi_url="/_sandbox/openapi.json",
    )
    app.state.sandbox = sandbox
    app.add_middleware(KommoGate, sandbox=sandbox)
    for error in (
        KommoProblem,
        RequestValidationError,
        pydantic.ValidationError,
        StarletteHTTPException,
    ):
        app.add_exception_handler(error, _to_problem)
    for module in (
        routes_oauth,
        routes_crm,
        routes_notes_tasks,
        routes_events_webhooks,
        routes_templates,
        routes_bots,
        routes_chats,
        routes_control,
    ):
        app.include_router(module.router)
    return app


def sandbox_of(app: FastAPI) -> Sandbox:
    """The sandbox behind an app made by ``create_app`` (for tests and the runner)."""
    sandbox: Sandbox = app.state.sandbox
    return sandbox
