"""Unary calls carried over long-lived bidirectional streams (issue 22: a unary gRPC call
costs both processes more than the message it carries). Each call is a message with an
id; its answer, a message with the same id, is sent when it is ready, in any order.

The server side: `answers` serves each call of a stream in its own task. A call still
running when the stream ends goes on (work begun is not abandoned half-way); its answer
has nowhere to go. `serve_streamed` (grpc_server.py) serves one as a unary call is served.

The client side: `StreamedCalls` keeps a few lanes, each its own stream, so the calls
spread over the server's replicas as the channel's round robin placed the streams. A call
ends as the unary call would: its answer, or an `AioRpcError` with the code, message and
retry-after the server gave, so callers (retries, error mappings) see no difference. A
broken stream fails its calls in flight UNAVAILABLE, and the next call opens a new one;
a call whose answer does not come within its deadline ends DEADLINE_EXCEEDED. Used only
for calls that are safe to try again (idempotent by a key).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc

from services.common.errors import RETRY_AFTER_METADATA
from services.common.grpc_server import Outcome
from services.common.logs import request_id

log = logging.getLogger(__name__)

Call = TypeVar("Call")
Answer = TypeVar("Answer")
Request = TypeVar("Request")
Response = TypeVar("Response")

# The server answers a call's deadline itself; this much later the client stops waiting
# for an answer that did not come.
_GRACE_SECONDS = 1.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def answers(
    calls: AsyncIterator[Call], answer: Callable[[Call], Awaitable[Answer]]
) -> AsyncIterator[Answer]:
    """The answers of a stream's calls, as each is ready."""
    ready: asyncio.Queue[Answer | None] = asyncio.Queue()
    running: set[asyncio.Task[None]] = set()

    async def serve(call: Call) -> None:
        ready.put_nowait(await answer(call))

    async def read() -> None:
        try:
            async for call in calls:
                task = asyncio.create_task(serve(call))
                running.add(task)
                task.add_done_callback(running.discard)
            # The caller closed its side: the calls in flight still answer (waited for,
            # never cancelled with this reader).
            if running:
                await asyncio.wait(set(running))
        finally:
            ready.put_nowait(None)

    reader = asyncio.create_task(read(), name="stream-calls")
    try:
        while (done := await ready.get()) is not None:
            yield done
    finally:
        reader.cancel()


def answer_of(answer: Answer, call_id: int, outcome: Outcome) -> Answer:
    """`answer` (an empty answer message) filled with a call's outcome: its response
    (OK), or the status it ended with."""
    message: Any = answer
    message.id = call_id
    message.code = outcome.code.value[0]
    message.message = outcome.message
    message.retry_after = outcome.retry_after
    if outcome.result is not None:
        message.response.CopyFrom(outcome.result)
    return answer


def failed(code: grpc.StatusCode, message: str, retry_after: str = "") -> grpc.aio.AioRpcError:
    """A call's end as a unary call would raise it."""
    trailers = grpc.aio.Metadata(*([(RETRY_AFTER_METADATA, retry_after)] if retry_after else []))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message, None)


# A call as a stream's message: (id, request, caller's request id, deadline in seconds).
MakeCall = Callable[[int, Request, str, float], Any]


class _Lane(Generic[Request, Response]):
    def __init__(self, open_stream: Callable[[], Any], make_call: MakeCall[Request], name: str):
        self._open_stream = open_stream
        self._make_call = make_call
        self._name = name
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Response]] = {}
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        # One write at a time on a call (gRPC refuses a second one in flight).
        self._writing = asyncio.Lock()

    async def send(self, request: Request, deadline_seconds: float) -> Response:
        call_id = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            async with self._writing:
                if self._call is None:
                    self._call = self._open_stream()
                    self._reader = asyncio.get_running_loop().create_task(self._read(self._call))
                try:
                    await self._call.write(
                        self._make_call(call_id, request, request_id.get(), deadline_seconds)
                    )
                except (
                    grpc.aio.AioRpcError,
                    grpc.aio.UsageError,
                    asyncio.InvalidStateError,
                ) as exc:
                    self._broken(f"stream write failed: {exc}")
            try:
                return await asyncio.wait_for(future, deadline_seconds + _GRACE_SECONDS)
            except TimeoutError:
                raise failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self._waiting.pop(call_id, None)

    async def _read(self, call: Any) -> None:
        try:
            async for answer in call:
                future = self._waiting.get(answer.id)
                if future is None or future.done():
                    continue
                if answer.code == 0:
                    future.set_result(answer.response)
                else:
                    code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
                    future.set_exception(failed(code, answer.message, answer.retry_after))
            reason = "stream closed by the server"
        except grpc.aio.AioRpcError as exc:
            reason = f"stream failed: {exc.code().name}"
        if call is self._call:
            self._broken(reason)

    def _broken(self, reason: str) -> None:
        log.warning("%s %s", self._name, reason)
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failed(grpc.StatusCode.UNAVAILABLE, f"{self._name}: {reason}"))

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None


class StreamedCalls(Generic[Request, Response]):
    """One unary method's calls over `lanes` streams, taken in turn. `open_stream` opens
    a stream (the stub's streaming method); `make_call` makes a call's message."""

    def __init__(
        self,
        open_stream: Callable[[], Any],
        make_call: MakeCall[Request],
        *,
        name: str,
        lanes: int = 4,
    ) -> None:
        self._lanes = [
            _Lane[Request, Response](open_stream, make_call, name) for _ in range(max(lanes, 1))
        ]
        self._next = itertools.cycle(self._lanes)

    async def send(self, request: Request, deadline_seconds: float) -> Response:
        return await next(self._next).send(request, deadline_seconds)

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
