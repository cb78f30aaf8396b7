"""SendReply over the edge's long-lived streams (services/edge_api/reply_stream.py and
services/common/stream_calls.py), over real gRPC: each call gets its own answer whatever
the order they finish in, and ends as the unary call would have — its code, message and
retry-after, its deadline — and a stream that breaks fails its calls UNAVAILABLE (the
edge then tries the reply again: it is idempotent) while the next call opens a new one.

The conversation service's reply handling is replaced by a scripted one here; the
streams, the serving of each call (`serve_streamed`) and the error mapping are the
real ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from bridge.conversation.v1 import conversation_pb2 as pb
from bridge.conversation.v1 import conversation_pb2_grpc
from services.common.errors import NotFound, RateLimited, retry_after_trailer
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService, serve_streamed
from services.common.logs import request_id
from services.common.stream_calls import answer_of, answers
from services.edge_api.reply_stream import ReplyStreams, reply_streams

SERVICE = "bridge.conversation.v1.ConversationService"


class Scripted(conversation_pb2_grpc.ConversationServiceServicer):
    """Answers a reply by its text: "slow <s>", "missing", "busy", "rid", else at once."""

    async def SendReplies(
        self, request_iterator: AsyncIterator[pb.SendReplyCall], context: Any
    ) -> AsyncIterator[pb.SendReplyAnswer]:
        async for answer in answers(request_iterator, self._answer):
            yield answer

    async def _answer(self, call: pb.SendReplyCall) -> pb.SendReplyAnswer:
        outcome = await serve_streamed(
            "SendReply", call.request_id, call.timeout_seconds, lambda: self._reply(call.request)
        )
        return answer_of(pb.SendReplyAnswer(), call.id, outcome)

    async def _reply(self, request: pb.SendReplyRequest) -> pb.SendReplyResponse:
        text = request.text
        if text.startswith("slow "):
            await asyncio.sleep(float(text.split()[1]))
        elif text == "missing":
            raise NotFound("unknown or expired reply_token")
        elif text == "busy":
            raise RateLimited("Kommo's budget is taken", 7)
        elif text == "rid":
            return pb.SendReplyResponse(status=request_id.get())
        return pb.SendReplyResponse(status="delivered", conversation_id=text)


@asynccontextmanager
async def served() -> AsyncIterator[tuple[GrpcService, ReplyStreams]]:
    servicer = Scripted()  # type: ignore[abstract]  # only SendReplies is served
    service = GrpcService(
        name="conversation",
        service_names=[SERVICE],
        register=lambda s: conversation_pb2_grpc.add_ConversationServiceServicer_to_server(
            servicer, s
        ),
        host="127.0.0.1",
        port=0,
        grace_seconds=0.2,
    )
    await service.start()
    channel = create_channel(f"127.0.0.1:{service.port}", default_deadline_seconds=20.0)
    streams = reply_streams(conversation_pb2_grpc.ConversationServiceStub(channel), lanes=2)
    try:
        yield service, streams
    finally:
        streams.close()
        await channel.close(None)
        await service.shutdown()


def reply(text: str) -> pb.SendReplyRequest:
    return pb.SendReplyRequest(reply_token="t", text=text)


async def test_each_call_gets_its_own_answer_whatever_order_they_finish_in() -> None:
    async with served() as (_, streams):
        slow = asyncio.create_task(streams.send(reply("slow 0.4"), 5))
        fast = [asyncio.create_task(streams.send(reply(f"c{i}"), 5)) for i in range(20)]
        done = await asyncio.gather(*fast)
        assert [a.conversation_id for a in done] == [f"c{i}" for i in range(20)]
        assert not slow.done()
        assert (await slow).conversation_id == "slow 0.4"
        request_id.set("rid-of-the-caller")
        assert (await streams.send(reply("rid"), 5)).status == "rid-of-the-caller"


async def test_a_call_ends_as_the_unary_call_would() -> None:
    async with served() as (_, streams):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await streams.send(reply("missing"), 5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing.value.details() == "unknown or expired reply_token"
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await streams.send(reply("busy"), 5)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after_trailer(busy.value) == "7"
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await streams.send(reply("slow 2"), 0.3)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The stream goes on serving after each of them.
        assert (await streams.send(reply("after"), 5)).status == "delivered"


async def test_a_broken_stream_fails_its_calls_unavailable_and_the_next_opens_one() -> None:
    async with served() as (service, streams):
        assert (await streams.send(reply("first"), 5)).status == "delivered"
        waiting = asyncio.create_task(streams.send(reply("slow 5"), 10))
        await asyncio.sleep(0.2)
        await service.server.stop(0)  # the replica goes away with the call in flight
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await waiting
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await streams.send(reply("nobody"), 1)
        assert gone.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
