"""`make run`: the whole bridge on this machine, until Ctrl-C.

Reads the environment (and `.env`). With no Kommo credentials it starts the Kommo
sandbox and the n8n stand-in and says so loudly; `SCALE_<SERVICE>` sets replicas.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from dotenv import dotenv_values

from devstack.processes import GRPC_SERVICES, ROOT
from devstack.stack import StackConfig, start_stack

log = logging.getLogger("devstack")

_CREDENTIALS = ("KOMMO_AUTH_CODE", "KOMMO_REFRESH_TOKEN", "KOMMO_LONG_LIVED_TOKEN")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env_file = ROOT / ".env"
    file_values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    env = {**file_values, **{k: v for k, v in os.environ.items() if k in file_values}}
    for key, value in os.environ.items():
        if key.startswith(("KOMMO_", "N8N_", "EDGE_", "BOT_", "MESSAGE_", "REDIS_", "PROACTIVE_")):
            env[key] = value
    use_sandbox = not any(env.get(k) for k in _CREDENTIALS)
    scale = {name: int(os.environ.get(f"SCALE_{name.upper()}", "1")) for name in GRPC_SERVICES}
    run_dir = ROOT / ".run" / time.strftime("%Y%m%d-%H%M%S")
    config = StackConfig(
        log_dir=run_dir,
        env=env,
        scale=scale,
        edge_port=int(env.get("EDGE_PORT") or 8000),
        use_sandbox=use_sandbox,
    )
    stack = start_stack(config)
    banner = [
        "",
        "=" * 72,
        " Kommo ⇄ n8n bridge is running",
        f"   edge        {stack.edge_url}   (docs: {stack.edge_url}/docs)",
        f"   dashboard   {stack.edge_url}/dashboard#key=<X-API-Key>",
        f"   X-API-Key   {'(from EDGE_API_KEY)' if env.get('EDGE_API_KEY') else stack.api_key}",
        f"   redis       {stack.redis_url}",
        "   replicas    " + ", ".join(f"{n}={len(stack.services[n])}" for n in GRPC_SERVICES),
        f"   logs        {run_dir}",
    ]
    if use_sandbox:
        banner += [
            "",
            " !!! NO KOMMO CREDENTIALS CONFIGURED: using the KOMMO SANDBOX and the n8n STAND-IN !!!",
            f"   Kommo sandbox  {stack.sandbox_url}   (fake account 'previdas', leads 9100001…)",
            f"   n8n stand-in   {stack.standin_url}",
            "   Make a customer write:",
            f"     curl -X POST {stack.sandbox_url}/_sandbox/customer-message \\",
            '       -H \'content-type: application/json\' -d \'{"lead_id": 9100001, "text": "Oi!"}\'',
            f"   and read the chat:  curl {stack.sandbox_url}/_sandbox/chats/9100001",
        ]
    banner += ["", " Ctrl-C stops everything.", "=" * 72]
    log.info("\n".join(banner))

    stopping = False

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for process in stack.launcher.processes:
                if not process.alive():
                    log.error(
                        "%s exited (%s); see %s",
                        process.name,
                        process.popen.returncode,
                        process.log_path,
                    )
                    stopping = True
            time.sleep(0.5)
    finally:
        log.info("stopping…")
        stack.stop()
        log.info("stopped")


if __name__ == "__main__":
    main()
