"""A local Supabase REST (PostgREST) double for `make n8n-check`: the `agenda` table of
examples/n8n/README.md, behind the same URL, headers and answers as Supabase's
`/rest/v1/<table>`.

- `POST /rest/v1/agenda` (a row or a list of rows) stores them and answers 201 with the
  rows as stored (`Prefer: return=representation`, as n8n's Supabase node asks); an
  `event_id` stored before answers 409 with PostgREST's unique-violation body (code 23505),
  like the real table's UNIQUE constraint.
- `apikey` and `Authorization: Bearer` must carry the service-role key, else 401.
- `/_double/…` (not Supabase): the rows, and faults for the next inserts.

    python -m devstack.n8n_check.supabase_double   # SUPABASE_DOUBLE_PORT, SUPABASE_DOUBLE_KEY
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

TABLE = "agenda"


@dataclass
class Table:
    service_key: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    # Faults for the next inserts: answer 500, or 409 as if the row were there already.
    fail_next: int = 0
    conflict_next: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_next: int = Field(default=0, ge=0)
    conflict_next: int = Field(default=0, ge=0)


def _conflict(event_id: Any) -> JSONResponse:
    return JSONResponse(
        {
            "code": "23505",
            "details": f"Key (event_id)=({event_id}) already exists.",
            "hint": None,
            "message": 'duplicate key value violates unique constraint "agenda_event_id_key"',
        },
        status_code=409,
    )


def create_app(table: Table) -> FastAPI:
    app = FastAPI(title="Supabase REST double (make n8n-check)")

    def authorised(request: Request) -> bool:
        return (
            request.headers.get("apikey") == table.service_key
            and request.headers.get("authorization") == f"Bearer {table.service_key}"
        )

    @app.get("/rest/v1/")
    async def schema(request: Request) -> JSONResponse:
        # What n8n's credential test reads.
        if not authorised(request):
            return JSONResponse({"message": "Invalid API key"}, status_code=401)
        return JSONResponse({"swagger": "2.0", "paths": {f"/{TABLE}": {}}, "definitions": {}})

    @app.post(f"/rest/v1/{TABLE}")
    async def insert(request: Request) -> JSONResponse:
        if not authorised(request):
            return JSONResponse({"message": "Invalid API key"}, status_code=401)
        body = await request.json()
        records = body if isinstance(body, list) else [body]
        if table.fail_next:
            table.fail_next -= 1
            table.refused.extend(records)
            return JSONResponse(
                {"code": "XX000", "details": None, "hint": None, "message": "internal error"},
                status_code=500,
            )
        known = {row.get("event_id") for row in table.rows}
        for record in records:
            if table.conflict_next or record.get("event_id") in known:
                table.conflict_next = max(0, table.conflict_next - 1)
                table.refused.append(record)
                return _conflict(record.get("event_id"))
        stored = []
        for record in records:
            row = {
                "id": len(table.rows) + 1,
                **record,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            }
            table.rows.append(row)
            stored.append(row)
        return JSONResponse(stored, status_code=201)

    @app.get("/_double/rows")
    async def rows() -> dict[str, Any]:
        return {"rows": table.rows, "refused": table.refused}

    @app.post("/_double/faults")
    async def faults(body: Faults) -> dict[str, int]:
        table.fail_next = body.fail_next
        table.conflict_next = body.conflict_next
        return {"fail_next": table.fail_next, "conflict_next": table.conflict_next}

    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    table = Table(service_key=os.environ["SUPABASE_DOUBLE_KEY"])
    log.info("Supabase double starting")
    uvicorn.run(
        create_app(table),
        host="127.0.0.1",
        port=int(os.environ["SUPABASE_DOUBLE_PORT"]),
        log_level="warning",
    )


if __name__ == "__main__":
    main()
