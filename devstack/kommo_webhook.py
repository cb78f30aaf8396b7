"""`make kommo-webhook`: subscribe the bridge's webhook URL in the connected Kommo account.

Uses the running edge (`EDGE_URL`, default `EDGE_PUBLIC_URL`, then http://127.0.0.1:8000)
and its API key (`EDGE_API_KEY`), from the environment or `.env`.
"""

from __future__ import annotations

import json
import os
import sys

import httpx
from dotenv import dotenv_values

from devstack.processes import ROOT


def main() -> None:
    values = {**dotenv_values(ROOT / ".env"), **os.environ}
    edge = values.get("EDGE_URL") or values.get("EDGE_PUBLIC_URL") or "http://127.0.0.1:8000"
    key = values.get("EDGE_API_KEY")
    if not key:
        sys.exit("EDGE_API_KEY is not set (environment or .env)")
    try:
        answer = httpx.post(
            f"{edge.rstrip('/')}/webhooks/register", headers={"X-API-Key": key}, timeout=30
        )
    except httpx.HTTPError as exc:
        sys.exit(f"cannot reach the bridge at {edge}: {exc}")
    if answer.status_code != 200:
        sys.exit(f"registration failed ({answer.status_code}): {answer.text}")
    sys.stdout.write(json.dumps(answer.json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
