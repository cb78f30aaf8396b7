"""`python -m sandbox.n8n_standin` — STANDIN_PORT, STANDIN_HOST, STANDIN_API_KEY."""

from __future__ import annotations

import logging
import os

import uvicorn

from sandbox.n8n_standin.app import StandinConfig, create_app


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    config = StandinConfig(
        api_key=os.environ.get("STANDIN_API_KEY", ""),
        reply_delay=float(os.environ.get("STANDIN_REPLY_DELAY", "0")),
    )
    logging.getLogger(__name__).info("n8n stand-in starting")
    uvicorn.run(
        create_app(config),
        host=os.environ.get("STANDIN_HOST", "127.0.0.1"),
        port=int(os.environ.get("STANDIN_PORT", "8200")),
        log_level="warning",
    )


main()
