"""Dependencies shared by the routes: the runtime, its clients, the API key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from services.edge_api.clients import Clients
from services.edge_api.errors import HttpError
from services.edge_api.runtime import EdgeRuntime


def get_runtime(request: Request) -> EdgeRuntime:
    runtime: EdgeRuntime = request.app.state.runtime
    return runtime


def get_clients(request: Request) -> Clients:
    return get_runtime(request).clients


RuntimeDep = Annotated[EdgeRuntime, Depends(get_runtime)]
ClientsDep = Annotated[Clients, Depends(get_clients)]


def _check_key(request: Request, given: str | None) -> None:
    expected = get_runtime(request).settings.edge_api_key.encode()
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise HttpError(401, "missing or wrong X-API-Key")


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="the bridge's API key")] = None,
) -> None:
    _check_key(request, x_api_key)


async def require_api_key_or_query(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="the bridge's API key")] = None,
    api_key: Annotated[
        str | None, Query(description="the API key, for links opened in a browser")
    ] = None,
) -> None:
    _check_key(request, x_api_key or api_key)


async def require_metrics_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="the bridge's API key")] = None,
    authorization: Annotated[
        str | None, Header(description="`Bearer <API key>`, as Prometheus sends it")
    ] = None,
) -> None:
    """/metrics is public unless EDGE_METRICS_REQUIRE_KEY is on."""
    if not get_runtime(request).settings.edge_metrics_require_key:
        return
    scheme, _, token = (authorization or "").partition(" ")
    _check_key(request, x_api_key or (token.strip() if scheme.lower() == "bearer" else None))


API_KEY = [Depends(require_api_key)]
