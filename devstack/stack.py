"""The whole bridge on one machine: Redis (unless REDIS_URL), the Kommo sandbox and the
n8n stand-in (unless real Kommo credentials are configured), and the five services with
their replica counts."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from devstack.processes import (
    GRPC_SERVICES,
    Launcher,
    PortInUse,
    Process,
    free_port,
    reserve_port,
)
from devstack.redis_server import RedisServer
from sandbox.kommo.config import (
    SCHEDULE_FIELD_ID,
    SELLER_NAME_FIELD_ID,
    TEMPLATE_FORM_WELCOME_BOT,
    TEMPLATE_FORM_WELCOME_ID,
    TEMPLATE_REOPEN_BOT,
    TEMPLATE_REOPEN_ID,
    TEMPLATE_SCHEDULING_BOT,
    TEMPLATE_SCHEDULING_ID,
)
from services.kommo_gateway.store import REFRESH_LOCK, REFRESH_REFUSED_SINCE, TOKEN_PROBLEM, TOKENS

SANDBOX_SALESBOT_ID = "7001"
SANDBOX_REPLY_FIELD_ID = "900001"
SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_CLIENT_SECRET = "sandbox-secret"  # noqa: S105  # the sandbox's own demo credential
SANDBOX_REFRESH_TOKEN = "sandbox-refresh-0"  # noqa: S105
# The bot rules' WhatsApp templates for the sandbox's seeded, approved ones
# (sandbox/kommo/config.py): the Salesbot holding each, and the lead fields feeding its
# markers. What `make n8n-check` and the window's tests configure.
SANDBOX_TEMPLATE_RULES: dict[str, Any] = {
    "templates": {
        "reopen": {"salesbot_id": TEMPLATE_REOPEN_BOT, "template_id": TEMPLATE_REOPEN_ID},
        "proactive": {
            "salesbot_id": TEMPLATE_FORM_WELCOME_BOT,
            "template_id": TEMPLATE_FORM_WELCOME_ID,
            "fields": {str(SELLER_NAME_FIELD_ID): "vendedor"},
        },
        "scheduling_confirmation": {
            "salesbot_id": TEMPLATE_SCHEDULING_BOT,
            "template_id": TEMPLATE_SCHEDULING_ID,
            "fields": {str(SCHEDULE_FIELD_ID): "horario"},
        },
    }
}

# The ports of a stack by role: `edge`, `redis`, `sandbox`, `n8n-standin`, and per replica
# `<service>-<n>` (gRPC) and `<service>-<n>-metrics`.
EDGE, REDIS, SANDBOX, STANDIN = "edge", "redis", "sandbox", "n8n-standin"
PORT_ROLES = {
    EDGE: "the edge API",
    REDIS: "Redis",
    SANDBOX: "the Kommo sandbox",
    STANDIN: "the n8n stand-in",
}
# The gateway's token keys: the Kommo sandbox keeps its account in memory, so the tokens
# it issued die with it and a new sandbox refuses them.
_SANDBOX_TOKEN_KEYS = (TOKENS, TOKEN_PROBLEM, REFRESH_REFUSED_SINCE, REFRESH_LOCK)

log = logging.getLogger("devstack")


@dataclass
class StackConfig:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # what the user configured
    scale: dict[str, int] = field(default_factory=dict)
    edge_port: int = 0
    use_sandbox: bool = True
    sandbox_env: dict[str, str] = field(default_factory=dict)
    standin_env: dict[str, str] = field(default_factory=dict)
    # Ports wanted by role (see PORT_ROLES); the others are chosen free. A role listed in
    # `fixed_ports` must get exactly its port, or the start fails naming that variable;
    # any other wanted port that is taken is replaced by a free one (see Stack.notices).
    ports: dict[str, int] = field(default_factory=dict)
    fixed_ports: dict[str, str] = field(default_factory=dict)
    # The Redis the stack starts (when REDIS_URL is unset) keeps its AOF here; None = a
    # folder inside log_dir, i.e. a Redis of this stack only.
    redis_data_dir: Path | None = None
    # Used when the environment sets no EDGE_API_KEY / KOMMO_WEBHOOK_SECRET; "" = new ones.
    api_key: str = ""
    n8n_api_key: str = ""
    webhook_secret: str = ""
    # The password of the Redis the stack starts (every service's REDIS_URL carries it);
    # "" = a new one. Unused when REDIS_URL is set.
    redis_password: str = ""
    # Drop the Kommo tokens stored in the stack's own Redis before the gateway starts: set
    # when they were issued by a Kommo sandbox that is gone.
    forget_sandbox_tokens: bool = False


@dataclass
class Stack:
    config: StackConfig
    launcher: Launcher
    redis: RedisServer | None = None
    redis_url: str = ""
    services: dict[str, list[Process]] = field(default_factory=dict)
    sandbox: Process | None = None
    standin: Process | None = None
    edge_url: str = ""
    api_key: str = ""
    # n8n's key (EDGE_N8N_API_KEY): the stand-in answers with it; only /send-response and
    # the scheduling status take it.
    n8n_api_key: str = ""
    webhook_secret: str = ""
    ports: dict[str, int] = field(default_factory=dict)  # every port in use, by role
    notices: list[str] = field(default_factory=list)  # wanted ports that were replaced

    @property
    def sandbox_url(self) -> str:
        assert self.sandbox is not None
        return f"http://{self.sandbox.address}"

    @property
    def standin_url(self) -> str:
        assert self.standin is not None
        return f"http://{self.standin.address}"

    @property
    def webhook_url(self) -> str:
        return f"{self.edge_url}/webhooks/kommo?secret={self.webhook_secret}"

    def service_env(self) -> dict[str, str]:
        return {
            f"{name.upper()}_ADDR": ",".join(p.address for p in self.services[name])
            for name in GRPC_SERVICES
            if name in self.services
        }

    def start_service(
        self, name: str, env: dict[str, str] | None = None, port: int = 0, metrics_port: int = 0
    ) -> Process:
        """One more replica of a gRPC service, on new ports or given ones."""
        port = port or free_port()
        metrics_port = metrics_port or free_port()
        replicas = self.services.setdefault(name, [])
        process = self.launcher.start(
            f"{name}-{len(replicas) + 1}",
            f"services.{name}",
            {
                "GRPC_PORT": str(port),
                "GRPC_HOST": "127.0.0.1",
                "METRICS_PORT": str(metrics_port),
                **(env or {}),
            },
            port,
            "grpc",
        )
        process.metrics_port = metrics_port
        replicas.append(process)
        return process

    def restart_service(self, process: Process) -> Process:
        """Start a stopped or killed replica again on its port, as an orchestrator would:
        its clients reconnect to the same address."""
        name = next(n for n, ps in self.services.items() if process in ps)
        if process.alive():
            raise RuntimeError(f"{process.name} is still running")
        self.services[name].remove(process)
        self.launcher.processes.remove(process)
        fresh = self.start_service(name, port=process.port)
        self.launcher.wait_ready(fresh)
        return fresh

    def start_edge(self, port: int) -> Process:
        edge = self.launcher.start(
            "edge_api",
            "services.edge_api",
            {"EDGE_PORT": str(port), "EDGE_HOST": "127.0.0.1", **self.service_env()},
            port,
            "http",
            ready_path="/version",
        )
        self.services["edge_api"] = [edge]
        self.launcher.wait_ready(edge)
        return edge

    def relaunch(self, process: Process) -> Process:
        """Start an exited process of the stack again on its ports (no waiting: see
        `Launcher.ready`), as an orchestrator restarts a crashed container."""
        fresh = self.launcher.relaunch(process)
        for replicas in self.services.values():
            if process in replicas:
                replicas[replicas.index(process)] = fresh
        if process is self.sandbox:
            self.sandbox = fresh
        if process is self.standin:
            self.standin = fresh
        return fresh

    def claim_port(self, role: str) -> int:
        """The port for `role`: the wanted one when it is free, else a free one."""
        wanted = self.config.ports.get(role, 0)
        if wanted:
            if wanted not in self.ports.values() and reserve_port(wanted):
                self.ports[role] = wanted
                return wanted
            variable = self.config.fixed_ports.get(role)
            if variable:
                raise PortInUse(wanted, PORT_ROLES.get(role, role), variable)
        port = free_port()
        if wanted:
            self.notices.append(f"{role}: port {wanted} is taken now; using {port} instead")
        self.ports[role] = port
        return port

    def restart_edge(self) -> Process:
        """Start the stopped or killed edge again on its port."""
        (old,) = self.services["edge_api"]
        if old.alive():
            raise RuntimeError("the edge is still running")
        self.launcher.processes.remove(old)
        return self.start_edge(old.port)

    def stop(self) -> None:
        """In dependency order: the edge, then the services (together: they call each
        other both ways), then the sandbox and the stand-in, then Redis."""
        grpc_services = [p for name in GRPC_SERVICES for p in self.services.get(name, [])]
        self.launcher.stop_all([self.services.get("edge_api", []), grpc_services])
        if self.redis is not None:
            self.redis.stop()
            log.info("stopped redis")


def start_stack(config: StackConfig) -> Stack:
    # Copies: claiming ports fills these in, and the caller's config stays as it was.
    config = dataclasses.replace(
        config, ports=dict(config.ports), fixed_ports=dict(config.fixed_ports)
    )
    env = dict(config.env)
    launcher = Launcher(config.log_dir, {})
    stack = Stack(config, launcher)
    try:
        _start(stack, env)
    except BaseException:
        stack.stop()
        raise
    return stack


def _claim_ports(stack: Stack, env: dict[str, str]) -> dict[str, list[tuple[int, int]]]:
    """Every port of the stack, before anything starts: a clash is reported before a
    single process runs. Returns each service's (gRPC, metrics) ports per replica."""
    config = stack.config
    if config.edge_port:
        config.ports.setdefault(EDGE, config.edge_port)
        config.fixed_ports.setdefault(EDGE, "EDGE_PORT")
    elif env.get("EDGE_PORT") and EDGE not in config.ports:
        config.ports[EDGE] = int(env["EDGE_PORT"])
        config.fixed_ports.setdefault(EDGE, "EDGE_PORT")
    stack.claim_port(EDGE)
    if not env.get("REDIS_URL"):
        stack.claim_port(REDIS)
    if config.use_sandbox:
        stack.claim_port(SANDBOX)
    if wants_standin(config, env):
        stack.claim_port(STANDIN)
    return {
        name: [
            (stack.claim_port(f"{name}-{n}"), stack.claim_port(f"{name}-{n}-metrics"))
            for n in range(1, max(1, config.scale.get(name, 1)) + 1)
        ]
        for name in GRPC_SERVICES
    }


def wants_standin(config: StackConfig, env: dict[str, str]) -> bool:
    """The n8n stand-in runs beside the sandbox, unless a real n8n is configured: then
    every envelope goes there and nothing pretends to be n8n."""
    return config.use_sandbox and not env.get("N8N_WEBHOOK_URL")


def _start_redis(stack: Stack) -> None:
    config = stack.config
    stack.redis = RedisServer(
        stack.ports[REDIS],
        config.redis_data_dir or config.log_dir / "redis-data",
        log_path=config.log_dir / "redis.log",
        password=config.redis_password or secrets.token_urlsafe(24),
    )
    stack.redis.start()
    stack.redis_url = stack.redis.url
    if config.forget_sandbox_tokens:
        client = redis.Redis.from_url(stack.redis_url)
        try:
            client.delete(*_SANDBOX_TOKEN_KEYS)
        finally:
            client.close()


def _start(stack: Stack, env: dict[str, str]) -> None:
    config = stack.config
    service_ports = _claim_ports(stack, env)
    if env.get("REDIS_URL"):
        stack.redis_url = env["REDIS_URL"]
    else:
        _start_redis(stack)
    stack.api_key = env.get("EDGE_API_KEY") or config.api_key or secrets.token_urlsafe(24)
    stack.n8n_api_key = (
        env.get("EDGE_N8N_API_KEY") or config.n8n_api_key or secrets.token_urlsafe(24)
    )
    stack.webhook_secret = (
        env.get("KOMMO_WEBHOOK_SECRET") or config.webhook_secret or secrets.token_urlsafe(24)
    )
    edge_port = stack.ports[EDGE]
    stack.edge_url = f"http://127.0.0.1:{edge_port}"
    public_url = env.get("EDGE_PUBLIC_URL") or stack.edge_url
    common = {
        **env,
        "REDIS_URL": stack.redis_url,
        "EDGE_API_KEY": stack.api_key,
        "EDGE_N8N_API_KEY": stack.n8n_api_key,
        "KOMMO_WEBHOOK_SECRET": stack.webhook_secret,
        "EDGE_PUBLIC_URL": public_url,
    }
    stack.launcher.base_env = common

    if config.use_sandbox:
        sandbox_port = stack.ports[SANDBOX]
        stack.sandbox = stack.launcher.start(
            "kommo-sandbox",
            "sandbox.kommo",
            {
                "SANDBOX_PORT": str(sandbox_port),
                "SANDBOX_BRIDGE_WEBHOOK_URL": stack.webhook_url,
                "SANDBOX_REDIRECT_URI": f"{public_url}/oauth/callback",
                **config.sandbox_env,
            },
            sandbox_port,
            "http",
            ready_path="/_sandbox/stats",
        )
    if wants_standin(config, env):
        standin_port = stack.ports[STANDIN]
        stack.standin = stack.launcher.start(
            "n8n-standin",
            "sandbox.n8n_standin",
            {
                "STANDIN_PORT": str(standin_port),
                "STANDIN_API_KEY": stack.n8n_api_key,
                **config.standin_env,
            },
            standin_port,
            "http",
            ready_path="/_standin/received",
        )
        stack.launcher.base_env = {
            **stack.launcher.base_env,
            "N8N_WEBHOOK_URL": f"{stack.standin_url}/webhook/bridge",
            **env,
        }
    if stack.sandbox is not None:
        sandbox_defaults = {
            "KOMMO_BASE_URL": stack.sandbox_url,
            "KOMMO_SANDBOX": "true",
            "KOMMO_SUBDOMAIN": "previdas",
            "KOMMO_CLIENT_ID": SANDBOX_CLIENT_ID,
            "KOMMO_CLIENT_SECRET": SANDBOX_CLIENT_SECRET,
            "KOMMO_REDIRECT_URI": f"{public_url}/oauth/callback",
            "KOMMO_REFRESH_TOKEN": SANDBOX_REFRESH_TOKEN,
            "KOMMO_SALESBOT_ID": SANDBOX_SALESBOT_ID,
            "KOMMO_REPLY_FIELD_ID": SANDBOX_REPLY_FIELD_ID,
            "KOMMO_AMOJO_BASE_URL": stack.sandbox_url,
        }
        # What the user (or a test) set explicitly wins over the sandbox defaults.
        stack.launcher.base_env = {**stack.launcher.base_env, **sandbox_defaults, **env}
        stack.launcher.wait_ready(stack.sandbox)
    if stack.standin is not None:
        stack.launcher.wait_ready(stack.standin)

    # Every replica's port is chosen first, so each service starts knowing every address
    # (services call each other both ways; channels connect lazily).
    stack.launcher.base_env.update(
        {
            f"{n.upper()}_ADDR": ",".join(f"127.0.0.1:{grpc}" for grpc, _ in ps)
            for n, ps in service_ports.items()
        }
    )
    for name, replica_ports in service_ports.items():
        for grpc_port, metrics_port in replica_ports:
            stack.start_service(name, port=grpc_port, metrics_port=metrics_port)
    for processes in stack.services.values():
        for process in processes:
            stack.launcher.wait_ready(process)
    stack.start_edge(edge_port)
