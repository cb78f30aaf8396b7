"""Kommo: authorisation and the checks an operator runs when connecting an account."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.grpc_server import client_metadata
from services.edge_api.clients import SERVICE_NAMES
from services.edge_api.deps import API_KEY, ClientsDep, RuntimeDep, require_api_key_or_query
from services.edge_api.errors import HTTP_STATUS, grpc_retry_after
from services.edge_api.ids import KommoIdPath
from services.edge_api.routes.status import kommo_status, service_health, status_json

router = APIRouter(tags=["Kommo"])


_ADVICE = {
    "missing": "Authorise the bridge: open /oauth/authorize in a browser logged in to Kommo.",
    "refresh_refused": "Kommo refused the stored refresh token (revoked, expired or used "
    "twice). Authorise the bridge again at /oauth/authorize.",
    "expired": "The long-lived token has expired: issue a new one in the integration's "
    "settings in Kommo and set KOMMO_LONG_LIVED_TOKEN.",
}


@router.get(
    "/oauth/authorize",
    dependencies=[Depends(require_api_key_or_query)],
    response_class=RedirectResponse,
    status_code=302,
)
async def oauth_authorize(clients: ClientsDep) -> RedirectResponse:
    """Redirect to Kommo's consent page with a one-time state (?api_key=… works too)."""
    answer = await clients.gateway.GetAuthorizeUrl(gw.GetAuthorizeUrlRequest())
    return RedirectResponse(answer.url, status_code=302)


@router.get("/oauth/callback", response_class=HTMLResponse)
async def oauth_callback(
    clients: ClientsDep,
    code: Annotated[str, Query(min_length=1, max_length=4096)],
    state: Annotated[str, Query(min_length=1, max_length=200)],
) -> HTMLResponse:
    """Where Kommo sends the browser back: the code is exchanged once, for a known state."""
    status = await clients.gateway.CompleteAuthorization(
        gw.CompleteAuthorizationRequest(code=code, state=state)
    )
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>Kommo autorizado</title>"
        "<h1>Kommo autorizado ✔</h1>"
        f"<p>The bridge is connected to {status.base_url}. You can close this page.</p>"
    )


@router.get("/test-kommo-connectivity", dependencies=API_KEY)
async def test_kommo_connectivity(clients: ClientsDep) -> JSONResponse:
    """Can the bridge reach Kommo with its token right now? Says what to do if not."""
    status = await clients.gateway.GetStatus(gw.GetStatusRequest())
    report: dict[str, Any] = {"kommo": status_json(status)}
    started = time.perf_counter()
    try:
        account = await clients.gateway.GetAccount(gw.GetAccountRequest())
    except grpc.aio.AioRpcError as exc:
        report |= {
            "ok": False,
            "error": exc.details(),
            "advice": _ADVICE.get(status.token_state)
            or ("Kommo is unreachable or failing; it is retried automatically."),
        }
        return JSONResponse(
            report, status_code=HTTP_STATUS.get(exc.code(), 502), headers=grpc_retry_after(exc)
        )
    report |= {
        "ok": True,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "account": {"id": account.id, "name": account.name, "subdomain": account.subdomain},
    }
    return JSONResponse(report)


@router.get("/test-integration", dependencies=API_KEY)
async def test_integration(runtime: RuntimeDep, clients: ClientsDep) -> JSONResponse:
    """Every part of the bridge, each with ok and what is wrong."""
    names = list(SERVICE_NAMES)
    states = await asyncio.gather(*(service_health(clients, n) for n in names))
    kommo = await kommo_status(clients)
    checks: dict[str, dict[str, Any]] = {
        name: {"ok": state == "SERVING", "detail": state}
        for name, state in zip(names, states, strict=True)
    }
    kommo_ok = isinstance(kommo, dict) and kommo["token_state"] in ("ok", "long_lived")
    checks["kommo"] = {
        "ok": kommo_ok and isinstance(kommo, dict) and not kommo["blocked"],
        "detail": kommo,
        "advice": _ADVICE.get(kommo["token_state"]) if isinstance(kommo, dict) else None,
    }
    ok = all(check["ok"] for check in checks.values())
    return JSONResponse({"ok": ok, "checks": checks}, status_code=200 if ok else 503)


@router.post("/create-test-note/{lead_id}", dependencies=API_KEY)
async def create_test_note(lead_id: KommoIdPath, clients: ClientsDep) -> dict[str, Any]:
    """Writes a note on the lead: proves the bridge can write to this Kommo account."""
    text = f"🧪 Nota de teste do bridge Kommo ⇄ n8n ({time.strftime('%Y-%m-%d %H:%M:%S')} UTC)"
    answer = await clients.gateway.AddNote(
        gw.AddNoteRequest(lead_id=lead_id, text=text), metadata=client_metadata()
    )
    return {"lead_id": lead_id, "note_id": answer.note_id, "text": text}


@router.get("/test-kommo-lead/{lead_id}", dependencies=API_KEY)
async def test_kommo_lead(lead_id: KommoIdPath, clients: ClientsDep) -> dict[str, Any]:
    """A lead as the bridge sees it: fields, main contact and responsible vendedor."""
    lead = await clients.gateway.GetLead(gw.GetLeadRequest(lead_id=lead_id))
    contact: dict[str, Any] | None = None
    if lead.main_contact_id:
        c = await clients.gateway.GetContact(gw.GetContactRequest(contact_id=lead.main_contact_id))
        contact = {"id": c.id, "name": c.name, "has_phone": bool(c.phones)}
    vendedor: dict[str, Any] | None = None
    if lead.responsible_user_id:
        try:
            v = await clients.vendedor.GetVendedor(
                vd.GetVendedorRequest(vendedor_id=lead.responsible_user_id)
            )
            vendedor = {"id": v.id, "name": v.name, "active": v.active, "source": v.source}
        except grpc.aio.AioRpcError as exc:
            vendedor = {"id": lead.responsible_user_id, "error": exc.details()}
    return {
        "lead": {
            "id": lead.id,
            "name": lead.name,
            "status_id": lead.status_id,
            "pipeline_id": lead.pipeline_id,
            "responsible_user_id": lead.responsible_user_id,
            "custom_fields": {
                (f.field_name or str(f.field_id)): list(f.values) for f in lead.custom_fields
            },
        },
        "contact": contact,
        "vendedor": vendedor,
    }
