"""What `docker compose up` relies on: docker-compose.yml, the Dockerfile and .env.example.

No Docker engine runs in CI, so these read the files as data and check the contract the
services depend on: one image, one module per service, wiring over `dns:///` targets,
health, restart, scaling, hardening (a Redis password, no capabilities, read-only root
filesystems, images pinned by digest), and every variable documented.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

EDGE = "edge_api"
GRPC_SERVICES = ("kommo_gateway", "conversation", "vendedor", "scheduling")
BRIDGE_SERVICES = (*GRPC_SERVICES, EDGE)
ALL_SERVICES = ("redis", *BRIDGE_SERVICES)
GRPC_PORT = 50051
EDGE_CONTAINER_PORT = 8000

# Which other services each one calls, i.e. which *_ADDR it must be given.
CALLS: dict[str, tuple[str, ...]] = {
    "kommo_gateway": (),
    "vendedor": ("KOMMO_GATEWAY_ADDR",),
    "conversation": ("KOMMO_GATEWAY_ADDR", "VENDEDOR_ADDR"),
    "scheduling": ("KOMMO_GATEWAY_ADDR", "VENDEDOR_ADDR", "CONVERSATION_ADDR"),
    EDGE: ("CONVERSATION_ADDR", "KOMMO_GATEWAY_ADDR", "VENDEDOR_ADDR", "SCHEDULING_ADDR"),
}

# `${VAR}`, `${VAR:-default}`, `${VAR?err}` and bare `$VAR`; `$$` is a literal dollar.
_INTERPOLATION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
_ENV_EXAMPLE_NAME = re.compile(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
_ROOT_USERS = {"root", "0"}
# `${REDIS_PASSWORD:?message}`: compose refuses to start while it is unset or empty.
_REQUIRED_PASSWORD = r"\$\{REDIS_PASSWORD:\?[^}]+\}"
_DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:` as a dict, whichever of the two YAML forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(entry.split("=", 1) if "=" in entry else (entry, "") for entry in env)
    return {str(key): str(value) for key, value in env.items()}


def _documented_variables() -> set[str]:
    return set(_ENV_EXAMPLE_NAME.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_compose_file_has_redis_and_the_five_services(services: dict[str, Any]) -> None:
    assert set(ALL_SERVICES) <= set(services), f"missing: {set(ALL_SERVICES) - set(services)}"


@pytest.mark.parametrize("name", [s for s in ALL_SERVICES if s != EDGE])
def test_only_the_edge_publishes_a_port(services: dict[str, Any], name: str) -> None:
    assert "ports" not in services[name], f"{name} must not publish a host port"


def test_edge_publishes_its_container_port(services: dict[str, Any]) -> None:
    ports = [str(p) for p in services[EDGE].get("ports", [])]
    assert any(p.endswith(f":{EDGE_CONTAINER_PORT}") for p in ports), ports


def test_edge_host_address_and_port_come_from_env(services: dict[str, Any]) -> None:
    # A TLS proxy on the host needs the edge on 127.0.0.1 only (docs/deploy.md):
    # EDGE_BIND_ADDRESS picks the interface (every IPv4 one by default), EDGE_PORT the port.
    (mapping,) = [str(p) for p in services[EDGE]["ports"]]
    match = re.fullmatch(
        r"\$\{EDGE_BIND_ADDRESS:-([0-9.]+)\}:\$\{EDGE_PORT:-(\d+)\}:(\d+)", mapping
    )
    assert match, f"{mapping} is not ${{EDGE_BIND_ADDRESS:-…}}:${{EDGE_PORT:-…}}:<port>"
    assert match.group(1) == "0.0.0.0"
    assert int(match.group(2)) == int(match.group(3)) == EDGE_CONTAINER_PORT


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_can_be_scaled(services: dict[str, Any], name: str) -> None:
    # A fixed name or host port would make `docker compose up --scale NAME=3` fail.
    service = services[name]
    assert "container_name" not in service
    assert "ports" not in service
    assert "hostname" not in service


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_every_service_has_a_healthcheck_and_a_restart_policy(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    healthcheck = service.get("healthcheck") or {}
    assert not healthcheck.get("disable", False)
    test = healthcheck.get("test")
    assert test, f"{name} has no healthcheck test"
    assert test not in (["NONE"], "NONE")
    assert service.get("restart") in {"always", "unless-stopped"} or str(
        service.get("restart", "")
    ).startswith("on-failure"), f"{name} has no restart policy"


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_services_are_probed_with_the_grpc_health_check(
    services: dict[str, Any], name: str
) -> None:
    test = services[name]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
    assert test[4].endswith(f":{GRPC_PORT}")


def test_edge_is_probed_on_its_liveness_not_on_the_operators_health(
    services: dict[str, Any],
) -> None:
    # /health is 503 while work keeps failing somewhere: no reason to restart the edge.
    test = " ".join(services[EDGE]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{EDGE_CONTAINER_PORT}/version" in test


@pytest.mark.parametrize("name", BRIDGE_SERVICES)
def test_each_service_runs_its_own_module(services: dict[str, Any], name: str) -> None:
    assert services[name].get("command") == ["python", "-m", f"services.{name}"]
    assert (ROOT / "services" / name / "__main__.py").is_file()


def test_bridge_services_share_one_image_built_from_the_dockerfile(
    services: dict[str, Any],
) -> None:
    images = {services[name].get("image") for name in BRIDGE_SERVICES}
    builds = {str(services[name].get("build")) for name in BRIDGE_SERVICES}
    assert len(images) == 1 and None not in images
    assert len(builds) == 1 and "None" not in builds
    assert DOCKERFILE.is_file()


@pytest.mark.parametrize("name", BRIDGE_SERVICES)
def test_services_use_the_compose_redis_once_it_is_healthy(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    # The password is in every service's URL, and nowhere optional.
    assert re.fullmatch(
        rf"redis://:{_REQUIRED_PASSWORD}@redis:6379/0", _environment(service)["REDIS_URL"]
    )


def test_redis_requires_the_password_and_its_healthcheck_gives_it(
    services: dict[str, Any],
) -> None:
    redis = services["redis"]
    command = redis["command"]
    words = command if isinstance(command, list) else command.split()
    assert re.fullmatch(_REQUIRED_PASSWORD, words[words.index("--requirepass") + 1])
    assert re.fullmatch(_REQUIRED_PASSWORD, _environment(redis)["REDIS_PASSWORD"])
    # Through the environment, not `-a`: the password stays out of the process list.
    test = " ".join(redis["healthcheck"]["test"])
    assert "REDISCLI_AUTH=" in test and "$$REDIS_PASSWORD" in test
    assert " -a " not in test


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_every_container_drops_its_privileges(services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert service.get("cap_drop") == ["ALL"]
    assert not service.get("cap_add")
    assert not service.get("privileged")
    assert "no-new-privileges:true" in service.get("security_opt", [])
    assert service.get("read_only") is True
    # Writable: a small /tmp (and Redis's data volume), nothing else.
    assert any(str(t).split(":")[0] == "/tmp" for t in service.get("tmpfs", []))  # noqa: S108


def test_redis_runs_as_its_own_user_without_capabilities(services: dict[str, Any]) -> None:
    # As root the image's entrypoint would chown /data and step down with gosu, and
    # neither works with every capability dropped.
    user = str(services["redis"].get("user", "")).split(":")[0]
    assert user and user not in _ROOT_USERS


def test_images_are_pinned_by_digest(services: dict[str, Any]) -> None:
    assert _DIGEST.match(services["redis"]["image"]), services["redis"]["image"]
    text = DOCKERFILE.read_text(encoding="utf-8")
    defaults = dict(re.findall(r"^ARG\s+([A-Z_]+)=(\S+)", text, re.M))
    stages = _dockerfile_stages()
    bases = [arguments.split()[0] for stage in stages for i, arguments in stage if i == "FROM"]
    assert bases
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
        assert _DIGEST.match(image), f"FROM {base} ({image}) is not pinned by digest"


@pytest.mark.parametrize("name", BRIDGE_SERVICES)
def test_services_get_the_addresses_of_the_services_they_call(
    services: dict[str, Any], name: str
) -> None:
    env = _environment(services[name])
    assert set(CALLS[name]) <= set(env), f"{name} lacks {set(CALLS[name]) - set(env)}"


def test_every_address_is_a_dns_target_naming_a_grpc_service(services: dict[str, Any]) -> None:
    # dns:/// resolves to every replica, so round_robin spreads calls over all of them.
    addresses = {
        f"{name}.{variable}": value
        for name, service in services.items()
        for variable, value in _environment(service).items()
        if variable.endswith("_ADDR")
    }
    assert addresses
    for where, value in addresses.items():
        match = re.fullmatch(r"dns:///([a-z0-9_-]+):(\d+)", value)
        assert match, f"{where}={value} is not a dns:/// target"
        assert match.group(1) in GRPC_SERVICES, f"{where} names no gRPC service"
        assert int(match.group(2)) == GRPC_PORT, f"{where} uses another port"


@pytest.mark.parametrize("name", GRPC_SERVICES)
def test_grpc_port_is_pinned_to_what_addresses_and_probes_use(
    services: dict[str, Any], name: str
) -> None:
    # A GRPC_PORT in .env (passed to every container) must not move the listener.
    assert _environment(services[name]).get("GRPC_PORT") == str(GRPC_PORT)


def test_edge_listens_where_its_port_and_probe_point(services: dict[str, Any]) -> None:
    env = _environment(services[EDGE])
    assert env.get("EDGE_PORT") == str(EDGE_CONTAINER_PORT)
    assert env.get("EDGE_HOST") == "0.0.0.0"


def test_redis_persists_with_aof_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    words = command if isinstance(command, list) else command.split()
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--appendfsync") + 1] == "everysec"
    volume, _, target = next(v for v in redis["volumes"] if str(v).endswith(":/data")).partition(
        ":"
    )
    assert target == "/data"
    assert volume in (compose.get("volumes") or {})


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    referenced = {braced or bare for braced, bare in _INTERPOLATION.findall(text)}
    missing = referenced - _documented_variables()
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_every_variable_compose_sets_is_documented_in_env_example(
    services: dict[str, Any],
) -> None:
    set_by_compose = {variable for s in services.values() for variable in _environment(s)}
    missing = set_by_compose - _documented_variables()
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_env_example_is_only_assignments_and_comments() -> None:
    assigned: list[str] = []
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S.*)?", line)
        assert match, f".env.example:{number} is neither NAME=value nor a comment"
        assigned.append(match.group(1))
    assert len(assigned) == len(set(assigned)), "a variable is assigned twice"


def test_dockerfile_final_stage_runs_as_a_non_root_user() -> None:
    final = _dockerfile_stages()[-1]
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0].strip()
    assert user and user not in _ROOT_USERS


def test_dockerfile_generates_the_grpc_code_and_ships_it() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builder_runs = " ".join(a for stage in stages[:-1] for i, a in stage if i == "RUN")
    assert "devstack.protos" in builder_runs
    copies = [a for i, a in stages[-1] if i == "COPY" and a.startswith("--from=")]
    assert any("bridge" in a for a in copies), "the runtime stage does not copy bridge/"


def test_dockerfile_runs_services_in_exec_form_and_unbuffered() -> None:
    final = _dockerfile_stages()[-1]
    commands = [a for i, a in final if i in {"CMD", "ENTRYPOINT"}]
    assert commands and all(a.startswith("[") for a in commands)
    env = " ".join(a for i, a in final if i == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build() -> None:
    patterns = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".env", "bridge"} <= patterns
    assert not patterns & {"protos", "services", "devstack", "requirements.lock"}


def test_every_container_has_resource_limits() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), name
