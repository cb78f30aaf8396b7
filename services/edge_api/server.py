"""Running the edge: uvicorn, one worker, uvloop and httptools."""

from __future__ import annotations

import gc
import logging

import uvicorn

from services.common.logs import configure_logging
from services.common.settings import load_settings
from services.edge_api.app import create_app
from services.edge_api.settings import EdgeSettings

log = logging.getLogger(__name__)


def main() -> None:
    settings = load_settings(EdgeSettings)
    configure_logging("edge_api", settings.log_level, settings.secrets())
    app = create_app(settings)
    # Start-up objects live as long as the process: keep the collector's pauses off them.
    gc.freeze()
    log.info("edge listening", extra={"port": settings.edge_port})
    uvicorn.run(
        app,
        host=settings.edge_host,
        port=settings.edge_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        server_header=False,
    )
