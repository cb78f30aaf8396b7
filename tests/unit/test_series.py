"""The dashboard's time buckets and latency quantiles."""

from __future__ import annotations

import itertools

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


def test_latency_fields_put_each_reply_under_the_first_bound_it_fits() -> None:
    assert series.latency_field(0.1) == "reply_le_0.25"
    assert series.latency_field(1.0) == "reply_le_1"
    assert series.latency_field(1.2) == "reply_le_1.5"
    assert series.latency_field(299.9) == "reply_le_300"
    assert series.latency_field(301) == series.OVERFLOW


def test_quantiles_interpolate_inside_the_bin() -> None:
    raw = histogram(*([0.4] * 50), *([1.8] * 45), *([9.0] * 5))
    assert 0.25 <= series.quantile(raw, 0.5) <= 0.5
    assert 1.5 <= series.quantile(raw, 0.95) <= 2
    assert 8 <= series.quantile(raw, 0.99) <= 10


def test_an_empty_bucket_has_no_latency_and_slow_replies_read_as_at_least_the_last_bound() -> None:
    assert series.quantile({}, 0.5) == 0.0
    assert series.quantile(histogram(900, 1000), 0.5) == series.LATENCY_BOUNDS[-1]


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


@given(st.lists(st.floats(min_value=0, max_value=400), min_size=1, max_size=200))
def test_quantiles_are_ordered_and_within_the_bounds(latencies: list[float]) -> None:
    raw = histogram(*latencies)
    p50, p95 = series.quantile(raw, 0.5), series.quantile(raw, 0.95)
    assert 0 <= p50 <= p95 <= series.LATENCY_BOUNDS[-1]
    # The estimate stays within the bin of the true value.
    true_p50 = sorted(latencies)[max(0, -(-len(latencies) // 2) - 1)]
    if true_p50 <= series.LATENCY_BOUNDS[-1]:
        bound = series.LATENCY_BOUNDS.index(next(b for b in series.LATENCY_BOUNDS if true_p50 <= b))
        lower = series.LATENCY_BOUNDS[bound - 1] if bound else 0.0
        assert lower <= p50 <= series.LATENCY_BOUNDS[bound]


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
