"""Shared helpers for the benchmark tests: synthetic client traces, /metrics texts and runs
with known figures, so the measures and verdicts can be checked exactly."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks.process import ResourceUsage
from benchmarks.prometheus import Quantiles
from benchmarks.soak import SoakResult, memory_growth
from benchmarks.streams import ClientTrace, StreamRun, frame_latencies

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


def made_run(
    n: int, p95_s: float, rss: int | None = 600_000_000, server_cores: float = 1.0
) -> StreamRun:
    """A run of N clients with the given p95 client lag (p50 half of it), nothing lost."""
    lag = Quantiles(p95_s / 2, p95_s, p95_s)
    usage = ResourceUsage(20.0, 20.0 * server_cores, 2.0, 40.0, rss, rss, rss)
    return StreamRun(
        n,
        20.0,
        600 * n,
        600 * n,
        [],
        lag,
        lag,
        0.1,
        0.1,
        0.0,
        lag,
        lag,
        2.0,
        4.0,
        100,
        rss,
        usage=usage,
    )


def soak_result(growth_to: int, lost: int, open_end: int | None) -> SoakResult:
    """A 20-session sequential soak whose memory goes 100 -> ``growth_to`` after warm-up."""
    samples = [(0.0, 90), (10.0, 100), (20.0, growth_to)]
    return SoakResult(
        "sequential", 1, 20, 5.0, 20.0, 600 - lost, 600, lost, 1 if lost else 0, [],
        open_end, 20, samples, 10.0, 10.0, memory_growth(samples, 10.0),
        Quantiles(0.1, 0.2, 0.3), Quantiles(None, None, None), 0, None,
    )  # fmt: skip
