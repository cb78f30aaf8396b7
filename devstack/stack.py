"""The whole bridge on one machine: Redis (unless REDIS_URL), the Kommo sandbox and the
n8n stand-in (unless real Kommo credentials are configured), and the five services with
their replica counts."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from devstack.processes import GRPC_SERVICES, Launcher, Process, free_port
from devstack.redis_server import RedisServer

SANDBOX_SALESBOT_ID = "7001"
SANDBOX_REPLY_FIELD_ID = "900001"
SANDBOX_CLIENT_ID = "sandbox-client"
SANDBOX_CLIENT_SECRET = "sandbox-secret"  # noqa: S105  # the sandbox's own demo credential
SANDBOX_REFRESH_TOKEN = "sandbox-refresh-0"  # noqa: S105


@dataclass
class StackConfig:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # what the user configured
    scale: dict[str, int] = field(default_factory=dict)
    edge_port: int = 0
    use_sandbox: bool = True
    sandbox_env: dict[str, str] = field(default_factory=dict)
    standin_env: dict[str, str] = field(default_factory=dict)


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
    webhook_secret: str = ""

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

    def start_service(self, name: str, env: dict[str, str] | None = None, port: int = 0) -> Process:
        """One more replica of a gRPC service, on a new port or a given one."""
        port = port or free_port()
        metrics_port = free_port()
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
        )
        self.services["edge_api"] = [edge]
        self.launcher.wait_ready(edge, "/version")
        return edge

    def restart_edge(self) -> Process:
        """Start the stopped or killed edge again on its port."""
        (old,) = self.services["edge_api"]
        if old.alive():
            raise RuntimeError("the edge is still running")
        self.launcher.processes.remove(old)
        return self.start_edge(old.port)

    def stop(self) -> None:
        self.launcher.stop_all()
        if self.redis is not None:
            self.redis.stop()


def start_stack(config: StackConfig) -> Stack:
    env = dict(config.env)
    launcher = Launcher(config.log_dir, {})
    stack = Stack(config, launcher)
    try:
        _start(stack, env)
    except BaseException:
        stack.stop()
        raise
    return stack


def _start(stack: Stack, env: dict[str, str]) -> None:
    config = stack.config
    if env.get("REDIS_URL"):
        stack.redis_url = env["REDIS_URL"]
    else:
        stack.redis = RedisServer(free_port(), config.log_dir / "redis-data").start()
        stack.redis_url = stack.redis.url
    stack.api_key = env.get("EDGE_API_KEY") or secrets.token_urlsafe(24)
    stack.webhook_secret = env.get("KOMMO_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
    edge_port = config.edge_port or int(env.get("EDGE_PORT") or 0) or free_port()
    stack.edge_url = f"http://127.0.0.1:{edge_port}"
    public_url = env.get("EDGE_PUBLIC_URL") or stack.edge_url
    common = {
        **env,
        "REDIS_URL": stack.redis_url,
        "EDGE_API_KEY": stack.api_key,
        "KOMMO_WEBHOOK_SECRET": stack.webhook_secret,
        "EDGE_PUBLIC_URL": public_url,
    }
    stack.launcher.base_env = common

    if config.use_sandbox:
        sandbox_port = free_port()
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
        )
        standin_port = free_port()
        stack.standin = stack.launcher.start(
            "n8n-standin",
            "sandbox.n8n_standin",
            {
                "STANDIN_PORT": str(standin_port),
                "STANDIN_API_KEY": stack.api_key,
                **config.standin_env,
            },
            standin_port,
            "http",
        )
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
            "N8N_WEBHOOK_URL": f"{stack.standin_url}/webhook/bridge",
        }
        # What the user (or a test) set explicitly wins over the sandbox defaults.
        stack.launcher.base_env = {**common, **sandbox_defaults, **env}
        stack.launcher.wait_ready(stack.sandbox, "/_sandbox/stats")
        stack.launcher.wait_ready(stack.standin, "/_standin/received")

    # Every replica's port is chosen first, so each service starts knowing every address
    # (services call each other both ways; channels connect lazily).
    ports = {
        name: [free_port() for _ in range(max(1, config.scale.get(name, 1)))]
        for name in GRPC_SERVICES
    }
    stack.launcher.base_env.update(
        {f"{n.upper()}_ADDR": ",".join(f"127.0.0.1:{p}" for p in ps) for n, ps in ports.items()}
    )
    for name, service_ports in ports.items():
        for port in service_ports:
            stack.start_service(name, port=port)
    for processes in stack.services.values():
        for process in processes:
            stack.launcher.wait_ready(process)
    stack.start_edge(edge_port)
