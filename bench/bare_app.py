"""The baseline bench/README.md names: a bare FastAPI endpoint that reads the webhook body and
parses it with `urllib.parse.parse_qsl`, on the edge's server stack (uvicorn, one
worker, uvloop, httptools, no access log). It stores nothing: it is what "just parse
and answer" costs, the figure the bridge's durable ack is compared with.

    python -m bench.bare_app --port 8100
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI(title="bare baseline", openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/webhooks/kommo")
async def kommo_webhook(request: Request) -> dict[str, Any]:
    body = await request.body()
    fields = parse_qsl(body.decode(), keep_blank_values=True)
    return {"status": "accepted", "fields": len(fields)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
