"""The dashboard's Reports page (issue 23) in a real headless Chromium against the running
stack.

Two conversations flow and one is paused through the API; then the totals, the tables and
the CSV the page downloads must be those of `GET /reports` with the same range and
filters, each chart must have drawn something, and a range the service refuses must say
why on the page. The screenshot goes to pytest's temporary folder."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.e2e.browser_helpers import chromium, needs_chromium, watched_page
from tests.e2e.conftest import chat, customer_writes, isolated_stack, wait_for

pytestmark = needs_chromium

# Seeded leads (sandbox/kommo/seed.py): 9100001 is 10000002's, 9100002 is 10000003's, both
# in pipeline 8100001.
BRUNO_LEAD, CARLA_LEAD = 9100001, 9100002
CARLA = "10000003"
TAKEOVERS = ("takeovers_command", "takeovers_api", "takeovers_human")
HANDOFFS = ("handoffs_ai", "handoffs_silent", "handoffs_keyword")
# The tables' columns, as the page names its cells (data-metric).
COLUMNS = (
    "conversations_started",
    "customer_messages",
    "bot_messages",
    "takeovers",
    "handoffs",
    "reply_p50_seconds",
    "reply_p90_seconds",
    "n8n_answer_p50_seconds",
)
TOTALS = ("conversations_started", "customer_messages", "bot_messages", "replies", *COLUMNS[3:])

# A page that answered since (its count of loads past `loaded`). A function, not an
# expression: the page's CSP forbids eval.
LOADED_SINCE = "loaded => Number(document.body.dataset.loaded) > loaded"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with isolated_stack(
        tmp_path_factory, "reports-page", env={"MESSAGE_DEBOUNCE_SECONDS": "0.3"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Stack:
    """Two conversations answered by the bot, the second then paused through the API;
    once, for every test of the module, and counted in the report before any test looks."""
    with httpx.Client(timeout=15.0) as http:
        for lead in (BRUNO_LEAD, CARLA_LEAD):
            converse(http, stack, lead, "Oi, quero saber dos planos")
        paused = http.post(
            f"{stack.edge_url}/bot-control",
            json={"action": "pause", "lead_id": CARLA_LEAD},
            headers={"X-API-Key": stack.api_key},
        )
        assert paused.json()["bot_state"] == "paused", paused.text

        def counted() -> bool:
            total = report(http, stack, {})["total"]
            return (total["customer_messages"], total["replies"], total["takeovers_api"]) == (
                2,
                2,
                1,
            )

        wait_for(counted, timeout=20, what="the messages and the pause in the report")
    return stack


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # The refused range earns its 400 and the wrong key its 401 on purpose; the locale
    # fixes how numbers read ("1,234", "3.25 s").
    with watched_page(browser, expected_statuses=(400, 401), locale="en-US") as opened:
        yield opened


def bot_replies(http: httpx.Client, stack: Stack, lead: int) -> int:
    return sum(
        1
        for m in chat(http, stack, lead)
        if m["direction"] == "outgoing" and m["author_type"] == "bot"
    )


def converse(http: httpx.Client, stack: Stack, lead: int, text: str) -> None:
    """The customer writes; returns once the sandbox chat shows the bot's reply."""
    before = bot_replies(http, stack, lead)
    customer_writes(http, stack, lead, text)
    wait_for(lambda: bot_replies(http, stack, lead) > before, what=f"a reply to {text!r}")


def report(http: httpx.Client, stack: Stack, params: dict[str, str]) -> dict[str, Any]:
    answer = http.get(
        f"{stack.edge_url}/reports", params=params, headers={"X-API-Key": stack.api_key}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def figure(row: dict[str, Any], name: str) -> int | float:
    """A figure of a report's row, or one of the page's sums of them."""
    parts = {"takeovers": TAKEOVERS, "handoffs": HANDOFFS}.get(name, (name,))
    value: int | float = sum(row[part] for part in parts)
    return value


def as_shown(name: str, value: float) -> str:
    """What the page shows for a figure: a count whole (en-US), seconds with two decimals
    under 10 s and one above, "–" where nothing was timed, "< 0.01 s" for a few
    milliseconds. Rounded half up from the
    number as the API wrote it (0.745 → 0.75), as Chromium's Intl.NumberFormat does."""
    if not name.endswith("_seconds"):
        return f"{value:,}"
    if not value:
        return "–"
    if value < 0.005:
        return "< 0.01 s"
    places = Decimal("0.01") if value < 10 else Decimal("0.1")
    return f"{Decimal(repr(value)).quantize(places, rounding=ROUND_HALF_UP)} s"


def open_reports(page: Any, stack: Stack, query: str = "") -> None:
    page.goto(f"{stack.edge_url}/dashboard/reports{query}#key={stack.api_key}")
    page.wait_for_selector("body[data-state=ready], body[data-state=error]")


def apply_controls(page: Any, **values: str) -> None:
    """Types into the controls and presses Show; returns once the page has answered."""
    loaded = int(page.locator("body").get_attribute("data-loaded") or 0)
    for name, value in values.items():
        page.fill(f"#{name}", value)
    page.click("#apply")
    page.wait_for_function(LOADED_SINCE, arg=loaded)


def shown_range(page: Any) -> dict[str, str]:
    return {"from": page.input_value("#from"), "to": page.input_value("#to")}


def shown_totals(page: Any) -> dict[str, str]:
    return {name: page.inner_text(f'[data-total="{name}"]') for name in TOTALS}


def expected_totals(answer: dict[str, Any]) -> dict[str, str]:
    return {name: as_shown(name, figure(answer["total"], name)) for name in TOTALS}


def shown_table(page: Any, table: str) -> list[list[str]]:
    """Each row of the table's body: its group, then its cells."""
    return list(
        page.locator(f"#{table} tbody tr").evaluate_all(
            """rows => rows.map(r => [r.dataset.group,
                ...[...r.querySelectorAll('td[data-metric]')].map(c => c.textContent)])"""
        )
    )


def expected_table(answer: dict[str, Any]) -> list[list[str]]:
    return [
        [row["group"], *(as_shown(name, figure(row, name)) for name in COLUMNS)]
        for row in answer["rows"]
    ]


def shown_footer(page: Any, table: str) -> list[str]:
    return list(
        page.locator(f"#{table} tfoot td[data-metric]").evaluate_all(
            "cells => cells.map(c => c.textContent)"
        )
    )


def downloaded(page: Any, button: str) -> tuple[str, str]:
    """The file the button saves (a Blob URL the page made), its name and its text."""
    with page.expect_download() as info:
        page.click(button)
    download = info.value
    return download.suggested_filename, Path(
        download.path()
    ).read_bytes().decode()  # CSV lines end in \r\n


def test_the_page_draws_what_the_api_reports(
    traffic: Stack, http: httpx.Client, page: Any, tmp_path: Path
) -> None:
    stack = traffic
    open_reports(page, stack)
    assert page.locator("body").get_attribute("data-state") == "ready"
    assert "key=" not in page.url, "the key must leave the address bar"
    assert page.locator("#banner").is_hidden()
    # Nothing chosen: the service's default range (the last 30 days), shown in the controls.
    default = report(http, stack, {})
    assert shown_range(page) == {"from": default["from"], "to": default["to"]}
    days = date.fromisoformat(default["to"]) - date.fromisoformat(default["from"])
    assert days == timedelta(days=29)
    params = {**shown_range(page), "group_by": "day"}

    by_day = report(http, stack, params)
    assert shown_totals(page) == expected_totals(by_day)
    # The figures are the traffic above, not zeros that happen to agree.
    assert by_day["total"]["customer_messages"] == 2
    assert by_day["total"]["bot_messages"] >= 2
    assert figure(by_day["total"], "takeovers") == 1
    assert shown_totals(page)["customer_messages"] == "2"
    assert shown_totals(page)["takeovers"] == "1"

    by_vendedor = report(http, stack, {**params, "group_by": "vendedor"})
    assert [row["group"] for row in by_vendedor["rows"]] == ["10000002", CARLA]
    assert shown_table(page, "by-vendedor") == expected_table(by_vendedor)
    total_row = [as_shown(name, figure(by_vendedor["total"], name)) for name in COLUMNS]
    assert shown_footer(page, "by-vendedor") == total_row
    by_pipeline = report(http, stack, {**params, "group_by": "pipeline"})
    assert shown_table(page, "by-pipeline") == expected_table(by_pipeline)
    # The vendedor's name from GET /vendedores, next to the id the filter takes.
    vendedores = http.get(f"{stack.edge_url}/vendedores", headers={"X-API-Key": stack.api_key})
    (carla_name,) = [v["name"] for v in vendedores.json()["vendedores"] if str(v["id"]) == CARLA]
    name_cell = page.inner_text(f'#by-vendedor tr[data-group="{CARLA}"] td')
    assert name_cell == f"{carla_name} ({CARLA})"

    # Each chart drew marks: bars for counts, dots for reply times; labelled axes.
    for selector in (
        "#chart-messages rect.customer",
        "#chart-messages rect.bot",
        "#chart-handling rect.replies",
        "#chart-handling rect.takeovers",
        "#chart-reply circle.p50",
        "#chart-reply circle.p90",
    ):
        assert page.locator(selector).count() >= 1, selector
    for chart in ("chart-messages", "chart-handling", "chart-reply"):
        assert page.locator(f"#{chart} text").count() >= 3, chart
        assert page.locator(f'[data-empty="{chart}"]').is_hidden(), chart
    # A bar per day with customer messages, on an axis of all the range's days.
    with_messages = [row for row in by_day["rows"] if row["customer_messages"]]
    assert page.locator("#chart-messages rect.customer").count() == len(with_messages)

    # The CSV saved is the API's, byte for byte, and so is a table's.
    name, text = downloaded(page, "#download")
    csv_params = {**params, "format": "csv"}
    answer = http.get(
        f"{stack.edge_url}/reports", params=csv_params, headers={"X-API-Key": stack.api_key}
    )
    assert name == f"reports-{params['from']}-{params['to']}-day.csv"
    assert text == answer.text
    lines = list(csv.DictReader(io.StringIO(text)))
    assert sum(int(line["customer_messages"]) for line in lines) == 2
    name, text = downloaded(page, "#csv-vendedor")
    assert name.endswith("-vendedor.csv")
    vendedor_csv = http.get(
        f"{stack.edge_url}/reports",
        params={**csv_params, "group_by": "vendedor"},
        headers={"X-API-Key": stack.api_key},
    )
    assert text == vendedor_csv.text
    assert "key=" not in page.url
    page.screenshot(path=str(tmp_path / "reports.png"), full_page=True)


def test_filters_and_grouping_ask_the_api_the_same(
    traffic: Stack, http: httpx.Client, page: Any, tmp_path: Path
) -> None:
    stack = traffic
    open_reports(page, stack)
    apply_controls(page, vendedor=CARLA)
    params = {**shown_range(page), "vendedor": CARLA}
    carla = report(http, stack, params)
    assert carla["total"]["customer_messages"] == 1
    assert shown_totals(page) == expected_totals(carla)
    assert shown_table(page, "by-vendedor") == expected_table(
        report(http, stack, {**params, "group_by": "vendedor"})
    )
    # The controls go into the address (a bookmark), the key does not.
    assert f"vendedor={CARLA}" in page.url and "key=" not in page.url

    loaded = int(page.locator("body").get_attribute("data-loaded") or 0)
    page.select_option("#group", "month")
    page.wait_for_function(LOADED_SINCE, arg=loaded)
    by_month = report(http, stack, {**params, "group_by": "month"})
    assert page.text_content("[data-period]") == "month"
    with_messages = [row for row in by_month["rows"] if row["customer_messages"]]
    assert page.locator("#chart-messages rect.customer").count() == len(with_messages) >= 1
    assert shown_totals(page) == expected_totals(by_month)

    # A vendedor with nothing counted: every chart and table says so.
    apply_controls(page, vendedor="99999999")
    assert page.locator("body").get_attribute("data-state") == "ready"
    for part in ("chart-messages", "chart-handling", "chart-reply", "by-vendedor", "by-pipeline"):
        assert page.locator(f'[data-empty="{part}"]').is_visible(), part
        assert page.locator(f"#{part}").is_hidden(), part
    assert shown_totals(page)["customer_messages"] == "0"
    assert shown_totals(page)["reply_p50_seconds"] == "–"
    page.screenshot(path=str(tmp_path / "reports-empty.png"), full_page=True)


def test_a_refused_range_says_why_on_the_page(
    traffic: Stack, http: httpx.Client, page: Any, tmp_path: Path
) -> None:
    stack = traffic
    open_reports(page, stack)
    to = date.fromisoformat(page.input_value("#to"))
    wrong = {"from": to.isoformat(), "to": (to - timedelta(days=5)).isoformat()}
    refused = http.get(
        f"{stack.edge_url}/reports", params=wrong, headers={"X-API-Key": stack.api_key}
    )
    assert refused.status_code == 400
    apply_controls(page, **wrong)
    assert page.locator("body").get_attribute("data-state") == "error"
    banner = page.inner_text("#banner")
    assert banner == f"The report could not be made: {refused.json()['error']}"
    assert page.locator("#results").is_hidden()
    assert page.locator("#controls").is_visible(), "the controls stay, to mend the range"
    page.screenshot(path=str(tmp_path / "reports-refused.png"))

    apply_controls(page, **{"from": to.isoformat(), "to": to.isoformat()})
    assert page.locator("body").get_attribute("data-state") == "ready"
    assert page.locator("#banner").is_hidden()
    assert shown_totals(page)["customer_messages"] == "2"


def test_the_dashboard_links_to_the_page_and_the_key_goes_along(traffic: Stack, page: Any) -> None:
    page.goto(f"{traffic.edge_url}/dashboard#key={traffic.api_key}")
    page.wait_for_selector("body[data-loaded]")
    page.click("#reports-link")
    page.wait_for_selector("body[data-state=ready]")
    assert page.url == f"{traffic.edge_url}/dashboard/reports"
    page.click("#dashboard-link")
    page.wait_for_selector("body[data-loaded]")
    assert page.locator("#key-form").is_hidden()


def test_a_wrong_key_asks_for_the_right_one(traffic: Stack, page: Any) -> None:
    page.goto(f"{traffic.edge_url}/dashboard/reports#key=not-the-key")
    page.wait_for_selector("body[data-state=key]")
    assert page.inner_text("#key-error") == "That key was refused."
    assert page.locator("#results").is_hidden()
    page.fill("#key", traffic.api_key)
    page.click("#key-form button")
    page.wait_for_selector("body[data-state=ready]")
    assert page.locator("#key-form").is_hidden()
    assert page.inner_text('[data-total="customer_messages"]') == "2"


def test_the_page_and_its_files_get_the_dashboards_headers(
    traffic: Stack, http: httpx.Client
) -> None:
    dashboard = http.get(f"{traffic.edge_url}/dashboard")
    guarded = ("content-security-policy", "x-content-type-options", "referrer-policy")
    for path, media in (
        ("/dashboard/reports", "text/html"),
        ("/dashboard/reports.js", "text/javascript"),
        ("/dashboard/reports.css", "text/css"),
    ):
        answer = http.get(f"{traffic.edge_url}{path}")  # no key: the files hold no data
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith(media), path
        assert {h: answer.headers[h] for h in guarded} == {
            h: dashboard.headers[h] for h in guarded
        }, path


def test_zz_the_key_never_reached_a_log(traffic: Stack) -> None:
    """After the module's pages ran (file order): the key went in fragments and headers
    only, never in a URL the edge logged, nor anywhere else a service logged."""
    logs = {p.name: p.log() for ps in traffic.services.values() for p in ps}
    edge = "".join(text for name, text in logs.items() if name.startswith("edge"))
    assert "GET /dashboard/reports 200" in edge and "GET /reports 200" in edge
    for name, text in logs.items():
        assert traffic.api_key not in text, f"the key leaked into the {name} log"
