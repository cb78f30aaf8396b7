"""Salesbot runs: the way integrations make Kommo send a WhatsApp message.

Both endpoints answer 202 at once; the bot reads the reply field only when it runs
(``SANDBOX_ECHO_DELAY`` later), which is the race docs/kommo-api.md warns about. The known
bots are the reply bot (``SANDBOX_SALESBOT_ID``) and each Salesbot holding a chat template
(``7101`` … ``7104`` by default), which sends its template instead; WhatsApp's 24-hour window
decides at run time what reaches the customer (activity.py).
"""

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.models import BotRunV4, BotStopIn, SalesbotRunV2
from sandbox.kommo.responses import (
    KommoProblem,
    ValidationIssue,
    check_batch_size,
    validation_problem,
)
from sandbox.kommo.runtime import Sandbox

router = APIRouter()

LEAD_ENTITY_TYPE = 2
# POST /api/v4/bots/run takes at most 100 runs in one call.
MAX_RUNS_PER_CALL = 100


def _check_bots(sandbox: Sandbox, bot_ids: list[int]) -> None:
    unknown = sorted({bot_id for bot_id in bot_ids if not sandbox.activity.knows_bot(bot_id)})
    if unknown:
        raise KommoProblem(404, f"Bot {unknown[0]} not found")


@router.post("/api/v2/salesbot/run")
async def run_salesbot_v2(items: list[SalesbotRunV2], sandbox: SandboxDep) -> Response:
    issues = [
        ValidationIssue(str(index), "entity_type", "Only leads (2) are supported here")
        for index, item in enumerate(items)
        if item.entity_type != LEAD_ENTITY_TYPE
    ]
    if not items or issues:
        raise validation_problem(issues or [ValidationIssue("0", "", "Empty request")])
    _check_bots(sandbox, [item.bot_id for item in items])
    for item in items:
        sandbox.activity.run_salesbot(item.bot_id, item.entity_id)
    return JSONResponse({"success": True}, status_code=202)


@router.post("/api/v4/bots/run")
async def run_bots_v4(body: BotRunV4 | list[BotRunV4], sandbox: SandboxDep) -> Response:
    """One run or a list of up to 100; any invalid item refuses the whole request.

    Each run sends its lead's reply field as the bot reads it when it runs. The items carry
    no ``request_id``: a validation error names the item's index (UNCONFIRMED for Kommo).
    """
    items = body if isinstance(body, list) else [body]
    if not items:
        raise validation_problem([ValidationIssue("0", "", "Empty request")])
    check_batch_size([str(index) for index in range(len(items))], MAX_RUNS_PER_CALL)
    issues = [
        ValidationIssue(str(index), "entity_type", "Only leads are supported here")
        for index, item in enumerate(items)
        if item.entity_type not in ("leads", "lead")
    ]
    if issues:
        raise validation_problem(issues)
    _check_bots(sandbox, [item.bot_id for item in items])
    for item in items:
        sandbox.activity.run_salesbot(item.bot_id, item.entity_id)
    # Kommo answers this one with an HTML "Accepted", not JSON.
    return HTMLResponse("Accepted", status_code=202)


@router.post("/api/v4/bots/{bot_id:int}/stop")
async def stop_bot(bot_id: int, request: Request, sandbox: SandboxDep) -> Response:
    _check_bots(sandbox, [bot_id])
    raw = await request.body()
    stop = BotStopIn.model_validate_json(raw) if raw.strip() else BotStopIn()
    sandbox.activity.stop_salesbot(bot_id, stop.entity_id)
    return HTMLResponse("Accepted", status_code=202)
