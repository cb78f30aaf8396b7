"""`python -m sandbox.n8n_standin` — STANDIN_PORT, STANDIN_HOST, STANDIN_API_KEY,
STANDIN_REPLY_DELAY (seconds before the reply to the bridge), STANDIN_DELAY_SECONDS
(seconds before each envelope is answered: a slow n8n; 0 = at once)."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from sandbox.n8n_standin.app import StandinConfig, create_app


def seconds(variable: str) -> float:
    """A non-negative number of seconds from the environment (unset = 0); a bad value
    stops the start with one line naming the variable."""
    raw = os.environ.get(variable, "0") or "0"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses NaN
        sys.exit(f"n8n stand-in: {variable} must be a number of seconds ≥ 0, got {raw!r}")
    return value


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    config = StandinConfig(
        api_key=os.environ.get("STANDIN_API_KEY", ""),
        reply_delay=seconds("STANDIN_REPLY_DELAY"),
        delay_seconds=seconds("STANDIN_DELAY_SECONDS"),
    )
    logging.getLogger(__name__).info("n8n stand-in starting")
    uvicorn.run(
        create_app(config),
        host=os.environ.get("STANDIN_HOST", "127.0.0.1"),
        port=int(os.environ.get("STANDIN_PORT", "8200")),
        log_level="warning",
    )


main()
