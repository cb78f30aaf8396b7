"""Bot rules: when the bot answers, for whom, and how its replies read (one versioned
document; services/conversation/rules.py says what each field does).

The conversation service validates a new document (one place, the same for the API and
BOT_RULES_FILE): a document that is not valid rules — an unknown field, a bad id or phone,
a pattern that could backtrack for ever — is refused with 400 naming each field. The edge
passes the body on as it came; the schema below is for the OpenAPI description."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, Field

from bridge.conversation.v1 import conversation_pb2 as conv
from services.common.errors import InvalidInput
from services.common.grpc_server import client_metadata
from services.conversation.rules import EXAMPLE_RULES, BotRules
from services.edge_api.deps import API_KEY, ClientsDep

router = APIRouter(tags=["bot"], dependencies=API_KEY)


class BotRulesDocument(BaseModel):
    version: int = Field(description="raised by every PUT; also the ETag (0 = never set here)")
    source: str = Field(description="api (PUT /bot-rules), file (BOT_RULES_FILE) or default")
    updated_at: str | None = Field(description="the last PUT, ISO 8601 UTC")
    rules: BotRules


def document(answer: conv.BotRulesDocument, response: Response) -> BotRulesDocument:
    # The version is the entity tag: PUT with If-Match applies only over what was read.
    response.headers["ETag"] = f'"{answer.version}"'
    return BotRulesDocument(
        version=answer.version,
        source=answer.source,
        updated_at=answer.updated_at or None,
        rules=BotRules.model_validate_json(answer.rules_json),
    )


def expected_version(if_match: str | None) -> int | None:
    """The version named by an If-Match header (`"3"`, `3` or `W/"3"`); None for none or `*`."""
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidInput('If-Match: the version from GET /bot-rules\'s ETag, e.g. "3"')
    return int(tag)


@router.get("/bot-rules", response_model=BotRulesDocument)
async def get_bot_rules(clients: ClientsDep, response: Response) -> BotRulesDocument:
    """The rules in force, with their version (also the ETag) and where they come from:
    `api` (set here), `file` (BOT_RULES_FILE) or `default`."""
    answer = await clients.conversation.GetBotRules(
        conv.GetBotRulesRequest(), metadata=client_metadata()
    )
    return document(answer, response)


_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/BotRules"},
                "examples": {"a whole account": {"value": EXAMPLE_RULES}},
            }
        },
    },
    "responses": {"400": {"description": "not valid rules: the error names each field"}},
}


@router.put("/bot-rules", response_model=BotRulesDocument, openapi_extra=_REQUEST_BODY)
async def put_bot_rules(
    request: Request,
    clients: ClientsDep,
    response: Response,
    if_match: Annotated[
        str | None,
        Header(description="the ETag of the rules this change was made over (409 if stale)"),
    ] = None,
) -> BotRulesDocument:
    """Replace the rules; every replica applies them within BOT_RULES_REFRESH_SECONDS."""
    body = await request.body()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise InvalidInput("bot rules: the body is not UTF-8 JSON") from None
    put = conv.PutBotRulesRequest(rules_json=text)
    expected = expected_version(if_match)
    if expected is not None:
        put.expected_version = expected
    answer = await clients.conversation.PutBotRules(put, metadata=client_metadata())
    return document(answer, response)
