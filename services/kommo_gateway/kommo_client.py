"""Kommo's REST API, as it really behaves (developers.kommo.com): HAL JSON, 204 for
"nothing", problem+json errors, 401 on an expired token, 429 without Retry-After past
the rate limit, 403 HTML when the account is blocked.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from services.common.errors import (
    NotFound,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from services.common.metrics import KOMMO_REQUESTS
from services.kommo_gateway.breaker import CircuitBreaker
from services.kommo_gateway.coalescer import Coalescer, Outcome
from services.kommo_gateway.handoff import Handoff
from services.kommo_gateway.kommo_answers import (
    body_of,
    checked,
    new_ids,
    problem_detail,
    refusals,
    with_linked,
)
from services.kommo_gateway.ratelimit import Budget, Departure, Priority, RateLimiter, call_priority
from services.kommo_gateway.settings import GatewaySettings
from services.kommo_gateway.tokens import TokenManager

log = logging.getLogger(__name__)

_BACKOFF_BASE_SECONDS = 0.5
_BACKOFF_MAX_SECONDS = 8.0
PAGE_LIMIT = 250
# GET /api/v4/chats/templates serves at most 50 a page; a bound on the pages read, so a
# server that always names a next page cannot keep the gateway reading.
TEMPLATES_PAGE_LIMIT = 50
TEMPLATES_MAX_PAGES = 40
# Kommo's answers to a templates list the account cannot have: 402 the plan has no
# templates, 403 (JSON, not the "blocked" page) the token's user is not an admin, 404 the
# feature or endpoint is not there.
TEMPLATES_REFUSED = (402, 403, 404)
# Kommo's maximums per list request (docs/kommo-api.md, "List calls"): 250 entities a
# read, at most 50 an adding/updating request (Kommo's advice), 100 Salesbot runs.
READ_BATCH = 250
WRITE_BATCH = 50
BOT_RUN_BATCH = 100

# What a read asks Kommo to embed (`with=`): a lead's contacts, a contact's leads.
_READ_WITH = {"leads": "contacts", "contacts": "leads"}

# An entity id and its (field id, value) pairs.
FieldWrite = tuple[int, Sequence[tuple[int, str]]]
Params = Mapping[str, str | int] | Sequence[tuple[str, str | int]]


class KommoClient:
    def __init__(
        self,
        settings: GatewaySettings,
        http: httpx.AsyncClient,
        tokens: TokenManager,
        limiter: RateLimiter,
        budget: Budget,
        handoff: Handoff | None = None,
    ) -> None:
        """`handoff`: batch with the other gateway replicas (handoff.py)."""
        self._settings = settings
        self._http = http
        self.tokens = tokens
        self._limiter = limiter
        self._budget = budget
        self._handoff = handoff
        self.breaker = CircuitBreaker(
            settings.kommo_breaker_failures, settings.kommo_breaker_cooldown_seconds
        )
        self.rate_limited = 0
        # One coalescer per kind of call: concurrent callers share one list request.
        self._lead_reads: Coalescer[int, dict[str, Any]] = Coalescer(
            "lead read", budget, READ_BATCH, Priority.CONTEXT, self._read_leads, handoff=handoff
        )
        self._contact_reads: Coalescer[int, dict[str, Any]] = Coalescer(
            "contact read",
            budget,
            READ_BATCH,
            Priority.CONTEXT,
            self._read_contacts,
            handoff=handoff,
        )
        self._field_writes = {
            "leads": self._field_writer("leads"),
            "contacts": self._field_writer("contacts"),
        }
        self._bot_runs: Coalescer[tuple[int, int], None] = Coalescer(
            "Salesbot run",
            budget,
            BOT_RUN_BATCH,
            Priority.REPLY,
            self._run_bots,
            exclusive=lambda item: item[1],
            handoff=handoff,
        )
        self._notes: Coalescer[tuple[int, str], int] = Coalescer(
            "note", budget, WRITE_BATCH, Priority.RECORD, self._add_notes, handoff=handoff
        )
        self._tasks: Coalescer[dict[str, Any], int] = Coalescer(
            "task", budget, WRITE_BATCH, Priority.RECORD, self._add_tasks, handoff=handoff
        )

    def _field_writer(self, entity: str) -> Coalescer[FieldWrite, None]:
        async def send(batch: list[FieldWrite], departure: Departure) -> list[Outcome[None]]:
            return await self._patch(entity, batch, departure)

        # Two writes to one entity never share a request: Kommo's order within one is unsaid.
        return Coalescer(
            f"{entity} field write",
            budget=self._budget,
            maximum=WRITE_BATCH,
            priority=Priority.REPLY,
            send=send,
            exclusive=lambda item: item[0],
            handoff=self._handoff,
        )

    async def aclose(self) -> None:
        coalescers: list[Coalescer[Any, Any]] = [
            self._lead_reads,
            self._contact_reads,
            *self._field_writes.values(),
            self._bot_runs,
            self._notes,
            self._tasks,
        ]
        for coalescer in coalescers:
            await coalescer.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Params | None = None,
        idempotent: bool = True,
        departure: Departure | None = None,
        accept: tuple[int, ...] = (),
        priority: Priority = Priority.BACKGROUND,
    ) -> httpx.Response:
        """One Kommo call with the shared rate limit, a refresh on 401 and retries.

        The first attempt leaves with `departure` (granted to a batch) or waits for one
        in its priority class (the caller's, when it said, else `priority`); a retry
        takes the next free departure. Calls that are not idempotent (running a
        Salesbot) are never retried after they may have reached Kommo: a 5xx or a
        timeout raises Unavailable and the caller decides. Statuses in `accept` are
        returned as they are (a list call's 400 names the items refused).
        """
        if departure is None:
            said = call_priority.get()
            departure = await self._budget.departure(priority if said is None else said)
        try:
            return await self._attempts(method, path, json, params, idempotent, departure, accept)
        finally:
            await departure.settle()  # a departure not used (blocked, circuit open) goes back

    async def _attempts(
        self,
        method: str,
        path: str,
        json: Any,
        params: Params | None,
        idempotent: bool,
        first: Departure,
        accept: tuple[int, ...],
    ) -> httpx.Response:
        departure: Departure | None = first
        s = self._settings
        refreshed = False
        attempt = 0
        while True:
            if not self.breaker.allow():
                raise Unavailable(
                    f"Kommo is failing: calls paused for {self.breaker.retry_in():.0f} s "
                    "(circuit open)"
                )
            if departure is None:
                departure = await self._limiter.acquire()
            # Read with the departure's confirmation when it could be (no call of its own).
            try:
                tokens = await self.tokens.for_a_call(departure.take_read())
            except BaseException:
                await departure.settle()  # not sent: its place goes back
                raise
            try:
                response = await self._limiter.request(
                    self._http,
                    method,
                    f"{s.base_url}{path}",
                    departure,
                    json=json,
                    params=params,
                    headers={"Authorization": f"Bearer {tokens.access_token}"},
                    timeout=s.kommo_timeout_seconds,
                )
            except httpx.HTTPError as exc:
                departure = None
                self.breaker.failure()
                if idempotent and attempt < s.kommo_max_retries and self.breaker.state == "closed":
                    attempt += 1
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise Unavailable(f"Kommo unreachable: {type(exc).__name__}") from exc
            departure = None
            status = response.status_code
            KOMMO_REQUESTS.labels(str(status)).inc()
            if status >= 500:
                self.breaker.failure()
            else:
                self.breaker.success()
            if status == 403 and "html" in response.headers.get("content-type", ""):
                await self.tokens.mark_blocked()
                raise Unavailable(await self.tokens.blocked())
            if status == 401 and not refreshed and tokens.refresh_token:
                refreshed = True
                await self.tokens.refresh(tokens)
                continue
            if status == 429:
                self.rate_limited += 1
                if attempt < s.kommo_max_retries:
                    attempt += 1
                    await asyncio.sleep(_retry_after(response) or _backoff(attempt))
                    continue
                raise RateLimited("Kommo rate limit: too many requests")
            if (
                status >= 500
                and idempotent
                and attempt < s.kommo_max_retries
                and self.breaker.state == "closed"
            ):
                attempt += 1
                await asyncio.sleep(_backoff(attempt))
                continue
            if status in accept:
                return response
            return checked(response, path)

    async def get_json(
        self, path: str, params: Params | None = None, priority: Priority = Priority.BACKGROUND
    ) -> Any:
        """The decoded body, or None for Kommo's 204 (an empty list or an unknown id)."""
        response = await self.request("GET", path, params=params, priority=priority)
        return body_of(response)

    async def lead(self, lead_id: int) -> dict[str, Any]:
        return await self._lead_reads.submit(lead_id)

    async def contact(self, contact_id: int) -> dict[str, Any]:
        return await self._contact_reads.submit(contact_id)

    async def users(self) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self.get_json("/api/v4/users", {"page": page, "limit": PAGE_LIMIT})
            batch = (body or {}).get("_embedded", {}).get("users", [])
            users.extend(batch)
            if not body or not body.get("_links", {}).get("next") or not batch:
                return users
            page += 1

    async def chat_templates(self) -> tuple[list[dict[str, Any]], str]:
        """The integration's chat templates with their review status, every page, at the
        low priority class: (templates, "") or, when Kommo refuses the list (see
        TEMPLATES_REFUSED), ([], why)."""
        templates: list[dict[str, Any]] = []
        path = "/api/v4/chats/templates"
        for page in range(1, TEMPLATES_MAX_PAGES + 1):
            response = await self.request(
                "GET",
                path,
                params={"with": "reviews", "limit": TEMPLATES_PAGE_LIMIT, "page": page},
                accept=TEMPLATES_REFUSED,
            )
            if response.status_code in TEMPLATES_REFUSED:
                if page > 1:  # past the last page, not a refusal of the list
                    return templates, ""
                return [], f"Kommo answered {response.status_code}: {problem_detail(response)}"
            body = body_of(response)
            batch = (body or {}).get("_embedded", {}).get("chat_templates") or []
            templates.extend(t for t in batch if isinstance(t, dict))
            # 204 or an empty page: the end. Otherwise a next page when Kommo links one,
            # or when this one was full (a `_links.next` left out).
            if not batch or not (
                body.get("_links", {}).get("next") or len(batch) >= TEMPLATES_PAGE_LIMIT
            ):
                return templates, ""
        log.warning(
            "chat templates: stopped after %d pages (%d templates)",
            TEMPLATES_MAX_PAGES,
            len(templates),
        )
        return templates, ""

    async def account(self) -> dict[str, Any]:
        body = await self.get_json("/api/v4/account")
        if not body:
            raise UpstreamError("Kommo answered the account call without a body")
        return dict(body)

    async def update_fields(
        self, entity: str, entity_id: int, values: list[tuple[int, str]]
    ) -> None:
        """Write custom field values of a lead or contact (`entity`: leads or contacts)."""
        await self._field_writes[entity].submit((entity_id, values))

    async def add_task(
        self, lead_id: int, text: str, responsible_user_id: int, complete_till: int
    ) -> int:
        task: dict[str, Any] = {
            "text": text,
            "complete_till": complete_till,
            "entity_id": lead_id,
            "entity_type": "leads",
            "task_type_id": 1,
        }
        if responsible_user_id:
            task["responsible_user_id"] = responsible_user_id
        return await self._tasks.submit(task)

    async def register_webhook(self, destination: str, events: list[str]) -> None:
        await self.request(
            "POST", "/api/v4/webhooks", json={"destination": destination, "settings": events}
        )

    async def webhooks(self) -> list[dict[str, Any]]:
        body = await self.get_json("/api/v4/webhooks")
        return list((body or {}).get("_embedded", {}).get("webhooks", []))

    async def add_note(self, lead_id: int, text: str) -> int:
        return await self._notes.submit((lead_id, text))

    async def set_lead_field(self, lead_id: int, field_id: int, value: str) -> None:
        await self.update_fields("leads", lead_id, [(field_id, value)])

    async def run_salesbot(self, bot_id: int, lead_id: int) -> None:
        await self._bot_runs.submit((bot_id, lead_id))

    # The list calls behind the coalescers: one request, one outcome per item.

    async def _read(
        self, entity: str, ids: list[int], departure: Departure
    ) -> list[Outcome[dict[str, Any]]]:
        params: list[tuple[str, str | int]] = [("filter[id][]", i) for i in sorted(set(ids))]
        params.append(("limit", READ_BATCH))
        linked = _READ_WITH[entity]
        params.append(("with", linked))
        response = await self.request(
            "GET", f"/api/v4/{entity}", params=params, departure=departure
        )
        embedded = (body_of(response) or {}).get("_embedded", {}).get(entity, [])
        found = {
            int(e["id"]): with_linked(e, linked)
            for e in embedded
            if isinstance(e, dict) and "id" in e
        }
        # An unknown id is simply absent (204 when none is known): NOT_FOUND for its caller.
        return [
            dict(found[i]) if i in found else NotFound(f"{entity[:-1]} {i} not found in Kommo")
            for i in ids
        ]

    async def _read_leads(
        self, ids: list[int], departure: Departure
    ) -> list[Outcome[dict[str, Any]]]:
        return await self._read("leads", ids, departure)

    async def _read_contacts(
        self, ids: list[int], departure: Departure
    ) -> list[Outcome[dict[str, Any]]]:
        return await self._read("contacts", ids, departure)

    async def _patch(
        self, entity: str, batch: list[FieldWrite], departure: Departure
    ) -> list[Outcome[None]]:
        body = [
            {
                "id": entity_id,
                "custom_fields_values": [
                    {"field_id": field_id, "values": [{"value": value}]}
                    for field_id, value in values
                ],
            }
            for entity_id, values in batch
        ]
        path = f"/api/v4/{entity}"
        response = await self.request("PATCH", path, json=body, departure=departure, accept=(400,))
        refused = refusals(response, len(batch), path, [f"{entity[:-1]} {i}" for i, _ in batch])
        return refused or [None] * len(batch)

    async def _run_bots(
        self, batch: list[tuple[int, int]], departure: Departure
    ) -> list[Outcome[None]]:
        path = "/api/v4/bots/run"
        response = await self.request(
            "POST",
            path,
            json=[
                {"bot_id": bot_id, "entity_id": lead_id, "entity_type": "leads"}
                for bot_id, lead_id in batch
            ],
            departure=departure,
            idempotent=False,
            accept=(400,),
        )
        refused = refusals(response, len(batch), path, [f"lead {i}" for _, i in batch])
        # Kommo answers 202 with an HTML "Accepted": nothing per item to read.
        return refused or [None] * len(batch)

    async def _add_notes(
        self, batch: list[tuple[int, str]], departure: Departure
    ) -> list[Outcome[int]]:
        path = "/api/v4/leads/notes"
        response = await self.request(
            "POST",
            path,
            json=[
                {"entity_id": lead_id, "note_type": "common", "params": {"text": text}}
                for lead_id, text in batch
            ],
            departure=departure,
            idempotent=False,
            accept=(400,),
        )
        refused = refusals(
            response, len(batch), path, [f"lead {i}" for i, _ in batch], "no note written"
        )
        return refused or new_ids(response, "notes", len(batch))

    async def _add_tasks(
        self, batch: list[dict[str, Any]], departure: Departure
    ) -> list[Outcome[int]]:
        path = "/api/v4/tasks"
        response = await self.request(
            "POST", path, json=batch, departure=departure, idempotent=False, accept=(400,)
        )
        refused = refusals(
            response, len(batch), path, [f"lead {t['entity_id']}" for t in batch], "no task added"
        )
        return refused or new_ids(response, "tasks", len(batch))


def _backoff(attempt: int) -> float:
    base = min(_BACKOFF_MAX_SECONDS, _BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return float(base * random.uniform(0.5, 1.0))  # noqa: S311  # jitter, not crypto


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(float(value), _BACKOFF_MAX_SECONDS * 4)
    except ValueError:
        return 0.0
