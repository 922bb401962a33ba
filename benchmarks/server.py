"""Load-test the real server: start time, /animate latency, and N simulated real-time streams.

    python -m benchmarks.server                         # the full sweep (about 5 min)
    python -m benchmarks.server --ns 1,8,16 --duration-s 30
    python -m benchmarks.server --quick                 # a smoke run: N = 1, 2 for 5 s

The server runs as its own process (`pmmtalk serve`), exactly as a user starts it; the clients
all run in this process on one asyncio loop. Each client sends 16 kHz s16 speech
(samples/hello.wav, looped) in 20 ms chunks paced at real time, then ``end``; client starts are
spread evenly over one hop, so windows reach the batcher steadily rather than all at once.
Streams are swept over N, stopping after the first N that does not keep real time. Results go
to ``docs/benchmarks/server.{json,md}``, stamped with the machine and the command line.

Two views of frame lag are reported. The client's: from the moment this process finished
sending the audio a frame's window needs to the moment the frame arrived here (it includes the
loopback network and this process's own scheduling). The server's: its ``/metrics`` histogram
``pmmtalk_frame_lag_seconds``, from the arrival of that audio to the frame being sent, read as
the difference of bucket counts before and after a run, with quantiles interpolated within
buckets as Prometheus's ``histogram_quantile`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import math
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.protocol import (
    Done,
    End,
    Error,
    Frames,
    Ready,
    Start,
    decode_binary_frames,
    parse_server_message,
)

logger = logging.getLogger(__name__)

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DOCS_DIR: Final = REPO_ROOT / "docs" / "benchmarks"
SPEECH_WAV: Final = REPO_ROOT / "samples" / "hello.wav"
SAMPLE_RATE_HZ: Final = 16_000
CHUNK_S: Final = 0.02
"""Audio per WebSocket message, as a microphone callback delivers it."""
NS_DEFAULT: Final = (1, 4, 8, 12, 16, 20, 24, 32)
DURATION_S_DEFAULT: Final = 20.0
QUICK_NS: Final = (1, 2)
QUICK_DURATION_S: Final = 5.0
ANIMATE_CLIP_S: Final = 10.0
ANIMATE_REPEATS_DEFAULT: Final = 5
READY_TIMEOUT_S: Final = 900.0
"""A first start may export the model to ONNX (a minute or more on a busy CPU)."""
READY_POLL_S: Final = 0.02
CONNECT_TIMEOUT_S: Final = 60.0
RSS_POLL_S: Final = 0.1
MAX_SESSIONS_DEFAULT: Final = 32
"""The server's own default; raised to the largest N swept."""
START_DELAY_S: Final = 0.5
"""Clients connect first; audio starts this long after the last one is ready."""

REAL_TIME_P95_LAG_S: Final = 0.3
"""A run keeps real time when the client-observed p95 frame lag is at most this ..."""
REAL_TIME_GROWTH_S: Final = 0.1
"""... and the median lag of the last quarter of the audio exceeds the first quarter's by at
most this (a server that falls behind shows a lag that grows through the run)."""
TARGET_STREAMS: Final = 16
TARGET_SINGLE_STREAM_EXTRA_S: Final = 0.15
"""The issue: one stream's p95 frame lag at most 150 ms plus the lookahead."""
TARGET_ANIMATE_S: Final = 0.3
TARGET_READY_S: Final = 5.0
TARGET_RSS_BYTES: Final = 1_000_000_000


# --- measurements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantiles:
    """p50, p95 and p99 in seconds (None where nothing was observed)."""

    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Quantiles:
        data = np.asarray(values, dtype=np.float64)
        if data.size == 0:
            return cls(None, None, None)
        p50, p95, p99 = np.percentile(data, [50, 95, 99])
        return cls(float(p50), float(p95), float(p99))

    @classmethod
    def of_histogram(cls, histogram: Histogram) -> Quantiles:
        return cls(*(histogram.quantile(q) for q in (0.50, 0.95, 0.99)))


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound (the last bound is +Inf)."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    total: float  # the histogram's _sum

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since ``earlier`` (same buckets)."""
        before = dict(earlier.buckets)
        return Histogram(
            tuple((bound, count - before.get(bound, 0.0)) for bound, count in self.buckets),
            self.count - earlier.count,
            self.total - earlier.total,
        )

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def bucket_bound(self, q: float) -> float | None:
        """The upper bound of the bucket holding rank ``q * count``: for whole-number values
        such as batch sizes, where interpolating within a bucket means nothing."""
        if not self.buckets or self.count <= 0:
            return None
        rank = q * self.buckets[-1][1]
        return next(bound for bound, count in self.buckets if count >= rank)

    def quantile(self, q: float) -> float | None:
        """Linear interpolation within the bucket holding rank ``q * count``, as Prometheus's
        ``histogram_quantile``: the first bucket starts at 0; a rank in the +Inf bucket gives
        the highest finite bound. None when the histogram is empty."""
        if not self.buckets or self.count <= 0:
            return None
        rank = q * self.buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in self.buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    count - lower_count
                )
            lower_bound, lower_count = bound, count
        return lower_bound


EMPTY_HISTOGRAM: Final = Histogram((), 0.0, 0.0)


def read_histogram(metrics_text: str, name: str, **labels: str) -> Histogram:
    """One histogram from a Prometheus text exposition (``GET /metrics``); the series whose
    labels include ``labels``. An absent series reads as empty."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = float(sample.value)
            elif sample.name == f"{name}_count":
                count = float(sample.value)
            elif sample.name == f"{name}_sum":
                total = float(sample.value)
    return Histogram(tuple(sorted(buckets.items())), count, total)


@dataclass
class ClientTrace:
    """What one simulated client sent and received, on this process's perf_counter clock."""

    index: int
    fps: int = 30
    hop_s: float = 0.0
    lookahead_s: float = 0.0
    chunk_samples: list[int] = field(default_factory=list)
    send_times: list[float] = field(default_factory=list)  # after each chunk's send returned
    late_s: list[float] = field(default_factory=list)  # how far each send was behind schedule
    end_sent: float | None = None
    arrivals: dict[int, float] = field(default_factory=dict)  # frame index -> arrival time
    duplicates: int = 0
    done_frames: int | None = None
    error: str | None = None

    @property
    def total_samples(self) -> int:
        return sum(self.chunk_samples)

    @property
    def expected_frames(self) -> int:
        """The frame-count contract: ``ceil(samples * fps / 16000)``."""
        return math.ceil(self.total_samples * self.fps / SAMPLE_RATE_HZ)

    def problem(self) -> str | None:
        """Why this stream does not count as complete, or None."""
        if self.error:
            return self.error
        expected = self.expected_frames
        if self.done_frames != expected:
            return f"done said {self.done_frames} frames, expected {expected}"
        if self.duplicates or len(self.arrivals) != expected:
            return f"received {len(self.arrivals)} distinct frames, {self.duplicates} twice"
        if set(self.arrivals) != set(range(expected)):
            return "the frame indices have gaps"
        return None


def frame_latencies(trace: ClientTrace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lag, end_to_end, frame_time) per received frame, in seconds.

    Frame i (at i / fps on the audio clock) belongs to window k = i // hop_frames, which the
    server can compute once audio up to ``(k + 1) * hop + lookahead`` has arrived; frames whose
    window reaches past the end of the audio wait for ``end``. lag = arrival - when that audio
    was sent; end_to_end = arrival - when the audio at the frame's own instant was sent.
    """
    indices = np.array(sorted(trace.arrivals), dtype=np.int64)
    if indices.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    arrivals = np.array([trace.arrivals[i] for i in indices])
    cumulative = np.cumsum(trace.chunk_samples)
    sent = np.asarray(trace.send_times)
    total = int(cumulative[-1])
    end_sent = trace.end_sent if trace.end_sent is not None else float(sent[-1])
    hop_frames = max(1, round(trace.hop_s * trace.fps))
    hop_samples = round(trace.hop_s * SAMPLE_RATE_HZ)
    lookahead_samples = round(trace.lookahead_s * SAMPLE_RATE_HZ)

    def sent_at(samples: np.ndarray) -> np.ndarray:
        chunk = np.searchsorted(cumulative, np.minimum(samples, total), side="left")
        return np.where(samples > total, end_sent, sent[np.minimum(chunk, sent.size - 1)])

    needed = (indices // hop_frames + 1) * hop_samples + lookahead_samples
    own = np.ceil(indices * SAMPLE_RATE_HZ / trace.fps).astype(np.int64)
    return arrivals - sent_at(needed), arrivals - sent_at(own), indices / trace.fps


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartTiming:
    """From spawning ``pmmtalk serve`` to ``GET /readyz`` answering 200."""

    label: str
    ready_s: float


@dataclass(frozen=True)
class AnimateTiming:
    """``POST /animate`` of one clip: wall time here, and the server's own ``compute_ms``."""

    clip_s: float
    repeats: int
    wall_median_s: float
    wall_min_s: float
    compute_median_ms: float
    frame_count: int


@dataclass(frozen=True)
class StreamRun:
    """N clients streaming at real time for ``duration_s`` each."""

    n: int
    duration_s: float
    frames: int  # received, all clients
    frames_expected: int
    failures: list[str]  # one line per client that did not complete
    client_lag: Quantiles
    end_to_end: Quantiles
    lag_first_quarter_s: float | None  # median client lag
    lag_last_quarter_s: float | None
    client_late_p95_s: float | None  # how far this process fell behind its send schedule
    server_lag: Quantiles
    server_compute: Quantiles  # one backend call, kind="stream"
    batch_mean: float | None
    batch_p95: float | None  # the upper bound of the histogram bucket holding the p95
    backend_calls: int
    peak_rss_bytes: int | None

    @property
    def lag_growth_s(self) -> float | None:
        if self.lag_first_quarter_s is None or self.lag_last_quarter_s is None:
            return None
        return self.lag_last_quarter_s - self.lag_first_quarter_s

    def real_time_verdict(self) -> tuple[bool, str]:
        """Whether this run kept real time, and why (see ``REAL_TIME_P95_LAG_S``)."""
        if self.failures:
            return False, f"{len(self.failures)} stream(s) failed: {self.failures[0]}"
        p95 = self.client_lag.p95
        if p95 is None:
            return False, "no frames"
        if p95 > REAL_TIME_P95_LAG_S:
            return False, f"p95 lag {p95 * 1000:.0f} ms > {REAL_TIME_P95_LAG_S * 1000:.0f} ms"
        growth = self.lag_growth_s
        if growth is not None and growth > REAL_TIME_GROWTH_S:
            return False, (
                f"lag grew {growth * 1000:.0f} ms from the first to the last quarter "
                f"(> {REAL_TIME_GROWTH_S * 1000:.0f} ms)"
            )
        return True, "yes"

    @property
    def keeps_real_time(self) -> bool:
        return self.real_time_verdict()[0]


def analyse_run(
    traces: Sequence[ClientTrace],
    duration_s: float,
    metrics_before: str,
    metrics_after: str,
    peak_rss_bytes: int | None,
) -> StreamRun:
    """One run's figures from its client traces and the server's metrics around it."""
    lags, e2es, times = [], [], []
    for trace in traces:
        lag, e2e, when = frame_latencies(trace)
        lags.append(lag)
        e2es.append(e2e)
        times.append(when)
    lag = np.concatenate(lags) if lags else np.zeros(0)
    when = np.concatenate(times) if times else np.zeros(0)
    first = lag[when < duration_s / 4]
    last = lag[when >= duration_s * 3 / 4]
    late = np.concatenate([np.asarray(t.late_s) for t in traces]) if traces else np.zeros(0)

    def delta(name: str, **labels: str) -> Histogram:
        return read_histogram(metrics_after, name, **labels).minus(
            read_histogram(metrics_before, name, **labels)
        )

    batch = delta("pmmtalk_batch_size")
    failures = [f"client {t.index}: {p}" for t in traces if (p := t.problem())]
    return StreamRun(
        n=len(traces),
        duration_s=duration_s,
        frames=sum(len(t.arrivals) for t in traces),
        frames_expected=sum(t.expected_frames for t in traces),
        failures=failures,
        client_lag=Quantiles.of(lag),
        end_to_end=Quantiles.of(np.concatenate(e2es) if e2es else np.zeros(0)),
        lag_first_quarter_s=float(np.median(first)) if first.size else None,
        lag_last_quarter_s=float(np.median(last)) if last.size else None,
        client_late_p95_s=float(np.percentile(late, 95)) if late.size else None,
        server_lag=Quantiles.of_histogram(delta("pmmtalk_frame_lag_seconds")),
        server_compute=Quantiles.of_histogram(delta("pmmtalk_compute_seconds", kind="stream")),
        batch_mean=batch.mean,
        batch_p95=batch.bucket_bound(0.95),
        backend_calls=round(batch.count),
        peak_rss_bytes=peak_rss_bytes,
    )


def largest_real_time(runs: Sequence[StreamRun]) -> int | None:
    """The largest N that kept real time, counting only runs before the first failure
    (the sweep stops there)."""
    best = None
    for run in sorted(runs, key=lambda r: r.n):
        if not run.keeps_real_time:
            break
        best = run.n
    return best


@dataclass
class Report:
    """Everything one benchmark run measured, and how."""

    command: str
    server_command: str
    machine: dict[str, Any]
    info: dict[str, Any]  # from GET /info: model, backend, window, batching
    starts: list[StartTiming]
    animate: AnimateTiming | None
    runs: list[StreamRun]
    quick: bool = False
    note: str = ""


# --- the server process -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pmmtalk_executable() -> str:
    """The ``pmmtalk`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "pmmtalk"
    if beside.exists():
        return str(beside)
    raise FileNotFoundError(
        f"no pmmtalk command next to {sys.executable}; install the project (pip install -e .)"
    )


def serve_command(port: int | str, args: argparse.Namespace, max_sessions: int) -> list[str]:
    """``pmmtalk serve`` with the benchmark's flags; unset window and batch flags keep the
    server's defaults."""
    command = [pmmtalk_executable(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend", args.backend, "--max-sessions", str(max_sessions)]
    for flag in ("hop_s", "left_context_s", "lookahead_s", "max_batch_size", "max_wait_ms"):
        value = getattr(args, flag)
        if value is not None:
            command += ["--" + flag.replace("_", "-"), str(value)]
    return command


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    http: str
    ready_s: float
    log_path: Path

    @property
    def ws(self) -> str:
        return self.http.replace("http://", "ws://", 1) + "/stream"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def running_server(
    command: Sequence[str], port: int, log_path: Path, env: dict[str, str]
) -> Iterator[ServerProcess]:
    """Spawn the server, wait for ``/readyz``, and stop it (SIGTERM, then SIGKILL) on exit."""
    http = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        server = ServerProcess(process, http, 0.0, log_path)
        try:
            server.ready_s = _wait_ready(server, started)
            yield server
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(server: ServerProcess, started: float) -> float:
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"the server exited with code {code} before it was ready:\n{server.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(server.http + "/readyz").status_code == 200:
                    return time.perf_counter() - started
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:g} s")
            time.sleep(READY_POLL_S)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc), or None where that cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- workloads --------------------------------------------------------------------------------


def speech(seconds: float) -> np.ndarray:
    """samples/hello.wav looped to ``seconds``, (n,) int16 at 16 kHz."""
    samples, rate = sf.read(SPEECH_WAV, dtype="int16")
    if rate != SAMPLE_RATE_HZ or samples.ndim != 1:
        raise ValueError(f"{SPEECH_WAV} must be 16 kHz mono, got {rate} Hz, shape {samples.shape}")
    return np.resize(samples, round(seconds * SAMPLE_RATE_HZ))


def wav_bytes(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
    return out.getvalue()


def bench_animate(http: str, clip_s: float, repeats: int) -> AnimateTiming:
    """Median of ``repeats`` ``POST /animate`` requests after one warm-up request."""
    body = wav_bytes(speech(clip_s))
    walls: list[float] = []
    computes: list[float] = []
    frame_count = 0
    with httpx.Client(timeout=120.0) as client:
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            response = client.post(
                http + "/animate", files={"audio": ("speech.wav", body, "audio/wav")}
            )
            wall = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"/animate answered {response.status_code}: {response.text}")
            answer = response.json()
            frame_count = int(answer["frame_count"])
            if attempt:  # the first is the warm-up
                walls.append(wall)
                computes.append(float(answer["compute_ms"]))
    return AnimateTiming(
        clip_s,
        repeats,
        statistics.median(walls),
        min(walls),
        statistics.median(computes),
        frame_count,
    )


async def _open_client(url: str, trace: ClientTrace) -> ClientConnection:
    ws = await connect(url, compression=None, max_size=None, open_timeout=CONNECT_TIMEOUT_S)
    await ws.send(Start(sample_rate=SAMPLE_RATE_HZ, encoding="pcm_s16le").model_dump_json())
    answer = await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S)
    ready = parse_server_message(answer) if isinstance(answer, str) else None
    if not isinstance(ready, Ready):
        await ws.close()
        raise RuntimeError(f"client {trace.index}: expected ready, got {answer!r:.200}")
    trace.fps, trace.hop_s, trace.lookahead_s = ready.fps, ready.hop_s, ready.lookahead_s
    return ws


async def _send_audio(
    ws: ClientConnection, chunks: Sequence[bytes], start_at: float, trace: ClientTrace
) -> None:
    """Send each chunk at its real-time instant (at once when behind), then ``end``."""
    for j, chunk in enumerate(chunks):
        target = start_at + j * CHUNK_S
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(chunk)
        now = time.perf_counter()
        trace.chunk_samples.append(len(chunk) // 2)
        trace.send_times.append(now)
        trace.late_s.append(max(0.0, now - target))
    await ws.send(End().model_dump_json())
    trace.end_sent = time.perf_counter()


async def _receive_frames(ws: ClientConnection, trace: ClientTrace) -> None:
    """Record each frame's arrival until ``done`` or an error."""
    async for message in ws:
        now = time.perf_counter()
        if isinstance(message, bytes):
            start, frames = decode_binary_frames(message)
            count = len(frames)
        else:
            parsed = parse_server_message(message)
            if isinstance(parsed, Done):
                trace.done_frames = parsed.frame_count
                return
            if isinstance(parsed, Error):
                trace.error = f"server error {parsed.code}: {parsed.message}"
                return
            if not isinstance(parsed, Frames):
                continue
            start, count = parsed.start_index, len(parsed.frames)
        for index in range(start, start + count):
            if index in trace.arrivals:
                trace.duplicates += 1
            else:
                trace.arrivals[index] = now
    trace.error = "the server closed the stream before done"


async def _run_client(
    ws: ClientConnection,
    chunks: Sequence[bytes],
    start_at: float,
    trace: ClientTrace,
    timeout_s: float,
) -> None:
    receiver = asyncio.create_task(_receive_frames(ws, trace))
    try:
        await _send_audio(ws, chunks, start_at, trace)
        await asyncio.wait_for(asyncio.shield(receiver), timeout_s)
    except TimeoutError:
        trace.error = trace.error or f"no done within {timeout_s:g} s of the audio's end"
    except ConnectionClosed as exc:
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(asyncio.shield(receiver), 5.0)  # it may hold the error
        trace.error = trace.error or f"connection closed: {exc}"
    except Exception as exc:  # one broken stream is a failed run in the report, not a crash
        trace.error = trace.error or f"{type(exc).__name__}: {exc}"
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await receiver
        await ws.close()


async def _sample_rss(pid: int, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        rss = rss_bytes(pid)
        if rss is not None:
            peak[0] = max(peak[0], rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_POLL_S)


async def stream_run(server: ServerProcess, n: int, duration_s: float) -> StreamRun:
    """N clients at real time on one event loop; the run's figures."""
    pcm = speech(duration_s)
    chunk = round(CHUNK_S * SAMPLE_RATE_HZ)
    chunks = [pcm[i : i + chunk].astype("<i2").tobytes() for i in range(0, pcm.size, chunk)]
    traces = [ClientTrace(i) for i in range(n)]
    async with httpx.AsyncClient(timeout=30.0) as http:
        before = (await http.get(server.http + "/metrics")).text
        opened = await asyncio.gather(
            *(_open_client(server.ws, t) for t in traces), return_exceptions=True
        )
        connections = [c for c in opened if isinstance(c, ClientConnection)]
        if len(connections) < n:
            await asyncio.gather(*(c.close() for c in connections))
            failure = next(e for e in opened if isinstance(e, BaseException))
            raise RuntimeError(f"only {len(connections)} of {n} clients connected") from failure
        stop = asyncio.Event()
        peak = [rss_bytes(server.process.pid) or 0]
        sampler = asyncio.create_task(_sample_rss(server.process.pid, stop, peak))
        hop_s = traces[0].hop_s
        start_at = time.perf_counter() + START_DELAY_S
        timeout_s = 2 * duration_s + 60.0  # a server far behind still finishes, or times out
        await asyncio.gather(
            *(
                _run_client(ws, chunks, start_at + i * hop_s / n, trace, timeout_s)
                for i, (ws, trace) in enumerate(zip(connections, traces, strict=True))
            )
        )
        stop.set()
        await sampler
        after = (await http.get(server.http + "/metrics")).text
    return analyse_run(traces, duration_s, before, after, peak[0] or None)


# --- the report -------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _triple(q: Quantiles) -> str:
    return f"{_ms(q.p50)} / {_ms(q.p95)} / {_ms(q.p99)}"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.0f} MB"


def targets(report: Report) -> list[str]:
    """Pass/fail lines for the issue's server targets, from this run's figures."""
    lines = []
    largest = largest_real_time(report.runs)
    tried = max((r.n for r in report.runs), default=0)
    if report.runs:
        if (largest or 0) >= TARGET_STREAMS:
            verdict = "met"
        elif any(not r.keeps_real_time for r in report.runs):
            verdict = "NOT met"  # the sweep stopped below the target
        else:
            verdict = f"not measured (N up to {tried} only)"
        lines.append(
            f"- Concurrent real-time streams: {largest or 0} (target at least {TARGET_STREAMS} "
            f"with p95 frame lag at most {REAL_TIME_P95_LAG_S * 1000:.0f} ms): {verdict}."
        )
    single = next((r for r in report.runs if r.n == 1), None)
    lookahead = float(report.info.get("window", {}).get("lookahead_s", 0.0))
    if single is not None and single.client_lag.p95 is not None:
        bound = TARGET_SINGLE_STREAM_EXTRA_S + lookahead
        verdict = "met" if single.client_lag.p95 <= bound else "NOT met"
        lines.append(
            f"- One stream's p95 frame lag: {_ms(single.client_lag.p95)} ms client-observed, "
            f"{_ms(single.server_lag.p95)} ms server-side (target at most "
            f"{TARGET_SINGLE_STREAM_EXTRA_S * 1000:.0f} ms + the {lookahead:g} s lookahead = "
            f"{bound * 1000:.0f} ms): {verdict}."
        )
    if report.animate is not None:
        a = report.animate
        verdict = "met" if a.wall_median_s < TARGET_ANIMATE_S else "NOT met"
        lines.append(
            f"- POST /animate of a {a.clip_s:g} s WAV: {a.wall_median_s:.3f} s wall "
            f"({a.compute_median_ms:.0f} ms compute) (target under {TARGET_ANIMATE_S} s): "
            f"{verdict}."
        )
    if report.starts:
        warm = report.starts[-1]
        verdict = "met" if warm.ready_s <= TARGET_READY_S else "NOT met"
        lines.append(
            f"- Ready {warm.ready_s:.1f} s after start ({warm.label}) "
            f"(target within {TARGET_READY_S:g} s): {verdict}."
        )
    sixteen = next((r for r in report.runs if r.n == TARGET_STREAMS), None)
    if sixteen is not None and sixteen.peak_rss_bytes is not None:
        verdict = "met" if sixteen.peak_rss_bytes < TARGET_RSS_BYTES else "NOT met"
        lines.append(
            f"- Server resident memory with {TARGET_STREAMS} streams: peak "
            f"{_mb(sixteen.peak_rss_bytes)} (target under {TARGET_RSS_BYTES / 1e9:g} GB): "
            f"{verdict}."
        )
    else:
        lines.append(f"- Server resident memory with {TARGET_STREAMS} streams: not measured.")
    return lines


def markdown(report: Report) -> str:
    """The Markdown report: set-up, start, /animate, the stream sweep, definitions, targets."""
    info, m = report.info, report.machine
    window, batching = info.get("window", {}), info.get("batching", {})
    lines = [
        "# Server benchmark",
        "",
        f"Written by `{report.command}` on {m.get('date')}, commit `{m.get('commit')}`"
        + (" (a --quick smoke run: too short to judge by)." if report.quick else "."),
        "",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores; load average at start "
        f"{m.get('loadavg', '-')}",
        f"- Python {m.get('python')}, onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}",
        f"- Server: `{report.server_command}`: model {info.get('model')} "
        f"({info.get('preset')}) on {info.get('backend')} ({info.get('device')})",
        f"- Window: {window.get('left_context_s')} s left context + {window.get('hop_s')} s hop"
        f" + {window.get('lookahead_s')} s lookahead; batching: at most "
        f"{batching.get('max_batch_size')} windows per call, {batching.get('max_wait_ms')} ms "
        "wait",
    ]
    if report.note:
        lines.append(f"- Note: {report.note}")
    lines += ["", "## Start", "", "| start | ready after |", "| --- | --- |"]
    lines += [f"| {s.label} | {s.ready_s:.2f} s |" for s in report.starts]
    if report.animate is not None:
        a = report.animate
        lines += [
            "",
            f"## POST /animate, {a.clip_s:g} s WAV",
            "",
            f"Median of {a.repeats} requests after a warm-up request; wall time is measured "
            "by the client (upload, decode, model, JSON), compute_ms is the server's own.",
            "",
            "| frames | wall median | wall min | compute_ms median |",
            "| --- | --- | --- | --- |",
            f"| {a.frame_count} | {a.wall_median_s:.3f} s | {a.wall_min_s:.3f} s "
            f"| {a.compute_median_ms:.0f} ms |",
        ]
    duration = report.runs[0].duration_s if report.runs else 0.0
    lines += [
        "",
        "## Real-time streams",
        "",
        f"N clients in one asyncio process, each sending {duration:g} s of 16 kHz s16 speech in "
        f"{CHUNK_S * 1000:.0f} ms chunks at real time, then end; starts spread over one hop; "
        "no permessage-deflate. Times in ms as p50 / p95 / p99.",
        "",
        "- **client lag**: frame arrival here - when this process had sent the audio the "
        "frame's window needs (through the end of its hop plus the lookahead, or end).",
        "- **end to end**: frame arrival - when the audio at the frame's own instant was sent "
        "(adds the wait for the rest of the hop and the lookahead).",
        "- **server lag**: the server's `pmmtalk_frame_lag_seconds` (audio arrived -> frame "
        'sent); **compute**: `pmmtalk_compute_seconds{kind="stream"}`, one batched backend '
        "call; both interpolated from histogram buckets.",
        f"- **keeps real time**: every stream complete (all frames, in order, no duplicates), "
        f"client p95 lag at most {REAL_TIME_P95_LAG_S * 1000:.0f} ms, and the median lag in "
        f"the last quarter of the audio at most {REAL_TIME_GROWTH_S * 1000:.0f} ms above the "
        "first quarter's. **late**: p95 of how far this process's sends fell behind schedule "
        "(large = the clients, not the server, were short of CPU).",
        "",
        "| N | frames | client lag | end to end | lag 1st -> last quarter | server lag "
        "| compute | windows per call (mean, p95) | late p95 | server RSS peak "
        "| keeps real time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.runs:
        batch = "-" if r.batch_mean is None else f"{r.batch_mean:.1f}, <= {r.batch_p95 or 0:g}"
        lines.append(
            f"| {r.n} | {r.frames}/{r.frames_expected} | {_triple(r.client_lag)} "
            f"| {_triple(r.end_to_end)} | {_ms(r.lag_first_quarter_s)} -> "
            f"{_ms(r.lag_last_quarter_s)} | {_triple(r.server_lag)} "
            f"| {_triple(r.server_compute)} | {batch} | {_ms(r.client_late_p95_s)} "
            f"| {_mb(r.peak_rss_bytes)} | {r.real_time_verdict()[1]} |"
        )
    largest = largest_real_time(report.runs)
    lines += [
        "",
        f"Largest N that keeps real time: **{largest if largest is not None else 'none'}**.",
        "",
        "## Targets (the server issue, this machine)",
        "",
        *targets(report),
    ]
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, Any]:
    payload = asdict(report)
    payload["largest_real_time_n"] = largest_real_time(report.runs)
    for run, data in zip(report.runs, payload["runs"], strict=True):
        data["keeps_real_time"], data["verdict"] = run.real_time_verdict()
    payload["definitions"] = {
        "real_time_p95_lag_s": REAL_TIME_P95_LAG_S,
        "real_time_growth_s": REAL_TIME_GROWTH_S,
        "chunk_s": CHUNK_S,
    }
    payload["targets"] = targets(report)
    return payload


# --- main -------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    from benchmarks.backends import machine

    info = machine()
    with contextlib.suppress(OSError):
        info["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def _parse_ns(text: str) -> list[int]:
    ns = sorted({int(part) for part in text.split(",") if part.strip()})
    if not ns or ns[0] < 1:
        raise argparse.ArgumentTypeError(f"--ns needs positive client counts, got {text!r}")
    return ns


def sweep(server: ServerProcess, ns: Sequence[int], duration_s: float) -> list[StreamRun]:
    """Stream runs for each N in order, stopping after the first that misses real time."""
    runs: list[StreamRun] = []
    for n in ns:
        logger.info("streaming: %d client(s) for %g s ...", n, duration_s)
        run = asyncio.run(stream_run(server, n, duration_s))
        runs.append(run)
        keeps, why = run.real_time_verdict()
        logger.info(
            "N=%d: client lag p50/p95/p99 %s ms, server lag %s ms, compute %s ms, RSS %s: %s",
            n,
            _triple(run.client_lag),
            _triple(run.server_lag),
            _triple(run.server_compute),
            _mb(run.peak_rss_bytes),
            why,
        )
        if not keeps:
            break
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ns",
        type=_parse_ns,
        default=None,
        help=f"client counts to sweep [{','.join(map(str, NS_DEFAULT))}; quick: 1,2]",
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help=f"audio per client in seconds [{DURATION_S_DEFAULT:g}; quick: {QUICK_DURATION_S:g}]",
    )
    parser.add_argument("--backend", default="auto", help="auto, torch, onnx or tensorrt [auto]")
    parser.add_argument("--out-dir", type=Path, default=DOCS_DIR, help="where the report goes")
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run: one start, N=1,2, 5 s"
    )
    parser.add_argument("--animate-repeats", type=int, default=None, help="[5; quick: 2]")
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="time the first start with an empty export cache (it includes the ONNX export)",
    )
    parser.add_argument("--note", default="", help="a line for the report (e.g. the load)")
    parser.add_argument("--hop-s", type=float, default=None, help="server stream hop")
    parser.add_argument("--left-context-s", type=float, default=None, help="server context")
    parser.add_argument("--lookahead-s", type=float, default=None, help="server lookahead")
    parser.add_argument("--max-batch-size", type=int, default=None, help="server batching")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="server batch wait")
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns progress

    ns: list[int] = args.ns or list(QUICK_NS if args.quick else NS_DEFAULT)
    duration_s: float = args.duration_s or (QUICK_DURATION_S if args.quick else DURATION_S_DEFAULT)
    repeats: int = args.animate_repeats or (2 if args.quick else ANIMATE_REPEATS_DEFAULT)
    max_sessions = max(*ns, MAX_SESSIONS_DEFAULT)
    machine = _machine()
    env = dict(os.environ)
    # The first start finds the export cache as it is (a cold one adds the ONNX export); the
    # second always finds it warm, as a restarted server does.
    labels = ["first start"] if args.quick else ["first start", "warm start"]
    starts: list[StartTiming] = []
    with tempfile.TemporaryDirectory(prefix="pmmtalk-server-bench-") as scratch:
        if args.cold_start:
            env["PMMTALK_CACHE_DIR"] = str(Path(scratch) / "cache")
            labels[0] = "cold start (empty export cache)"
        logs = [Path(scratch) / f"server-{number}.log" for number in range(len(labels))]
        for label, log in zip(labels[:-1], logs, strict=False):
            port = free_port()
            with running_server(serve_command(port, args, max_sessions), port, log, env) as server:
                starts.append(StartTiming(label, server.ready_s))
            logger.info("%s: ready in %.2f s", label, server.ready_s)
        port = free_port()
        with running_server(serve_command(port, args, max_sessions), port, logs[-1], env) as server:
            starts.append(StartTiming(labels[-1], server.ready_s))
            logger.info("%s: ready in %.2f s", labels[-1], server.ready_s)
            info = httpx.get(server.http + "/info", timeout=30.0).json()
            animate = bench_animate(server.http, ANIMATE_CLIP_S, repeats)
            logger.info(
                "/animate %g s: %.3f s wall, %.0f ms compute",
                ANIMATE_CLIP_S,
                animate.wall_median_s,
                animate.compute_median_ms,
            )
            runs = sweep(server, ns, duration_s)
    report = Report(
        command=shlex.join(["python", "-m", "benchmarks.server", *given]),
        server_command=shlex.join(["pmmtalk", *serve_command("PORT", args, max_sessions)[1:]]),
        machine=machine,
        info={k: info.get(k) for k in ("model", "preset", "backend", "device", "window")}
        | {"batching": info.get("batching")},
        starts=starts,
        animate=animate,
        runs=runs,
        quick=args.quick,
        note=args.note,
    )
    text = markdown(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "server.md").write_text(text)
    (args.out_dir / "server.json").write_text(json.dumps(report_json(report), indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
