"""`make run`: the whole bridge on this machine, until Ctrl-C.

Reads the environment (and `.env`). With no Kommo credentials it starts the Kommo
sandbox and the n8n stand-in and says so loudly; `SCALE_<SERVICE>` sets replicas.

What a run creates is kept for the next one in the state folder (`.run/`, see
devstack/state.py): the Redis data, the generated API key, webhook secret and Redis
password, the ports.
`--clean` (`make run-clean`) forgets it first. Every process is supervised: one that dies
is restarted on its port (devstack/supervisor.py).

    python -m devstack [--clean] [--state-dir DIR] [--env-file FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from devstack.processes import GRPC_SERVICES, ROOT, PortInUse, StartupError
from devstack.redis_server import RedisStartError
from devstack.stack import EDGE, REDIS, SANDBOX, STANDIN, Stack, StackConfig, start_stack
from devstack.state import SANDBOX_ACCOUNT, RunState, StateDir, StateError
from devstack.supervisor import GaveUp, RestartPolicy, Supervisor, stack_units

log = logging.getLogger("devstack")

# A Kommo account in .env means the real Kommo, also before it is authorised in the
# browser (README's guide starts the bridge first and authorises it afterwards).
_CREDENTIALS = (
    "KOMMO_SUBDOMAIN",
    "KOMMO_BASE_URL",
    "KOMMO_CLIENT_ID",
    "KOMMO_AUTH_CODE",
    "KOMMO_REFRESH_TOKEN",
    "KOMMO_LONG_LIVED_TOKEN",
)
_PASSED_PREFIXES = ("KOMMO_", "N8N_", "EDGE_", "BOT_", "MESSAGE_", "REDIS_", "PROACTIVE_")
# The variable that moves each port a user reaches; the services' own ports are internal.
PORT_VARIABLES = {
    EDGE: "EDGE_PORT",
    REDIS: "REDIS_PORT",
    SANDBOX: "SANDBOX_PORT",
    STANDIN: "STANDIN_PORT",
}
DEFAULT_EDGE_PORT = 8000
DEFAULT_DEBOUNCE_SECONDS = "3"
# How often the supervisor looks at the processes.
SUPERVISE_EVERY_SECONDS = 0.2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class ConfigurationError(RuntimeError):
    """A runner setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    env: dict[str, str]  # what the services get: `.env` overridden by the environment
    state_dir: Path
    use_sandbox: bool
    scale: dict[str, int]
    ports: dict[str, int]  # ports set by PORT_VARIABLES


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clean",
        action="store_true",
        help="forget the last runs first: Redis data, API key, webhook secret, ports",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where state is kept between runs (default: RUN_STATE_DIR, else .run/)",
    )
    parser.add_argument(
        "--env-file", type=Path, default=ROOT / ".env", help="settings file (default: .env)"
    )
    return parser.parse_args(argv)


def _whole_number(variable: str, raw: str, low: int, high: int, what: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigurationError(f"{variable} must be {what}, got {raw!r}")
    return value


def load_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    file_values = {k: v for k, v in dotenv_values(args.env_file).items() if v is not None}
    env = {**file_values, **{k: v for k, v in environ.items() if k in file_values}}
    env.update({k: v for k, v in environ.items() if k.startswith(_PASSED_PREFIXES)})
    ports = {}
    for role, variable in PORT_VARIABLES.items():
        raw = environ.get(variable) or file_values.get(variable)
        if raw:
            ports[role] = _whole_number(variable, raw, 1, 65535, "a TCP port (1-65535)")
    scale = {}
    for name in GRPC_SERVICES:
        variable = f"SCALE_{name.upper()}"
        raw = environ.get(variable) or file_values.get(variable) or "1"
        scale[name] = _whole_number(variable, raw, 1, 64, "a number of replicas (1-64)")
    state_dir = args.state_dir or Path(environ.get("RUN_STATE_DIR") or ROOT / ".run")
    return Settings(
        env=env,
        state_dir=state_dir.resolve(),
        use_sandbox=not any(env.get(k) for k in _CREDENTIALS),
        scale=scale,
        ports=ports,
    )


def kommo_account(settings: Settings) -> str:
    """Which Kommo account the bridge's tokens (in Redis) belong to."""
    if settings.use_sandbox:
        return SANDBOX_ACCOUNT
    env = settings.env
    if env.get("KOMMO_BASE_URL"):
        return env["KOMMO_BASE_URL"].rstrip("/")
    return f"https://{env.get('KOMMO_SUBDOMAIN', '')}.kommo.com"


def _forget_sandbox_tokens(settings: Settings, state_dir: StateDir, previous: RunState) -> bool:
    """Whether the tokens in our Redis data must go. Refuses to mix two real accounts:
    Kommo's refresh tokens are single use, so another account's pair is lost for good if
    the bridge overwrites it."""
    if settings.env.get("REDIS_URL") or not previous.kommo_account:
        return False
    if previous.kommo_account == SANDBOX_ACCOUNT:
        return True  # the sandbox that issued them is gone (it keeps its account in memory)
    account = kommo_account(settings)
    if previous.kommo_account != account:
        now = "the Kommo sandbox" if settings.use_sandbox else account
        raise StateError(
            f"the Redis data in {state_dir.redis_data} holds the OAuth tokens of "
            f"{previous.kommo_account}, not of {now}: run with that account again, set "
            "RUN_STATE_DIR to another folder, or discard them with `make run-clean`"
        )
    return False


def stack_config(settings: Settings, state_dir: StateDir, previous: RunState) -> StackConfig:
    ports = {**previous.ports, **settings.ports}
    ports.setdefault(EDGE, DEFAULT_EDGE_PORT)
    return StackConfig(
        log_dir=state_dir.new_log_dir(),
        env=settings.env,
        scale=settings.scale,
        use_sandbox=settings.use_sandbox,
        ports=ports,
        # A port a user reaches stays put: taken, it is an error naming its variable.
        fixed_ports=dict(PORT_VARIABLES),
        redis_data_dir=state_dir.redis_data,
        api_key=previous.api_key or secrets.token_urlsafe(24),
        n8n_api_key=previous.n8n_api_key or secrets.token_urlsafe(24),
        webhook_secret=previous.webhook_secret or secrets.token_urlsafe(24),
        redis_password=previous.redis_password or secrets.token_urlsafe(24),
        forget_sandbox_tokens=_forget_sandbox_tokens(settings, state_dir, previous),
    )


def banner(stack: Stack, settings: Settings, state_dir: StateDir) -> str:
    env = settings.env
    public_url = (env.get("EDGE_PUBLIC_URL") or stack.edge_url).rstrip("/")
    debounce = env.get("MESSAGE_DEBOUNCE_SECONDS") or DEFAULT_DEBOUNCE_SECONDS
    lines = [
        "",
        "=" * 72,
        " Kommo ⇄ n8n bridge is running",
        f"   edge        {stack.edge_url}   (docs: {stack.edge_url}/docs)",
        f"   dashboard   {stack.edge_url}/dashboard#key=<X-API-Key>",
        f"   X-API-Key   {'(from EDGE_API_KEY)' if env.get('EDGE_API_KEY') else stack.api_key}",
        "   n8n's key   "
        + ("(from EDGE_N8N_API_KEY)" if env.get("EDGE_N8N_API_KEY") else stack.n8n_api_key)
        + "   (only /send-response and the scheduling status)",
        f"   Kommo webhook  {public_url}/webhooks/kommo?secret={stack.webhook_secret}",
        f"   replies     {debounce} s after the customer's last message "
        "(MESSAGE_DEBOUNCE_SECONDS), plus n8n's time",
        f"   redis       {stack.redis_url}",
        "   replicas    " + ", ".join(f"{n}={len(stack.services[n])}" for n in GRPC_SERVICES),
        f"   logs        {stack.config.log_dir}",
        f"   state       {state_dir.path}  (Redis data, key, secret and ports are kept",
        "               for the next run; `make run-clean` starts afresh)",
    ]
    if stack.standin is None:
        lines.insert(
            -2, f"   n8n         {env.get('N8N_WEBHOOK_URL') or '(N8N_WEBHOOK_URL unset)'}"
        )
    if settings.use_sandbox:
        pretend = "the KOMMO SANDBOX" + (" and the n8n STAND-IN" if stack.standin else "")
        lines += [
            "",
            f" !!! NO KOMMO CREDENTIALS CONFIGURED: using {pretend} !!!",
            f"   Kommo sandbox  {stack.sandbox_url}   (fake account 'previdas', leads 9100001…;",
            "                  it lives in memory: a new account at each start)",
            *([f"   n8n stand-in   {stack.standin_url}"] if stack.standin else []),
            "   Make a customer write:",
            f"     curl -X POST {stack.sandbox_url}/_sandbox/customer-message \\",
            '       -H \'content-type: application/json\' -d \'{"lead_id": 9100001, "text": "Oi!"}\'',
            f"   and read the chat:  curl {stack.sandbox_url}/_sandbox/chats/9100001",
        ]
    lines += ["", " Ctrl-C stops everything.", "=" * 72]
    return "\n".join(lines)


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt


def run(settings: Settings, state_dir: StateDir, clean: bool) -> int:
    if clean:
        removed = state_dir.wipe()
        log.info(
            "clean start: %s",
            ", ".join(map(str, removed)) + " removed"
            if removed
            else "nothing kept from earlier runs",
        )
    previous = state_dir.load()
    config = stack_config(settings, state_dir, previous)
    # Until the stack is up, Ctrl-C and SIGTERM interrupt the start (start_stack stops
    # whatever it had started).
    signal.signal(signal.SIGTERM, _interrupt)
    stack = start_stack(config)
    try:
        state_dir.save(
            RunState(
                api_key=config.api_key,
                n8n_api_key=config.n8n_api_key,
                webhook_secret=config.webhook_secret,
                redis_password=config.redis_password,
                ports={**previous.ports, **stack.ports},
                kommo_account=kommo_account(settings),
            )
        )
        for notice in stack.notices:
            log.warning("%s", notice)
        log.info("%s", banner(stack, settings, state_dir))
        return _supervise(stack)
    finally:
        log.info("stopping…")
        stack.stop()
        log.info("stopped")


def _supervise(stack: Stack) -> int:
    stopping = False

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    # Ctrl-C reaches only this process (the others run in process groups of their own):
    # it stops them in dependency order. A closed terminal (SIGHUP) stops them the same.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    supervisor = Supervisor(stack_units(stack), RestartPolicy())
    while not stopping:
        try:
            supervisor.tick()
        except GaveUp as exc:
            log.error("%s", exc)
            return EXIT_FAILED
        time.sleep(SUPERVISE_EVERY_SECONDS)
    return 0


class _Formatter(logging.Formatter):
    """Plain lines; warnings and errors say so first, so they stand out."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname}: {text}" if record.levelno >= logging.WARNING else text


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = _arguments(argv)
    try:
        settings = load_settings(args, os.environ)
        state_dir = StateDir(settings.state_dir)
        with state_dir.locked():
            return run(settings, state_dir, args.clean)
    except StartupError as exc:
        log.error("%s", exc.summary())
    except (ConfigurationError, PortInUse, RedisStartError, StateError) as exc:
        log.error("%s", exc)
    except OSError as exc:  # a folder or file of the runner that cannot be used
        log.error("%s", exc)
    except KeyboardInterrupt:
        log.info("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
