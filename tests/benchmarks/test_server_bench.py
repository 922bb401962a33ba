"""The server benchmark: its lag arithmetic, its reading of /metrics, its verdicts, and one
tiny real run (no speed is asserted: the figures depend on the machine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks.server import (
    AnimateTiming,
    ClientTrace,
    Quantiles,
    Report,
    StartTiming,
    StreamRun,
    analyse_run,
    frame_latencies,
    largest_real_time,
    main,
    markdown,
    read_histogram,
    targets,
)

CHUNK_SAMPLES = 320  # 20 ms at 16 kHz
T0 = 100.0  # an arbitrary perf_counter origin


def metrics_text(stream: list[float], animate: list[float], lags: list[float]) -> str:
    """A real Prometheus exposition with the server's metric names and the given observations."""
    registry = CollectorRegistry()
    compute = Histogram(
        "pmmtalk_compute_seconds", "", ["kind"], buckets=(0.1, 0.2, 0.5), registry=registry
    )
    lag = Histogram("pmmtalk_frame_lag_seconds", "", buckets=(0.1, 0.2, 0.5), registry=registry)
    batch = Histogram("pmmtalk_batch_size", "", buckets=(1, 2, 4), registry=registry)
    for value in stream:
        compute.labels("stream").observe(value)
        batch.observe(2)
    for value in animate:
        compute.labels("animate").observe(value)
    for value in lags:
        lag.observe(value)
    return generate_latest(registry).decode()


def paced_trace(seconds: float, hop_s: float = 0.4, lookahead_s: float = 0.3) -> ClientTrace:
    """A client whose chunk j finished sending at T0 + (j + 1) * 20 ms, then end at once."""
    trace = ClientTrace(0, fps=30, hop_s=hop_s, lookahead_s=lookahead_s)
    chunks = round(seconds * 16_000 / CHUNK_SAMPLES)
    trace.chunk_samples = [CHUNK_SAMPLES] * chunks
    trace.send_times = [T0 + (j + 1) * 0.02 for j in range(chunks)]
    trace.late_s = [0.0] * chunks
    trace.end_sent = trace.send_times[-1]
    return trace


def answer_after(trace: ClientTrace, delay_s: float, growth_s_per_s: float = 0.0) -> None:
    """Every frame arrives ``delay_s`` (growing by ``growth_s_per_s`` per second of audio)
    after the audio its window needs was sent: what a server keeping up looks like."""
    trace.arrivals = {i: 0.0 for i in range(trace.expected_frames)}
    lag, _, when = frame_latencies(trace)  # arrivals at 0: lag = -(when the audio was sent)
    trace.arrivals = {
        i: -float(lag[i]) + delay_s + growth_s_per_s * float(when[i])
        for i in range(trace.expected_frames)
    }
    trace.done_frames = trace.expected_frames


def test_lag_counts_from_the_audio_each_frame_waits_for() -> None:
    trace = paced_trace(2.0)
    trace.arrivals = {0: T0 + 0.80, 15: T0 + 1.15, 36: T0 + 2.00, 48: T0 + 2.10, 59: T0 + 2.10}
    lag, end_to_end, when = frame_latencies(trace)
    # Frame 0 is in window 0 (frames 0-11), which needs 0.4 + 0.3 s of audio = 11,200 samples,
    # the end of chunk 34, sent at T0 + 0.70.
    assert lag[0] == pytest.approx(0.10)
    # Frame 15 is in window 1 (frames 12-23): it needs 1.1 s of audio, sent at T0 + 1.10.
    assert lag[1] == pytest.approx(0.05)
    # Frame 36 (window 3) needs 1.9 s, sent at T0 + 1.90.
    assert lag[2] == pytest.approx(0.10)
    # Window 4 would need 2.3 s, past the 2 s of audio: its frames wait for end (T0 + 2.00).
    assert lag[3] == pytest.approx(0.10) and lag[4] == pytest.approx(0.10)
    # End to end counts from the frame's own instant: frame 15 is at 0.5 s, sent at T0 + 0.50.
    assert end_to_end[0] == pytest.approx(0.80 - 0.02)
    assert end_to_end[1] == pytest.approx(1.15 - 0.50)
    assert when.tolist() == pytest.approx([0.0, 0.5, 1.2, 1.6, 59 / 30])


def test_a_stream_is_complete_only_with_every_frame_once() -> None:
    trace = paced_trace(1.0)  # 30 frames
    answer_after(trace, 0.05)
    assert trace.problem() is None
    trace.done_frames = 29
    assert trace.problem() == "done said 29 frames, expected 30"
    trace.done_frames = 30
    del trace.arrivals[7]
    trace.arrivals[30] = T0
    assert trace.problem() == "the frame indices have gaps"
    trace.duplicates = 1
    assert "1 twice" in (trace.problem() or "")
    trace.error = "server error bad_audio: ..."
    assert trace.problem() == "server error bad_audio: ..."


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


def test_a_server_keeping_up_keeps_real_time_and_one_falling_behind_does_not() -> None:
    metrics = metrics_text([0.05], [], [0.05])
    steady = []
    for index in range(2):
        trace = paced_trace(4.0)
        trace.index = index
        answer_after(trace, 0.08)
        steady.append(trace)
    run = analyse_run(steady, 4.0, metrics, metrics, 500_000_000)
    assert run.frames == run.frames_expected == 240
    assert run.client_lag.p95 == pytest.approx(0.08)
    assert run.lag_growth_s == pytest.approx(0.0)
    assert run.real_time_verdict() == (True, "yes")

    behind = paced_trace(4.0)
    answer_after(behind, 0.05, growth_s_per_s=0.05)  # 50 ms later for every second of audio
    run = analyse_run([behind], 4.0, metrics, metrics, None)
    assert run.client_lag.p95 is not None and run.client_lag.p95 < 0.3  # not yet slow ...
    keeps, why = run.real_time_verdict()
    assert not keeps and why.startswith("lag grew")  # ... but it would not last

    slow = paced_trace(4.0)
    answer_after(slow, 0.35)
    keeps, why = analyse_run([slow], 4.0, metrics, metrics, None).real_time_verdict()
    assert not keeps and why == "p95 lag 350 ms > 300 ms"

    broken = paced_trace(4.0)
    answer_after(broken, 0.05)
    broken.error = "server error internal: boom"
    keeps, why = analyse_run([broken], 4.0, metrics, metrics, None).real_time_verdict()
    assert not keeps and "1 stream(s) failed" in why


def made_run(n: int, p95_s: float, rss: int | None = 600_000_000) -> StreamRun:
    lag = Quantiles(p95_s / 2, p95_s, p95_s)
    return StreamRun(
        n, 20.0, 600 * n, 600 * n, [], lag, lag, 0.1, 0.1, 0.0, lag, lag, 2.0, 4.0, 100, rss
    )


def test_the_sweep_counts_up_to_the_first_failure() -> None:
    assert largest_real_time([made_run(1, 0.1), made_run(4, 0.2), made_run(8, 0.4)]) == 4
    assert largest_real_time([made_run(1, 0.5)]) is None
    # A pass after a failure does not count: the sweep would have stopped.
    assert largest_real_time([made_run(1, 0.1), made_run(4, 0.4), made_run(8, 0.1)]) == 1


def report(runs: list[StreamRun], ready_s: float = 3.0, animate_s: float = 0.2) -> Report:
    return Report(
        command="python -m benchmarks.server",
        server_command="pmmtalk serve --port PORT",
        machine={"date": "2026-11-22", "commit": "abc1234", "cpu": "Test CPU", "cores": 2},
        info={"backend": "onnx", "window": {"lookahead_s": 0.3, "hop_s": 0.4}},
        starts=[StartTiming("first start", 20.0), StartTiming("warm start", ready_s)],
        animate=AnimateTiming(10.0, 5, animate_s, animate_s, animate_s * 800, 300),
        runs=runs,
    )


def test_targets_are_judged_from_the_same_run() -> None:
    runs = [made_run(1, 0.2), made_run(16, 0.25, rss=900_000_000), made_run(20, 0.5)]
    lines = targets(report(runs))
    assert lines == [
        "- Concurrent real-time streams: 16 (target at least 16 with p95 frame lag at most "
        "300 ms): met.",
        "- One stream's p95 frame lag: 200 ms client-observed, 200 ms server-side (target at "
        "most 150 ms + the 0.3 s lookahead = 450 ms): met.",
        "- POST /animate of a 10 s WAV: 0.200 s wall (160 ms compute) (target under 0.3 s): met.",
        "- Ready 3.0 s after start (warm start) (target within 5 s): met.",
        "- Server resident memory with 16 streams: peak 900 MB (target under 1 GB): met.",
    ]
    missed = targets(report([made_run(1, 0.5), made_run(16, 0.2, rss=1_200_000_000)], 7.5, 0.4))
    assert all(line.endswith("NOT met.") for line in missed)
    short = targets(report([made_run(1, 0.1), made_run(2, 0.1)]))
    assert short[0].endswith("not measured (N up to 2 only).")
    stopped = targets(report([made_run(1, 0.1), made_run(2, 0.4)]))
    assert stopped[0].startswith("- Concurrent real-time streams: 1 ") and "NOT met" in stopped[0]
    assert short[-1] == "- Server resident memory with 16 streams: not measured."


def test_report_carries_every_run_and_the_command() -> None:
    text = markdown(report([made_run(1, 0.1), made_run(4, 0.4)]))
    assert "`python -m benchmarks.server`" in text and "`pmmtalk serve --port PORT`" in text
    assert "| 1 | 600/600 | 50 / 100 / 100 |" in text
    assert "| 4 | 2400/2400 |" in text and "p95 lag 400 ms > 300 ms |" in text
    assert "Largest N that keeps real time: **1**." in text
    assert "| warm start | 3.00 s |" in text


def test_a_tiny_real_run_writes_a_complete_report(tmp_path: Path) -> None:
    """One client for 2 s against a real `pmmtalk serve` (torch: no export needed)."""
    argv = ["--quick", "--ns", "1", "--duration-s", "2", "--animate-repeats", "1"]
    assert main([*argv, "--backend", "torch", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "server.json").read_text())
    assert data["info"]["backend"] == "torch"
    assert [s["label"] for s in data["starts"]] == ["first start"]
    assert data["starts"][0]["ready_s"] > 0
    assert data["animate"]["frame_count"] == 300  # 10 s at 30 fps
    (run,) = data["runs"]
    assert run["n"] == 1 and run["failures"] == []
    assert run["frames"] == run["frames_expected"] == 60  # ceil(2 s x 30 fps), every one
    # The server's own histograms moved during the run: its frame lag and backend calls.
    assert run["server_lag"]["p50"] is not None and run["backend_calls"] >= 1
    assert run["client_lag"]["p95"] is not None and not math.isnan(run["client_lag"]["p95"])
    assert run["peak_rss_bytes"] > 0
    text = (tmp_path / "server.md").read_text()
    assert "| 1 | 60/60 |" in text and "--backend torch" in text
