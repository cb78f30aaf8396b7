"""Unary calls carried over one long-lived bidirectional stream (issue 22: a unary gRPC
call costs both processes more than the message it carries). Each call is a message with
an id; its answer, a message with the same id, is sent when it is ready, in any order.

The server side: `answers` serves each call of the stream in its own task. A call still
running when the stream ends goes on (work begun is not abandoned half-way); its answer
has nowhere to go. The client side is the caller's (services/edge_api/reply_stream.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from bridge.conversation.v1 import conversation_pb2 as pb
from services.common.grpc_server import Outcome

Call = TypeVar("Call")
Answer = TypeVar("Answer")


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


def reply_answer(call_id: int, outcome: Outcome) -> pb.SendReplyAnswer:
    """SendReply's outcome as the answer to its call."""
    answer = pb.SendReplyAnswer(
        id=call_id,
        code=outcome.code.value[0],
        message=outcome.message,
        retry_after=outcome.retry_after,
    )
    if outcome.result is not None:
        answer.response.CopyFrom(outcome.result)
    return answer
