"""How Kommo's answers are read (docs/kommo-api.md): problem+json and HAL bodies, 204 for
"nothing", a 400 whose validation errors name the items of a list call it refused, a 400
of NotFound errors that means 404; each status as the bridge's own error.
"""

from __future__ import annotations

from typing import Any

import httpx

from services.common.errors import (
    InvalidInput,
    NotFound,
    Unauthenticated,
    Unavailable,
    UpstreamError,
)
from services.kommo_gateway.coalescer import REQUEUE, Outcome


def refusals(
    response: httpx.Response, count: int, path: str, names: list[str], consequence: str = ""
) -> list[Outcome[Any]]:
    """Per item, for a list call Kommo answered 400: the items its `validation-errors`
    name fail (NOT_FOUND when every error is NotFound), the others were not applied and
    go again (REQUEUE). [] when the call succeeded."""
    if response.status_code != 400:
        return []
    named = validation_errors(response)
    suffix = f": {consequence}" if consequence else ""
    if not any(str(i) in named for i in range(count)):
        checked(response, path)  # names none of our items: the request itself failed
    outcomes: list[Outcome[Any]] = []
    for index in range(count):
        codes = named.get(str(index))
        if codes is None or all(code == "TooManyEntities" for code in codes):
            outcomes.append(REQUEUE)
        elif all(code == "NotFound" for code in codes):
            outcomes.append(NotFound(f"{names[index]} not found in Kommo{suffix}"))
        else:
            outcomes.append(
                InvalidInput(f"Kommo refused {names[index]}: {', '.join(codes)}{suffix}")
            )
    return outcomes


def validation_errors(response: httpx.Response) -> dict[str, list[str]]:
    """`validation-errors` as request_id → the codes of its errors (the item's index as a
    string: we set no request_id of our own)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    errors = body.get("validation-errors") if isinstance(body, dict) else None
    named: dict[str, list[str]] = {}
    for item in errors or []:
        if isinstance(item, dict) and "request_id" in item:
            codes = [
                str(e.get("code") or "InvalidValue")
                for e in item.get("errors") or []
                if isinstance(e, dict)
            ]
            named.setdefault(str(item["request_id"]), []).extend(codes or ["InvalidValue"])
    return named


def new_ids(response: httpx.Response, entity: str, count: int) -> list[Outcome[int]]:
    """The new entities' ids in the order sent: by `request_id` (the index), else by
    position."""
    embedded = (body_of(response) or {}).get("_embedded", {}).get(entity, [])
    by_request = {
        str(e["request_id"]): int(e["id"])
        for e in embedded
        if isinstance(e, dict) and "request_id" in e and "id" in e
    }
    ids: list[Outcome[int]] = []
    for index in range(count):
        if str(index) in by_request:
            ids.append(by_request[str(index)])
        elif index < len(embedded) and isinstance(embedded[index], dict):
            ids.append(int(embedded[index].get("id") or 0))
        else:
            ids.append(0)
    return ids


def with_linked(entity: dict[str, Any], linked: str) -> dict[str, Any]:
    """The entity with its `_embedded[linked]` list always there (empty when Kommo names
    none): read `with=<linked>`, a missing list means none, and a copy holding the list is
    known to have been read with it (servicer.py reads an older copy again)."""
    embedded = entity.get("_embedded")
    if not isinstance(embedded, dict):
        embedded = entity["_embedded"] = {}
    if embedded.get(linked) is None:
        embedded[linked] = []
    return entity


def body_of(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        if 200 <= response.status_code < 300:
            # Some Kommo endpoints (bots/run) answer text: "Accepted".
            return None
        raise UpstreamError(f"Kommo answered {response.status_code} without JSON") from exc


def checked(response: httpx.Response, path: str) -> httpx.Response:
    status = response.status_code
    if status < 400:
        return response
    detail = problem_detail(response)
    if status == 404 or (status == 400 and only_not_found(response)):
        raise NotFound(f"Kommo: not found ({path})")
    if status in (400, 422):
        raise InvalidInput(f"Kommo refused the request to {path}: {detail}")
    if status == 401:
        raise Unauthenticated(f"Kommo refused the token: {detail}; re-authorise the bridge")
    if status in (402, 403):
        raise UpstreamError(f"Kommo forbids {path} ({status}): {detail}")
    if status >= 500:
        raise Unavailable(f"Kommo answered {status} for {path}")
    raise UpstreamError(f"Kommo answered {status} for {path}: {detail}")


def only_not_found(response: httpx.Response) -> bool:
    """A 400 whose every validation error is NotFound: Kommo's answer to a write on an
    entity that does not exist (a note on an unknown lead), which means 404."""
    try:
        body = response.json()
    except ValueError:
        return False
    errors = body.get("validation-errors") if isinstance(body, dict) else None
    codes = [
        e.get("code")
        for item in errors or []
        if isinstance(item, dict)
        for e in item.get("errors") or []
        if isinstance(e, dict)
    ]
    return bool(codes) and all(code == "NotFound" for code in codes)


def problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        errors = body.get("validation-errors")
        return str(body.get("detail") or body.get("title") or "") + (f" {errors}" if errors else "")
    return str(body)[:200]
