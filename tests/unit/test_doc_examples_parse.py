"""The documented request examples, without running them (issue 21): every one can be run
as written (tests/e2e/test_doc_examples.py runs them), every operation of the edge that
takes a body — or changes anything — has one, and the reading of curl commands is the
shell's and curl's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import ROOT
from services.edge_api.app import create_api
from services.edge_api.runtime import EdgeRuntime
from services.edge_api.settings import EdgeSettings
from tests.e2e.test_doc_examples import (
    Block,
    Example,
    ExampleError,
    Var,
    block_examples,
    build,
    examples,
    expand,
    files_with_examples,
    shell_blocks,
    unknown_variables,
)
from tests.unit.test_docs_links import markdown_files

CHANGING_METHODS = frozenset({"post", "put", "patch", "delete"})
PLACEHOLDER_BASE = "http://bridge.invalid"


def edge_schema() -> dict[str, Any]:
    settings = EdgeSettings(
        redis_url="",
        edge_api_key="o" * 24,
        kommo_webhook_secret="s" * 24,
        conversation_addr="127.0.0.1:1",
        kommo_gateway_addr="127.0.0.1:1",
        vendedor_addr="127.0.0.1:1",
        scheduling_addr="127.0.0.1:1",
        kommo_sandbox=False,
    )
    return dict(create_api(EdgeRuntime(settings)).openapi())


def operation_of(example: Example, templates: list[str]) -> tuple[str, str] | None:
    """The OpenAPI operation an example of the edge calls: (method, path template)."""
    request = example.request
    if request is None or example.base != "BRIDGE":
        return None
    method, url, _, _ = build(request, lambda name: PLACEHOLDER_BASE if name == "BRIDGE" else "x")
    path = url.removeprefix(PLACEHOLDER_BASE).split("?")[0] or "/"
    matches = [
        template
        for template in templates
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path)
    ]
    if not matches:
        return None
    # A literal segment beats a parameter: /agendamento/request over /agendamento/{id}.
    best = max(matches, key=lambda t: sum(not part.startswith("{") for part in t.split("/")))
    return method.lower(), best


def documented_operations() -> dict[tuple[str, str], str]:
    """Every operation some doc's example calls, with the first place that does."""
    templates = list(edge_schema()["paths"])
    found: dict[tuple[str, str], str] = {}
    for path in files_with_examples():
        try:
            file_examples = examples(path)
        except ExampleError:
            continue  # reported by the test below, for that file
        for example in file_examples:
            operation = operation_of(example, templates)
            if operation is not None:
                found.setdefault(operation, example.where)
    return found


def operations(wanted: Any) -> list[str]:
    schema = edge_schema()
    return sorted(
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if wanted(method, operation)
    )


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_request_example_can_be_run_as_written(path: Path) -> None:
    found = examples(path)
    assert unknown_variables(found) == []


def test_every_operation_that_takes_a_body_has_an_executed_example() -> None:
    documented = documented_operations()
    missing = [
        name
        for name in operations(lambda method, operation: "requestBody" in operation)
        if tuple(name.lower().split(" ", 1)) not in documented
    ]
    assert missing == [], "no ```sh curl example in any doc (docs/api.md is the place)"


def test_every_operation_that_changes_something_has_an_executed_example() -> None:
    documented = documented_operations()
    missing = [
        name
        for name in operations(lambda method, operation: method in CHANGING_METHODS)
        if tuple(name.lower().split(" ", 1)) not in documented
    ]
    assert missing == [], "no ```sh curl example in any doc (docs/api.md is the place)"


def test_the_api_reference_has_an_example_of_every_operation_with_a_body() -> None:
    templates = list(edge_schema()["paths"])
    in_api = {operation_of(e, templates) for e in examples(ROOT / "docs" / "api.md")}
    wanted = operations(lambda method, operation: "requestBody" in operation)
    assert [n for n in wanted if tuple(n.lower().split(" ", 1)) not in in_api] == []


# How commands are read


def block(text: str, language: str = "sh") -> Block:
    return Block(ROOT / "docs" / "example.md", 10, language, text)


def parsed(text: str) -> list[Example]:
    return block_examples(block(text))


def refusal(text: str) -> str:
    with pytest.raises(ExampleError) as refused:
        parsed(text)
    return str(refused.value)


VALUES = {
    "BRIDGE": "http://127.0.0.1:8000",
    "SANDBOX": "http://127.0.0.1:8100",
    "EDGE_API_KEY": "key",
    "REPLY_TOKEN": "tok",
}


def sent(example: Example) -> tuple[str, str, dict[str, str], bytes | None]:
    assert example.request is not None
    return build(example.request, VALUES.__getitem__)


def test_continuations_quotes_and_a_json_body_over_several_lines() -> None:
    (example,) = parsed(
        'curl -X PUT "$BRIDGE/bot-rules" -H "X-API-Key: $EDGE_API_KEY" \\\n'
        "  -H 'content-type: application/json' -d '{\n"
        '  "account": {"trigger": "always"}\n'
        "}'\n"
    )
    assert example.line == 10
    assert sent(example) == (
        "PUT",
        "http://127.0.0.1:8000/bot-rules",
        {"X-API-Key": "key", "content-type": "application/json"},
        b'{\n  "account": {"trigger": "always"}\n}',
    )
    assert example.expect is None


def test_a_line_continued_inside_a_word_and_an_escaped_character() -> None:
    (example,) = parsed('curl "$BRIDGE/x"\\\n"/y" -H X-API-Key:\\ "$EDGE_API_KEY"\n')
    assert sent(example)[1:3] == ("http://127.0.0.1:8000/x/y", {"X-API-Key": "key"})


def test_a_variable_between_single_quotes_is_not_expanded_as_in_the_shell() -> None:
    (example,) = parsed(
        "curl \"$BRIDGE/send-response\" -H 'X-API-Key: $EDGE_API_KEY' \\\n"
        '  -d \'{"reply_token": "\'"$REPLY_TOKEN"\'", "text": "Oi!"}\''
    )
    _, _, headers, body = sent(example)
    assert headers["X-API-Key"] == "$EDGE_API_KEY"
    assert body == b'{"reply_token": "tok", "text": "Oi!"}'
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"  # curl's -d default


def test_the_documented_status_the_commands_of_a_block_and_their_lines() -> None:
    found = parsed(
        "# a comment\n"
        'curl "$BRIDGE/vendedores"   # → 401\n'
        "\n"
        'curl -X POST "$BRIDGE/dead-letters/x/replay" \\\n'
        '  -H "X-API-Key: $EDGE_API_KEY"    # -> 404: not parked\n'
        "sleep 1.5\n"
        'curl -sS "$SANDBOX/_sandbox/chats/9100001" | jq .\n'
    )
    assert [(e.line, e.expect, e.sleep) for e in found] == [
        (11, 401, 0.0),
        (13, 404, 0.0),
        (15, None, 1.5),
        (16, None, 0.0),
    ]
    assert found[3].wants_json
    assert found[3].base == "SANDBOX"


def test_a_capture_sets_a_variable_for_what_follows() -> None:
    first, second = parsed(
        'ID=$(curl -s -X POST "$BRIDGE/agendamento/request" -H "X-API-Key: $EDGE_API_KEY" \\\n'
        '  -H \'content-type: application/json\' -d \'{"lead_id": 1, "preference": "x"}\' \\\n'
        "  | jq -r .id)\n"
        'curl "$BRIDGE/agendamento/$ID" -H "X-API-Key: $EDGE_API_KEY"\n'
    )
    assert (first.capture, first.capture_path, first.raw) == ("ID", ".id", True)
    assert unknown_variables([first, second]) == []
    assert unknown_variables([second]) == ["docs/example.md:13: unknown variable $ID"]


def test_form_data_as_curl_encodes_and_sends_it() -> None:
    webhook, query, json_body = parsed(
        "curl \"$BRIDGE/webhooks/kommo?secret=s\" --data-urlencode 'message[add][0][text]=Olá, tudo bem?' \\\n"
        "  --data-urlencode 'account[id]=1' -d 'a=b c'\n"
        "curl -G \"$BRIDGE/stats\" --data-urlencode 'hours=2' -d x=1\n"
        'curl "$BRIDGE/bot-control" --json \'{"action": "status"}\'\n'
    )
    method, _, headers, body = sent(webhook)
    assert method == "POST"
    assert headers == {"Content-Type": "application/x-www-form-urlencoded"}
    assert body == b"message[add][0][text]=Ol%C3%A1%2C%20tudo%20bem%3F&account[id]=1&a=b c"
    assert sent(query)[:2] == ("GET", "http://127.0.0.1:8000/stats?hours=2&x=1")
    method, _, headers, body = sent(json_body)
    assert (method, headers["Content-Type"], body) == (
        "POST",
        "application/json",
        b'{"action": "status"}',
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('curl -o /dev/null "$BRIDGE/health"', "curl option -o"),
        ('curl -L "$BRIDGE/oauth/authorize"', "curl option -L"),
        ('curl -u me:pw "$BRIDGE/health"', "curl option -u"),
        ('curl -sSL "$BRIDGE/health"', "curl option -sSL"),
        ("curl http://localhost:8000/health", "must start with $BRIDGE or $SANDBOX"),
        ("curl https://bridge.example.com/health", "must start with $BRIDGE or $SANDBOX"),
        ('curl "$EDGE_API_KEY/health"', "must start with $BRIDGE or $SANDBOX"),
        ("curl localhost:<sandbox-port>/_sandbox/chats/1", "'<' outside quotes"),
        ("curl $BRIDGE/conversations/active?lead_id=1", "'?' outside quotes"),
        ('curl "$BRIDGE/x?a=1"&b=2', "'&' outside quotes"),
        ('curl "$BRIDGE/health"; echo', "';' outside quotes"),
        ('curl -d "Oi!tudo" "$BRIDGE/x"', "'!' inside double quotes"),
        ('curl -d "$(date)" "$BRIDGE/x"', "'$(' inside a command"),
        ('curl "$BRIDGE/x?a[0]=1"', "curl globs"),
        ('curl -d @body.json "$BRIDGE/x"', "@file"),
        ('curl "$BRIDGE/a" "$BRIDGE/b"', "one URL, found 2"),
        ('curl "$BRIDGE/x" | python3 -m json.tool', "only into"),
        ('ID=$(curl "$BRIDGE/x" | jq -r ".a | .b")', "one path"),
        ('ID=$(curl "$BRIDGE/x")', "pipes curl into one jq"),
        ("export BRIDGE=http://127.0.0.1:8000", "holds only curl commands"),
        ("make run", "holds only curl commands"),
        ("sleep forever", "sleep N"),
        ("# → 404", "at the end of its command's last line"),
        ('curl -d \'{"a": 1}', "never closed"),
        ('curl -H "$EDGE_API_KEY" "$BRIDGE/x"', "a header is 'Name: value'"),
    ],
)
def test_what_the_examples_may_not_do_fails_saying_why(text: str, words: str) -> None:
    assert words in refusal(text)


def test_an_unknown_variable_is_reported_where_it_is_used() -> None:
    found = parsed('curl "$BRIDGE/x" -H "X-API-Key: $API_KEY"\ncurl "${SANDBOX}/_sandbox/stats"')
    assert unknown_variables(found) == ["docs/example.md:10: unknown variable $API_KEY"]


def test_only_shell_blocks_with_curl_are_examples(tmp_path: Path) -> None:
    text = (
        "# Page\n\n```text\ncurl https://bridge.example.com/health\n```\n\n"
        "```sh\nmake run\n```\n\n"
        '```bash\ncurl "$BRIDGE/version"\n```\n\n'
        '  ```shell\n  curl "$BRIDGE/health"\n  ```\n\n'
        '```json\n{"curl": 1}\n```\n'
    )
    written = tmp_path / "page.md"
    written.write_text(text)
    found = shell_blocks(written)
    assert [(b.language, b.line, b.text.strip()) for b in found] == [
        ("bash", 12, 'curl "$BRIDGE/version"'),
        ("shell", 16, 'curl "$BRIDGE/health"'),
    ]


def test_expansion_joins_text_and_variables() -> None:
    assert expand(("a", Var("BRIDGE"), "/b"), VALUES.__getitem__) == "ahttp://127.0.0.1:8000/b"
