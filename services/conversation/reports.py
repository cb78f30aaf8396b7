"""What the conversation service reports (issue 23): what the bot and the team did, per
day in BRIDGE_TIMEZONE, kept 13 months, by time or by vendedor, pipeline, stage, origin
or proactive trigger (the machinery: services/common/reports.py).

Counted as it happens. Every counter a store script adds for the dashboard (`bump` in
store/lua/_lib.lua, in the same script as the change it counts, so a retried or
replayed call never counts twice) also goes into the day's report hash (`report`), under
the conversation's owner: the vendedor (the lead's responsible user), pipeline and stage
as its last turn (or proactive start) read the lead, the chat's origin, and the
proactive trigger that started it. Each figure a sum of counters (`METRICS`); the reply
time's and n8n's answer time's percentiles from bins as the dashboard's series keeps
them (series.py).
"""

from __future__ import annotations

from services.common.reports import Metrics, ReportDays
from services.conversation import series

DAY_PREFIX = "conv:report:"

# Each figure of a report, in the order a table shows it: the counters it sums.
METRICS: dict[str, tuple[str, ...]] = {
    "conversations_started": ("conversations_started",),
    "customer_messages": ("messages_customer",),
    "bot_messages": ("messages_out",),
    "template_sends": ("template_sends",),
    "human_messages": ("messages_human",),
    "handoffs_ai": ("handoffs_ai",),
    "handoffs_silent": ("handoffs_timeout",),
    "handoffs_keyword": ("handoffs_keyword",),
    "takeovers_command": ("takeovers_command",),
    "takeovers_api": ("takeovers_api",),
    "takeovers_human": ("takeovers_auto",),
    "releases": ("resumes_command", "resumes_api"),
    "auto_resumes": ("resumes_auto",),
    "ignored": ("decision_ignore",),
    "not_triggered": ("decision_not_triggered",),
    "held_out_of_hours": ("decision_hold",),
    "delivery_failures": ("replies_failed",),
    "dead_letters": ("dead_lettered",),
    "replies": (series.REPLIES,),
}
# The reply time (a customer's message to the bot's reply delivered: the first response
# to it) and n8n's answer time (the turn's envelope ready for n8n to n8n's reply at the
# bridge), from their bins: the figure, the bins' prefix, the quantile.
N8N_PREFIX = "n8n:"
QUANTILES = {
    "reply_p50_seconds": (series.LATENCY_PREFIX, 0.5),
    "reply_p90_seconds": (series.LATENCY_PREFIX, 0.9),
    "n8n_answer_p50_seconds": (N8N_PREFIX, 0.5),
    "n8n_answer_p90_seconds": (N8N_PREFIX, 0.9),
}
METRIC_NAMES = (*METRICS, *QUANTILES)


FIGURES = Metrics(
    counts=METRICS,
    quantiles=QUANTILES,
    bin_value=lambda index: series.bin_value(series.LATENCY_PREFIX + index),
    rank_by="customer_messages",
)


def report_days(timezone: str) -> ReportDays:
    """The conversation service's report days (its hashes: DAY_PREFIX + the day)."""
    return ReportDays(DAY_PREFIX, timezone)


def n8n_answer_field(seconds: float) -> str:
    """The bin of one n8n answer time (the reply time's bins, under their own prefix)."""
    return N8N_PREFIX + series.latency_field(max(seconds, 0.0)).removeprefix(series.LATENCY_PREFIX)
