"""A conversation replica with its background loops left out: the real gRPC server,
servicer, parser and store (the whole ack path), without the event consumer and the
due-loop that would apply every stored message and run turns.

The ack benchmark swaps the stack's conversation replica for this one (same port) so
that it measures the ack and only the ack: at thousands of webhooks a second the
consumer would otherwise compete for the same two cores (`--downstream live` keeps it).

    python -m bench.ingest_only     # same environment as `python -m services.conversation`
"""

from __future__ import annotations

import asyncio
import gc

from services.common.logs import configure_logging
from services.common.settings import load_settings
from services.conversation.server import create_server
from services.conversation.settings import ConversationSettings


async def serve(settings: ConversationSettings) -> None:
    service = create_server(settings)
    # The one difference from services.conversation.server.serve: no background loops.
    service._background.clear()
    # As in the real service: start-up objects out of the collector's way.
    gc.freeze()
    await service.serve()


def main() -> None:
    settings = load_settings(ConversationSettings)
    configure_logging("conversation", settings.log_level, settings.secrets())
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
