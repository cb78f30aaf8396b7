"""The dashboard's time buckets and latency quantiles."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.conversation import series


def histogram(*latencies: float) -> dict[str, int]:
    raw: dict[str, int] = {}
    for seconds in latencies:
        field = series.latency_field(seconds)
        raw[field] = raw.get(field, 0) + 1
    raw[series.REPLIES] = len(latencies)
    raw[series.REPLY_MS_SUM] = round(sum(latencies) * 1000)
    return raw


def test_buckets_cover_the_window_oldest_first_ending_with_the_current_one() -> None:
    now = 1_800_000_123.4
    starts = series.bucket_starts(now, 1)
    assert len(starts) == 3600 // series.BUCKET_SECONDS
    assert starts[-1] == series.bucket_start(now) <= now < starts[-1] + series.BUCKET_SECONDS
    assert all(b - a == series.BUCKET_SECONDS for a, b in itertools.pairwise(starts))


def test_a_latency_is_binned_with_its_neighbours_within_two_percent() -> None:
    assert series.latency_field(0.0) == series.latency_field(0.0004) == series.ZERO
    assert series.latency_field(1.0) == "rt:0"
    assert series.latency_field(1.04) == "rt:1"  # the upper edge belongs to the bin
    assert series.latency_field(1.0401) == "rt:2"
    assert series.latency_field(0.5).startswith("rt:-")
    for seconds in (0.003, 0.25, 1.7, 3.77, 42.0, 3600.0):
        value = series.bin_value(series.latency_field(seconds))
        assert value == pytest.approx(seconds, rel=series.RELATIVE_ERROR + 1e-12)


def test_one_reply_reads_as_its_own_time_not_a_bins_edge() -> None:
    # The defect: one reply of 3.77 s used to read p50 4.50 s and p95 4.95 s.
    raw = histogram(3.77)
    for q in (0.5, 0.95, 0.99):
        assert series.quantile(raw, q) == pytest.approx(3.77, rel=0.02)


def test_quantiles_are_the_nearest_ranks_value() -> None:
    raw = histogram(*([0.4] * 50), *([1.8] * 45), *([9.0] * 5))
    assert series.quantile(raw, 0.5) == pytest.approx(0.4, rel=0.02)
    assert series.quantile(raw, 0.95) == pytest.approx(1.8, rel=0.02)
    assert series.quantile(raw, 0.99) == pytest.approx(9.0, rel=0.02)


def test_an_empty_bucket_has_no_latency_and_slow_replies_keep_their_size() -> None:
    assert series.quantile({}, 0.5) == 0.0
    assert series.quantile(histogram(900, 1000), 0.5) == pytest.approx(900, rel=0.02)


def test_the_fixed_bins_of_earlier_versions_are_not_read_as_latencies() -> None:
    raw = {**histogram(2.0), "reply_le_5": 3, "messages_out": 1}
    b = series.bucket(0, raw)
    assert b.counters == {"messages_out": 1}
    assert b.reply_p50_seconds == pytest.approx(2.0, rel=0.02)


def test_a_bucket_separates_counters_from_latency_fields() -> None:
    raw = {**histogram(1.0, 3.0), "messages_customer": 4, "takeovers_auto": 1}
    b = series.bucket(600, raw)
    assert b.counters == {"messages_customer": 4, "takeovers_auto": 1}
    assert b.replies == 2
    assert b.reply_mean_seconds == pytest.approx(2.0)


def test_the_window_merges_the_histograms_of_every_bucket() -> None:
    fast = {**histogram(*([0.3] * 9)), "messages_out": 9}
    slow = {**histogram(50.0), "messages_out": 1}
    window = series.window([0, 300], [fast, slow])
    assert window.start == 0
    assert window.replies == 10
    assert window.counters == {"messages_out": 10}
    assert window.reply_p50_seconds <= 0.5
    assert window.reply_p95_seconds > 45


@given(
    st.lists(st.floats(min_value=0, max_value=4000), min_size=1, max_size=200),
    st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
def test_every_quantile_is_within_two_percent_of_the_true_one(
    latencies: list[float], q: float
) -> None:
    raw = histogram(*latencies)
    estimate = series.quantile(raw, q)
    ordered = sorted(latencies)
    true = ordered[max(1, math.ceil(q * len(ordered))) - 1]  # nearest rank, ceil(q·n)
    true = 0.0 if true < series.SHORTEST_SECONDS else true
    assert estimate == pytest.approx(true, rel=series.RELATIVE_ERROR + 1e-9, abs=1e-12)
    assert series.quantile(raw, 0.5) <= series.quantile(raw, 0.95)


def test_the_days_median_and_a_windows_p50_are_one_figure_over_the_same_replies() -> None:
    """The dashboard's "median, last 24 h" and "p50, last N h" come from one read of the
    same buckets: with every reply inside the window they are the same number."""
    starts = series.bucket_starts(1_800_000_000, series.MAX_HOURS)
    counts: list[dict[str, int]] = [{} for _ in starts]
    counts[-1] = histogram(0.4, 0.9, 1.8, 2.5, 7.0)
    counts[-2] = histogram(3.5, 4.2)
    day = series.Series(starts, counts)
    window = day.last(1)
    assert len(window.starts) == 3600 // series.BUCKET_SECONDS
    assert window.starts[-1] == starts[-1]
    assert window.window().replies == day.window().replies == 7
    assert window.window().reply_p50_seconds == day.window().reply_p50_seconds > 0
    # Replies older than the window count for the day only, and move its median.
    counts[0] = histogram(*([60.0] * 20))
    day = series.Series(starts, counts)
    assert day.window().reply_p50_seconds > day.last(1).window().reply_p50_seconds
