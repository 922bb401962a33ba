"""Simulated `WS /stream` clients, the frame lag they observe, and what one run of N of them
measured.

Each client sends 16 kHz s16 speech (samples/hello.wav, looped) in 20 ms chunks, paced at real
time (or as fast as the server reads, for soaks), then ``end``, and records when every frame
arrived. All clients of a run share one asyncio loop in this process.

Two views of frame lag are reported. The client's: from the moment this process finished
sending the audio a frame's window needs to the moment the frame arrived here (it includes the
loopback network and this process's own scheduling). The server's: its ``/metrics`` histogram
``pmmtalk_frame_lag_seconds``, from the arrival of that audio to the frame being sent, read as
the difference of bucket counts before and after a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.process import ResourceMeter, ResourceUsage, Target
from benchmarks.prometheus import Histogram, Quantiles, read_histogram
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

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
SPEECH_WAV: Final = REPO_ROOT / "samples" / "hello.wav"
SAMPLE_RATE_HZ: Final = 16_000
CHUNK_S: Final = 0.02
"""Audio per WebSocket message, as a microphone callback delivers it."""
CONNECT_TIMEOUT_S: Final = 60.0
START_DELAY_S: Final = 0.5
"""Clients connect first; audio starts this long after the last one is ready."""
CLOSE_WAIT_S: Final = 5.0

REAL_TIME_P95_LAG_S: Final = 0.3
"""A run keeps real time when the client-observed p95 frame lag is at most this ..."""
REAL_TIME_GROWTH_S: Final = 0.1
"""... and the median lag of the last quarter of the audio exceeds the first quarter's by at
most this (a server that falls behind shows a lag that grows through the run)."""
LATE_FRAME_LAG_S: Final = 0.3
"""A frame counts as late when its client lag exceeds this: it reaches the avatar a visible
moment after the speech it belongs to. The keeps-real-time rule lets 5 % of frames be late."""


# --- audio --------------------------------------------------------------------------------------


def speech(seconds: float | None = None, samples: int | None = None) -> np.ndarray:
    """samples/hello.wav looped to ``seconds`` (or exactly ``samples``), (n,) int16 at 16 kHz."""
    try:
        pcm, rate = sf.read(SPEECH_WAV, dtype="int16")
    except (OSError, RuntimeError) as exc:
        raise FileNotFoundError(
            f"the benchmarks stream {SPEECH_WAV}, which is missing or unreadable ({exc}); "
            "run them from a source checkout of the project"
        ) from exc
    if rate != SAMPLE_RATE_HZ or pcm.ndim != 1:
        raise ValueError(f"{SPEECH_WAV} must be 16 kHz mono, got {rate} Hz, shape {pcm.shape}")
    count = samples if samples is not None else round((seconds or 0.0) * SAMPLE_RATE_HZ)
    return np.resize(pcm, count)


def wav_bytes(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
    return out.getvalue()


def pcm_chunks(pcm: np.ndarray, chunk_s: float = CHUNK_S) -> list[bytes]:
    """(n,) int16 -> little-endian s16 messages of ``chunk_s`` each (the last may be short)."""
    size = round(chunk_s * SAMPLE_RATE_HZ)
    return [pcm[i : i + size].astype("<i2").tobytes() for i in range(0, pcm.size, size)]


# --- one client -------------------------------------------------------------------------------


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

    @property
    def missing_frames(self) -> int:
        """Frames of the contract that never arrived."""
        return sum(1 for i in range(self.expected_frames) if i not in self.arrivals)

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
    if indices.size == 0 or not trace.send_times:
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


async def open_client(url: str, trace: ClientTrace) -> ClientConnection:
    """Connect, send ``start`` (16 kHz s16), and wait for ``ready``."""
    ws = await connect(url, compression=None, max_size=None, open_timeout=CONNECT_TIMEOUT_S)
    try:
        await ws.send(Start(sample_rate=SAMPLE_RATE_HZ, encoding="pcm_s16le").model_dump_json())
        answer = await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT_S)
    except BaseException:
        await ws.close()
        raise
    ready = parse_server_message(answer) if isinstance(answer, str) else None
    if not isinstance(ready, Ready):
        await ws.close()
        raise RuntimeError(f"client {trace.index}: expected ready, got {answer!r:.200}")
    trace.fps, trace.hop_s, trace.lookahead_s = ready.fps, ready.hop_s, ready.lookahead_s
    return ws


async def send_audio(
    ws: ClientConnection,
    chunks: Sequence[bytes],
    start_at: float,
    trace: ClientTrace,
    interval_s: float = CHUNK_S,
) -> None:
    """Send chunk j at ``start_at + j * interval_s`` (at once when behind; interval 0 sends as
    fast as the server reads), then ``end``."""
    for j, chunk in enumerate(chunks):
        target = start_at + j * interval_s
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


async def receive_frames(ws: ClientConnection, trace: ClientTrace) -> None:
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


async def run_client(
    ws: ClientConnection,
    chunks: Sequence[bytes],
    start_at: float,
    trace: ClientTrace,
    timeout_s: float,
    interval_s: float = CHUNK_S,
) -> None:
    """Send one utterance and receive its frames until ``done``, then close. Never raises: a
    broken stream is recorded in ``trace.error`` (one failed client is a figure, not a crash)."""
    receiver = asyncio.create_task(receive_frames(ws, trace))
    try:
        await send_audio(ws, chunks, start_at, trace, interval_s)
        await asyncio.wait_for(asyncio.shield(receiver), timeout_s)
    except TimeoutError:
        trace.error = trace.error or f"no done within {timeout_s:g} s of the audio's end"
    except ConnectionClosed as exc:
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(asyncio.shield(receiver), CLOSE_WAIT_S)  # it may hold the error
        trace.error = trace.error or f"connection closed: {exc}"
    except Exception as exc:
        trace.error = trace.error or f"{type(exc).__name__}: {exc}"
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await receiver
        await ws.close()


async def one_session(
    url: str, pcm: np.ndarray, index: int, interval_s: float, timeout_s: float
) -> ClientTrace:
    """Connect, send one utterance of ``pcm`` (int16) paced at ``interval_s`` per 20 ms chunk,
    wait for ``done``, close. Failures to connect are recorded in the trace too."""
    trace = ClientTrace(index)
    try:
        ws = await open_client(url, trace)
    except Exception as exc:
        trace.error = f"could not open the session: {type(exc).__name__}: {exc}"
        return trace
    await run_client(ws, pcm_chunks(pcm), time.perf_counter(), trace, timeout_s, interval_s)
    return trace


# --- one run of N clients ---------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRun:
    """N clients streaming at real time for ``duration_s`` each."""

    n: int
    duration_s: float
    frames: int  # distinct frames received, all clients
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
    late_frames: int = 0  # client lag over LATE_FRAME_LAG_S
    missing_frames: int = 0  # frames of the contract that never arrived
    usage: ResourceUsage | None = None

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
    usage: ResourceUsage | None = None,
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
        peak_rss_bytes=usage.rss_peak_bytes if usage else None,
        late_frames=int(np.count_nonzero(lag > LATE_FRAME_LAG_S)),
        missing_frames=sum(t.missing_frames for t in traces),
        usage=usage,
    )


def failed_run(n: int, duration_s: float, reason: str) -> StreamRun:
    """A run that could not take place (its clients could not all connect): it does not keep
    real time, and says why."""
    none = Quantiles(None, None, None)
    return StreamRun(
        n, duration_s, 0, 0, [reason], none, none, None, None, None, none, none, None, None, 0, None
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


async def stream_run(target: Target, n: int, duration_s: float) -> StreamRun:
    """N clients at real time on one event loop, starts spread evenly over one hop so windows
    reach the batcher steadily rather than all at once; the run's figures."""
    chunks = pcm_chunks(speech(duration_s))
    traces = [ClientTrace(i) for i in range(n)]
    async with httpx.AsyncClient(timeout=30.0) as http:
        before = (await http.get(target.http + "/metrics")).text
        opened = await asyncio.gather(
            *(open_client(target.ws, t) for t in traces), return_exceptions=True
        )
        connections = [c for c in opened if isinstance(c, ClientConnection)]
        if len(connections) < n:
            await asyncio.gather(*(c.close() for c in connections))
            failure = next(e for e in opened if isinstance(e, BaseException))
            raise RuntimeError(f"only {len(connections)} of {n} clients connected") from failure
        hop_s = traces[0].hop_s
        start_at = time.perf_counter() + START_DELAY_S
        timeout_s = 2 * duration_s + 60.0  # a server far behind still finishes, or times out
        async with ResourceMeter(target.pid) as meter:
            await asyncio.gather(
                *(
                    run_client(ws, chunks, start_at + i * hop_s / n, trace, timeout_s)
                    for i, (ws, trace) in enumerate(zip(connections, traces, strict=True))
                )
            )
        after = (await http.get(target.http + "/metrics")).text
    return analyse_run(traces, duration_s, before, after, meter.usage)
