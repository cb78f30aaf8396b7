"""Bot rules: when the bot answers, for whom, and how its replies read (one versioned
document; services/conversation/rules_document.py says what each field does).

The conversation service validates a new document (one place, the same for the API and
BOT_RULES_FILE): a document that is not valid rules — an unknown field, a bad id or phone,
a pattern that could backtrack for ever — is refused with 400 naming each field. The edge
passes the body on as it came; the schema below is for the OpenAPI description."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bridge.conversation.v1 import conversation_pb2 as conv
from services.common.errors import InvalidInput
from services.common.grpc_server import client_metadata
from services.conversation.rules import resolve
from services.conversation.rules_document import EXAMPLE_RULES, BotRules, EffectiveRules
from services.edge_api.deps import API_KEY, ClientsDep
from services.edge_api.ids import KommoIdQuery

router = APIRouter(tags=["bot"], dependencies=API_KEY)


class RulesInForce(BaseModel):
    """The rules for a lead in one pipeline and stage: the account's, with the pipeline's
    and then the stage's overrides merged over them field by field (nested objects too)."""

    pipeline_id: int | None
    stage_id: int | None
    scope: str = Field(description="the narrowest scope with an override: account, "
                       "pipeline <id> or stage <id>")  # fmt: skip
    rules: EffectiveRules = Field(description="every field with the value in force")
    fields_from: dict[str, str] = Field(
        description="for each field, the scope its value (or a part of it) comes from"
    )


class BotRulesDocument(BaseModel):
    version: int = Field(description="raised by every PUT; also the ETag (0 = never set here)")
    source: str = Field(description="api (PUT /bot-rules), file (BOT_RULES_FILE) or default")
    updated_at: str | None = Field(description="the last PUT, ISO 8601 UTC")
    rules: BotRules = Field(
        description="the document as written: a field a scope left out is left out here "
        "too, and keeps the wider scope's value"
    )
    in_force: RulesInForce | None = Field(
        default=None,
        description="with ?pipeline_id= and/or ?stage_id=: the rules in force for a lead there",
    )


def document(
    answer: conv.BotRulesDocument, pipeline_id: int | None = None, stage_id: int | None = None
) -> JSONResponse:
    rules = BotRules.model_validate_json(answer.rules_json)
    body: dict[str, Any] = {
        "version": answer.version,
        "source": answer.source,
        "updated_at": answer.updated_at or None,
        # As written (exclude_unset): a GET-change-PUT keeps what a scope left to the wider.
        "rules": rules.model_dump(mode="json", exclude_unset=True),
    }
    if pipeline_id is not None or stage_id is not None:
        merged, fields_from, scope = resolve(rules, pipeline_id or 0, stage_id or 0)
        body["in_force"] = RulesInForce(
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            scope=scope,
            rules=merged,
            fields_from=fields_from,
        ).model_dump(mode="json")
    # The version is the entity tag: PUT with If-Match applies only over what was read.
    return JSONResponse(body, headers={"ETag": f'"{answer.version}"'})


def expected_version(if_match: str | None) -> int | None:
    """The version named by an If-Match header (`"3"`, `3` or `W/"3"`); None for none or `*`."""
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidInput('If-Match: the version from GET /bot-rules\'s ETag, e.g. "3"')
    return int(tag)


@router.get("/bot-rules", response_model=BotRulesDocument)
async def get_bot_rules(
    clients: ClientsDep,
    pipeline_id: KommoIdQuery = None,
    stage_id: KommoIdQuery = None,
) -> Response:
    """The rules document, with its version (also the ETag) and where it comes from:
    `api` (set here), `file` (BOT_RULES_FILE) or `default`. With `pipeline_id` and/or
    `stage_id`, also `in_force`: the rules a lead there gets, every field filled."""
    answer = await clients.conversation.GetBotRules(
        conv.GetBotRulesRequest(), metadata=client_metadata()
    )
    return document(answer, pipeline_id, stage_id)


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
    if_match: Annotated[
        str | None,
        Header(description="the ETag of the rules this change was made over (409 if stale)"),
    ] = None,
) -> Response:
    """Replace the rules; every replica applies them within BOT_RULES_REFRESH_SECONDS.
    `{}` puts the defaults back: the bot answers everyone at any hour."""
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
    return document(answer)
