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


class RateLimited(BridgeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(BridgeError):
    """Kommo refuses our credentials even after a refresh: a human must re-authorise."""

    code = grpc.StatusCode.UNAUTHENTICATED


class UpstreamError(BridgeError):
    """A dependency answered something we cannot use."""

    code = grpc.StatusCode.INTERNAL
