"""Kommo's Chats API (amojo): a registered channel sending a message into a lead's chat.

Served by the sandbox app itself; a bridge points its amojo base URL here.
"""

import hashlib
import hmac

from fastapi import APIRouter, Request
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.models import AmojoEvent
from sandbox.kommo.records import Attachment
from sandbox.kommo.responses import KommoProblem

router = APIRouter()


def chats_signature(
    secret: str, method: str, content_md5: str, content_type: str, date: str, path: str
) -> str:
    """Lower-case hex HMAC-SHA1 of the request lines, as amojo computes it."""
    message = "\n".join([method.upper(), content_md5, content_type, date, path])
    return hmac.new(secret.encode(), message.encode(), hashlib.sha1).hexdigest()


def signature_problem(
    secret: str, method: str, path: str, headers: Headers, body: bytes
) -> str | None:
    """Why amojo would refuse this request's signature, or None when it is good."""
    content_md5 = headers.get("content-md5", "")
    date = headers.get("date", "")
    content_type = headers.get("content-type", "")
    if not date:
        return "Date header is missing"
    # Exact comparison: amojo wants lower-case hex of the very bytes sent.
    if content_md5 != hashlib.md5(body, usedforsecurity=False).hexdigest():
        return "Content-MD5 does not match the body"
    expected = chats_signature(secret, method, content_md5, content_type, date, path)
    if not hmac.compare_digest(expected, headers.get("x-signature", "")):
        return "X-Signature is invalid"
    return None


@router.post("/v2/origin/custom/{scope_id}")
async def send_message(scope_id: str, request: Request, sandbox: SandboxDep) -> Response:
    body = await request.body()
    problem = signature_problem(
        sandbox.config.channel_secret, request.method, request.url.path, request.headers, body
    )
    if problem is not None:
        raise KommoProblem(403, problem)
    if scope_id != sandbox.config.scope_id:
        raise KommoProblem(404, f"Unknown scope_id {scope_id!r}")
    event = AmojoEvent.model_validate_json(body)
    if event.event_type != "new_message":
        raise KommoProblem(400, f"event_type {event.event_type!r} is not supported by the sandbox")
    payload = event.payload
    lead = sandbox.state.lead_by_conversation(payload.conversation_id)
    if lead is None:
        raise KommoProblem(400, f"Unknown conversation_id {payload.conversation_id!r}")
    attachment = (
        Attachment(payload.message.type, payload.message.media, payload.message.file_name or "")
        if payload.message.media
        else None
    )
    msgid = sandbox.activity.send_via_chats_api(
        lead,
        payload.message.text,
        payload.message.type,
        attachment,
        ref_id=payload.msgid,
        author_name=payload.sender.name or "Integração",
    )
    contact = sandbox.state.contacts.get(lead.main_contact_id or 0)
    return JSONResponse(
        {
            "new_message": {
                "conversation_id": payload.conversation_id,
                "sender_id": payload.sender.id,
                "receiver_id": contact.amojo_id if contact else None,
                "msgid": msgid,
                "ref_id": payload.msgid,
            }
        }
    )
