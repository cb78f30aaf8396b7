"""docs/deploy.md and what it ships in deploy/, checked against the code they describe.

No proxy, Prometheus or Docker engine runs here, so the files are read as data: the
proxies point at the port docker-compose.yml publishes the edge on, keep to the edge's
bounds and log no query string; the compose override names services, variables and
mounts the code knows; Prometheus scrapes the ports the services serve metrics on; every
metric an alert uses is one the code exports; the guide has its sections, names files,
services, Redis keys and variables that exist, and quotes the benchmarks it cites. Where
`nginx`, `caddy` or `promtool` happens to be installed, each also checks its file.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from devstack.processes import ROOT
from services.common import metrics
from services.conversation.settings import ConversationSettings
from services.edge_api.routes import conversations, privacy, vendedores
from services.edge_api.settings import EdgeSettings
from services.kommo_gateway.settings import GatewaySettings
from services.scheduling.settings import SchedulingSettings
from services.vendedor.settings import VendedorSettings
from tests.unit.test_docs_links import links, prose_lines

GUIDE = ROOT / "docs" / "deploy.md"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BENCH = ROOT / "bench" / "README.md"
DEPLOY = ROOT / "deploy"
OVERRIDE = DEPLOY / "compose" / "docker-compose.production.yml"
CADDYFILE = DEPLOY / "proxy" / "Caddyfile"
NGINX_CONF = DEPLOY / "proxy" / "nginx.conf"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SHIPPED = (OVERRIDE, CADDYFILE, NGINX_CONF, PROMETHEUS, ALERTS)

EDGE = "edge_api"
SETTINGS = {
    EDGE: EdgeSettings,
    "conversation": ConversationSettings,
    "kommo_gateway": GatewaySettings,
    "vendedor": VendedorSettings,
    "scheduling": SchedulingSettings,
}
GRPC_SERVICES = ("kommo_gateway", "conversation", "vendedor", "scheduling")
SECTIONS = (
    "HTTPS in front",
    "Redis persistence and backups",
    "Upgrading",
    "Monitoring",
    "Files the services read",
    "Sizing",
    "Before going live: a checklist",
)
# What the README's "Running with Docker and scaling" and "Production checklist: secrets
# on the way in" said, which the guide now carries.
CARRIED = (
    "v2.24",
    "--scale",
    "dns:///",
    "REDIS_PASSWORD",
    "rediss://",
    "EDGE_PUBLIC_URL",
    "N8N_SIGNING_SECRET",
    "N8N_AUTH_HEADER",
    "?secret=",
    "?api_key=",
    "X-API-Key",
    "appendfsync",
    "gw:tokens",
    "/oauth/authorize",
    "DATA_RETENTION_DAYS",
    "EDGE_METRICS_REQUIRE_KEY",
    "BOT_RULES_FILE",
    "PROACTIVE_TEMPLATES_FILE",
    "100 messages a second",
    "7 requests a second",
)
# Variables the guide may name that no service reads: Docker Compose's own, redis-cli's,
# and the shipped n8n workflow's (examples/n8n/README.md).
OTHER_VARIABLES = {"COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "REDISCLI_AUTH"}
# Series Prometheus itself and the blackbox exporter make: everything else an alert reads
# must be exported by the bridge.
FOREIGN_SERIES = {"up", "probe_success"}
HEALTH_JOB = "bridge_health"

_DEFAULTED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?-([^}]*))?\}")
_INTERPOLATED = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")
_ENV_EXAMPLE_NAME = re.compile(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
_LOOPBACK = {"127.0.0.1", "localhost"}


# ---------------------------------------------------------------------------------------
# Helpers: the files as data
# ---------------------------------------------------------------------------------------


class Override(list[Any]):
    """A YAML sequence tagged `!override`: it replaces the base file's, not added to it."""


class ComposeLoader(yaml.SafeLoader):  # type: ignore[misc]  # yaml has no stubs here
    """PyYAML's safe loader plus Compose's `!override` and `!reset` tags."""


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    raise yaml.constructor.ConstructorError(None, None, "!override on a non-sequence", None)


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> None:
    return None


ComposeLoader.add_constructor("!override", _override)
ComposeLoader.add_constructor("!reset", _reset)


def load_compose(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)  # noqa: S506
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def with_defaults(text: str) -> str:
    """Compose's interpolation with nothing set: `${NAME:-default}` is its default."""
    return _DEFAULTED.sub(lambda m: m.group(2) or "", text)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(entry.split("=", 1) if "=" in entry else (entry, "") for entry in env)
    return {str(key): str(value) for key, value in env.items()}


def documented_variables() -> set[str]:
    return set(_ENV_EXAMPLE_NAME.findall(ENV_EXAMPLE.read_text(encoding="utf-8")))


def settings_variables(settings: type[Any]) -> set[str]:
    """What a settings class reads (as test_configuration_documented.py finds them)."""
    return {name.upper() for name in settings.model_fields}


def read_anywhere() -> set[str]:
    return set().union(*(settings_variables(s) for s in SETTINGS.values()))


def services_source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "services").rglob("*.py"))


def published_edge_port() -> tuple[str, int, int]:
    """(host address, host port, container port) docker-compose.yml publishes the edge
    on, with no variable set."""
    compose = load_compose(COMPOSE)
    (mapping,) = compose["services"][EDGE]["ports"]
    host, port, target = with_defaults(str(mapping)).split(":")
    return host, int(port), int(target)


def edge_container_port() -> int:
    compose = load_compose(COMPOSE)
    in_compose = int(environment(compose["services"][EDGE])["EDGE_PORT"])
    assert in_compose == published_edge_port()[2]
    return in_compose


def metrics_port() -> int:
    compose = load_compose(COMPOSE)
    ports = {int(environment(compose["services"][s])["METRICS_PORT"]) for s in GRPC_SERVICES}
    assert len(ports) == 1 and 0 not in ports, ports
    return ports.pop()


def size_in_bytes(text: str) -> int:
    """nginx's `1m`/`16k` and Caddy's `1MiB`/`16KiB`/`1MB` as bytes."""
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]?)(i?)([bB]?)", text.strip())
    assert match, f"not a size: {text!r}"
    number, unit, binary, suffix = match.groups()
    power = " kmg".index(unit.lower() or " ")
    base = 1024 if (binary or not suffix) else 1000
    return int(number) * int(base**power)


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    assert match, f"not a duration: {text!r}"
    return (
        float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    )


def edge_default(name: str) -> Any:
    return EdgeSettings.model_fields[name].default


def slowest_edge_call_seconds() -> float:
    """The longest the edge waits on a service for one request."""
    return max(
        vendedores._SYNC_DEADLINE_SECONDS,
        privacy._ERASE_DEADLINE_SECONDS,
        conversations._REPLY_DEADLINE_SECONDS,
    )


# nginx


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{self.name}: {len(found)} × {name}"
        return found[0]

    def walk(self) -> Iterator[Directive]:
        for child in self.block or []:
            yield child
            yield from child.walk()


def nginx_tokens(text: str) -> Iterator[str]:
    """nginx's words: quoted strings (unquoted), `{`, `}`, `;`; comments dropped."""
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char == "#":
            position = text.find("\n", position) if "\n" in text[position:] else len(text)
        elif char in "{};":
            yield char
            position += 1
        elif char in "'\"":
            end = text.index(char, position + 1)
            yield text[position + 1 : end]
            position = end + 1
        else:
            match = re.compile(r"[^\s{};'\"]+").match(text, position)
            assert match
            yield match.group(0)
            position = match.end()


def parse_nginx(text: str) -> Directive:
    root = Directive("main", [], [])
    stack = [root]
    words: list[str] = []
    for token in nginx_tokens(text):
        if token == ";":
            assert words, "an empty directive"
            stack[-1].block.append(Directive(words[0], words[1:]))  # type: ignore[union-attr]
            words = []
        elif token == "{":
            block = Directive(words[0], words[1:], [])
            stack[-1].block.append(block)  # type: ignore[union-attr]
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"{words} is not ended by ';'"
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "nginx.conf: unbalanced braces"
    return root


@pytest.fixture(scope="module")
def nginx() -> Directive:
    return parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))


def log_format_problems(name: str, fmt: str) -> list[str]:
    """Why an nginx log format would write a secret: the query, or a header."""
    problems = []
    for variable in re.findall(r"\$\{?([a-z_0-9]+)", fmt):
        if variable in {"request", "request_uri", "args", "query_string", "is_args"}:
            problems.append(f"{name}: ${variable} holds the query string")
        if variable.startswith("arg_"):
            problems.append(f"{name}: ${variable} is a query argument")
        if variable.startswith("http_"):
            problems.append(f"{name}: ${variable} is a request header (X-API-Key, Referer…)")
    if "$uri" not in fmt:
        problems.append(f"{name}: no $uri, the path without its query")
    return problems


# Caddy


@dataclass
class Block:
    words: list[str]
    children: list[Block] = field(default_factory=list)

    def find(self, *first: str) -> list[Block]:
        return [c for c in self.children if c.words[: len(first)] == list(first)]

    def walk(self) -> Iterator[Block]:
        for child in self.children:
            yield child
            yield from child.walk()


def parse_caddyfile(text: str) -> Block:
    """Lines of words (quotes as the Caddyfile has them); a line ending in `{` opens a
    block, a `}` line closes it."""
    root = Block(["<root>"])
    stack = [root]
    for number, line in enumerate(text.splitlines(), 1):
        lexer = shlex.shlex(line, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        if not words:
            continue
        if words == ["}"]:
            stack.pop()
            assert stack, f"Caddyfile:{number}: '}}' closes nothing"
            continue
        opens = words[-1] == "{"
        block = Block(words[:-1] if opens else words)
        stack[-1].children.append(block)
        if opens:
            stack.append(block)
    assert len(stack) == 1, "Caddyfile: unbalanced braces"
    return root


@pytest.fixture(scope="module")
def caddy() -> Block:
    return parse_caddyfile(CADDYFILE.read_text(encoding="utf-8"))


def caddy_site(caddy: Block) -> Block:
    sites = [b for b in caddy.children if b.words and "." in b.words[0]]
    assert len(sites) == 1, [b.words for b in caddy.children]
    return sites[0]


def caddy_value(block: Block, *path: str) -> list[str]:
    """The words after `path[-1]` in the nested blocks named by `path[:-1]`."""
    for name in path[:-1]:
        (block,) = [b for b in block.children if b.words[:1] == [name]]
    (line,) = block.find(path[-1])
    return line.words[1:]


# Prometheus


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    data = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def jobs(prometheus: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert len(found) == len(prometheus["scrape_configs"]), "a job name is used twice"
    return found


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    found = [rule for group in data["groups"] for rule in group["rules"]]
    assert found
    return found


def exported_series() -> dict[str, tuple[str, ...]]:
    """Every series name the bridge exports (services/common/metrics.py), with the labels
    of its metric, as prometheus_client exposes them."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    found: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            kind, name = str(value._type), str(value._name)
            for suffix in suffixes[kind]:
                found[name + suffix] = tuple(value._labelnames)
    assert found
    return found


def updated_metric_names() -> set[str]:
    """The metrics something in services/ updates (not only defines)."""
    source = services_source()
    names = set()
    for constant, value in vars(metrics).items():
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase) and re.search(
            rf"\b{constant}\.(labels|inc|set|observe)\(", source
        ):
            names.add(value._name)
    return names


_PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset",
}  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def series_names(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are not functions, keywords,
    label names or durations."""
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r'"[^"]*"', " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1) not in _PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def matchers(expr: str) -> list[tuple[str | None, str, str, str]]:
    """(series or None, label, operator, value) of every label matcher."""
    found = []
    for selector in _SELECTOR.finditer(expr):
        for label, operator, value in _MATCHER.findall(selector.group(2)):
            found.append((selector.group(1), label, operator, value))
    return found


# The guide


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def sections() -> dict[str, str]:
    """The text under each `## ` heading of the guide, by heading."""
    parts = re.split(r"^## (.+)$", guide_text(), flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def inline_code(lines: Iterator[tuple[int, str]]) -> Iterator[str]:
    for _, line in lines:
        yield from re.findall(r"`([^`]+)`", line)


def shell_commands(text: str) -> Iterator[str]:
    """The commands of a block of shell: `\\` continues a line, and so does a quote
    left open (a multi-line `sh -c '…'`)."""
    pending = ""
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending)
        except ValueError:
            continue
        if pending.strip():
            yield pending.strip()
        pending = ""
    assert not pending, f"a quote is never closed: {pending}"


def code_blocks(path: Path) -> Iterator[str]:
    for match in re.finditer(r"^```[^\n]*\n(.*?)^```", path.read_text(), re.M | re.S):
        yield match.group(1)


def compose_commands() -> list[str]:
    """Every `docker compose …` command of the guide, in its code blocks and inline code."""
    commands = [
        command
        for block in code_blocks(GUIDE)
        for command in shell_commands(block)
        if command.startswith("docker compose")
    ]
    commands += [c for c in inline_code(prose_lines(GUIDE)) if c.startswith("docker compose")]
    assert len(commands) >= 10
    return commands


# ---------------------------------------------------------------------------------------
# The guide
# ---------------------------------------------------------------------------------------


def test_the_guide_has_its_seven_sections_in_order() -> None:
    titles = list(sections())
    positions = []
    for section in SECTIONS:
        assert section in titles, f"no '## {section}' in docs/deploy.md"
        positions.append(titles.index(section))
    assert positions == sorted(positions), "the sections are out of order"
    for section in SECTIONS:
        assert len(sections()[section].split()) > 100, f"'{section}' says next to nothing"


def test_the_checklist_is_a_list_of_boxes() -> None:
    boxes = re.findall(r"^- \[ \] ", sections()["Before going live: a checklist"], re.M)
    assert len(boxes) >= 10


def test_the_guide_links_every_file_it_ships() -> None:
    targets = {(GUIDE.parent / target.partition("#")[0]).resolve() for _, target in links(GUIDE)}
    shipped = {p.resolve() for p in DEPLOY.rglob("*") if p.is_file()}
    assert all(p.is_file() for p in SHIPPED), "a file the guide ships is missing"
    assert shipped - targets == set(), "files in deploy/ the guide does not link"


def test_the_guide_carries_what_the_readme_said_about_production() -> None:
    text = guide_text()
    assert [term for term in CARRIED if term not in text] == []


def test_the_redis_keys_the_guide_names_exist() -> None:
    literals = set(re.findall(r"[\"']((?:gw|conv|vd|sched):[^\"'{]*)", services_source()))
    named = {
        code.rstrip("…")
        for code in inline_code(prose_lines(GUIDE))
        if re.fullmatch(r"(?:gw|conv|vd|sched):[\w:.-]*…?", code)
    }
    assert len(named) >= 10, named
    unknown = {
        key
        for key in named
        if key not in literals
        and not (key.endswith(":") and any(x.startswith(key) for x in literals))
    }
    assert unknown == set(), f"no such Redis key in services/: {sorted(unknown)}"


def test_the_variables_the_guide_names_exist() -> None:
    compose_text = COMPOSE.read_text(encoding="utf-8")
    n8n_example = (ROOT / "examples" / "n8n" / "README.md").read_text(encoding="utf-8")
    known = (
        read_anywhere()
        | documented_variables()
        | set(_INTERPOLATED.findall(compose_text))
        | set(re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", n8n_example))
        | {f"SCALE_{name.upper()}" for name in GRPC_SERVICES}
        | OTHER_VARIABLES
    )
    named: set[str] = set()
    for code in inline_code(prose_lines(GUIDE)):
        named |= set(re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", code))
    assert len(named) >= 20
    assert named - known == set(), "variables nothing reads"


def test_every_docker_compose_command_names_files_and_services_that_exist() -> None:
    services = set(load_compose(COMPOSE)["services"])
    commands = compose_commands()
    assert any(str(OVERRIDE.relative_to(ROOT)) in c for c in commands)
    value_options = {
        "-f", "--file", "--scale", "--entrypoint", "-e", "--env", "-u", "--user", "-w",
        "--workdir", "-v", "--volume", "--name", "-p", "--publish", "--index",
    }  # fmt: skip
    for command in commands:
        words = shlex.split(command)
        for operator in (">", "<", "|", "&&"):
            words = words[: words.index(operator)] if operator in words else words
        files = [words[i + 1] for i, w in enumerate(words) if w in ("-f", "--file")]
        for name in files:
            assert (ROOT / name).is_file(), f"{command}: no file {name}"
        for i, word in enumerate(words):
            if word == "--scale":
                assert words[i + 1].split("=")[0] in services, command
        positional = []
        skip = False
        for word in words[2:]:
            if skip:
                skip = False
            elif word in value_options:
                skip = True
            elif not word.startswith("-"):
                positional.append(word)
        if not positional:
            continue  # the name alone, in prose
        verb, *rest = positional
        if verb in {"exec", "run", "logs", "stop", "ps", "restart"} and rest:
            named = rest[0]
            assert named.startswith("<") or named in services, f"{command}: no service {named}"
        if verb == "up":
            assert all(name in services for name in rest), command
        if verb == "cp":
            assert any(w.split(":")[0] in services for w in rest if ":" in w), command
    # COMPOSE_FILE in .env, as the guide sets it.
    (listed,) = re.findall(r"^COMPOSE_FILE=(\S+)$", guide_text(), re.M)
    assert all((ROOT / name).is_file() for name in listed.split(":")), listed
    assert str(OVERRIDE.relative_to(ROOT)) in listed.split(":")


def test_the_sizing_quotes_the_benchmarks_it_cites() -> None:
    sizing = sections()["Sizing"]
    bench = BENCH.read_text(encoding="utf-8")
    commits = set(re.findall(r"`([0-9a-f]{7,40})`", sizing))
    dates = set(re.findall(r"\b20\d\d-\d\d-\d\d\b", sizing))
    figures = set(re.findall(r"\b\d{1,3}(?:,\d{3})+\b", sizing))
    assert commits and dates and figures
    assert {c for c in commits if c not in bench} == set(), "commits bench/README.md lacks"
    assert {d for d in dates if d not in bench} == set(), "dates bench/README.md lacks"
    assert {f for f in figures if f not in bench} == set(), "figures bench/README.md lacks"


# ---------------------------------------------------------------------------------------
# docker-compose.yml and the production override
# ---------------------------------------------------------------------------------------


def test_the_edges_published_port_is_the_one_it_listens_on() -> None:
    host, port, target = published_edge_port()
    assert target == edge_default("edge_port") == edge_container_port()
    assert port == edge_default("edge_port"), "EDGE_PORT's default in compose and settings"
    assert host == "0.0.0.0"  # docker-compose.yml's own default


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return load_compose(OVERRIDE)


def test_the_override_names_only_services_of_docker_compose(override: dict[str, Any]) -> None:
    base = set(load_compose(COMPOSE)["services"])
    assert set(override) == {"services"}, "only services: no new volumes, networks, images"
    assert set(override["services"]) <= base


def test_the_override_binds_the_edge_to_loopback_instead_of_every_interface(
    override: dict[str, Any],
) -> None:
    ports = override["services"][EDGE]["ports"]
    # A plain list is merged with docker-compose.yml's, which would keep 0.0.0.0.
    assert isinstance(ports, Override), "the edge's ports need `!override`"
    _, base_port, _ = published_edge_port()
    for mapping in ports:
        host, port, target = with_defaults(str(mapping)).split(":")
        assert host == "127.0.0.1"
        assert int(port) == base_port and int(target) == edge_container_port()


def test_the_override_sets_only_variables_its_services_read(override: dict[str, Any]) -> None:
    for name, service in override["services"].items():
        unknown = set(environment(service)) - settings_variables(SETTINGS[name])
        assert unknown == set(), f"{name} reads none of {unknown}"
    referenced = set(_INTERPOLATED.findall(OVERRIDE.read_text(encoding="utf-8")))
    assert referenced - documented_variables() == set(), "not in .env.example"


def test_the_override_mounts_the_files_the_settings_name_read_only(
    override: dict[str, Any],
) -> None:
    conversation = override["services"]["conversation"]
    env = environment(conversation)
    mounts = {m["target"]: m for m in conversation["volumes"]}
    for variable in ("BOT_RULES_FILE", "PROACTIVE_TEMPLATES_FILE"):
        assert variable in settings_variables(ConversationSettings)
        mount = mounts.get(env[variable])
        assert mount, f"{variable}={env[variable]} is not mounted"
        assert mount["type"] == "bind" and mount["read_only"] is True
        # Missing on the host → compose refuses, instead of mounting an empty folder.
        assert mount["bind"]["create_host_path"] is False
        assert str(mount["source"]).startswith("./config/")
        assert Path(mount["source"]).name == Path(env[variable]).name
    assert set(mounts) == {env["BOT_RULES_FILE"], env["PROACTIVE_TEMPLATES_FILE"]}


def test_the_override_keeps_the_debug_endpoints_off(override: dict[str, Any]) -> None:
    value = environment(override["services"][EDGE])["EDGE_DEBUG_ENDPOINTS"]
    assert value.lower() == "false"


def test_the_guide_runs_the_override_as_written() -> None:
    command = f"docker compose -f docker-compose.yml -f {OVERRIDE.relative_to(ROOT)} up -d"
    assert command in guide_text()
    assert command in OVERRIDE.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------
# The proxies
# ---------------------------------------------------------------------------------------


def test_nginx_proxies_to_the_published_edge_on_loopback(nginx: Directive) -> None:
    http = nginx.one("http")
    _, port, _ = published_edge_port()
    passes = [d for d in http.walk() if d.name == "proxy_pass"]
    assert passes
    upstreams = {u.args[0]: u for u in http.all("upstream")}
    for proxy_pass in passes:
        target = re.sub(r"^https?://", "", proxy_pass.args[0]).split("/")[0]
        servers = (
            [s.args[0] for s in upstreams[target].all("server")]
            if target in upstreams
            else [target]
        )
        assert servers
        for server in servers:
            host, _, server_port = server.rpartition(":")
            assert host in _LOOPBACK, f"{server}: the override publishes on 127.0.0.1"
            assert int(server_port) == port


def test_nginx_logs_no_query_string_nor_header(nginx: Directive) -> None:
    http = nginx.one("http")
    formats = {d.args[0]: "".join(d.args[1:]) for d in http.all("log_format")}
    assert formats
    problems = [p for name, fmt in formats.items() for p in log_format_problems(name, fmt)]
    assert problems == []
    # Every access log uses one of them: without a format name nginx uses `combined`,
    # which logs $request (the query) and the Referer.
    logs = [d for d in http.walk() if d.name == "access_log" and d.args != ["off"]]
    assert http.all("access_log"), "no access_log in http {}: nginx's default is `combined`"
    for log in logs:
        assert len(log.args) >= 2 and log.args[1] in formats, f"access_log {log.args}"


def test_the_log_format_check_catches_what_it_must() -> None:
    assert log_format_problems("x", '$remote_addr "$request" $status') != []
    assert log_format_problems("x", "$request_method $request_uri") != []
    assert log_format_problems("x", "$uri?$args") != []
    assert log_format_problems("x", "$uri $http_x_api_key") != []
    assert log_format_problems("x", "$request_method $uri $request_time") == []


def test_nginx_keeps_to_the_edges_bounds(nginx: Directive) -> None:
    http = nginx.one("http")
    assert size_in_bytes(http.one("client_max_body_size").args[0]) == edge_default(
        "edge_max_body_bytes"
    )
    _, buffer = http.one("large_client_header_buffers").args
    assert size_in_bytes(buffer) >= edge_default("edge_max_header_bytes")
    for name in ("client_header_timeout", "client_body_timeout"):
        assert seconds(http.one(name).args[0]) <= edge_default("edge_request_read_timeout_seconds")
    for upstream in http.all("upstream"):
        idle = seconds(upstream.one("keepalive_timeout").args[0])
        assert idle < edge_default("edge_keep_alive_seconds")
    for location in (d for d in http.walk() if d.name == "location"):
        if location.all("proxy_pass"):
            assert seconds(location.one("proxy_read_timeout").args[0]) > slowest_edge_call_seconds()
            assert location.one("proxy_http_version").args == ["1.1"]


def test_nginx_keeps_metrics_off_the_internet(nginx: Directive) -> None:
    locations = [d for d in nginx.walk() if d.name == "location" and d.args == ["=", "/metrics"]]
    assert locations and all(loc.one("return").args == ["404"] for loc in locations)


def test_caddy_proxies_to_the_published_edge_on_loopback(caddy: Block) -> None:
    _, port, _ = published_edge_port()
    (proxy,) = caddy_site(caddy).find("reverse_proxy")
    host, _, target_port = proxy.words[1].rpartition(":")
    assert host in _LOOPBACK and int(target_port) == port


def test_caddy_logs_no_query_string_nor_api_key(caddy: Block) -> None:
    logs = [b for b in caddy.walk() if b.words[:1] == ["log"]]
    assert len(logs) >= 2, "the site's access log and Caddy's own"
    for log in logs:
        (fmt,) = [b for b in log.children if b.words[:2] == ["format", "filter"]]
        # Caddy 2.6 (Debian's) needs the filtered fields inside `fields { }`; later
        # versions accept that too.
        (fields,) = fmt.find("fields")
        (uri,) = fields.find("request>uri")
        assert uri.words[1] == "regexp", uri.words
        pattern, replacement = uri.words[2:4]
        for logged, kept in (
            ("/webhooks/kommo?secret=s3cr3t-value", "/webhooks/kommo"),
            ("/oauth/authorize?api_key=k3y&x=1", "/oauth/authorize"),
            ("/oauth/callback?code=abc&state=def", "/oauth/callback"),
            ("/health", "/health"),
        ):
            assert re.sub(pattern, replacement, logged) == kept
        assert fields.find("request>headers>X-Api-Key", "delete"), "X-API-Key is logged"
    assert caddy_site(caddy).find("log")


def test_caddy_keeps_to_the_edges_bounds(caddy: Block) -> None:
    site = caddy_site(caddy)
    (body,) = caddy_value(site, "request_body", "max_size")
    assert size_in_bytes(body) == edge_default("edge_max_body_bytes")
    (options,) = [b for b in caddy.children if b.words == []] or [caddy.children[0]]
    (servers,) = options.find("servers")
    (header_size,) = caddy_value(servers, "max_header_size")
    assert size_in_bytes(header_size) >= edge_default("edge_max_header_bytes")
    for name in ("read_header", "read_body"):
        (value,) = caddy_value(servers, "timeouts", name)
        assert seconds(value) <= edge_default("edge_request_read_timeout_seconds")
    (proxy,) = site.find("reverse_proxy")
    (transport,) = proxy.find("transport", "http")
    (keepalive,) = caddy_value(transport, "keepalive")
    assert seconds(keepalive) < edge_default("edge_keep_alive_seconds")
    (waits,) = caddy_value(transport, "response_header_timeout")
    assert seconds(waits) > slowest_edge_call_seconds()
    assert site.find("@metrics", "path", "/metrics") and site.find("respond", "@metrics", "404")


def test_the_size_and_duration_readers() -> None:
    assert size_in_bytes("1m") == size_in_bytes("1MiB") == 1 << 20
    assert size_in_bytes("16k") == size_in_bytes("16KiB") == 16384
    assert size_in_bytes("1MB") == 1_000_000
    assert seconds("4s") == 4 and seconds("2m") == 120 and seconds("10") == 10


def _copy_with(source: Path, target: Path, replacements: dict[str, str]) -> Path:
    text = source.read_text(encoding="utf-8")
    for old, new in replacements.items():
        text = text.replace(old, new)
    target.write_text(text, encoding="utf-8")
    return target


def test_nginx_accepts_its_configuration(tmp_path: Path) -> None:
    nginx_binary, openssl = shutil.which("nginx"), shutil.which("openssl")
    if not nginx_binary or not openssl:
        pytest.skip("nginx (and openssl, for a test certificate) are not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=bridge.example.com", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    conf = _copy_with(
        NGINX_CONF,
        tmp_path / "nginx.conf",
        {
            "/etc/letsencrypt/live/bridge.example.com/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/bridge.example.com/privkey.pem": str(key),
            "/var/log/nginx/": f"{tmp_path}/",
        },
    )
    result = subprocess.run(
        [nginx_binary, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf),
         "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_caddy_accepts_its_configuration(tmp_path: Path) -> None:
    caddy_binary = shutil.which("caddy")
    if not caddy_binary:
        pytest.skip("caddy is not installed")
    conf = _copy_with(CADDYFILE, tmp_path / "Caddyfile", {"/var/log/caddy/": f"{tmp_path}/"})
    result = subprocess.run(
        [caddy_binary, "validate", "--config", str(conf), "--adapter", "caddyfile"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------


def test_prometheus_loads_the_alerts_beside_it(prometheus: dict[str, Any]) -> None:
    files = [PROMETHEUS.parent / name for name in prometheus["rule_files"]]
    assert ALERTS in files and all(f.is_file() for f in files)


def test_prometheus_scrapes_the_edge_on_its_port(jobs: dict[str, dict[str, Any]]) -> None:
    job = jobs[EDGE]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (targets,) = [c["targets"] for c in job["static_configs"]]
    assert targets == [f"{EDGE}:{edge_container_port()}"]


def test_prometheus_finds_every_replica_of_every_service(jobs: dict[str, dict[str, Any]]) -> None:
    port = metrics_port()
    for service in GRPC_SERVICES:
        (lookup,) = jobs[service]["dns_sd_configs"]
        assert lookup["names"] == [service] and lookup["type"] == "A"
        assert lookup["port"] == port, f"{service}: metrics are served on {port}"
        assert "static_configs" not in jobs[service]


def test_prometheus_probes_health_on_the_edge(jobs: dict[str, dict[str, Any]]) -> None:
    job = jobs[HEALTH_JOB]
    assert job["metrics_path"] == "/probe" and job["params"]["module"] == ["http_2xx"]
    (targets,) = [c["targets"] for c in job["static_configs"]]
    assert targets == [f"http://{EDGE}:{edge_container_port()}/health"]


def test_every_job_scrapes_something_compose_runs(jobs: dict[str, dict[str, Any]]) -> None:
    services = set(load_compose(COMPOSE)["services"])
    assert set(jobs) - {HEALTH_JOB} <= services


def test_promtool_accepts_the_configuration_and_rules(
    tmp_path: Path, rules: list[dict[str, Any]]
) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed")
    for command in (["check", "config", str(PROMETHEUS)], ["check", "rules", str(ALERTS)]):
        result = subprocess.run([promtool, *command], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    by_name = {rule["alert"]: rule for rule in rules}

    def expected(alert: str, **labels: str) -> dict[str, Any]:
        """The alert as it fires with these labels: its own labels, its annotations with
        `{{ $labels.… }}` filled in."""
        rule = by_name[alert]
        annotations = {
            key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
            for key, text in rule["annotations"].items()
        }
        return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}

    # Rules at work: a service with no replica up, Kommo refusing the tokens, /health
    # degraded; and one that must stay quiet (no 429 in the window).
    up = [("edge_api", "1x30"), ("kommo_gateway", "1x30"), ("vendedor", "1x30")]
    up += [("scheduling", "1x30"), ("conversation", "0x30")]
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    *(
                        {"series": f'up{{job="{job}", instance="{job}:1"}}', "values": values}
                        for job, values in up
                    ),
                    {"series": 'bridge_kommo_requests_total{status="401"}', "values": "0+5x30"},
                    {"series": 'bridge_kommo_requests_total{status="429"}', "values": "3x30"},
                    {
                        "series": f'probe_success{{job="{HEALTH_JOB}", instance="h"}}',
                        "values": "1 1 0x28",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "BridgeServiceGone",
                        "exp_alerts": [expected("BridgeServiceGone", job="conversation")],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "BridgeKommoUnauthorized",
                        "exp_alerts": [expected("BridgeKommoUnauthorized")],
                    },
                    {"eval_time": "20m", "alertname": "BridgeKommoRateLimited", "exp_alerts": []},
                    {"eval_time": "5m", "alertname": "BridgeHealthDegraded", "exp_alerts": []},
                    {
                        "eval_time": "10m",
                        "alertname": "BridgeHealthDegraded",
                        "exp_alerts": [
                            expected("BridgeHealthDegraded", job=HEALTH_JOB, instance="h")
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------
# The alerts
# ---------------------------------------------------------------------------------------


def test_every_alert_is_complete(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "an alert name is used twice"
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_every_series_an_alert_reads_is_exported(rules: list[dict[str, Any]]) -> None:
    exported = exported_series()
    used = {name for rule in rules for name in series_names(rule["expr"])}
    assert used - exported.keys() - FOREIGN_SERIES == set(), "not exported by the bridge"
    # …and updated somewhere, not only defined.
    updated = updated_metric_names()
    for name in used - FOREIGN_SERIES:
        base = re.sub(r"_(total|created|bucket|count|sum)$", "", name)
        assert base in updated or name in updated, f"{name} is never updated"


def test_every_label_an_alert_matches_is_one_the_metric_has(
    rules: list[dict[str, Any]], jobs: dict[str, dict[str, Any]]
) -> None:
    exported = exported_series()
    source = services_source()
    for rule in rules:
        for series, label, operator, value in matchers(rule["expr"]):
            where = f"{rule['alert']}: {series}{{{label}{operator}{value!r}}}"
            if label == "job":
                assert set(value.split("|")) <= set(jobs), f"{where}: no such job"
                continue
            assert series in exported, f"{where}: a matcher on a foreign series"
            assert label in exported[series], f"{where}: {series} has no label {label}"
            for alternative in value.split("|"):
                # Values the code writes as they are (queues, outcomes, routes): a typo
                # would match nothing, for ever.
                if re.fullmatch(r"[a-z][a-z_]*|/[\w/{}-]*", alternative):
                    assert f'"{alternative}"' in source, f"{where}: the code never sets it"


def test_the_alerts_cover_what_an_operator_must_hear_of(rules: list[dict[str, Any]]) -> None:
    exprs = " ".join(rule["expr"] for rule in rules)
    for needed in (
        f'probe_success{{job="{HEALTH_JOB}"}}',  # /health degraded
        'bridge_queue_depth{queue=~"dead_letters|work_dead_letters"}',
        'bridge_queue_depth{queue="events"}',  # backlog
        "bridge_n8n_deliveries_total",
        'bridge_kommo_requests_total{status="429"}',
        'bridge_kommo_requests_total{status="401"}',
        'route="/webhooks/kommo", status="503"',
    ):
        assert needed in exprs, needed


def test_the_guide_names_the_metrics_and_alerts_that_exist(rules: list[dict[str, Any]]) -> None:
    codes = list(inline_code(prose_lines(GUIDE)))
    (project,) = re.findall(r"^COMPOSE_PROJECT_NAME=(\S+)$", guide_text(), re.M)
    network = f"{project}_default"  # Docker's name, not a metric
    metric_names = {c for c in codes if re.fullmatch(r"bridge_[a-z_]+", c)} - {network}
    assert len(metric_names) >= 8
    # A histogram is named by its family (`…_seconds`); its series add _bucket, _sum…
    families = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in exported_series()}
    assert metric_names - exported_series().keys() - families == set(), "nothing exports"
    alerts_named = {c for c in codes if re.fullmatch(r"Bridge[A-Z]\w+", c)}
    assert alerts_named == {rule["alert"] for rule in rules}, "the guide's table of alerts"


def test_the_expression_reader() -> None:
    expr = (
        'sum by (queue) (rate(foo_total{a="b", c=~"d|e"}[5m])) / ignoring(x) bar '
        '> 0 and absent(up{job="j"}) or max without (instance) (baz) offset 5m'
    )
    assert series_names(expr) == {"foo_total", "bar", "up", "baz"}
    assert matchers(expr) == [
        ("foo_total", "a", "=", "b"),
        ("foo_total", "c", "=~", "d|e"),
        ("up", "job", "=", "j"),
    ]
