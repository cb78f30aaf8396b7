"""n8n's replies to the conversation service over long-lived streams (`SendReplies`, see
services/common/stream_calls.py): a reply is idempotent by its token or key, so a call
a broken stream failed is tried again safely (routes/conversations.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.conversation.v1 import conversation_pb2 as pb
from services.common.stream_calls import StreamedCalls

if TYPE_CHECKING:
    from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceAsyncStub

ReplyStreams = StreamedCalls[pb.SendReplyRequest, pb.SendReplyResponse]


def reply_streams(stub: ConversationServiceAsyncStub, lanes: int = 4) -> ReplyStreams:
    return StreamedCalls(
        lambda: stub.SendReplies(wait_for_ready=False),  # type: ignore[call-arg]
        lambda call_id, request, rid, deadline: pb.SendReplyCall(
            id=call_id, request=request, request_id=rid, timeout_seconds=deadline
        ),
        name="replies",
        lanes=lanes,
    )
