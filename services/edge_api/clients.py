"""The edge's gRPC clients: one channel per service, calls spread over every replica."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2_grpc

from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceStub
from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayStub
from bridge.scheduling.v1.scheduling_pb2_grpc import SchedulingServiceStub
from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceStub
from services.common.grpc_client import KOMMO_PRIORITY_METADATA, create_channel
from services.edge_api.reply_stream import ReplyStreams, reply_streams
from services.edge_api.settings import EdgeSettings

if TYPE_CHECKING:
    from bridge.conversation.v1.conversation_pb2_grpc import ConversationServiceAsyncStub
    from bridge.kommo_gateway.v1.kommo_gateway_pb2_grpc import KommoGatewayAsyncStub
    from bridge.scheduling.v1.scheduling_pb2_grpc import SchedulingServiceAsyncStub
    from bridge.vendedor.v1.vendedor_pb2_grpc import VendedorServiceAsyncStub

SERVICE_NAMES = {
    "conversation": "bridge.conversation.v1.ConversationService",
    "kommo_gateway": "bridge.kommo_gateway.v1.KommoGateway",
    "vendedor": "bridge.vendedor.v1.VendedorService",
    "scheduling": "bridge.scheduling.v1.SchedulingService",
}


@dataclass
class Clients:
    channels: dict[str, grpc.aio.Channel]
    conversation: ConversationServiceAsyncStub
    gateway: KommoGatewayAsyncStub
    vendedor: VendedorServiceAsyncStub
    scheduling: SchedulingServiceAsyncStub
    # n8n's replies, over long-lived streams to the conversation service.
    replies: ReplyStreams

    @classmethod
    def connect(cls, settings: EdgeSettings) -> Clients:
        deadline = settings.grpc_deadline_seconds
        channels = {
            "conversation": create_channel(settings.conversation_addr, deadline),
            # Everything the edge asks Kommo is an operator's: it goes after customers'
            # replies and turns, and is refused at once (429) rather than left to time out.
            "kommo_gateway": create_channel(
                settings.kommo_gateway_addr, deadline, [(KOMMO_PRIORITY_METADATA, "operator")]
            ),
            "vendedor": create_channel(settings.vendedor_addr, deadline),
            "scheduling": create_channel(settings.scheduling_addr, deadline),
        }
        conversation = ConversationServiceStub(channels["conversation"])
        return cls(
            channels=channels,
            conversation=conversation,
            gateway=KommoGatewayStub(channels["kommo_gateway"]),
            vendedor=VendedorServiceStub(channels["vendedor"]),
            scheduling=SchedulingServiceStub(channels["scheduling"]),
            replies=reply_streams(conversation),
        )

    def health(self, service: str) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channels[service])

    async def close(self) -> None:
        self.replies.close()
        for channel in self.channels.values():
            await channel.close(None)
