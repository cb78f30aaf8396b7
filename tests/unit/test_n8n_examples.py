"""The example n8n workflows (examples/n8n) import into n8n and talk the bridge's contract.

Checked as data: every file is a workflow n8n can import (nodes, a consistent `connections`
object), it receives the bridge's envelope on a POST webhook, and it answers through
`POST <BRIDGE_URL>/send-response` with the `X-API-Key` header and the envelope's
`reply_token`.

The shipped workflow is also checked against docs/n8n-contract.md: every envelope field a
node reads exists in the envelope of the event its branch handles, no agent passes files,
phones, e-mails or ways back to the bridge to the model, every call to the bridge carries
the key credential, and the credentials have the names the READMEs give.

And it cannot be made to hand the bridge's key to someone else: the Webhook refuses a
request without the bridge's header (Header Auth), and the key goes only to the bridge's
URL as n8n is configured with it (`$env.BRIDGE_URL`), never to a URL the request names.
(How it behaves in a real n8n, forged envelopes included, is `make n8n-check`.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.kommo_gateway.v1 import kommo_gateway_pb2 as gw
from bridge.vendedor.v1 import vendedor_pb2 as vd
from services.common.privacy import ContactDisclosure
from services.conversation import envelope
from services.conversation.webhook_events import Attachment, MessageEvent
from services.scheduling import domain
from services.scheduling.servicer import window_fields

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "n8n"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
REPLY_WORKFLOW = EXAMPLES / "bridge-reply-workflow.json"

WEBHOOK_TYPE = "n8n-nodes-base.webhook"
HTTP_REQUEST_TYPE = "n8n-nodes-base.httpRequest"
SWITCH_TYPE = "n8n-nodes-base.switch"
IF_TYPE = "n8n-nodes-base.if"
STICKY_NOTE_TYPE = "n8n-nodes-base.stickyNote"
BRIDGE_EVENTS = {"message.received", "conversation.proactive", "scheduling.requested"}
API_KEY_HEADER = "x-api-key"

Workflow = dict[str, Any]
Node = dict[str, Any]


def _load(path: Path) -> Workflow:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a JSON object"
    return data


def _nodes(workflow: Workflow, node_type: str | None = None) -> list[Node]:
    nodes: list[Node] = workflow["nodes"]
    return [n for n in nodes if node_type is None or n["type"] == node_type]


def _links(workflow: Workflow) -> list[tuple[str, str, dict[str, Any]]]:
    """(source node, connection kind, link) for every link in `connections`."""
    return [
        (source, kind, link)
        for source, outputs in workflow["connections"].items()
        for kind, branches in outputs.items()
        for branch in branches
        for link in branch or []
    ]


def _sends_api_key(node: Node) -> bool:
    """The header is set on the node, or comes from a Header Auth credential named for it."""
    parameters = node["parameters"]
    headers = parameters.get("headerParameters", {}).get("parameters", [])
    if any(str(h.get("name", "")).lower() == API_KEY_HEADER for h in headers):
        return True
    uses_header_auth = (
        parameters.get("authentication") == "genericCredentialType"
        and parameters.get("genericAuthType") == "httpHeaderAuth"
        and "httpHeaderAuth" in node.get("credentials", {})
    )
    return uses_header_auth and API_KEY_HEADER in str(node.get("notes", "")).lower()


def _body(node: Node) -> str:
    parameters = node["parameters"]
    return str(parameters.get("jsonBody", "")) + json.dumps(parameters.get("bodyParameters", {}))


# The bridge's address comes from n8n's own configuration: `={{ <$env.BRIDGE_URL> }}/<path>`,
# every value in the path escaped (`{{ encodeURIComponent(…) }}`).
BRIDGE_URL_VARIABLE = "$env.BRIDGE_URL"
SEND_RESPONSE_PATH = "/send-response"
STATUS_PATH = "/agendamento/{}/status"
_BRIDGE_URL = re.compile(r"=\{\{(?P<base>[^{}]*)\}\}(?P<path>/.*)", re.S)
_PATH_VALUE = re.compile(r"\{\{\s*encodeURIComponent\((?P<value>[^{}]*)\)\s*\}\}")
_VARIABLE = re.compile(r"\$\w+(?:\.\w+)?")


def bridge_path(url: str) -> str | None:
    """The path of a URL built on the bridge's address as n8n is configured with it,
    with its escaped values as `{}` ("/agendamento/{}/status"); None for any other URL:
    one whose address reads anything but `$env.BRIDGE_URL` (the request, above all)."""
    found = _BRIDGE_URL.fullmatch(url)
    if not found or set(_VARIABLE.findall(found["base"])) != {BRIDGE_URL_VARIABLE}:
        return None
    path = _PATH_VALUE.sub("{}", found["path"])
    return None if "{{" in path or "}}" in path else path


def test_bridge_path_accepts_only_the_configured_address() -> None:
    base = "={{ String($env.BRIDGE_URL ?? '').replace(/\\/+$/, '') }}"
    assert bridge_path(base + "/send-response") == "/send-response"
    value = "{{ encodeURIComponent($('Webhook').item.json.body.scheduling.id) }}"
    assert bridge_path(f"{base}/agendamento/{value}/status") == "/agendamento/{}/status"
    for url in [
        "={{ $('Webhook').item.json.body.callback.url }}",
        "={{ $json.body.scheduling.status_callback.url }}",
        "={{ $env.BRIDGE_URL || $json.body.callback.url }}/send-response",
        "={{ $env.BRIDGE_URL }}{{ $json.body.callback.url }}",
        "={{ $env.BRIDGE_URL }}/agendamento/{{ $json.body.scheduling.id }}/status",
        "https://bridge.example.com/send-response",
    ]:
        assert bridge_path(url) is None, url


def _replies_to_the_bridge(node: Node) -> bool:
    parameters = node["parameters"]
    return (
        node["type"] == HTTP_REQUEST_TYPE
        and parameters.get("method") == "POST"
        and bridge_path(str(parameters.get("url", ""))) == SEND_RESPONSE_PATH
        and _sends_api_key(node)
        and "reply_token" in _body(node)
        and "callback.reply_token" in _body(node)
    )


def test_there_is_an_example_workflow() -> None:
    assert REPLY_WORKFLOW in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_an_importable_n8n_workflow(path: Path) -> None:
    workflow = _load(path)
    assert isinstance(workflow.get("nodes"), list) and workflow["nodes"]
    assert isinstance(workflow.get("connections"), dict)
    for node in workflow["nodes"]:
        for key in ("id", "name", "type", "typeVersion", "position", "parameters"):
            assert key in node, f"{node.get('name')!r} has no {key!r}"
        assert isinstance(node["parameters"], dict)
        assert len(node["position"]) == 2
    names = [n["name"] for n in workflow["nodes"]]
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(names) == len(set(names)), "node names must be unique (connections use them)"
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_connection_joins_existing_nodes(path: Path) -> None:
    workflow = _load(path)
    names = {n["name"] for n in workflow["nodes"]}
    for source, kind, link in _links(workflow):
        assert source in names, f"connection from unknown node {source!r}"
        assert link["node"] in names, f"{source!r} connects to unknown node {link['node']!r}"
        assert link["type"] == kind
        assert isinstance(link["index"], int) and link["index"] >= 0


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_node_is_wired_into_the_flow(path: Path) -> None:
    workflow = _load(path)
    wired = {source for source, _, _ in _links(workflow)}
    wired |= {link["node"] for _, _, link in _links(workflow)}
    loose = {n["name"] for n in workflow["nodes"] if n["type"] != STICKY_NOTE_TYPE} - wired
    assert not loose, f"nodes connected to nothing: {sorted(loose)}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_receives_the_envelope_on_a_post_webhook(path: Path) -> None:
    webhooks = _nodes(_load(path), WEBHOOK_TYPE)
    assert any(w["parameters"].get("httpMethod") == "POST" for w in webhooks)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_an_http_request_replies_to_the_callback_with_api_key_and_reply_token(
    path: Path,
) -> None:
    requests = _nodes(_load(path), HTTP_REQUEST_TYPE)
    assert any(_replies_to_the_bridge(node) for node in requests)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_replies_send_the_flows_request_id_back(path: Path) -> None:
    """The bridge logs a reply under the id of the message it answers only if n8n
    returns the envelope's X-Request-ID header."""
    replies = [n for n in _nodes(_load(path), HTTP_REQUEST_TYPE) if _replies_to_the_bridge(n)]
    assert replies
    for node in replies:
        parameters = node["parameters"]
        headers = parameters.get("headerParameters", {}).get("parameters", [])
        echoed = [h for h in headers if str(h.get("name", "")).lower() == "x-request-id"]
        assert parameters.get("sendHeaders") is True, node["name"]
        assert echoed, node["name"]
        assert "headers['x-request-id']" in echoed[0]["value"], node["name"]


def test_reply_workflow_answers_at_once_on_its_documented_path() -> None:
    (webhook,) = _nodes(_load(REPLY_WORKFLOW), WEBHOOK_TYPE)
    parameters = webhook["parameters"]
    assert parameters["path"] == "kommo-bridge"
    # The bridge must not wait for the AI: the webhook answers when the request arrives.
    assert parameters.get("responseMode", "onReceived") == "onReceived"


def test_reply_workflow_routes_every_bridge_event() -> None:
    workflow = _load(REPLY_WORKFLOW)
    (switch,) = _nodes(workflow, SWITCH_TYPE)
    rules = switch["parameters"]["rules"]["values"]
    routed = {
        condition["rightValue"]
        for rule in rules
        for condition in rule["conditions"]["conditions"]
        if "body.event" in condition["leftValue"]
    }
    assert routed == BRIDGE_EVENTS
    outputs = workflow["connections"][switch["name"]]["main"]
    assert len(outputs) == len(rules) and all(outputs), "every event leads somewhere"


def test_reply_workflow_agents_have_a_chat_model() -> None:
    workflow = _load(REPLY_WORKFLOW)
    agents = {n["name"] for n in _nodes(workflow, "@n8n/n8n-nodes-langchain.agent")}
    fed_by_a_model = {
        link["node"] for _, kind, link in _links(workflow) if kind == "ai_languageModel"
    }
    assert agents and agents <= fed_by_a_model


# --- The workflow against the contract (docs/n8n-contract.md) ------------------------------
#
# The envelope of each event as the bridge sends it: an object is a dict of its fields, an
# array of objects is a one-element list, `ANY` a value (or a list of values) read whole,
# `MAP` an object whose keys are data (the lead's custom fields by name).
ANY = "any"
MAP = "map"
Shape = dict[str, Any]

_VENDEDOR: Shape = {"id": ANY, "name": ANY, "email": ANY, "areas": ANY, "source": ANY}
_CONVERSATION_ENVELOPE: Shape = {
    "event": ANY,
    "event_id": ANY,
    "occurred_at": ANY,
    "conversation": {
        "id": ANY,
        "lead_id": ANY,
        "contact_id": ANY,
        "chat_id": ANY,
        "talk_id": ANY,
        "bot_state": ANY,
        # WhatsApp's 24-hour window: false = only a template reaches the customer now.
        "origin": ANY,
        "window_open": ANY,
        "window_open_until": ANY,
    },
    "lead": {
        "id": ANY,
        "name": ANY,
        "status_id": ANY,
        "pipeline_id": ANY,
        "responsible_user_id": ANY,
        "price": ANY,
        "custom_fields": MAP,
    },
    "contact": {"id": ANY, "name": ANY, "phone": ANY, "email": ANY},
    "vendedor": _VENDEDOR,
    "messages": [
        {
            "id": ANY,
            "text": ANY,
            "at": ANY,
            "type": ANY,
            "attachment": {"type": ANY, "link": ANY, "file_name": ANY},
        }
    ],
    "history": [{"role": ANY, "text": ANY, "at": ANY, "type": ANY}],
    "trigger": ANY,
    "scheduling": ANY,  # null
    "callback": {"url": ANY, "reply_token": ANY},
    # The approved WhatsApp templates n8n may answer with instead of text.
    "templates": [{"purpose": ANY, "variables": ANY}],
}
AGENDA_ROW = (
    "id lead_id lead_nome contato_nome contato_telefone vendedor_id vendedor_nome "
    "vendedor_email data_hora data hora preferencia observacoes status"
).split()
_SCHEDULING_ENVELOPE: Shape = {
    "event": ANY,
    "event_id": ANY,
    "occurred_at": ANY,
    # The window as in the other envelopes (null when the bridge could not say), and at
    # the top level too, also for a lead with no conversation.
    "conversation": {
        "id": ANY,
        "lead_id": ANY,
        "origin": ANY,
        "window_open": ANY,
        "window_open_until": ANY,
    },
    "lead": {"id": ANY, "name": ANY, "status_id": ANY},
    "contact": {"id": ANY, "name": ANY, "phone": ANY},
    "vendedor": _VENDEDOR,
    "messages": ANY,  # []
    "history": ANY,  # []
    "trigger": ANY,  # null
    "scheduling": {
        "id": ANY,
        "requested_at": ANY,
        "timezone": ANY,
        "preference": ANY,
        "notes": ANY,
        "agenda": dict.fromkeys(AGENDA_ROW, ANY),
        "status_callback": {"url": ANY, "method": ANY, "statuses": ANY},
    },
    # No reply_token (no turn is being answered): the lead and a key of the agendamento
    # address the confirmation, delivered once however often it is sent.
    "callback": {"url": ANY, "reply_token": ANY, "lead_id": ANY, "idempotency_key": ANY},
    "window": {"origin": ANY, "window_open": ANY, "window_open_until": ANY},
    "templates": [{"purpose": ANY, "variables": ANY}],
}
ENVELOPES: dict[str, Shape] = {
    "message.received": _CONVERSATION_ENVELOPE,
    "conversation.proactive": _CONVERSATION_ENVELOPE,
    "scheduling.requested": _SCHEDULING_ENVELOPE,
}
# What must never reach the model: personal data, and the ways back into the bridge.
SENSITIVE = [
    ("contact", "phone"),
    ("contact", "email"),
    ("vendedor", "email"),
    ("callback", "url"),
    ("callback", "reply_token"),
    ("messages", "[]", "attachment", "link"),
    ("scheduling", "status_callback", "url"),
    ("scheduling", "agenda", "contato_telefone"),
]
# The credentials, (type, name), the same in the workflow and the READMEs: n8n links a
# node to a credential on import only by exact name and type.
BRIDGE_KEY_CREDENTIAL = "Bridge API key"  # the bridge's EDGE_API_KEY, n8n → bridge
WEBHOOK_CREDENTIAL = "Bridge webhook auth"  # the bridge's N8N_AUTH_HEADER, bridge → n8n
CREDENTIALS = {
    ("openAiApi", "OpenAI (bridge)"),
    ("supabaseApi", "Supabase (bridge)"),
    ("httpHeaderAuth", BRIDGE_KEY_CREDENTIAL),
    ("httpHeaderAuth", WEBHOOK_CREDENTIAL),
}
AGENT_TYPE = "@n8n/n8n-nodes-langchain.agent"
SUPABASE_TYPE = "n8n-nodes-base.supabase"
ROOT = EXAMPLES.parents[1]
CONTRACT = ROOT / "docs" / "n8n-contract.md"

# Where an expression reads the envelope: the item the Webhook node made ($json in a node
# it feeds directly, or through the Switch) or that item looked up by node name.
_WEBHOOK_ITEM = r"\$\(\s*['\"]Webhook['\"]\s*\)\.(?:item|first\(\)|last\(\))\.json"
_ENVELOPE = re.compile(rf"(?P<source>\$json|{_WEBHOOK_ITEM})\.body\b")
_SEGMENT = re.compile(r"\s*\??\.\s*([A-Za-z_]\w*)|\[\s*['\"]([^'\"]+)['\"]\s*\]")
_CALL = re.compile(r"\s*\(")
# `(<array> ?? []).map(h => … h.text …)`: `h` is an element of the array.
_ELEMENT_VAR = re.compile(
    r"\s*(?:(?:\?\?|\|\|)\s*\[\]\s*\))?\s*\??\.(?:map|filter|some|every|find|forEach|flatMap)"
    r"\(\s*\(?\s*([A-Za-z_]\w*)"
)
_JS_PROPERTIES = {"length"}
Path_ = tuple[str, ...]


def _strings(value: Any) -> list[str]:
    """Every string in a node's parameters: where n8n expressions live."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def envelope_reads(text: str) -> list[tuple[str, Path_]]:
    """(source, path) of every envelope field an expression reads: `$json.body.lead?.id`
    → ("$json", ("lead", "id")); the elements of an array read in a callback
    (`.map(h => h.text)`) are "[]" (`("history", "[]", "text")`)."""
    reads = []
    for found in _ENVELOPE.finditer(text):
        path: list[str] = []
        position = found.end()
        while segment := _SEGMENT.match(text, position):
            name = segment.group(1) or segment.group(2)
            if _CALL.match(text, segment.end()) or name in _JS_PROPERTIES:
                break  # a method of the value (`.map(`, `.split(`), not a field
            path.append(name)
            position = segment.end()
        source = "$json" if found.group("source") == "$json" else "Webhook"
        element = _ELEMENT_VAR.match(text, position)
        var = re.escape(element.group(1)) if element else ""
        fields = dict.fromkeys(re.findall(rf"\b{var}\??\.([A-Za-z_]\w*)", text[position:]))
        elements = [(*path, "[]", f) for f in fields if var and f not in _JS_PROPERTIES]
        # An array mapped over is read through its elements' fields, not whole.
        reads += [(source, p) for p in elements or [tuple(path)]]
    return reads


def documented(shape: Any, path: Path_) -> bool:
    for name in path:
        if shape == MAP:
            return True  # any key of a free map: the rest is its value
        if isinstance(shape, list) and name == "[]":
            shape = shape[0]
        elif isinstance(shape, dict) and name in shape:
            shape = shape[name]
        else:
            return False
    return True


def _main_successors(workflow: Workflow, name: str, output: int | None = None) -> list[str]:
    outputs = workflow["connections"].get(name, {}).get("main", [])
    chosen = outputs if output is None else outputs[output : output + 1]
    return [link["node"] for branch in chosen for link in branch or []]


def _reachable(workflow: Workflow, start: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_main_successors(workflow, name))
    return seen


def _switch(workflow: Workflow) -> Node:
    (switch,) = _nodes(workflow, SWITCH_TYPE)
    return switch


def events_by_node(workflow: Workflow) -> dict[str, set[str]]:
    """The event types whose envelopes each node handles: the Switch's branch it is on
    (every event for a node before the Switch)."""
    switch = _switch(workflow)
    rules = switch["parameters"]["rules"]["values"]
    handled: dict[str, set[str]] = {n["name"]: set() for n in workflow["nodes"]}
    for index, rule in enumerate(rules):
        (event,) = [c["rightValue"] for c in rule["conditions"]["conditions"]]
        for name in _reachable(workflow, _main_successors(workflow, switch["name"], index)):
            handled[name].add(event)
    for name, events in handled.items():
        if not events:
            handled[name] = set(ENVELOPES)
    return handled


def fed_the_envelope(workflow: Workflow) -> set[str]:
    """Nodes whose input item ($json) is the Webhook's: fed by it directly or through
    the Switch and IF nodes, which pass items on unchanged."""
    (webhook,) = _nodes(workflow, WEBHOOK_TYPE)
    types = {n["name"]: n["type"] for n in workflow["nodes"]}
    fed: set[str] = set()
    todo = _main_successors(workflow, webhook["name"])
    while todo:
        name = todo.pop()
        if name in fed:
            continue
        fed.add(name)
        if types[name] in (SWITCH_TYPE, IF_TYPE):
            todo.extend(_main_successors(workflow, name))
    return fed


def _prompts(node: Node) -> list[str]:
    parameters = node["parameters"]
    return [
        str(parameters.get("text", "")),
        str(parameters.get("options", {}).get("systemMessage", "")),
    ]


def _calls_the_bridge(node: Node) -> bool:
    """An HTTP request to the bridge: its configured address, or one the envelope gives."""
    url = str(node["parameters"].get("url", ""))
    return node["type"] == HTTP_REQUEST_TYPE and (
        bridge_path(url) is not None
        or any(
            path[:1] == ("callback",) or path[:2] == ("scheduling", "status_callback")
            for _, path in envelope_reads(url)
        )
    )


def _carries_the_bridge_key(node: Node) -> bool:
    reference = node.get("credentials", {}).get("httpHeaderAuth", {})
    return bool(reference.get("name") == BRIDGE_KEY_CREDENTIAL)


def _scheduling_nodes(workflow: Workflow) -> list[Node]:
    handled = events_by_node(workflow)
    return [n for n in workflow["nodes"] if handled[n["name"]] == {"scheduling.requested"}]


def test_envelope_reads_are_parsed_from_expressions() -> None:
    text = (
        "={{ $json.body.lead?.custom_fields ?? {} }} {{ $('Webhook').item.json.body"
        ".callback.url.replace(/x/, '') }} {{ ($json.body.history ?? []).map(h => h.role"
        " + h.text.trim()).join() }} {{ $json.body['event'] }} {{ $json.body }}"
    )
    assert envelope_reads(text) == [
        ("$json", ("lead", "custom_fields")),
        ("Webhook", ("callback", "url")),
        ("$json", ("history", "[]", "role")),
        ("$json", ("history", "[]", "text")),
        ("$json", ("event",)),
        ("$json", ()),
    ]
    assert documented(_CONVERSATION_ENVELOPE, ("lead", "custom_fields", "Área"))
    assert documented(_CONVERSATION_ENVELOPE, ("history", "[]", "role"))
    assert documented(_SCHEDULING_ENVELOPE, ("callback", "lead_id"))
    assert not documented(_CONVERSATION_ENVELOPE, ("callback", "lead_id"))
    assert not documented(_CONVERSATION_ENVELOPE, ("scheduling", "id"))


def test_every_field_the_workflow_reads_is_in_the_envelope_of_its_event() -> None:
    workflow = _load(REPLY_WORKFLOW)
    handled = events_by_node(workflow)
    fed = fed_the_envelope(workflow)
    undocumented = []
    for node in workflow["nodes"]:
        for text in _strings(node["parameters"]):
            for source, path in envelope_reads(text):
                if source == "$json" and node["name"] not in fed:
                    undocumented.append(f"{node['name']}: $json is not the envelope here")
                for event in sorted(handled[node["name"]]):
                    if not documented(ENVELOPES[event], path):
                        undocumented.append(f"{node['name']}: {'.'.join(path)} ({event})")
    assert not undocumented, undocumented


def test_the_workflow_reads_the_envelope() -> None:
    """The check above is not vacuous: the nodes do read the envelope."""
    workflow = _load(REPLY_WORKFLOW)
    reads = {
        path
        for node in workflow["nodes"]
        for text in _strings(node["parameters"])
        for _, path in envelope_reads(text)
    }
    for path in [
        ("event",),
        ("messages", "[]", "text"),
        ("history", "[]", "role"),
        ("callback", "reply_token"),
        ("scheduling", "id"),
        ("callback", "idempotency_key"),
    ]:
        assert path in reads, path


def test_no_agent_gets_a_file() -> None:
    """A file on the item (the Webhook's raw body is one) goes to the model as a message
    unless the agent's "Automatically Passthrough Binary Images" is off (it is on by
    default, and n8n sends a JSON or text file as text: the whole envelope)."""
    workflow = _load(REPLY_WORKFLOW)
    for webhook in _nodes(workflow, WEBHOOK_TYPE):
        assert webhook["parameters"].get("options", {}).get("rawBody") is not True
    agents = _nodes(workflow, AGENT_TYPE)
    assert agents
    for agent in agents:
        options = agent["parameters"].get("options", {})
        assert options.get("passthroughBinaryImages") is False, agent["name"]


def test_prompts_hold_no_phone_email_or_way_back_to_the_bridge() -> None:
    workflow = _load(REPLY_WORKFLOW)
    for agent in _nodes(workflow, AGENT_TYPE):
        assert agent["parameters"].get("promptType") == "define", agent["name"]
        for prompt in _prompts(agent):
            reads = envelope_reads(prompt)
            for _, path in reads:
                # Reading an object whole (`contact`, or the body) would carry its fields.
                leaked = [s for s in SENSITIVE if s[: len(path)] == path]
                assert not leaked, f"{agent['name']} reads {'.'.join(path) or 'body'}"
            rest = _ENVELOPE.sub("", prompt)
            for whole_item in ("$json", "$input", "$("):
                assert whole_item not in rest, f"{agent['name']} reads {whole_item}… whole"
            if ("lead", "custom_fields") in {path for _, path in reads}:
                # The bridge's own reply field is noise for the model, whatever the bridge
                # sends.
                assert "resposta do bot" in prompt.lower(), agent["name"]


def test_every_call_to_the_bridge_carries_the_api_key_credential() -> None:
    workflow = _load(REPLY_WORKFLOW)
    calls = [n for n in _nodes(workflow, HTTP_REQUEST_TYPE) if _calls_the_bridge(n)]
    assert len(calls) >= 3, "reply, scheduling status and confirmation"
    for node in calls:
        parameters = node["parameters"]
        assert parameters.get("authentication") == "genericCredentialType", node["name"]
        assert parameters.get("genericAuthType") == "httpHeaderAuth", node["name"]
        assert node["credentials"]["httpHeaderAuth"]["name"] == BRIDGE_KEY_CREDENTIAL
        headers = parameters.get("headerParameters", {}).get("parameters", [])
        assert all(str(h.get("name", "")).lower() != API_KEY_HEADER for h in headers), (
            f"{node['name']}: the key belongs in the credential, not in the workflow"
        )


def test_credentials_are_the_documented_set() -> None:
    workflow = _load(REPLY_WORKFLOW)
    used = {
        (kind, reference["name"])
        for node in workflow["nodes"]
        for kind, reference in node.get("credentials", {}).items()
    }
    assert used == CREDENTIALS


def test_the_readme_names_the_workflows_credentials() -> None:
    text = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    missing = sorted(name for _, name in CREDENTIALS if name not in text)
    assert not missing, f"examples/n8n/README.md does not name the credentials {missing}"


def test_the_main_readme_names_the_credentials_of_the_outgoing_calls() -> None:
    # The main README's deployment guide names those; examples/n8n/README.md all of them.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    called = {"OpenAI (bridge)", "Supabase (bridge)", BRIDGE_KEY_CREDENTIAL}
    missing = sorted(name for name in called if name not in text)
    assert not missing, f"README.md does not name the credentials {missing}"


# --- Nobody but the bridge gets the bridge's key (issue 19) --------------------------------


def test_the_webhook_refuses_requests_without_the_bridges_header() -> None:
    """Header Auth: n8n answers 403 to a request without the header the bridge sends
    (N8N_AUTH_HEADER) and runs nothing. Its credential is not the bridge's key."""
    for webhook in _nodes(_load(REPLY_WORKFLOW), WEBHOOK_TYPE):
        assert webhook["parameters"].get("authentication") == "headerAuth", webhook["name"]
        reference = webhook.get("credentials", {}).get("httpHeaderAuth", {})
        assert reference.get("name") == WEBHOOK_CREDENTIAL, webhook["name"]
    assert WEBHOOK_CREDENTIAL != BRIDGE_KEY_CREDENTIAL


def test_the_bridge_key_goes_only_to_the_configured_bridge_url() -> None:
    """A node that carries the key takes its address from n8n's configuration
    (`$env.BRIDGE_URL`) plus a fixed path; nothing of the request (`$json`, the Webhook's
    item, `body.callback`, `body.scheduling.status_callback`) decides where it goes. The
    one value in a path, the agendamento's id, is escaped."""
    workflow = _load(REPLY_WORKFLOW)
    carriers = [n for n in workflow["nodes"] if _carries_the_bridge_key(n)]
    assert len(carriers) >= 3, "reply, scheduling status and confirmation"
    for node in carriers:
        url = str(node["parameters"].get("url", ""))
        assert node["type"] == HTTP_REQUEST_TYPE, node["name"]
        assert bridge_path(url) in {SEND_RESPONSE_PATH, STATUS_PATH}, f"{node['name']}: {url}"
        address = _PATH_VALUE.sub("", url)
        for request_data in ("$json", "$input", "$(", "$node", "body", "callback", "headers"):
            assert request_data not in address, f"{node['name']}: the URL reads {request_data}"
        values = [v for value in _PATH_VALUE.findall(url) for _, v in envelope_reads(value)]
        assert set(values) <= {("scheduling", "id")}, node["name"]
        # A redirect from a proxy in front of the bridge must not carry the key elsewhere.
        redirect = node["parameters"].get("options", {}).get("redirect", {})
        assert redirect.get("redirect", {}).get("followRedirects") is False, node["name"]


def test_no_node_reads_the_envelopes_urls() -> None:
    """The envelope's `callback.url` and `scheduling.status_callback.url` say where the
    bridge is as the bridge sees it; this workflow uses neither. (The agenda row stores
    the `scheduling` object as data; no URL is built from it.)"""
    workflow = _load(REPLY_WORKFLOW)
    for node in workflow["nodes"]:
        for text in _strings(node["parameters"]):
            for _, path in envelope_reads(text):
                assert path[:2] != ("callback", "url"), node["name"]
                assert path[:2] != ("scheduling", "status_callback"), node["name"]


def test_every_url_with_a_credential_is_fixed_by_n8ns_configuration() -> None:
    """No node with a credential of any kind sends it to an address the request gives."""
    workflow = _load(REPLY_WORKFLOW)
    for node in workflow["nodes"]:
        url = node["parameters"].get("url")
        if node.get("credentials") and url is not None:
            assert bridge_path(str(url)) is not None, f"{node['name']}: {url}"


def test_workflow_keeps_its_id_so_a_new_import_updates_it() -> None:
    workflow = _load(REPLY_WORKFLOW)
    # n8n's workflow ids: 16 letters and digits. `n8n import:workflow` updates the
    # workflow with this id instead of adding a copy.
    assert re.fullmatch(r"[A-Za-z0-9]{16}", str(workflow.get("id", "")))
    (webhook,) = _nodes(workflow, WEBHOOK_TYPE)
    assert webhook.get("webhookId"), "the Production URL stays the same across imports"


def test_scheduling_reports_its_status_to_the_bridge() -> None:
    """Without the status callback a request stays `delivered` for ever."""
    workflow = _load(REPLY_WORKFLOW)
    (supabase,) = _nodes(workflow, SUPABASE_TYPE)
    # A failed insert (the UNIQUE event_id of a repeated delivery, Supabase down) must
    # still be reported: the node's error output is wired.
    assert supabase.get("onError") == "continueErrorOutput"
    success, failure = workflow["connections"][supabase["name"]]["main"]
    statuses: dict[str, set[str]] = {}
    for node in _scheduling_nodes(workflow):
        url = str(node["parameters"].get("url", ""))
        if bridge_path(url) == STATUS_PATH:
            assert node["parameters"]["method"] == "POST"
            body = str(node["parameters"].get("jsonBody", ""))
            for status in re.findall(r"status: '(\w+)'", body):
                statuses.setdefault(status, set()).add(node["name"])
    assert set(statuses) == {"confirmed", "failed"}
    after_success = _reachable(workflow, [link["node"] for link in success])
    after_failure = _reachable(workflow, [link["node"] for link in failure])
    assert statuses["confirmed"] & after_success
    assert statuses["failed"] <= after_failure and statuses["failed"] - after_success


def test_scheduling_confirms_to_the_customer_once_it_is_confirmed() -> None:
    workflow = _load(REPLY_WORKFLOW)
    confirmations = [
        node
        for node in _scheduling_nodes(workflow)
        if node["type"] == HTTP_REQUEST_TYPE
        and bridge_path(str(node["parameters"]["url"])) == SEND_RESPONSE_PATH
    ]
    # As text, or as the approved template when WhatsApp's window is closed (below).
    assert len(confirmations) == 2
    for node in confirmations:
        body = str(node["parameters"]["jsonBody"])
        # The scheduling envelope has no reply_token: the lead says who, and a key of the
        # agendamento makes a repeated delivery confirm once.
        assert "lead_id:" in body and ".body.callback.lead_id" in body, node["name"]
        assert "idempotency_key:" in body and ".body.callback.idempotency_key" in body
        assert "reply_token" not in body, node["name"]
    # Only after the bridge took the status `confirmed`.
    confirming = [
        n["name"]
        for n in _scheduling_nodes(workflow)
        if "status: 'confirmed'" in str(n["parameters"].get("jsonBody", ""))
    ]
    after = _reachable(
        workflow, [s for name in confirming for s in _main_successors(workflow, name)]
    )
    assert {node["name"] for node in confirmations} <= after


# --- WhatsApp's 24-hour window (issue 20) ---------------------------------------------------
#
# Outside the window only an approved template reaches the customer. The envelope says so
# (`conversation.window_open` false) and lists the templates the bridge can send
# (`templates`); the workflow answers with one of them instead of free text.
_WINDOW_CLOSED = re.compile(r"\.body\.(?:conversation|window)\??\.window_open\s*===\s*false")
_TEMPLATE_KEY = re.compile(r"\btemplate:")
_TEXT_KEY = re.compile(r"\btext:")


def _conditions(node: Node) -> str:
    conditions = node["parameters"].get("conditions", {}).get("conditions", [])
    return " ".join(str(c.get("leftValue", "")) for c in conditions)


def _send_responses(workflow: Workflow, names: set[str]) -> list[Node]:
    return [
        n
        for n in workflow["nodes"]
        if n["name"] in names
        and n["type"] == HTTP_REQUEST_TYPE
        and bridge_path(str(n["parameters"].get("url", ""))) == SEND_RESPONSE_PATH
    ]


def _event_branch(workflow: Workflow, event: str) -> list[str]:
    """The nodes the Switch hands one event's envelopes to."""
    switch = _switch(workflow)
    for index, rule in enumerate(switch["parameters"]["rules"]["values"]):
        if event in [c["rightValue"] for c in rule["conditions"]["conditions"]]:
            return _main_successors(workflow, switch["name"], index)
    raise AssertionError(f"no branch for {event}")


def _window_gate(workflow: Workflow, node: Node, template: str) -> tuple[set[str], set[str]]:
    """An IF asking "window closed and this template in the envelope?": the nodes after
    its true output (closed) and after its false one."""
    assert node["type"] == IF_TYPE, f"{node['name']} does not ask about the window"
    condition = _conditions(node)
    assert _WINDOW_CLOSED.search(condition), f"{node['name']}: {condition}"
    assert ("templates", "[]", "purpose") in {p for _, p in envelope_reads(condition)}
    assert f"'{template}'" in condition, f"{node['name']} does not look for {template!r}"
    # A false test, never a falsy one: an envelope without window_open (an older bridge,
    # a scheduling request) is answered with text as before.
    assert "!" not in condition.replace("!==", "")
    closed, opened = workflow["connections"][node["name"]]["main"]
    return (
        _reachable(workflow, [link["node"] for link in closed]),
        _reachable(workflow, [link["node"] for link in opened]),
    )


def test_a_proactive_start_into_a_closed_window_answers_with_its_template_not_the_model() -> None:
    workflow = _load(REPLY_WORKFLOW)
    agents = {n["name"] for n in _nodes(workflow, AGENT_TYPE)}
    by_name = {n["name"]: n for n in workflow["nodes"]}
    (gate,) = _event_branch(workflow, "conversation.proactive")
    closed, opened = _window_gate(workflow, by_name[gate], "proactive")
    assert "'proactive:' +" in _conditions(by_name[gate]), "the trigger's own template counts"

    # Closed: no model call; the template is the first message, answered to the envelope's
    # reply token.
    assert not closed & agents
    (answer,) = _send_responses(workflow, closed)
    body = str(answer["parameters"]["jsonBody"])
    assert _replies_to_the_bridge(answer)
    assert _TEMPLATE_KEY.search(body) and not _TEXT_KEY.search(body), body
    # The trigger's template first, then the general one: whichever the envelope lists.
    assert re.search(
        r"\[\s*'proactive:'\s*\+\s*[^\]]*\.body\.trigger\s*,\s*'proactive'\s*\]\.find\(", body
    ), body
    assert ("templates", "[]", "purpose") in {p for _, p in envelope_reads(body)}

    # Open (or no template to send): the model writes it, as before.
    assert opened & agents
    texts = _send_responses(workflow, opened)
    assert texts and all(_TEXT_KEY.search(str(n["parameters"]["jsonBody"])) for n in texts)


def test_a_customer_message_is_answered_by_the_model_as_before() -> None:
    """The customer just wrote: the window is open, nothing asks about it."""
    workflow = _load(REPLY_WORKFLOW)
    after = _reachable(workflow, _event_branch(workflow, "message.received"))
    by_name = {n["name"]: n for n in workflow["nodes"]}
    assert any(by_name[name]["type"] == AGENT_TYPE for name in after)
    assert not [name for name in after if by_name[name]["type"] == IF_TYPE]
    for node in _send_responses(workflow, after):
        body = str(node["parameters"]["jsonBody"])
        assert _TEXT_KEY.search(body) and not _TEMPLATE_KEY.search(body), node["name"]


def test_scheduling_confirms_with_its_template_when_the_window_is_closed() -> None:
    workflow = _load(REPLY_WORKFLOW)
    gates = [
        n
        for n in _scheduling_nodes(workflow)
        if n["type"] == IF_TYPE and _WINDOW_CLOSED.search(_conditions(n))
    ]
    assert len(gates) == 1, "the confirmation asks whether the window is closed"
    closed, opened = _window_gate(workflow, gates[0], "scheduling_confirmation")
    # The top-level window: a lead with no conversation yet (a form lead) has one too.
    reads = {path for _, path in envelope_reads(_conditions(gates[0]))}
    assert ("window", "window_open") in reads
    (template,) = _send_responses(workflow, closed)
    (text,) = _send_responses(workflow, opened)
    template_body = str(template["parameters"]["jsonBody"])
    text_body = str(text["parameters"]["jsonBody"])
    assert "template: 'scheduling_confirmation'" in template_body
    assert not _TEXT_KEY.search(template_body)
    assert _TEXT_KEY.search(text_body) and not _TEMPLATE_KEY.search(text_body)
    # The requested slot in the template's `horario`, as the text gives it.
    horario = re.search(r"variables:\s*\{\s*horario:(.*)\}", template_body, re.S)
    assert horario, template_body
    slot = "agenda.data + ' às ' + $('Webhook').item.json.body.scheduling.agenda.hora"
    assert slot in horario.group(1) and slot in text_body
    assert "agenda?.preferencia" in horario.group(1) and "agenda?.preferencia" in text_body
    # Both only once the agenda row is confirmed (the test above); never the model.
    agents = {n["name"] for n in _nodes(workflow, AGENT_TYPE)}
    assert not (closed | opened) & agents


def _contract_fields(section: str) -> set[str]:
    """The field names of one `### …` section of docs/n8n-contract.md."""
    text = CONTRACT.read_text(encoding="utf-8")
    found = re.search(rf"^### {re.escape(section)}\n(.*?)(?=^## |^### |\Z)", text, re.M | re.S)
    assert found, f"docs/n8n-contract.md has no section {section!r}"
    return set(re.findall(r"`([a-z_]+)`", found.group(1)))


def test_the_shapes_here_are_the_documented_contract() -> None:
    sections: dict[str, Shape] = {
        "Top-level fields": _CONVERSATION_ENVELOPE,
        "`conversation`": _CONVERSATION_ENVELOPE["conversation"],
        "`lead`": _CONVERSATION_ENVELOPE["lead"],
        "`contact`": _CONVERSATION_ENVELOPE["contact"],
        "`vendedor`": _VENDEDOR,
        "`messages`": _CONVERSATION_ENVELOPE["messages"][0],
        "`history`": _CONVERSATION_ENVELOPE["history"][0],
        "`scheduling`": {
            **_SCHEDULING_ENVELOPE["scheduling"],
            **_SCHEDULING_ENVELOPE["scheduling"]["agenda"],
            **_SCHEDULING_ENVELOPE["scheduling"]["status_callback"],
        },
    }
    for section, shape in sections.items():
        missing = set(shape) - _contract_fields(section)
        assert not missing, f"{section}: {sorted(missing)} not in docs/n8n-contract.md"


def test_the_shapes_here_are_what_the_bridge_builds() -> None:
    """The message envelope built by the bridge's own code has every field above."""
    event = MessageEvent(
        message_id="m1",
        chat_id="c1",
        talk_id=1,
        contact_id=2,
        lead_id=3,
        text="oi",
        created_at=1764000000,
        direction="incoming",
        author_id="a",
        author_type="external",
        author_name="Maria",
        origin="waba",
        message_type="picture",
        attachment=Attachment("picture", "https://example.com/x.jpg", "x.jpg"),
    )
    lead = gw.Lead(id=3, name="L", custom_fields=[gw.CustomField(field_name="Área", values=["x"])])
    built = envelope.message_envelope(
        event_id="e",
        conversation={key: None for key in _CONVERSATION_ENVELOPE["conversation"]},
        lead=envelope.lead_json(lead, 3, reply_field_id=900001),
        contact=envelope.contact_json(
            gw.Contact(id=2, name="Maria", phones=["+5511987654321"]), 2, ContactDisclosure()
        ),
        vendedor=envelope.vendedor_json(vd.Vendedor(id=9, name="Ana")),
        messages=[envelope.inbox_entry(event, "1-0")],
        history=[envelope.history_entry("customer", "oi", 1764000000.0, type="text")],
        callback_url="http://bridge/send-response",
        reply_token="t",
        occurred_at=1764000000.0,
    )

    def missing(shape: Any, value: Any, where: str) -> list[str]:
        """The documented fields the built value lacks, by path."""
        if isinstance(shape, list):
            return [p for item in value for p in missing(shape[0], item, f"{where}[]")]
        if not isinstance(shape, dict):
            return []
        gaps = []
        for key, inner in shape.items():
            if key in value:
                gaps += missing(inner, value[key], f"{where}.{key}")
            else:
                gaps.append(f"{where}.{key}")
        return gaps

    assert not missing(_CONVERSATION_ENVELOPE, built, "body")
    row = domain.agenda_row(
        request_id="r",
        slot=None,
        timezone="America/Sao_Paulo",
        preference="",
        notes="",
        lead={"id": 3},
        contact=None,
        vendedor={"id": 9, "name": "Ana"},
    )
    assert set(AGENDA_ROW) <= set(row)
    # The scheduling envelope's window, at the top level and in its conversation.
    assert set(window_fields(None)) == set(_SCHEDULING_ENVELOPE["window"])
    assert set(window_fields(None)) <= set(_SCHEDULING_ENVELOPE["conversation"])
