"""How the sandbox answers: HAL JSON, problem JSON, and Kommo's answers that are not JSON."""

from __future__ import annotations

import http
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

JsonDict = dict[str, Any]
T = TypeVar("T")

HAL_MEDIA_TYPE = "application/hal+json"
PROBLEM_MEDIA_TYPE = "application/problem+json"
DEFAULT_PAGE_LIMIT = 50
# Kommo serves at most 250 entities a page; a larger limit is capped, not refused.
MAX_PAGE_LIMIT = 250
# Events come at most 100 a page.
MAX_EVENTS_PAGE_LIMIT = 100
# Kommo advises at most 50 entities per adding/updating request (docs/kommo-api.md).
MAX_WRITE_ITEMS = 50


class HalResponse(JSONResponse):
    media_type = HAL_MEDIA_TYPE


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


@dataclass(frozen=True)
class ValidationIssue:
    """One entry of Kommo's ``validation-errors``; ``request_id`` is the item's index."""

    request_id: str
    path: str
    detail: str
    code: str = "InvalidValue"


class KommoProblem(Exception):
    """An error Kommo answers with ``application/problem+json``."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        issues: Sequence[ValidationIssue] = (),
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.issues = tuple(issues)
        self.extra = dict(extra or {})

    def response(self) -> Response:
        body = problem_body(self.status, self.detail, self.title)
        if self.issues:
            body["validation-errors"] = _group_issues(self.issues)
        body.update(self.extra)
        return ProblemResponse(body, status_code=self.status)


def validation_problem(issues: Sequence[ValidationIssue]) -> KommoProblem:
    return KommoProblem(400, "Request validation failed", issues=issues)


def check_batch_size(request_ids: Sequence[str], maximum: int) -> None:
    """Refuse a list body longer than ``maximum`` before applying any of it.

    UNCONFIRMED how Kommo words this refusal: the sandbox names each item past the maximum in
    ``validation-errors``, so a client that retries the items not named sends a list that fits.
    """
    if len(request_ids) <= maximum:
        return
    raise validation_problem(
        [
            ValidationIssue(
                request_id, "", f"At most {maximum} entities per request", "TooManyEntities"
            )
            for request_id in request_ids[maximum:]
        ]
    )


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(status: int, detail: str, title: str | None = None) -> JsonDict:
    return {
        "title": title or reason(status),
        "type": f"https://httpstatus.es/{status}",
        "status": status,
        "detail": detail,
    }


def _group_issues(issues: Sequence[ValidationIssue]) -> list[JsonDict]:
    grouped: dict[str, list[JsonDict]] = {}
    for issue in issues:
        grouped.setdefault(issue.request_id, []).append(
            {"code": issue.code, "path": issue.path, "detail": issue.detail}
        )
    return [{"request_id": rid, "errors": errors} for rid, errors in grouped.items()]


def nginx_page(status: int) -> Response:
    """The HTML page Kommo's nginx answers with when it blocks an account or is down."""
    title = f"{status} {reason(status)}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return HTMLResponse(page, status_code=status)


def rate_limited() -> Response:
    # Kommo's 429 is not JSON and carries no Retry-After: clients must pace themselves.
    return PlainTextResponse("Too Many Requests", status_code=429)


def injected_failure(status: int) -> Response:
    """The answer of a failure injected with ``fail_next``, shaped like Kommo's own."""
    if status == 429:
        return rate_limited()
    if status == 403 or status >= 500:
        return nginx_page(status)
    if status == 204:
        return Response(status_code=204)
    return ProblemResponse(problem_body(status, reason(status)), status_code=status)


def no_content() -> Response:
    return Response(status_code=204)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def self_link(request: Request, path: str) -> JsonDict:
    return {"self": {"href": f"{base_url(request)}{path}"}}


@dataclass(frozen=True)
class PageRequest:
    page: int
    limit: int

    @classmethod
    def from_query(cls, request: Request, max_limit: int = MAX_PAGE_LIMIT) -> PageRequest:
        return cls(
            page=max(1, _int_param(request, "page", 1)),
            limit=min(max_limit, max(1, _int_param(request, "limit", DEFAULT_PAGE_LIMIT))),
        )


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise validation_problem(
            [ValidationIssue("0", name, f"{name} must be an integer")]
        ) from exc


def hal_list(
    request: Request,
    entity: str,
    items: Sequence[T],
    render: Callable[[T], JsonDict],
    page: PageRequest,
) -> Response:
    """One page of a list; 204 with no body when the page is empty, as Kommo does."""
    start = (page.page - 1) * page.limit
    chunk = items[start : start + page.limit]
    if not chunk:
        return no_content()
    links: JsonDict = {
        "self": {"href": _page_href(request, page.page, page.limit)},
        "first": {"href": _page_href(request, 1, page.limit)},
    }
    if start + page.limit < len(items):
        links["next"] = {"href": _page_href(request, page.page + 1, page.limit)}
    if page.page > 1:
        links["prev"] = {"href": _page_href(request, page.page - 1, page.limit)}
    body = {
        "_page": page.page,
        "_links": links,
        "_embedded": {entity: [render(item) for item in chunk]},
    }
    return HalResponse(body)


def _page_href(request: Request, page: int, limit: int) -> str:
    return str(request.url.include_query_params(page=page, limit=limit))
