"""Every error the edge answers, in one shape: `{"error": "…", "status": N}` (a 422 adds
`fields`). One mapping from gRPC status (what services say) to HTTP (what callers see),
and the handlers that put FastAPI's and Starlette's own errors (404, 405, 422) in the
same shape. No answer echoes the request back: a 422 names the fields and what is wrong
with them, bounded in size whatever was sent."""

from __future__ import annotations

import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import BridgeError, RateLimited, retry_after_trailer

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    # Kommo refuses the bridge's credentials: not the caller's fault, and not
    # something a retry fixes until someone re-authorises.
    grpc.StatusCode.UNAUTHENTICATED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 503,
}

# Kommo's budget (the usual cause of a 429) is counted per second: when the service did
# not say when to come back, a second from now.
RETRY_AFTER_SECONDS = 1
# A 422 names at most this many problems, each bounded: the answer stays small whatever
# the size of the input (nothing of the input is in it but field names, cut short).
MAX_FIELD_ERRORS = 10
_SUMMARISED = 3
_MAX_LOC_PART_CHARS = 40
_MAX_PROBLEM_CHARS = 200
_MAX_MESSAGE_CHARS = 300
_MAX_PATH_CHARS = 100


class FieldError(BaseModel):
    field: str = Field(description="where: body.lead_id, path.lead_id, query.page…")
    problem: str = Field(description="what is wrong with it")


class ErrorBody(BaseModel):
    """The one error shape of the API."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"error": "missing or wrong X-API-Key", "status": 401},
                {
                    "error": "invalid request: body.lead_id: Input should be less than or "
                    "equal to 9007199254740991",
                    "status": 422,
                    "fields": [
                        {
                            "field": "body.lead_id",
                            "problem": "Input should be less than or equal to 9007199254740991",
                        }
                    ],
                },
            ]
        }
    }

    error: str = Field(description="what went wrong and, where possible, what to do")
    status: int = Field(description="the HTTP status, repeated")
    fields: list[FieldError] | None = Field(
        default=None, description="422 only: each invalid field and what is wrong with it"
    )


def error_body(status: int, message: str) -> dict[str, object]:
    return {"error": message, "status": status}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


class HttpError(Exception):
    """An HTTP answer decided at the edge itself (authentication, debug switched off)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpError)
    return error_response(exc.status, exc.message)


async def grpc_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, grpc.aio.AioRpcError)
    status = HTTP_STATUS.get(exc.code(), 502)
    message = exc.details() or exc.code().name.lower()
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in message.lower():
        message = "a bridge service is unavailable"
    return error_response(status, message, grpc_retry_after(exc))


async def bridge_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BridgeError)
    status = HTTP_STATUS.get(exc.code, 500)
    seconds = exc.retry_after_seconds if isinstance(exc, RateLimited) else None
    return error_response(status, str(exc), _retry_after(status, seconds))


def grpc_retry_after(exc: grpc.aio.AioRpcError) -> dict[str, str] | None:
    """The `Retry-After` header for a service's refusal: its own figure when it gave one
    (trailing metadata), else the default; None when it is not a 429."""
    told = retry_after_trailer(exc)
    try:
        seconds = None if told is None else float(told)
    except ValueError:
        seconds = None
    return _retry_after(HTTP_STATUS.get(exc.code(), 502), seconds)


def _retry_after(status: int, seconds: float | None = None) -> dict[str, str] | None:
    if status != 429:
        return None
    whole = RETRY_AFTER_SECONDS if seconds is None or not math.isfinite(seconds) else seconds
    return {"Retry-After": str(max(1, math.ceil(whole)))}


async def starlette_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers: an unknown route (404), a wrong method (405, with its
    `Allow` header), a body that could not be read (400) or is too large (413)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    path = request.url.path
    shown = path if len(path) <= _MAX_PATH_CHARS else path[:_MAX_PATH_CHARS] + "…"
    if exc.status_code == 404 and exc.detail == HTTPStatus.NOT_FOUND.phrase:
        message = f"no endpoint {request.method} {shown}; the API is described at /docs"
    elif exc.status_code == 405:
        # Starlette names only the first route that matched the path; a path served by
        # several routes (GET and PUT /bot-rules) allows all of their methods.
        allowed = allowed_methods(request) or headers.get("Allow") or headers.get("allow") or ""
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        if allowed:
            headers["Allow"] = allowed
        message = f"{request.method} is not allowed on {shown}; use {allowed or 'another method'}"
    else:
        message = str(exc.detail)[:_MAX_MESSAGE_CHARS]
    return error_response(exc.status_code, message, headers or None)


def allowed_methods(request: Request) -> str:
    """Every method the routes of this path answer, as an `Allow` header lists them
    (the table app.py builds when it includes the routers)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for pattern, answered in getattr(request.app.state, "route_methods", ()):
        if pattern.match(path):
            methods |= answered
    return ", ".join(sorted(methods, key=lambda m: (_METHOD_ORDER.get(m, 99), m)))


_METHOD_ORDER = {"GET": 0, "HEAD": 1, "POST": 2, "PUT": 3, "PATCH": 4, "DELETE": 5}
_SEND_JSON = "send one JSON object with content-type: application/json"


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each invalid field and the problem, never the value that was sent."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    problems = [
        FieldError(
            # A JSON decode error's location is a character offset, not a field.
            field="body" if e.get("type") == "json_invalid" else _location(e.get("loc", ())),
            problem=await _body_problem(request, e),
        )
        for e in errors[:MAX_FIELD_ERRORS]
    ]
    summary = "; ".join(f"{p.field}: {p.problem}" for p in problems[:_SUMMARISED])
    if len(errors) > _SUMMARISED:
        summary += f" (and {len(errors) - _SUMMARISED} more)"
    message = f"invalid request: {summary}"[:_MAX_MESSAGE_CHARS]
    body = ErrorBody(error=message, status=422, fields=problems)
    return JSONResponse(body.model_dump(), status_code=422)


def _location(loc: object) -> str:
    parts = loc if isinstance(loc, (list, tuple)) else (loc,)
    # A dict's keys are the caller's: cut them short like any other input.
    return ".".join(str(part)[:_MAX_LOC_PART_CHARS] for part in parts) or "request"


async def _body_problem(request: Request, error: Mapping[str, Any]) -> str:
    """What is wrong, said for people: a body that is not JSON, or not an object, is
    explained with where it broke (line and column, never the text)."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid" and loc[:1] == ("body",):
        reason = str((error.get("ctx") or {}).get("error") or "JSON decode error")
        offset = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        where = ""
        if offset is not None:
            before = (await request.body())[:offset]
            line = before.count(b"\n") + 1
            column = offset - (before.rfind(b"\n") + 1) + 1
            where = f" at line {line}, column {column}"
        return f"the body is not valid JSON ({reason}{where}); {_SEND_JSON}"[:_MAX_PROBLEM_CHARS]
    if loc == ("body",) and error.get("type") == "missing":
        return f"the body is empty; {_SEND_JSON}"
    if loc == ("body",) and error.get("type") in ("model_attributes_type", "dict_type"):
        return f"the body is not a JSON object; {_SEND_JSON}"
    return _problem(error.get("msg", ""))


def _problem(msg: object) -> str:
    # A model validator's ValueError arrives as "Value error, <our message>".
    return str(msg).removeprefix("Value error, ")[:_MAX_PROBLEM_CHARS]


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not bad input: the shape stays, the details stay in the log (which the
    server writes with the traceback once this answer is sent)."""
    return error_response(
        500, "internal error; quote the X-Request-ID header of this answer when reporting it"
    )


ERROR_HANDLERS = {
    grpc.aio.AioRpcError: grpc_error_handler,
    BridgeError: bridge_error_handler,
    HttpError: http_error_handler,
    StarletteHTTPException: starlette_error_handler,
    RequestValidationError: validation_error_handler,
    Exception: unexpected_error_handler,
}
