"""Dependencies shared by the routes: the runtime, its clients, the API keys, the debug
switch.

Two keys, both sent as `X-API-Key` and compared in constant time:

- EDGE_API_KEY, the operator's: every endpoint.
- EDGE_N8N_API_KEY (optional), n8n's: only the endpoints n8n answers through
  (`N8N_OPERATIONS`); anywhere else it gets 403 saying where it may go. A leaked n8n key
  sends replies, and reads, wipes and rewrites nothing.
"""

from __future__ import annotations

import hmac
from enum import Enum
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from services.edge_api.clients import Clients
from services.edge_api.errors import HttpError
from services.edge_api.runtime import EdgeRuntime
from services.edge_api.settings import EdgeSettings

# What the n8n key opens, as (method, route template): the reply and the scheduling
# status callback (services/scheduling/domain.py `callbacks` hands n8n both URLs).
N8N_OPERATIONS = (("POST", "/send-response"), ("POST", "/agendamento/{agendamento_id}/status"))
N8N_ONLY_ANSWERS = (
    "this key (EDGE_N8N_API_KEY) may only answer: "
    + ", ".join(f"{method} {path}" for method, path in N8N_OPERATIONS)
    + "; everything else needs EDGE_API_KEY"
)
DEBUG_OFF = (
    "debug endpoints are off: set EDGE_DEBUG_ENDPOINTS=true to turn them on "
    "(GET /debug/conversations, DELETE /reset/conversations, GET /webhooks/test)"
)
WRONG_KEY = "missing or wrong X-API-Key"


class Caller(Enum):
    OPERATOR = "operator"
    N8N = "n8n"


def _runtime(request: Request) -> EdgeRuntime:
    runtime: EdgeRuntime = request.app.state.runtime
    return runtime


# Dependencies are coroutines: FastAPI runs a plain function in a thread pool, a hop that
# cost /send-response a fifth of its CPU.
async def get_runtime(request: Request) -> EdgeRuntime:
    return _runtime(request)


async def get_clients(request: Request) -> Clients:
    return _runtime(request).clients


RuntimeDep = Annotated[EdgeRuntime, Depends(get_runtime)]
ClientsDep = Annotated[Clients, Depends(get_clients)]


def caller(settings: EdgeSettings, given: str | None) -> Caller | None:
    """Whose key `given` is; None for no key or a wrong one. Both keys are always
    compared, in constant time."""
    if given is None:
        return None
    presented = given.encode()
    operator = hmac.compare_digest(presented, settings.edge_api_key.encode())
    n8n_key = settings.edge_n8n_api_key.encode()
    n8n = hmac.compare_digest(presented, n8n_key) and bool(n8n_key)
    if operator:
        return Caller.OPERATOR
    return Caller.N8N if n8n else None


def check_key(settings: EdgeSettings, given: str | None, n8n_allowed: bool = False) -> Caller:
    """The caller, or the refusal: 401 for no key or a wrong one, 403 for n8n's key on an
    endpoint it may not use."""
    who = caller(settings, given)
    if who is None:
        raise HttpError(401, WRONG_KEY)
    if who is Caller.N8N and not n8n_allowed:
        raise HttpError(403, N8N_ONLY_ANSWERS)
    return who


_KEY_HEADER = Header(description="the API key: EDGE_API_KEY (or, where allowed, n8n's)")


async def require_api_key(
    request: Request, x_api_key: Annotated[str | None, _KEY_HEADER] = None
) -> None:
    """The operator's key."""
    check_key(_runtime(request).settings, x_api_key)


async def require_answer_key(
    request: Request, x_api_key: Annotated[str | None, _KEY_HEADER] = None
) -> None:
    """The operator's key or n8n's: the endpoints in N8N_OPERATIONS only."""
    check_key(_runtime(request).settings, x_api_key, n8n_allowed=True)


async def require_api_key_or_query(
    request: Request,
    x_api_key: Annotated[str | None, _KEY_HEADER] = None,
    api_key: Annotated[
        str | None, Query(description="the API key, for links opened in a browser")
    ] = None,
) -> None:
    check_key(_runtime(request).settings, x_api_key or api_key)


async def require_metrics_key(
    request: Request,
    x_api_key: Annotated[str | None, _KEY_HEADER] = None,
    authorization: Annotated[
        str | None, Header(description="`Bearer <API key>`, as Prometheus sends it")
    ] = None,
) -> None:
    """/metrics is public unless EDGE_METRICS_REQUIRE_KEY is on."""
    settings = _runtime(request).settings
    if not settings.edge_metrics_require_key:
        return
    scheme, _, token = (authorization or "").partition(" ")
    check_key(settings, x_api_key or (token.strip() if scheme.lower() == "bearer" else None))


async def optional_operator_key(
    request: Request,
    x_api_key: Annotated[
        str | None, Header(description="EDGE_API_KEY: the details; without it, only the status")
    ] = None,
) -> bool:
    """For public endpoints that say more to the operator: True with the operator's key,
    False with no key; a wrong key is 401 and n8n's 403, as anywhere."""
    if x_api_key is None:
        return False
    return check_key(_runtime(request).settings, x_api_key) is Caller.OPERATOR


async def debug_endpoints_on(runtime: RuntimeDep) -> None:
    if not runtime.settings.debug_endpoints_on:
        raise HttpError(404, DEBUG_OFF)


API_KEY = [Depends(require_api_key)]
ANSWER_KEY = [Depends(require_answer_key)]
# Listed after API_KEY: a caller without the key learns nothing, not even whether these
# are on.
DEBUG = [Depends(debug_endpoints_on)]
OperatorKeyDep = Annotated[bool, Depends(optional_operator_key)]
