"""Group commit for the webhook ack path.

Each webhook hands its raw body to a lane and waits for its own result. A lane keeps
one long-lived bidirectional stream to the conversation service and sends whatever
has queued up whenever fewer than two batches are in flight — no timer, so a lone
webhook goes at once and a burst rides in a few large batches. The service parses
and stores a batch in one Redis round trip and answers with the batch's sequence
number. A broken stream fails its pending webhooks (the edge answers 503, Kommo
retries, dedupe absorbs any that were stored) and the next webhook reconnects.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from bridge.conversation.v1 import conversation_pb2 as pb
from services.common.errors import Unavailable

if TYPE_CHECKING:
    from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceAsyncStub

log = logging.getLogger(__name__)

_MAX_IN_FLIGHT = 2


class _Lane:
    def __init__(self, stub: ConversationServiceAsyncStub, max_batch: int) -> None:
        self._stub = stub
        self._max_batch = max_batch
        self._queue: deque[tuple[bytes, asyncio.Future[pb.IngestResult]]] = deque()
        self._in_flight: dict[int, list[asyncio.Future[pb.IngestResult]]] = {}
        self._seq = itertools.count(1)
        # Request ids of webhooks: "wh-<random>-<batch>.<index>", unique across replicas.
        self._id_prefix = f"wh-{secrets.token_hex(4)}-"
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._sending = False
        # Bound at the first webhook; looking the loop up per call cost a syscall each.
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, body: bytes) -> asyncio.Future[pb.IngestResult]:
        loop = self._loop or self._bind()
        future: asyncio.Future[pb.IngestResult] = loop.create_future()
        self._queue.append((body, future))
        if len(self._in_flight) < _MAX_IN_FLIGHT:
            self._kick()
        return future

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _kick(self) -> None:
        if not self._sending and self._queue:
            self._sending = True
            (self._loop or self._bind()).create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._queue and len(self._in_flight) < _MAX_IN_FLIGHT:
                if self._call is None:
                    self._open()
                count = min(len(self._queue), self._max_batch)
                items = [self._queue.popleft() for _ in range(count)]
                seq = next(self._seq)
                self._in_flight[seq] = [f for _, f in items]
                try:
                    await self._call.write(
                        pb.IngestBatch(
                            seq=seq,
                            bodies=[b for b, _ in items],
                            request_id_prefix=f"{self._id_prefix}{seq}.",
                        )
                    )
                except (
                    grpc.aio.AioRpcError,
                    grpc.aio.UsageError,
                    asyncio.InvalidStateError,
                ) as exc:
                    self._broken(f"stream write failed: {exc}")
        finally:
            self._sending = False

    def _open(self) -> None:
        # No request iterator: the call is written to as webhooks arrive.
        self._call = self._stub.IngestWebhooks(wait_for_ready=False)  # type: ignore[call-arg]
        self._reader = (self._loop or self._bind()).create_task(self._read(self._call))

    async def _read(self, call: Any) -> None:
        try:
            async for ack in call:
                futures = self._in_flight.pop(ack.seq, [])
                for future, result in zip(futures, ack.results, strict=False):
                    if not future.done():
                        future.set_result(result)
                self._kick()
            reason = "stream closed by the conversation service"
        except grpc.aio.AioRpcError as exc:
            reason = f"stream failed: {exc.code().name}"
        if call is self._call:
            self._broken(reason)

    def _broken(self, reason: str) -> None:
        log.warning("webhook ingest %s", reason)
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        pending = [f for futures in self._in_flight.values() for f in futures]
        self._in_flight.clear()
        for future in pending:
            if not future.done():
                future.set_exception(Unavailable("conversation service unavailable"))
        self._kick()

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None


class WebhookBatcher:
    def __init__(
        self, stub: ConversationServiceAsyncStub, lanes: int, max_batch: int, timeout: float
    ) -> None:
        self._lanes = [_Lane(stub, max_batch) for _ in range(lanes)]
        self._next = itertools.cycle(self._lanes)
        self._timeout = timeout

    async def submit(self, body: bytes) -> pb.IngestResult:
        future = next(self._next).submit(body)
        try:
            return await asyncio.wait_for(future, self._timeout)
        except TimeoutError as exc:
            raise Unavailable("the conversation service did not confirm in time") from exc

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
