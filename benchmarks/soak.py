"""Soak runs: does the server leak memory, leave sessions open, or lose frames over time?

Two runs, each against a freshly started server:

- **sequential**: many short sessions one after another (0.75 to 1.25 s of speech each, sent as
  fast as the server reads it): connect, start, audio, end, done, close. The server's resident
  memory is read every `RSS_EVERY_SESSIONS` sessions.
- **timed**: a fixed number of clients (75 % of the measured capacity) streaming at real time
  for a set duration, each reconnecting with a new utterance (3 to 8 s) as soon as the last one
  is done. Memory is read every `RSS_EVERY_S` seconds.

Each reports memory growth after a warm-up (the first tenth of the sessions or of the time:
allocator pools, caches and the first batch shapes settle there), the sessions still
open on the server at the end (its ``pmmtalk_active_sessions`` gauge), and frames lost: every
stream's frames must match the contract ``ceil(samples * 30 / 16000)``, each index once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import httpx
import numpy as np

from benchmarks.process import ResourceMeter, ResourceUsage, Target, rss_bytes
from benchmarks.progress import LogReporter, Reporter
from benchmarks.prometheus import Quantiles, read_value
from benchmarks.streams import (
    CHUNK_S,
    LATE_FRAME_LAG_S,
    SAMPLE_RATE_HZ,
    ClientTrace,
    frame_latencies,
    one_session,
    speech,
)

SEQUENTIAL_SESSIONS_DEFAULT: Final = 1000
RSS_EVERY_SESSIONS: Final = 50
CLIP_SAMPLES_MIN: Final = 12_000  # 0.75 s
CLIP_SAMPLES_SPAN: Final = 8_001  # up to 1.25 s
TIMED_DURATION_S_DEFAULT: Final = 600.0
UTTERANCE_S_MIN: Final = 3.0
UTTERANCE_S_MAX: Final = 8.0
RSS_EVERY_S: Final = 10.0
RSS_READINGS: Final = 20
"""A short soak reads memory more often than every `RSS_EVERY_SESSIONS` or `RSS_EVERY_S`, so
that it still has about this many readings to compare."""
WARMUP_FRACTION: Final = 0.1
"""The warm-up: this share of the sessions (sequential) or of the duration (timed)."""
SESSION_TIMEOUT_S: Final = 120.0
SETTLE_TIMEOUT_S: Final = 10.0
"""How long the server may take to notice the last clients' close and drop their sessions."""
SETTLE_POLL_S: Final = 0.05
MAX_FAILURES_LISTED: Final = 10

TARGET_RSS_GROWTH: Final = 0.05
TARGET_SESSIONS_OPEN: Final = 0
TARGET_FRAMES_LOST: Final = 0


def clip_samples(k: int) -> int:
    """Session k's clip length in samples: 0.75 to 1.25 s, rarely a whole frame, so the
    ceil in the frame-count contract is exercised."""
    return CLIP_SAMPLES_MIN + (k * 7919) % CLIP_SAMPLES_SPAN


def utterance_samples(
    client: int, k: int, shortest_s: float = UTTERANCE_S_MIN, longest_s: float = UTTERANCE_S_MAX
) -> int:
    """The timed soak's utterance k of a client: ``shortest_s`` to ``longest_s`` seconds,
    different for every client and every utterance."""
    fraction = ((client * 31 + k * 17) % 101) / 100
    return round((shortest_s + (longest_s - shortest_s) * fraction) * SAMPLE_RATE_HZ)


@dataclass(frozen=True)
class MemoryGrowth:
    """Resident memory after the warm-up: ``baseline`` is the first sample at or after its
    end, ``final`` the last sample, ``peak`` the largest sample from the baseline on."""

    baseline_bytes: int
    final_bytes: int
    peak_bytes: int

    @property
    def growth(self) -> float:
        """(final - baseline) / baseline: the target is under `TARGET_RSS_GROWTH`."""
        return (self.final_bytes - self.baseline_bytes) / self.baseline_bytes

    @property
    def peak_growth(self) -> float:
        return (self.peak_bytes - self.baseline_bytes) / self.baseline_bytes


def memory_growth(samples: Sequence[tuple[float, int]], warmup: float) -> MemoryGrowth | None:
    """Growth over ``samples`` of (when, resident bytes), when counted in sessions or seconds;
    None when no sample follows the warm-up, or only one does (nothing to compare)."""
    after = [rss for when, rss in samples if when >= warmup]
    if len(after) < 2 or after[0] <= 0:
        return None
    return MemoryGrowth(after[0], after[-1], max(after))


@dataclass
class SessionTally:
    """Running totals over many sessions (traces are not kept: a soak makes thousands)."""

    sessions: int = 0
    frames: int = 0
    frames_expected: int = 0
    frames_lost: int = 0
    broken: int = 0  # sessions that missed the contract or failed
    failures: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    lags: list[np.ndarray] = field(default_factory=list)
    session_walls: list[float] = field(default_factory=list)

    def add(self, trace: ClientTrace, wall_s: float, keep_lag: bool) -> None:
        self.sessions += 1
        self.frames += len(trace.arrivals)
        self.frames_expected += trace.expected_frames
        self.frames_lost += trace.missing_frames
        self.audio_s += trace.total_samples / SAMPLE_RATE_HZ
        self.session_walls.append(wall_s)
        problem = trace.problem()
        if problem is not None:
            self.broken += 1
            if len(self.failures) < MAX_FAILURES_LISTED:
                self.failures.append(f"session {self.sessions}: {problem}")
        if keep_lag:
            self.lags.append(frame_latencies(trace)[0].astype(np.float32))

    def result(
        self,
        kind: Literal["sequential", "timed"],
        *,
        clients: int,
        wall_s: float,
        open_end: int | None,
        completed: int | None,
        rss_samples: list[tuple[float, int]],
        rss_every: float,
        warmup: float,
        usage: ResourceUsage | None,
    ) -> SoakResult:
        """The run's `SoakResult`: these totals plus what the run measured around them."""
        lag = np.concatenate(self.lags) if self.lags else np.zeros(0)
        return SoakResult(
            kind=kind,
            clients=clients,
            sessions=self.sessions,
            wall_s=wall_s,
            audio_s=self.audio_s,
            frames=self.frames,
            frames_expected=self.frames_expected,
            frames_lost=self.frames_lost,
            broken_sessions=self.broken,
            failures=self.failures,
            sessions_open_end=open_end,
            streams_completed=completed,
            rss_samples=rss_samples,
            rss_every=rss_every,
            warmup=warmup,
            growth=memory_growth(rss_samples, warmup),
            session_wall=Quantiles.of(self.session_walls),
            client_lag=Quantiles.of(lag),  # no lags kept (sequential): all None
            late_frames=int(np.count_nonzero(lag > LATE_FRAME_LAG_S)),
            usage=usage,
        )


@dataclass(frozen=True)
class SoakResult:
    """One soak run's figures. ``rss_samples`` are (sessions done, bytes) for the sequential
    run and (seconds, bytes) for the timed one; ``warmup`` is in the same unit."""

    kind: Literal["sequential", "timed"]
    clients: int
    sessions: int
    wall_s: float
    audio_s: float
    frames: int
    frames_expected: int
    frames_lost: int
    broken_sessions: int
    failures: list[str]
    sessions_open_end: int | None
    streams_completed: int | None  # the server's pmmtalk_streams{outcome="completed"}, delta
    rss_samples: list[tuple[float, int]]
    rss_every: float  # sessions or seconds between memory readings
    warmup: float
    growth: MemoryGrowth | None
    session_wall: Quantiles  # connect to done, per session
    client_lag: Quantiles  # timed only: frame lag as in the capacity steps
    late_frames: int
    usage: ResourceUsage | None

    @property
    def unit(self) -> str:
        return "sessions" if self.kind == "sequential" else "s"

    def verdicts(self) -> list[tuple[str, str, str, bool | None]]:
        """(figure, measured, target, met) for the soak targets; met None = not measured."""
        rows: list[tuple[str, str, str, bool | None]] = []
        lost = f"{self.frames_lost} ({self.broken_sessions} of {self.sessions} sessions off)"
        rows.append(("frames lost", lost, "0", self.frames_lost == 0 and not self.broken_sessions))
        open_end = "-" if self.sessions_open_end is None else str(self.sessions_open_end)
        rows.append(
            (
                "sessions left open",
                open_end,
                "0",
                None if self.sessions_open_end is None else self.sessions_open_end == 0,
            )
        )
        growth = self.growth
        if growth is None:
            rows.append(("memory growth after warm-up", "not measured", "< 5 %", None))
        else:
            rows.append(
                (
                    f"memory growth after warm-up ({self.warmup:g} {self.unit})",
                    f"{growth.growth * 100:+.1f} % ({growth.baseline_bytes / 1e6:.0f} -> "
                    f"{growth.final_bytes / 1e6:.0f} MB)",
                    f"< {TARGET_RSS_GROWTH * 100:g} %",
                    growth.growth < TARGET_RSS_GROWTH,
                )
            )
        return rows


async def _read_metrics(http: httpx.AsyncClient, target: Target) -> str:
    return (await http.get(target.http + "/metrics")).text


async def settled_sessions(
    http: httpx.AsyncClient, target: Target, timeout_s: float = SETTLE_TIMEOUT_S
) -> tuple[int | None, str]:
    """The sessions gauge once it reads 0, or its value after ``timeout_s`` (a close the
    server has not processed yet is not a leak; one it never processes is), and the last
    /metrics text read."""
    deadline = time.perf_counter() + timeout_s
    while True:
        text = await _read_metrics(http, target)
        value = read_value(text, "pmmtalk_active_sessions")
        if value == 0 or time.perf_counter() > deadline:
            return (None if value is None else round(value)), text
        await asyncio.sleep(SETTLE_POLL_S)


def _completed(before: str, after: str) -> int | None:
    start = read_value(before, "pmmtalk_streams", outcome="completed") or 0.0
    end = read_value(after, "pmmtalk_streams", outcome="completed")
    return None if end is None else round(end - start)


async def sequential_soak(
    target: Target,
    sessions: int = SEQUENTIAL_SESSIONS_DEFAULT,
    rss_every: int | None = None,
    reporter: Reporter | None = None,
) -> SoakResult:
    """``sessions`` short sessions one after another against ``target``; the first tenth of
    them are the warm-up. Memory is read every ``rss_every`` sessions (default
    `RSS_EVERY_SESSIONS`, or more often on a short run, so there are about 20 readings)."""
    if rss_every is None:
        rss_every = max(1, min(RSS_EVERY_SESSIONS, sessions // RSS_READINGS))
    if sessions < 1 or rss_every < 1:
        raise ValueError(
            f"need at least one session and an RSS sample every >= 1 session; got {sessions}, "
            f"{rss_every}"
        )
    warmup_sessions = round(WARMUP_FRACTION * sessions)
    reporter = reporter or LogReporter()
    reporter.stage(f"soak: {sessions} sequential sessions", sessions)
    base = speech(samples=CLIP_SAMPLES_MIN + CLIP_SAMPLES_SPAN)
    tally = SessionTally()
    samples: list[tuple[float, int]] = []
    async with httpx.AsyncClient(timeout=30.0) as http:
        before = await _read_metrics(http, target)
        started = time.perf_counter()
        async with ResourceMeter(target.pid) as meter:
            for k in range(sessions):
                began = time.perf_counter()
                trace = await one_session(
                    target.ws, base[: clip_samples(k)], k, 0.0, SESSION_TIMEOUT_S
                )
                tally.add(trace, time.perf_counter() - began, keep_lag=False)
                done = k + 1
                if done % rss_every == 0 or done == sessions:
                    if (rss := rss_bytes(target.pid)) is not None:
                        samples.append((float(done), rss))
                    reporter.advance(done, f"lost {tally.frames_lost}")
        wall = time.perf_counter() - started
        open_end, after = await settled_sessions(http, target)
    return tally.result(
        "sequential",
        clients=1,
        wall_s=wall,
        open_end=open_end,
        completed=_completed(before, after),
        rss_samples=samples,
        rss_every=float(rss_every),
        warmup=float(warmup_sessions),
        usage=meter.usage,
    )


async def timed_soak(
    target: Target,
    clients: int,
    duration_s: float = TIMED_DURATION_S_DEFAULT,
    rss_every_s: float | None = None,
    reporter: Reporter | None = None,
    utterance_s: tuple[float, float] = (UTTERANCE_S_MIN, UTTERANCE_S_MAX),
) -> SoakResult:
    """``clients`` real-time clients reconnecting with new utterances (``utterance_s``: the
    shortest and longest, in seconds) for ``duration_s``; an utterance under way at the
    deadline is finished, not cut. The first tenth of the time is the warm-up. Memory is read
    every ``rss_every_s`` (default `RSS_EVERY_S`, or more often on a short run)."""
    if rss_every_s is None:
        rss_every_s = min(RSS_EVERY_S, duration_s / RSS_READINGS)
    shortest_s, longest_s = utterance_s
    if clients < 1 or duration_s <= 0 or rss_every_s <= 0 or not 0 < shortest_s <= longest_s:
        raise ValueError(
            f"need at least one client, a positive duration and RSS interval, and utterance "
            f"lengths 0 < shortest <= longest; got {clients}, {duration_s:g} s, "
            f"{rss_every_s:g} s, {utterance_s}"
        )
    reporter = reporter or LogReporter()
    reporter.stage(f"soak: {clients} client(s) for {duration_s:g} s", duration_s)
    base = speech(utterance_s[1])
    tally = SessionTally()
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def client(index: int, deadline: float) -> None:
        # Starts spread over a second so the clients' windows do not all arrive together.
        await asyncio.sleep(index / clients)
        k = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            pcm = base[: utterance_samples(index, k, *utterance_s)]
            trace = await one_session(target.ws, pcm, index, CHUNK_S, SESSION_TIMEOUT_S)
            tally.add(trace, time.perf_counter() - began, keep_lag=True)
            k += 1

    async def sample(started: float) -> None:
        while not stop.is_set():
            elapsed = time.perf_counter() - started
            if (rss := rss_bytes(target.pid)) is not None:
                samples.append((elapsed, rss))
            reporter.advance(min(elapsed, duration_s), f"{tally.sessions} sessions")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rss_every_s)

    async with httpx.AsyncClient(timeout=30.0) as http:
        before = await _read_metrics(http, target)
        started = time.perf_counter()
        sampler = asyncio.create_task(sample(started))
        async with ResourceMeter(target.pid) as meter:
            await asyncio.gather(*(client(i, started + duration_s) for i in range(clients)))
        wall = time.perf_counter() - started
        stop.set()
        await sampler
        if (rss := rss_bytes(target.pid)) is not None:
            samples.append((wall, rss))
        open_end, after = await settled_sessions(http, target)
    return tally.result(
        "timed",
        clients=clients,
        wall_s=wall,
        open_end=open_end,
        completed=_completed(before, after),
        rss_samples=samples,
        rss_every=rss_every_s,
        warmup=WARMUP_FRACTION * duration_s,
        usage=meter.usage,
    )
