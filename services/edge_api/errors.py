"""One mapping from gRPC status (what services say) to HTTP (what callers see)."""

from __future__ import annotations

import grpc
from fastapi import Request
from fastapi.responses import JSONResponse

from services.common.errors import BridgeError

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


def error_body(status: int, message: str) -> dict[str, object]:
    return {"error": message, "status": status}


class HttpError(Exception):
    """An HTTP answer decided at the edge itself (authentication, debug switched off)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HttpError)
    return JSONResponse(error_body(exc.status, exc.message), status_code=exc.status)


async def grpc_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, grpc.aio.AioRpcError)
    status = HTTP_STATUS.get(exc.code(), 502)
    message = exc.details() or exc.code().name.lower()
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in message.lower():
        message = "a bridge service is unavailable"
    return JSONResponse(error_body(status, message), status_code=status)


async def bridge_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BridgeError)
    status = HTTP_STATUS.get(exc.code, 500)
    return JSONResponse(error_body(status, str(exc)), status_code=status)
