"""The example n8n workflows (examples/n8n) import into n8n and talk the bridge's contract.

Checked as data: every file is a workflow n8n can import (nodes, a consistent `connections`
object), it receives the bridge's envelope on a POST webhook, and it answers through
`POST <callback.url>` with the `X-API-Key` header and the envelope's `reply_token`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "n8n"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
REPLY_WORKFLOW = EXAMPLES / "bridge-reply-workflow.json"

WEBHOOK_TYPE = "n8n-nodes-base.webhook"
HTTP_REQUEST_TYPE = "n8n-nodes-base.httpRequest"
SWITCH_TYPE = "n8n-nodes-base.switch"
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


def _replies_to_the_bridge(node: Node) -> bool:
    parameters = node["parameters"]
    return (
        node["type"] == HTTP_REQUEST_TYPE
        and parameters.get("method") == "POST"
        and "callback.url" in str(parameters.get("url", ""))
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
    # Signature checks need the exact bytes the bridge signed.
    assert parameters.get("options", {}).get("rawBody") is True


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
