"""The domain's errors, mapped once to gRPC status codes (and, at the edge, to HTTP)."""

from __future__ import annotations

import grpc


class BridgeError(Exception):
    """An error with a meaning a caller can act on; the message is shown to users."""

    code = grpc.StatusCode.INTERNAL


class InvalidInput(BridgeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BridgeError):
    code = grpc.StatusCode.NOT_FOUND


class Conflict(BridgeError):
    """The request is valid but the state forbids it (e.g. a human took over)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(BridgeError):
    """A dependency (Redis, Kommo, another service) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE


# gRPC codes after which the same call, tried again later, can succeed: a dependency
# unavailable or slow, a rate limit, Kommo's credentials being renewed, a conflict with
# concurrent work. The one list every retrying caller uses.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ABORTED,
    }
)


def is_transient_code(code: grpc.StatusCode) -> bool:
    return code in TRANSIENT_CODES


# The trailing metadata key of a RESOURCE_EXHAUSTED that knows when to come back (whole
# seconds); the edge turns it into `Retry-After`.
RETRY_AFTER_METADATA = "retry-after-seconds"


def retry_after_trailer(exc: grpc.aio.AioRpcError) -> str | None:
    """The `RETRY_AFTER_METADATA` a failed call's trailers carry, if any."""
    trailers: object = exc.trailing_metadata()
    if isinstance(trailers, grpc.aio.Metadata):
        values = trailers.get_all(RETRY_AFTER_METADATA)
        return str(values[0]) if values else None
    return None


class RateLimited(BridgeError):
    """Too many requests; `retry_after_seconds`, when known, says when to come back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class Unauthenticated(BridgeError):
    """Kommo refuses our credentials even after a refresh: a human must re-authorise."""

    code = grpc.StatusCode.UNAUTHENTICATED


class UpstreamError(BridgeError):
    """A dependency answered something we cannot use."""

    code = grpc.StatusCode.INTERNAL
