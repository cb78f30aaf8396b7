"""Personal data (LGPD): erase everything the bridge holds about a lead or a contact."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from bridge.conversation.v1 import conversation_pb2 as conv
from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.scheduling.v1 import scheduling_pb2 as sc
from services.common.grpc_server import client_metadata
from services.edge_api.clients import Clients
from services.edge_api.deps import API_KEY, ClientsDep
from services.edge_api.ids import KommoIdPath

router = APIRouter(tags=["privacy"], dependencies=API_KEY)

# An erase reads every conversation's record to find a contact's: allow it time.
_ERASE_DEADLINE_SECONDS = 60.0


class ErasedData(BaseModel):
    """What was erased, per service and kind of data (all zero when nothing was held:
    an erase can be repeated safely)."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "lead_id": 9100001,
                    "contact_id": None,
                    "conversations": 1,
                    "erased": {
                        "conversation": {"conversations": 1, "messages": 4, "keys": 9},
                        "scheduling": {"requests": 1, "keys": 3},
                        "kommo_gateway": {"cached_leads": 1, "cached_contacts": 1},
                    },
                }
            ]
        }
    }

    lead_id: int | None
    contact_id: int | None
    conversations: int = Field(description="conversations erased")
    erased: dict[str, dict[str, int]] = Field(
        description="per service (conversation, scheduling, kommo_gateway): kind → count"
    )


@router.delete(
    "/leads/{lead_id}/data",
    response_model=ErasedData,
    summary="Erase everything held about a lead",
    description="Its conversation (history, pending messages, bot log, queued work, "
    "failure records, unprocessed webhook events), its scheduling requests, and the "
    "bridge's copies of the lead and its contact. Kommo itself is not changed. "
    "Webhook dedupe markers (Kommo message ids only) stay until they expire (72 h).",
)
async def erase_lead(lead_id: KommoIdPath, clients: ClientsDep) -> ErasedData:
    return await _erase(clients, lead_id=lead_id)


@router.delete(
    "/contacts/{contact_id}/data",
    response_model=ErasedData,
    summary="Erase everything held about a contact",
    description="The conversations of all the contact's leads, their scheduling "
    "requests and the contact's, and the bridge's copies of the contact and those leads. "
    "Kommo itself is not changed.",
)
async def erase_contact(contact_id: KommoIdPath, clients: ClientsDep) -> ErasedData:
    return await _erase(clients, contact_id=contact_id)


async def _erase(clients: Clients, lead_id: int = 0, contact_id: int = 0) -> ErasedData:
    """Conversations first (their work stops finding them), then the requests and the
    copies of the leads and contacts those conversations name."""
    metadata = client_metadata()
    conversations = await clients.conversation.EraseData(
        conv.EraseDataRequest(lead_id=lead_id, contact_id=contact_id),
        timeout=_ERASE_DEADLINE_SECONDS,
        metadata=metadata,
    )
    lead_ids = sorted({*conversations.lead_ids, *([lead_id] if lead_id else [])})
    scheduling = await clients.scheduling.EraseData(
        sc.EraseSchedulingDataRequest(
            lead_ids=lead_ids, contact_ids=[contact_id] if contact_id else []
        ),
        timeout=_ERASE_DEADLINE_SECONDS,
        metadata=metadata,
    )
    gateway = await clients.gateway.EraseData(
        gw.EraseGatewayDataRequest(
            lead_ids=lead_ids,
            contact_ids=sorted({*conversations.contact_ids, *([contact_id] if contact_id else [])}),
            delivery_keys=list(conversations.delivery_keys),
        ),
        timeout=_ERASE_DEADLINE_SECONDS,
        metadata=metadata,
    )
    return ErasedData(
        lead_id=lead_id or None,
        contact_id=contact_id or None,
        conversations=conversations.erased.get("conversations", 0),
        erased={
            "conversation": dict(conversations.erased),
            "scheduling": dict(scheduling.erased),
            "kommo_gateway": dict(gateway.erased),
        },
    )
