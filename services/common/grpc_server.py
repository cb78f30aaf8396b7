"""The gRPC server bootstrap every service uses.

Standard health (`grpc.health.v1`) and reflection, every unary call served the same way
(`_served`: domain errors mapped to status codes, request ids carried in metadata,
calls counted and timed), and graceful shutdown:
SIGTERM/SIGINT → health NOT_SERVING → background work stops taking items → in-flight
calls get the grace period → exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from services.common.errors import (
    RETRY_AFTER_METADATA,
    BridgeError,
    RateLimited,
    retry_after_trailer,
)
from services.common.logs import request_id
from services.common.metrics import GRPC_REQUESTS, GRPC_SECONDS, serve_metrics

log = logging.getLogger(__name__)

REQUEST_ID_METADATA = "x-request-id"

Register = Callable[[grpc.aio.Server], None]


class BackgroundTask:
    """A long-running loop of a service (a queue consumer, a ticker).

    `run` is called once and must return when `stopping` is set, after finishing the
    item it holds; the server waits for it within the grace period.
    """

    name = "task"

    async def run(self, stopping: asyncio.Event) -> None:
        raise NotImplementedError


def _error_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, BridgeError):
        return exc.code, str(exc)
    if isinstance(exc, RedisError):
        # Storage trouble is temporary from the caller's point of view: retry later.
        return grpc.StatusCode.UNAVAILABLE, "storage unavailable, retry later"
    if isinstance(exc, grpc.aio.AioRpcError):
        # A failing call to another service keeps its code and its message.
        return exc.code(), exc.details() or exc.code().name
    return grpc.StatusCode.INTERNAL, "internal error"


def _error_trailers(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """When to come back, for a caller refused for now: ours, or the one a service we
    called told us (passed on with its code and message)."""
    if isinstance(exc, RateLimited) and exc.retry_after_seconds is not None:
        return ((RETRY_AFTER_METADATA, str(exc.retry_after_seconds)),)
    if isinstance(exc, grpc.aio.AioRpcError):
        told = retry_after_trailer(exc)
        if told is not None:
            return ((RETRY_AFTER_METADATA, told),)
    return ()


def _served(inner: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    """One unary method as every call is served: the caller's request id set for its log
    lines (a new one when it sent none), an exception mapped to its status code
    (`context.abort`), and the call counted and timed by method and status."""
    name = method.rsplit("/", 1)[-1]
    seconds = GRPC_SECONDS.labels(name)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        code = "OK"
        rid = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_METADATA:
                rid = str(value)
        request_id.set(rid or uuid.uuid4().hex[:16])
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "ABORTED"
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status, message = _error_status(exc)
            code = status.name
            if status == grpc.StatusCode.INTERNAL and not isinstance(exc, BridgeError):
                log.exception("unhandled error in %s", method)
            else:
                log.info("%s failed: %s %s", method, code, message)
            await context.abort(status, message, _error_trailers(exc))
            raise  # abort raised already
        finally:
            GRPC_REQUESTS.labels(name, code).inc()
            seconds.observe(time.perf_counter() - started)

    return unary


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call served over a stream ended (`serve_streamed`): its result, or the
    status a unary call would have ended with."""

    result: Any = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    retry_after: str = ""


async def serve_streamed(
    name: str, rid: str, deadline_seconds: float, call: Callable[[], Awaitable[Any]]
) -> Outcome:
    """One call carried by a message of a long-lived stream, served as `_served` serves a
    unary one: the caller's request id set for its log lines, `deadline_seconds` from now
    as its deadline (0: none),
    an exception mapped to the status code it would end with, counted and timed under
    `name`."""
    started = time.perf_counter()
    request_id.set(rid or uuid.uuid4().hex[:16])
    outcome: Outcome
    try:
        async with asyncio.timeout(deadline_seconds if deadline_seconds > 0 else None):
            outcome = Outcome(result=await call())
    except TimeoutError:
        outcome = Outcome(code=grpc.StatusCode.DEADLINE_EXCEEDED, message="Deadline Exceeded")
    except Exception as exc:
        status, message = _error_status(exc)
        if status == grpc.StatusCode.INTERNAL and not isinstance(exc, BridgeError):
            log.exception("unhandled error in %s", name)
        else:
            log.info("%s failed: %s %s", name, status.name, message)
        trailers = dict(_error_trailers(exc))
        outcome = Outcome(
            code=status, message=message, retry_after=trailers.get(RETRY_AFTER_METADATA, "")
        )
    GRPC_REQUESTS.labels(name, outcome.code.name).inc()
    GRPC_SECONDS.labels(name).observe(time.perf_counter() - started)
    return outcome


if TYPE_CHECKING:
    _Handler = grpc.GenericRpcHandler[Any, Any]
else:  # the runtime class is not generic
    _Handler = grpc.GenericRpcHandler


class _Served(_Handler):
    """A service's handlers as `_served` serves them: each unary method wrapped once, at
    its first call. Not a server interceptor: with one, grpc.aio looks every call's
    handler up through an extra coroutine (issue 22)."""

    def __init__(self, inner: _Handler) -> None:
        self._inner = inner
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None  # not this service's (nothing kept: names come from callers)
        handler = _serving(handler, method)
        self._handlers[method] = handler
        return handler


def _serving(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its unary method served by `_served` (streams as they are)."""
    if handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        _served(handler.unary_unary, method),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _Registering:
    """The server as `register` sees it: every handler it adds is served by `_served`."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[_Handler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Served(h) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """The generated code's own registration (looked up first, by method name)."""
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]  # not in the stubs
            service, {name: _serving(h, f"/{service}/{name}") for name, h in handlers.items()}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop: the default loop was a sixth of the
    ack path's CPU in the conversation service (bench/README.md)."""
    uvloop.run(main)


def client_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that carries the current request id to the next service."""
    rid = request_id.get()
    return ((REQUEST_ID_METADATA, rid),) if rid else ()


class GrpcService:
    """A gRPC server with health, reflection, background tasks and graceful shutdown."""

    def __init__(
        self,
        *,
        name: str,
        service_names: Sequence[str],
        register: Register,
        host: str,
        port: int,
        grace_seconds: float,
        background: Sequence[BackgroundTask] = (),
        on_stop: Callable[[], Awaitable[None]] | None = None,
        metrics_port: int = 0,
        metrics_host: str = "",
    ) -> None:
        self.name = name
        self._service_names = list(service_names)
        self._grace = grace_seconds
        self._background = list(background)
        self._on_stop = on_stop
        self._metrics_port = metrics_port
        # Metrics are never reachable from further away than the service itself.
        self._metrics_host = metrics_host or host
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 16 << 20),
                # Clients ping every 20 s, calls or not (grpc_client.py), to notice a dead
                # peer. The server's defaults (no pings without calls, at most one per
                # 5 min) would answer an idle channel's third ping with GOAWAY "too many
                # pings" and fail the next call on it.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10000),
            ],
        )
        served = cast(grpc.aio.Server, _Registering(self.server))
        register(served)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, served)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind {host}:{port}")
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        serve_metrics(self._metrics_port, self._metrics_host)
        await self.server.start()
        for service_name in ["", *self._service_names]:
            await self.health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s listening", self.name, extra={"port": self.port})

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self) -> None:
        """Start, run until SIGTERM/SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        tasks = [
            asyncio.create_task(task.run(self._stopping), name=task.name)
            for task in self._background
        ]
        stopped = asyncio.create_task(self._stopping.wait())
        # A background loop that dies is a bug: stop the process so it gets restarted
        # instead of running on without the work it was meant to do.
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopped and task.exception() is not None:
                log.error("background task %s died", task.get_name(), exc_info=task.exception())
        self._stopping.set()
        await self.shutdown(tasks)

    async def shutdown(self, tasks: Sequence[asyncio.Task[None]] = ()) -> None:
        log.info("%s shutting down", self.name)
        await self.health.enter_graceful_shutdown()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.server.stop(self._grace)
        if self._on_stop is not None:
            await self._on_stop()
        log.info("%s stopped", self.name)
