"""The edge tries a reply again on another conversation replica when the first is gone,
with the same idempotency key, so a try that reached a dying replica is not delivered
twice. Real gRPC servers and the edge's own channel and reply streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from bridge.conversation.v1 import conversation_pb2 as pb
from bridge.conversation.v1 import conversation_pb2_grpc
from services.common.errors import Unavailable
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService, serve_streamed
from services.common.stream_calls import answer_of, answers
from services.edge_api.clients import Clients
from services.edge_api.reply_stream import reply_streams
from services.edge_api.routes.conversations import SendResponseBody, send_response

SERVICE = "bridge.conversation.v1.ConversationService"


class Conversation:
    """SendReply answering UNAVAILABLE to its first `failures` calls, as a replica dying
    mid-call (the one method these tests need, served over the edge's streams as the
    real service serves it)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.keys: list[str] = []

    async def SendReply(self, request: pb.SendReplyRequest) -> pb.SendReplyResponse:
        self.keys.append(request.idempotency_key or request.reply_token)
        if len(self.keys) <= self.failures:
            raise Unavailable("Stream removed")
        return pb.SendReplyResponse(status="delivered", conversation_id="c1", delivery_id="d1")

    async def _answer(self, call: pb.SendReplyCall) -> pb.SendReplyAnswer:
        outcome = await serve_streamed(
            "SendReply", call.request_id, call.timeout_seconds, lambda: self.SendReply(call.request)
        )
        return answer_of(pb.SendReplyAnswer(), call.id, outcome)

    async def SendReplies(
        self, calls: AsyncIterator[pb.SendReplyCall], context: Any
    ) -> AsyncIterator[pb.SendReplyAnswer]:
        async for answer in answers(calls, self._answer):
            yield answer

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "SendReplies": grpc.stream_stream_rpc_method_handler(
                    self.SendReplies,
                    request_deserializer=pb.SendReplyCall.FromString,
                    response_serializer=pb.SendReplyAnswer.SerializeToString,
                )
            },
        )


async def _serve(servicer: Conversation) -> GrpcService:
    service = GrpcService(
        name="conversation",
        service_names=[SERVICE],
        register=lambda s: s.add_generic_rpc_handlers((servicer.handler(),)),
        host="127.0.0.1",
        port=0,
        grace_seconds=1.0,
    )
    await service.start()
    return service


async def _send(servicer: Conversation, body: SendResponseBody) -> Any:
    service = await _serve(servicer)
    channel = create_channel(f"127.0.0.1:{service.port}", 5.0)
    try:
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        replies = reply_streams(stub)
        clients = cast(Clients, SimpleNamespace(conversation=stub, replies=replies))
        try:
            return await send_response(body, clients)
        finally:
            replies.close()
    finally:
        await channel.close(None)
        await service.shutdown()


async def test_a_reply_is_tried_again_with_the_same_key() -> None:
    servicer = Conversation(failures=2)
    answer = await _send(servicer, SendResponseBody(conversation_id="c1", text="Olá!"))
    assert answer.status_code == 200
    assert len(servicer.keys) == 3
    assert servicer.keys[0] and len(set(servicer.keys)) == 1


async def test_a_reply_token_is_its_own_key() -> None:
    servicer = Conversation(failures=1)
    answer = await _send(servicer, SendResponseBody(reply_token="tok-1", text="Olá!"))
    assert answer.status_code == 200
    assert servicer.keys == ["tok-1", "tok-1"]


async def test_after_three_tries_the_edge_gives_up() -> None:
    servicer = Conversation(failures=5)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _send(servicer, SendResponseBody(conversation_id="c1", text="Olá!"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.keys) == 3
