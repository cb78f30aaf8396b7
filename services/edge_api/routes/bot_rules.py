"""Bot rules: when the bot answers, for whom, and how its replies read (one versioned
document; services/conversation/rules.py says what each field does)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from bridge.conversation.v1 import conversation_pb2 as conv
from services.common.errors import InvalidInput
from services.common.grpc_server import client_metadata
from services.conversation.rules import BotRules
from services.edge_api.deps import API_KEY, ClientsDep

router = APIRouter(tags=["bot"], dependencies=API_KEY)


def document_json(document: conv.BotRulesDocument, response: Response) -> dict[str, Any]:
    # The version is the entity tag: PUT with If-Match applies only over what was read.
    response.headers["ETag"] = f'"{document.version}"'
    return {
        "version": document.version,
        "source": document.source,
        "updated_at": document.updated_at or None,
        "rules": json.loads(document.rules_json),
    }


def expected_version(if_match: str | None) -> int | None:
    """The version named by an If-Match header (`"3"`, `3` or `W/"3"`); None for none or `*`."""
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidInput('If-Match: the version from GET /bot-rules\'s ETag, e.g. "3"')
    return int(tag)


@router.get("/bot-rules")
async def get_bot_rules(clients: ClientsDep, response: Response) -> dict[str, Any]:
    """The rules in force, with their version (also the ETag) and where they come from:
    `api` (set here), `file` (BOT_RULES_FILE) or `default`."""
    document = await clients.conversation.GetBotRules(
        conv.GetBotRulesRequest(), metadata=client_metadata()
    )
    return document_json(document, response)


@router.put("/bot-rules")
async def put_bot_rules(
    body: BotRules,
    clients: ClientsDep,
    response: Response,
    if_match: Annotated[
        str | None,
        Header(description="the ETag of the rules this change was made over (409 if stale)"),
    ] = None,
) -> dict[str, Any]:
    """Replace the rules; every replica applies them within BOT_RULES_REFRESH_SECONDS."""
    request = conv.PutBotRulesRequest(rules_json=body.model_dump_json())
    expected = expected_version(if_match)
    if expected is not None:
        request.expected_version = expected
    document = await clients.conversation.PutBotRules(request, metadata=client_metadata())
    return document_json(document, response)
