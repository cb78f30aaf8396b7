"""``python -m sandbox.kommo``: the Kommo sandbox as a process (one uvicorn worker)."""

import logging
import os

import uvicorn

from sandbox.kommo.app import create_app
from sandbox.kommo.config import ConfigError, config_from_env

logger = logging.getLogger("sandbox.kommo")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every webhook POST at INFO; the sandbox logs the failures itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = config_from_env(os.environ)
    except ConfigError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from exc
    app = create_app(config)
    logger.info(
        "Kommo sandbox (account %d, %s.kommo.com) on http://%s:%d — %d req/s, webhooks to %s",
        config.account_id,
        config.subdomain,
        config.host,
        config.port,
        config.rate_limit_rps,
        config.bridge_webhook_url or "nowhere (recorded only)",
    )
    # One worker: the account lives in this process's memory.
    uvicorn.run(
        app, host=config.host, port=config.port, workers=1, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
