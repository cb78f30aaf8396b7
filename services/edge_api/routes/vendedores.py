"""Vendedores: the lists, custom ones, areas, sync, and who is responsible for what."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bridge.conversation.v1 import conversation_pb2 as conv
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.grpc_server import client_metadata
from services.edge_api.clients import Clients
from services.edge_api.deps import API_KEY, ClientsDep
from services.edge_api.ids import KommoIdPath

router = APIRouter(tags=["vendedores"], dependencies=API_KEY)

# A sync reads every page of Kommo's users at the shared rate limit.
_SYNC_DEADLINE_SECONDS = 90.0


class NewVendedor(BaseModel):
    """A salesperson who is not a Kommo user."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "Joana Prado",
                    "email": "joana@previdas.com.br",
                    "phone": "+55 11 91234-5678",
                    "areas": ["previdenciario"],
                    "active": True,
                }
            ]
        }
    }

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(default="", max_length=254)
    phone: str = Field(default="", max_length=40)
    areas: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )
    active: bool = True


class Areas(BaseModel):
    areas: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(max_length=50)


def vendedor_json(v: vd.Vendedor) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": v.id,
        "name": v.name,
        "email": v.email or None,
        "phone": v.phone or None,
        "areas": list(v.areas),
        "source": v.source,
        "active": v.active,
        "is_admin": v.is_admin,
    }
    if v.matched_by:
        body["matched_by"] = v.matched_by
    return body


async def _list(clients: Clients, source: str) -> dict[str, Any]:
    answer = await clients.vendedor.ListVendedores(
        vd.ListVendedoresRequest(source=source), metadata=client_metadata()
    )
    synced_at = answer.synced_at
    return {
        "vendedores": [vendedor_json(v) for v in answer.vendedores],
        "total": len(answer.vendedores),
        "synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(synced_at))
        if synced_at
        else None,
        "age_seconds": round(time.time() - synced_at, 1) if synced_at else None,
        "sync_error": answer.sync_error or None,
    }


@router.get("/vendedores")
async def list_all(clients: ClientsDep) -> dict[str, Any]:
    """Every vendedor, real and custom, each with its source."""
    return await _list(clients, "")


@router.get("/vendedores/reais")
async def list_real(clients: ClientsDep) -> dict[str, Any]:
    """The vendedores synced from Kommo's users."""
    return await _list(clients, "kommo")


@router.get("/vendedores/dinamicos")
async def list_dynamic(clients: ClientsDep) -> dict[str, Any]:
    """Real and custom together; a custom one with a real one's email gives way."""
    return await _list(clients, "dynamic")


@router.post("/vendedores/adicionar", status_code=201)
async def add(body: NewVendedor, clients: ClientsDep) -> dict[str, Any]:
    created = await clients.vendedor.AddVendedor(
        vd.AddVendedorRequest(
            name=body.name,
            email=body.email,
            phone=body.phone,
            areas=body.areas,
            active=body.active,
        ),
        metadata=client_metadata(),
    )
    return vendedor_json(created)


@router.put("/vendedores/{vendedor_id}/areas")
async def set_areas(vendedor_id: KommoIdPath, body: Areas, clients: ClientsDep) -> dict[str, Any]:
    """The areas ("áreas elegíveis") a vendedor serves; an empty list = every area."""
    updated = await clients.vendedor.SetAreas(
        vd.SetAreasRequest(vendedor_id=vendedor_id, areas=body.areas), metadata=client_metadata()
    )
    return vendedor_json(updated)


async def _sync(clients: Clients) -> dict[str, Any]:
    report = await clients.vendedor.SyncVendedores(
        vd.SyncVendedoresRequest(), timeout=_SYNC_DEADLINE_SECONDS, metadata=client_metadata()
    )
    return {
        "added": report.added,
        "updated": report.updated,
        "deactivated": report.deactivated,
        "total": report.total,
        "synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.synced_at)),
    }


@router.post("/vendedores/sincronizar")
async def sync(clients: ClientsDep) -> dict[str, Any]:
    """Sync with Kommo's users now; says what was added, updated and deactivated."""
    return await _sync(clients)


@router.post("/sincronizar/vendedores")
async def sync_alias(clients: ClientsDep) -> dict[str, Any]:
    """The same as POST /vendedores/sincronizar."""
    return await _sync(clients)


@router.get("/vendedor/lead/{lead_id}")
async def for_lead(lead_id: KommoIdPath, clients: ClientsDep) -> dict[str, Any]:
    """The responsible vendedor of a lead (or the configured fallback)."""
    found = await clients.vendedor.GetVendedorForLead(
        vd.GetVendedorForLeadRequest(lead_id=lead_id), metadata=client_metadata()
    )
    return vendedor_json(found)


@router.get("/vendedor/contato/{contact_id}")
async def for_contact(contact_id: KommoIdPath, clients: ClientsDep) -> dict[str, Any]:
    """The responsible vendedor of a contact (or the configured fallback)."""
    found = await clients.vendedor.GetVendedorForContact(
        vd.GetVendedorForContactRequest(contact_id=contact_id), metadata=client_metadata()
    )
    return vendedor_json(found)


@router.get("/vendedor/conversa/{conversation_id}")
async def for_conversation(
    conversation_id: Annotated[str, Path(min_length=1, max_length=100)], clients: ClientsDep
) -> JSONResponse:
    """The responsible vendedor of a conversation's lead.

    Composed here, from two calls, rather than by the vendedor service calling the
    conversation service: that would make the two services depend on each other.
    """
    conversation = await clients.conversation.GetConversation(
        conv.GetConversationRequest(conversation_id=conversation_id), metadata=client_metadata()
    )
    if not conversation.lead_id:
        return JSONResponse(
            {"error": f"conversation {conversation_id} has no lead", "status": 404},
            status_code=404,
        )
    found = await clients.vendedor.GetVendedorForLead(
        vd.GetVendedorForLeadRequest(lead_id=conversation.lead_id), metadata=client_metadata()
    )
    return JSONResponse({**vendedor_json(found), "lead_id": conversation.lead_id})
