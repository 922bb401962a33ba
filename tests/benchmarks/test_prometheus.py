"""Reading /metrics: histogram differences, Prometheus-style quantiles, gauges and counters."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from benchmarks.prometheus import Quantiles, read_histogram, read_value
from tests.benchmarks.conftest import metrics_text


def test_server_histograms_are_read_per_run_and_interpolated() -> None:
    before = metrics_text([0.05], [0.4], [0.05])
    after = metrics_text([0.05, 0.05, 0.15, 0.15, 0.15], [0.4, 0.4], [0.05, 0.05, 0.15])
    run = read_histogram(after, "pmmtalk_compute_seconds", kind="stream").minus(
        read_histogram(before, "pmmtalk_compute_seconds", kind="stream")
    )
    # Since `before`: one call of 0.05 s and three of 0.15 s; animate calls are not counted.
    assert run.count == 4 and run.total == pytest.approx(0.5)
    # Rank 2 of 4 falls in (0.1, 0.2] holding ranks 2-4: 0.1 + 0.1 * (2 - 1) / 3.
    assert run.quantile(0.5) == pytest.approx(0.1 + 0.1 / 3)
    assert run.quantile(0.25) == pytest.approx(0.1)
    batch = read_histogram(after, "pmmtalk_batch_size")
    assert batch.mean == pytest.approx(2.0)
    assert batch.bucket_bound(0.95) == 2  # sizes are whole numbers: no interpolation
    assert read_histogram(after, "pmmtalk_missing").quantile(0.5) is None


def test_quantiles_past_the_last_bucket_give_its_bound() -> None:
    text = metrics_text([], [], [0.05, 3.0, 4.0])
    lag = read_histogram(text, "pmmtalk_frame_lag_seconds")
    assert lag.quantile(0.99) == pytest.approx(0.5)  # the highest finite bound, as Prometheus
    assert Quantiles.of_histogram(lag).p50 == pytest.approx(0.5)


def test_gauges_and_counters_are_read_by_label() -> None:
    registry = CollectorRegistry()
    sessions = Gauge("pmmtalk_active_sessions", "", registry=registry)
    streams = Counter("pmmtalk_streams", "", ["outcome"], registry=registry)
    sessions.set(3)
    streams.labels("completed").inc(5)
    streams.labels("disconnected").inc(2)
    text = generate_latest(registry).decode()
    assert read_value(text, "pmmtalk_active_sessions") == 3
    # The counter's _total is read, never its _created timestamp.
    assert read_value(text, "pmmtalk_streams", outcome="completed") == 5
    assert read_value(text, "pmmtalk_streams") == 7  # summed over outcomes
    assert read_value(text, "pmmtalk_streams", outcome="rejected") is None
    assert read_value(text, "pmmtalk_missing") is None
