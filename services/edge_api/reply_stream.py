"""n8n's replies to the conversation service over long-lived streams (`SendReplies`).

A unary gRPC call costs both processes more than the reply it carries (issue 22): a
stream opened once carries each reply as a message, and its answer comes back on it with
the same id, in any order. A few lanes, each its own stream, spread the replies over the
conversation replicas as the channel's round robin placed the streams.

A call ends as SendReply's unary call would: its answer, or an `AioRpcError` with the
code, message and retry-after the service gave, so the callers (the retry on another
replica, the HTTP error mapping) see no difference. A broken stream fails its calls in
flight UNAVAILABLE (a reply is idempotent by its token or key: trying it again delivers
it once) and the next call opens a new one; a call whose answer does not come within its
timeout ends DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Any

import grpc

from bridge.conversation.v1 import conversation_pb2 as pb
from services.common.errors import RETRY_AFTER_METADATA
from services.common.logs import request_id

if TYPE_CHECKING:
    from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceAsyncStub

log = logging.getLogger(__name__)

# The conversation service answers a call's deadline itself; this much later the edge
# stops waiting for an answer that did not come.
_GRACE_SECONDS = 1.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def failed(code: grpc.StatusCode, message: str, retry_after: str = "") -> grpc.aio.AioRpcError:
    """A call's end as a unary call would raise it."""
    trailers = grpc.aio.Metadata(*([(RETRY_AFTER_METADATA, retry_after)] if retry_after else []))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message, None)


class _Lane:
    def __init__(self, stub: ConversationServiceAsyncStub) -> None:
        self._stub = stub
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[pb.SendReplyResponse]] = {}
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()

    async def send(
        self, request: pb.SendReplyRequest, deadline_seconds: float
    ) -> pb.SendReplyResponse:
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        future: asyncio.Future[pb.SendReplyResponse] = loop.create_future()
        self._waiting[call_id] = future
        try:
            # One write at a time on a call (gRPC refuses a second one in flight).
            async with self._writing:
                if self._call is None:
                    self._open()
                await self._write(call_id, request, deadline_seconds)
            try:
                return await asyncio.wait_for(future, deadline_seconds + _GRACE_SECONDS)
            except TimeoutError:
                raise failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self._waiting.pop(call_id, None)

    async def _write(
        self, call_id: int, request: pb.SendReplyRequest, deadline_seconds: float
    ) -> None:
        try:
            await self._call.write(
                pb.SendReplyCall(
                    id=call_id,
                    request=request,
                    request_id=request_id.get(),
                    timeout_seconds=deadline_seconds,
                )
            )
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            self._broken(f"stream write failed: {exc}")

    def _open(self) -> None:
        # No request iterator: the call is written to as replies arrive.
        self._call = self._stub.SendReplies(wait_for_ready=False)  # type: ignore[call-arg]
        self._reader = asyncio.get_running_loop().create_task(self._read(self._call))

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
            reason = "stream closed by the conversation service"
        except grpc.aio.AioRpcError as exc:
            reason = f"stream failed: {exc.code().name}"
        if call is self._call:
            self._broken(reason)

    def _broken(self, reason: str) -> None:
        log.warning("replies %s", reason)
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(
                    failed(grpc.StatusCode.UNAVAILABLE, f"conversation service: {reason}")
                )

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None


class ReplyStreams:
    """SendReply's calls over `lanes` streams, taken in turn."""

    def __init__(self, stub: ConversationServiceAsyncStub, lanes: int = 4) -> None:
        self._lanes = [_Lane(stub) for _ in range(max(lanes, 1))]
        self._next = itertools.cycle(self._lanes)

    async def send(
        self, request: pb.SendReplyRequest, deadline_seconds: float
    ) -> pb.SendReplyResponse:
        return await next(self._next).send(request, deadline_seconds)

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
