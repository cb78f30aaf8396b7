"""Running the edge: uvicorn, one worker, uvloop and httptools, with bounds on what a
client may hold: how long a request may take to arrive, how large its headers may be
(http_protocol.py), how long an idle connection stays open, how many at once."""

from __future__ import annotations

import gc
import logging

import uvicorn

from services.common.logs import configure_logging
from services.common.settings import load_settings
from services.edge_api.app import create_app
from services.edge_api.http_protocol import bounded_protocol
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
        http=bounded_protocol(
            settings.edge_request_read_timeout_seconds, settings.edge_max_header_bytes
        ),
        timeout_keep_alive=settings.edge_keep_alive_seconds,
        limit_concurrency=settings.edge_max_concurrency or None,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        server_header=False,
    )
