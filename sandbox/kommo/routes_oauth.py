"""Kommo's OAuth2 endpoints: the token endpoint and the consent page."""

import json
import urllib.parse

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from sandbox.kommo.deps import SandboxDep
from sandbox.kommo.oauth import OAuthProblem, TokenRequest
from sandbox.kommo.responses import PROBLEM_MEDIA_TYPE

router = APIRouter()


async def _token_fields(request: Request) -> dict[str, str]:
    """The token endpoint takes JSON or a form, like Kommo's."""
    raw = await request.body()
    if "json" in request.headers.get("content-type", "") or raw.lstrip().startswith(b"{"):
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(key): str(value) for key, value in data.items() if value is not None}
    return dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))


@router.post("/oauth2/access_token")
async def access_token(request: Request, sandbox: SandboxDep) -> Response:
    fields = await _token_fields(request)
    token_request = TokenRequest(
        grant_type=fields.get("grant_type"),
        client_id=fields.get("client_id"),
        client_secret=fields.get("client_secret"),
        redirect_uri=fields.get("redirect_uri"),
        code=fields.get("code"),
        refresh_token=fields.get("refresh_token"),
    )
    try:
        pair = sandbox.tokens.grant(token_request)
    except OAuthProblem as problem:
        return JSONResponse(
            problem.body(), status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE
        )
    return JSONResponse(pair.body())


@router.get("/oauth")
async def consent(sandbox: SandboxDep, client_id: str | None = None, state: str = "") -> Response:
    """The page a human approves the integration on; the sandbox approves at once."""
    if not sandbox.tokens.knows_client(client_id):
        return HTMLResponse("<html><body>Integration not found</body></html>", status_code=400)
    config = sandbox.config
    query = urllib.parse.urlencode(
        {
            "code": sandbox.tokens.issue_code(),
            "state": state,
            "referer": f"{config.subdomain}.kommo.com",
            "client_id": config.client_id,
        }
    )
    separator = "&" if "?" in config.redirect_uri else "?"
    return RedirectResponse(f"{config.redirect_uri}{separator}{query}", status_code=302)
