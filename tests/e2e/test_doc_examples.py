"""Every documented request example is executed (issue 21).

The convention, for every Markdown file of the project: a request example is a fenced
```sh (or ```bash, ```shell) block of curl commands, pasteable into a shell, that names
the bridge and the Kommo sandbox only through shell variables:

- `$BRIDGE` the edge's base URL, `$EDGE_API_KEY` the operator's key, `$SANDBOX` the Kommo
  sandbox's URL, `$REPLY_TOKEN` the `callback.reply_token` of an envelope n8n received
  (and not yet answered);
- also `$EDGE_N8N_API_KEY` (n8n's key) and `$KOMMO_WEBHOOK_SECRET` (the secret in the
  webhook's URL), the values of the variables of those names in `.env`;
- a variable set earlier in the same file by a capture, `NAME=$(curl … | jq -r '.path')`
  (a path of `.field` and `[n]` steps), e.g. an agendamento's id for the next command.

Every such block holds only curl commands (one per line, `\\` continues a line; a quoted
argument may run over several lines), captures, `sleep N`, comments and blank lines.
A curl command may end in `| jq …`, `| head …`, `| grep …` or `| tail …` (not run: jq's
input must be JSON). curl's options understood: `-X/--request`, `-H/--header`,
`-d/--data/--data-ascii`, `--data-raw`, `--data-binary`, `--data-urlencode`, `--json`,
`-G/--get`, `--url` and the ones that change nothing sent (`-s`, `-S`, `-i`, `-f`, `-v`
and their long names, and short ones together such as `-sS`). Anything else fails — an
unknown option, an unknown variable, a URL that is not under `$BRIDGE` or `$SANDBOX`,
a character the shell would take for something else (`;`, `&`, `<`, `>`, backquotes, `$(`
outside a capture, an unquoted `*`, `?` or `[`, which zsh globs, a `!` bash would
expand) or curl would glob in a URL (`[`, `{`).

Each command must answer 2xx, or exactly the status its last line states in a comment:
`# → 404` (or `# -> 404`), words may follow. Illustrations against real hosts go in
```text blocks or in prose: they are not run.

Each file is one test (a failure names the file, the line and the command, with the
answer), run in document order against a stack of its own — a fresh Redis, sandbox and
stand-in — so that what one file's examples change (bot rules, templates, vendedores,
paused conversations) never reaches another's, and the order of files does not matter.
`$REPLY_TOKEN` is obtained for real when a file first uses it: a customer of lead
9100019 writes through the sandbox while the n8n stand-in does not answer, and the token
is the one in the envelope it received. After a command that makes Kommo (the sandbox)
act, or that posts a webhook, the run waits a second, as a person pasting the next
command would: the bridge handles those after answering."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from devstack.processes import ROOT
from devstack.stack import Stack
from tests.e2e.conftest import customer_writes, envelopes, isolated_stack, wait_for
from tests.unit.test_docs_links import markdown_files

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell"})
# The variables a reader has: the stack's addresses and keys, and a reply token.
KNOWN_VARIABLES = frozenset(
    {"BRIDGE", "EDGE_API_KEY", "SANDBOX", "REPLY_TOKEN", "EDGE_N8N_API_KEY", "KOMMO_WEBHOOK_SECRET"}
)
BASE_VARIABLES = ("BRIDGE", "SANDBOX")
# The lead whose customer writes to get a reply token (one the examples rarely use).
TOKEN_LEAD = 9100019
# After the sandbox acts or a webhook arrives, the bridge works on after answering.
SETTLE_SECONDS = 1.0
MAX_SLEEP_SECONDS = 30.0
# Filters a command may be piped into; they are not run.
DISPLAY_FILTERS = frozenset({"jq", "head", "grep", "tail"})

OPENING_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)")
EXPECTATION = re.compile(r"^#\s*(?:→|->)\s*(\d{3})\b")
CAPTURE_START = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=\$\(")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
JQ_PATH = re.compile(r"^\.$|^(?:\.[A-Za-z_][A-Za-z0-9_]*|\.?\[\d+\])+$")
SLEEP = re.compile(r"^\d+(?:\.\d+)?$")
# Characters that end a word or mean something else to the shell, outside quotes.
SHELL_OPERATORS = frozenset(";&<>()`")
GLOB_CHARACTERS = frozenset("*?[")

NO_ARGUMENT_FLAGS = {
    "-s": "silent",
    "--silent": "silent",
    "-S": "show-error",
    "--show-error": "show-error",
    "-i": "include",
    "--include": "include",
    "-f": "fail",
    "--fail": "fail",
    "--fail-with-body": "fail",
    "-v": "verbose",
    "--verbose": "verbose",
    "-G": "get",
    "--get": "get",
}
ARGUMENT_OPTIONS = {
    "-X": "request",
    "--request": "request",
    "-H": "header",
    "--header": "header",
    "-d": "data",
    "--data": "data",
    "--data-ascii": "data",
    "--data-binary": "data",
    "--data-raw": "data-raw",
    "--data-urlencode": "data-urlencode",
    "--json": "json",
    "--url": "url",
}


class ExampleError(Exception):
    """An example that cannot be run as written; the message says why."""


# The shell words of a command: literal text and variables, expanded when run.


@dataclass(frozen=True)
class Var:
    name: str


Segment = str | Var
Word = tuple[Segment, ...]


def literal(word: Word) -> str | None:
    """The word's text when it holds no variable."""
    if all(isinstance(s, str) for s in word):
        return "".join(str(s) for s in word)
    return None


def variables(word: Word) -> list[str]:
    return [s.name for s in word if isinstance(s, Var)]


def expand(word: Word, env: Callable[[str], str]) -> str:
    return "".join(s if isinstance(s, str) else env(s.name) for s in word)


def shown(word: Word) -> str:
    return "".join(s if isinstance(s, str) else f"${s.name}" for s in word)


# Blocks


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the block's first line of code
    language: str
    text: str


def shell_blocks(path: Path) -> list[Block]:
    """The ```sh/```bash/```shell blocks of a Markdown file that hold `curl`."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = OPENING_FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        body: list[str] = []
        start = index + 2
        index += 1
        while index < len(lines) and not lines[index].lstrip().startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1
        text = "\n".join(body)
        if language in SHELL_LANGUAGES and "curl" in text:
            blocks.append(Block(path, start, language, text))
    return blocks


def files_with_examples() -> list[Path]:
    return [path for path in markdown_files() if shell_blocks(path)]


# The shell's words, as much of the shell as the examples need.


@dataclass
class Token:
    kind: str  # word, pipe, capture (text: the name), close, comment, newline
    line: int
    word: Word = ()
    text: str = ""


class Lexer:
    def __init__(self, block: Block) -> None:
        self.text = block.text
        self.position = 0
        self.line = block.line
        self.where = str(block.path.relative_to(ROOT))

    def fail(self, message: str) -> ExampleError:
        return ExampleError(f"{self.where}:{self.line}: {message}")

    def peek(self, offset: int = 0) -> str:
        at = self.position + offset
        return self.text[at] if at < len(self.text) else ""

    def take(self) -> str:
        char = self.text[self.position]
        self.position += 1
        if char == "\n":
            self.line += 1
        return char

    def tokens(self) -> Iterator[Token]:
        at_command_start = True
        while self.position < len(self.text):
            char = self.peek()
            if char == "\\" and self.peek(1) == "\n":
                self.take()
                self.take()
                continue
            if char in " \t":
                self.take()
                continue
            if char == "\n":
                yield Token("newline", self.line)
                self.take()
                at_command_start = True
                continue
            if char == "#":
                start = self.position
                while self.position < len(self.text) and self.peek() != "\n":
                    self.take()
                yield Token("comment", self.line, text=self.text[start : self.position])
                continue
            if char == "|":
                self.take()
                yield Token("pipe", self.line)
                at_command_start = True
                continue
            if char == ")":
                self.take()
                yield Token("close", self.line)
                continue
            capture = CAPTURE_START.match(self.text, self.position)
            if at_command_start and capture:
                self.position = capture.end()
                yield Token("capture", self.line, text=capture.group(1))
                at_command_start = True
                continue
            line = self.line
            yield Token("word", line, word=self.word())
            at_command_start = False

    def word(self) -> Word:
        segments: list[Segment] = []
        text: list[str] = []

        def flush() -> None:
            if text:
                segments.append("".join(text))
                text.clear()

        while self.position < len(self.text):
            char = self.peek()
            if char in " \t\n|)":
                break
            if char == "'":
                self.take()
                while True:
                    if self.position >= len(self.text):
                        raise self.fail("a single quote is never closed")
                    quoted = self.take()
                    if quoted == "'":
                        break
                    text.append(quoted)
                continue
            if char == '"':
                self.take()
                self.double_quoted(text, segments, flush)
                continue
            if char == "\\":
                self.take()
                if self.position >= len(self.text):
                    raise self.fail("a backslash ends the block")
                escaped = self.take()
                if escaped != "\n":  # a backslash-newline continues the line
                    text.append(escaped)
                continue
            if char == "$":
                if self.variable(segments, flush):
                    continue
                text.append(self.take())
                continue
            if char in SHELL_OPERATORS:
                raise self.fail(
                    f"{char!r} outside quotes: the shell would read it as an operator; "
                    "quote it, or keep to one curl command per line"
                )
            if char in GLOB_CHARACTERS:
                raise self.fail(
                    f"{char!r} outside quotes: zsh would take it for a file pattern "
                    "(`no matches found`); quote the word"
                )
            if char == "!" and self.peek(1) not in ("", " ", "\t", "\n", "=", "("):
                raise self.fail("'!' outside single quotes: interactive bash expands it")
            text.append(self.take())
        flush()
        return tuple(segments)

    def double_quoted(
        self, text: list[str], segments: list[Segment], flush: Callable[[], None]
    ) -> None:
        while True:
            if self.position >= len(self.text):
                raise self.fail("a double quote is never closed")
            char = self.peek()
            if char == '"':
                self.take()
                return
            if char == "\\":
                self.take()
                following = self.peek()
                if following == "\n":
                    self.take()
                elif following in ('"', "\\", "$", "`"):
                    text.append(self.take())
                else:
                    text.append("\\")
                continue
            if char == "$":
                if self.peek(1) == "(":
                    raise self.fail("'$(' inside a command: only `NAME=$(curl …)` captures")
                if self.variable(segments, flush):
                    continue
            if char == "`":
                raise self.fail("backquotes: command substitution is not part of the examples")
            if char == "!" and self.peek(1) not in ("", " ", "\t", "\n", "=", "(", '"'):
                raise self.fail("'!' inside double quotes: interactive bash expands it")
            text.append(self.take())

    def variable(self, segments: list[Segment], flush: Callable[[], None]) -> bool:
        """`$NAME` or `${NAME}` at the position; False for a `$` that is just a dollar."""
        following = self.peek(1)
        if following == "(":
            raise self.fail("'$(' inside a command: only `NAME=$(curl …)` captures")
        if following == "{":
            end = self.text.find("}", self.position)
            name = self.text[self.position + 2 : end] if end > 0 else ""
            if not NAME.fullmatch(name):
                raise self.fail("only plain variables: ${NAME}")
            flush()
            segments.append(Var(name))
            while self.position <= end:
                self.take()
            return True
        match = NAME.match(self.text, self.position + 1)
        if not match:
            return False
        flush()
        segments.append(Var(match.group(0)))
        while self.position < match.end():
            self.take()
        return True


# Commands


@dataclass
class Request:
    method: str
    url: Word
    headers: list[Word] = field(default_factory=list)
    # (how curl sends it, the argument): data, data-raw, data-urlencode, json
    data: list[tuple[str, Word]] = field(default_factory=list)
    get: bool = False

    def words(self) -> list[Word]:
        return [self.url, *self.headers, *(word for _, word in self.data)]


@dataclass
class Example:
    path: Path
    line: int
    source: str  # the command as written, for messages
    request: Request | None = None
    capture: str = ""  # the variable it sets
    capture_path: str = ""
    raw: bool = False
    wants_json: bool = False  # piped into jq
    expect: int | None = None  # None: any 2xx
    sleep: float = 0.0

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def base(self) -> str:
        assert self.request is not None
        first = self.request.url[0]
        assert isinstance(first, Var)
        return first.name


def examples(path: Path) -> list[Example]:
    """Every command of the file's shell blocks with curl, in document order."""
    found: list[Example] = []
    for block in shell_blocks(path):
        found.extend(block_examples(block))
    return found


def block_examples(block: Block) -> list[Example]:
    lexer = Lexer(block)
    lines = block.text.splitlines()
    found: list[Example] = []
    command: list[Token] = []
    for token in [*lexer.tokens(), Token("newline", lexer.line)]:
        if token.kind != "newline":
            command.append(token)
            continue
        if command:
            first_line = command[0].line
            source = "\n".join(lines[first_line - block.line : token.line - block.line + 1])
            example = parse_command(command, block.path, first_line, source.strip())
            if example is not None:
                found.append(example)
        command = []
    return found


def parse_command(tokens: list[Token], path: Path, line: int, source: str) -> Example | None:
    where = f"{path.relative_to(ROOT)}:{line}"
    comment = ""
    if tokens[-1].kind == "comment":
        comment = tokens.pop().text
    expectation = EXPECTATION.match(comment)
    if not tokens:
        if expectation:
            raise ExampleError(
                f"{where}: a status comment goes at the end of its command's last line"
            )
        return None
    example = Example(path, line, source)
    if expectation:
        example.expect = int(expectation.group(1))
    if tokens[0].kind == "capture":
        if tokens[-1].kind != "close":
            raise ExampleError(f"{where}: a capture is `NAME=$(curl … | jq -r '.path')`")
        example.capture = tokens[0].text
        tokens = tokens[1:-1]
    if any(t.kind in ("capture", "close", "comment") for t in tokens):
        raise ExampleError(f"{where}: not a command the examples use: {source}")
    stages: list[list[Word]] = [[]]
    for token in tokens:
        if token.kind == "pipe":
            stages.append([])
        else:
            stages[-1].append(token.word)
    command, *filters = stages
    name = literal(command[0]) if command else None
    if name == "sleep" and not filters and not example.capture:
        seconds = literal(command[1]) if len(command) == 2 else None
        if seconds is None or not SLEEP.match(seconds) or float(seconds) > MAX_SLEEP_SECONDS:
            raise ExampleError(f"{where}: `sleep N`, N seconds up to {MAX_SLEEP_SECONDS:g}")
        example.sleep = float(seconds)
        return example
    if name != "curl":
        raise ExampleError(
            f"{where}: a block of request examples holds only curl commands (put setup in "
            f"prose or a block without curl): {source}"
        )
    example.request = parse_curl(command[1:], where)
    parse_filters(example, filters, where)
    return example


def parse_filters(example: Example, filters: list[list[Word]], where: str) -> None:
    for stage in filters:
        name = literal(stage[0]) if stage else None
        if name not in DISPLAY_FILTERS:
            raise ExampleError(
                f"{where}: curl piped into {name!r}: only into {sorted(DISPLAY_FILTERS)}"
            )
        if name == "jq":
            example.wants_json = True
    if not example.capture:
        return
    if len(filters) != 1 or literal(filters[0][0]) != "jq":
        raise ExampleError(f"{where}: a capture pipes curl into one jq: `| jq -r '.path'`")
    arguments = [literal(word) for word in filters[0][1:]]
    if None in arguments:
        raise ExampleError(f"{where}: jq's arguments hold no variable")
    options = [a for a in arguments if a and a.startswith("-")]
    paths = [a for a in arguments if a is not None and not a.startswith("-")]
    if set(options) - {"-r"} or len(paths) != 1 or not JQ_PATH.match(paths[0]):
        raise ExampleError(
            f"{where}: a capture's jq takes -r and one path of .field and [n] steps, "
            f"e.g. jq -r '.dead_letters[0].id'"
        )
    example.raw = "-r" in options
    example.capture_path = paths[0]


def parse_curl(words: list[Word], where: str) -> Request:
    method = ""
    urls: list[Word] = []
    request = Request(method="", url=())
    queue = list(words)
    while queue:
        word = queue.pop(0)
        text = literal(word)
        if text is None or not text.startswith("-"):
            urls.append(word)
            continue
        option = text
        argument: Word | None = None
        if text[:2] in ("-X", "-H", "-d") and len(text) > 2:
            option, argument = text[:2], (text[2:],)
        if option in NO_ARGUMENT_FLAGS:
            request.get = request.get or NO_ARGUMENT_FLAGS[option] == "get"
            continue
        if (
            option.startswith("-")
            and not option.startswith("--")
            and len(option) > 2
            and all(f"-{c}" in NO_ARGUMENT_FLAGS for c in option[1:])
        ):
            request.get = request.get or "G" in option
            continue
        kind = ARGUMENT_OPTIONS.get(option)
        if kind is None:
            raise ExampleError(f"{where}: curl option {option} is not one the examples use")
        if argument is None:
            if not queue:
                raise ExampleError(f"{where}: curl option {option} needs a value")
            argument = queue.pop(0)
        if kind == "request":
            method = literal(argument) or ""
            if not re.fullmatch(r"[A-Z]+", method):
                raise ExampleError(f"{where}: -X takes a method in capitals, e.g. -X POST")
        elif kind == "header":
            name = argument[0] if argument else ""
            if not isinstance(name, str) or ":" not in name:
                raise ExampleError(f"{where}: a header is 'Name: value', its name written out")
            request.headers.append(argument)
        elif kind == "url":
            urls.append(argument)
        else:
            if kind == "data" and (literal(argument[:1]) or "").startswith("@"):
                raise ExampleError(f"{where}: {option} @file: the examples carry their data")
            if kind == "data-urlencode" and "@" in (literal(argument[:1]) or "").split("=")[0]:
                raise ExampleError(
                    f"{where}: --data-urlencode name@file: the examples carry their data"
                )
            request.data.append((kind, argument))
    if len(urls) != 1:
        raise ExampleError(f"{where}: a curl command names one URL, found {len(urls)}")
    (url,) = urls
    if not url or not isinstance(url[0], Var) or url[0].name not in BASE_VARIABLES:
        raise ExampleError(
            f"{where}: the URL must start with $BRIDGE or $SANDBOX, not {shown(url)!r} "
            "(an illustration against a real host goes in a ```text block)"
        )
    rest = literal(url[1:2]) if len(url) > 1 else ""
    if rest and not rest.startswith(("/", "?")):
        raise ExampleError(f"{where}: ${url[0].name} is followed by a path: {shown(url)!r}")
    if any(c in s for s in url if isinstance(s, str) for c in "[]{}"):
        raise ExampleError(f"{where}: curl globs [] and {{}} in a URL: escape them as %5B…")
    request.url = url
    if method:
        request.method = method
    elif request.data and not request.get:
        request.method = "POST"
    else:
        request.method = "GET"
    for kind, _ in request.data:
        if kind == "json" and request.get:
            raise ExampleError(f"{where}: --json with -G")
    return request


def unknown_variables(found: list[Example]) -> list[str]:
    """Variables used that the reader does not have: neither known nor captured before."""
    problems = []
    captured: set[str] = set()
    for example in found:
        if example.request is not None:
            for word in example.request.words():
                for name in variables(word):
                    if name not in KNOWN_VARIABLES and name not in captured:
                        problems.append(f"{example.where}: unknown variable ${name}")
        if example.capture:
            captured.add(example.capture)
    return problems


# Running


def build(
    request: Request, env: Callable[[str], str]
) -> tuple[str, str, dict[str, str], bytes | None]:
    """What curl sends: method, URL, headers, body."""
    url = expand(request.url, env)
    headers: dict[str, str] = {}
    for word in request.headers:
        name, _, value = expand(word, env).partition(":")
        headers[name.strip()] = value.strip()
    parts: list[str] = []
    json_parts: list[str] = []
    for kind, word in request.data:
        value = expand(word, env)
        if kind == "json":
            json_parts.append(value)
        elif kind == "data-urlencode":
            name, equals, content = value.partition("=")
            parts.append(f"{name}={quote(content, safe='')}" if equals else quote(value, safe=""))
        else:
            parts.append(value)
    lower = {name.lower() for name in headers}
    body: bytes | None = None
    if json_parts:
        body = "".join(json_parts).encode()
        if "content-type" not in lower:
            headers["Content-Type"] = "application/json"
        if "accept" not in lower:
            headers["Accept"] = "application/json"
    elif parts and request.get:
        url += ("&" if "?" in url else "?") + "&".join(parts)
    elif parts:
        body = "&".join(parts).encode()
        if "content-type" not in lower:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
    return request.method, url, headers, body


def jq_path(value: Any, path: str) -> Any:
    for step in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]", path):
        key, index = step
        if key:
            value = value.get(key) if isinstance(value, dict) else None
        else:
            value = (
                value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
            )
    return value


class Environment:
    """The shell's variables for one file: the stack's values, the reply token (fetched
    when first used) and what captures set."""

    def __init__(self, values: Mapping[str, str], reply_token: Callable[[], str]) -> None:
        self.values = dict(values)
        self.reply_token = reply_token

    def __call__(self, name: str) -> str:
        if name == "REPLY_TOKEN" and name not in self.values:
            self.values[name] = self.reply_token()
        if name not in self.values:
            raise ExampleError(f"unknown variable ${name}")
        return self.values[name]


def run(example: Example, http: httpx.Client, env: Environment) -> str | None:
    """Runs one example; what went wrong, or None."""
    if example.sleep:
        time.sleep(example.sleep)
        return None
    assert example.request is not None
    try:
        method, url, headers, body = build(example.request, env)
    except ExampleError as exc:
        return f"{exc}"
    answer = http.request(method, url, headers=headers, content=body)
    if (example.base == "SANDBOX" and method != "GET") or urlsplit(url).path.endswith(
        "/webhooks/kommo"
    ):
        time.sleep(SETTLE_SECONDS)
    expected = f"{example.expect}" if example.expect else "2xx"
    good = answer.status_code == example.expect if example.expect else answer.is_success
    if not good:
        return f"answered {answer.status_code}, the doc expects {expected}: {answer.text[:600]}"
    if not (example.wants_json or example.capture):
        return None
    try:
        document = answer.json()
    except ValueError:
        return f"piped into jq, but the answer is not JSON: {answer.text[:300]}"
    if example.capture:
        value = jq_path(document, example.capture_path)
        if value is None:
            return f"{example.capture_path} is null in the answer: {answer.text[:600]}"
        env.values[example.capture] = (
            value if example.raw and isinstance(value, str) else json.dumps(value)
        )
    return None


def fresh_reply_token(http: httpx.Client, stack: Stack) -> str:
    """The reply token of an envelope n8n got and has not answered: a customer writes while
    the stand-in takes envelopes without answering them."""
    config = f"{stack.standin_url}/_standin/config"
    http.post(config, json={"auto_reply": False}).raise_for_status()
    try:
        written = customer_writes(http, stack, TOKEN_LEAD, "Bom dia! Podem me ajudar?")
        envelope = wait_for(
            lambda: next(
                (
                    e
                    for e in envelopes(http, stack)
                    if any(m.get("id") == written["message_id"] for m in e.get("messages") or [])
                ),
                None,
            ),
            timeout=20,
            what="the envelope whose reply token the examples use",
        )
    finally:
        http.post(config, json={"auto_reply": True}).raise_for_status()
    return str(envelope["callback"]["reply_token"])


def stack_values(stack: Stack) -> dict[str, str]:
    return {
        "BRIDGE": stack.edge_url,
        "EDGE_API_KEY": stack.api_key,
        "SANDBOX": stack.sandbox_url,
        "EDGE_N8N_API_KEY": stack.n8n_api_key,
        "KOMMO_WEBHOOK_SECRET": stack.webhook_secret,
    }


def run_file(path: Path, stack: Stack) -> list[str]:
    """Every example of the file, in order, against the stack; the failures."""
    found = examples(path)
    failures = unknown_variables(found)
    if failures:
        return failures
    with httpx.Client(timeout=60.0) as http:
        env = Environment(stack_values(stack), lambda: fresh_reply_token(http, stack))
        for example in found:
            problem = run(example, http, env)
            if problem:
                failures.append(f"{example.where}: {example.source}\n    → {problem}")
        sends = http.get(f"{stack.sandbox_url}/_sandbox/closed-window-sends").json()
        if sends:
            failures.append(f"free text sent into a closed WhatsApp window: {sends}")
    return failures


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", files_with_examples(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_request_example_answers_as_documented(
    path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    found = examples(path)  # an example that cannot be parsed fails before any stack starts
    assert unknown_variables(found) == []
    with isolated_stack(
        tmp_path_factory, "doc-examples", sandbox_env={"SANDBOX_ECHO_DELAY": "0.1"}
    ) as stack:
        failures = run_file(path, stack)
        assert not failures, "\n".join(
            [f"{len(failures)} example(s) of {path.relative_to(ROOT)} failed:", *failures]
        )
