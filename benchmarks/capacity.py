"""Streaming capacity: step the number of real-time clients up until real time breaks.

The steps are 1, 2, 4, 8, then every 4 (12, 16, 20, ...) up to a maximum; each step runs N
clients for a fixed stretch of audio (`benchmarks.streams.stream_run`) and the stepping stops
after the first step that misses the keeps-real-time rule (`StreamRun.real_time_verdict`). The
capacity is the largest N that kept real time before that. Both the number of clients and the
length of a step are bounded, and clients only ever reach the loopback server the benchmark
started itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from benchmarks.process import Target
from benchmarks.progress import LogReporter, Reporter
from benchmarks.streams import StreamRun, failed_run, largest_real_time, stream_run

MAX_N_DEFAULT: Final = 32
MAX_N_LIMIT: Final = 256
"""More simulated clients than this would measure the client process, not the server."""
STEP_DURATION_S_DEFAULT: Final = 20.0
MAX_STEP_DURATION_S: Final = 300.0
DOUBLING_UP_TO: Final = 8
"""Steps double up to this N, then grow by `LINEAR_STEP`."""
LINEAR_STEP: Final = 4
SOAK_FRACTION: Final = 0.75
"""The timed soak runs at this share of the measured capacity, rounded down."""
TICK_S: Final = 0.5


def step_ns(max_n: int = MAX_N_DEFAULT) -> list[int]:
    """The client counts to step through: 1, 2, 4, 8, 12, 16, ... up to ``max_n`` (which is
    always the last step)."""
    if not 1 <= max_n <= MAX_N_LIMIT:
        raise ValueError(f"the largest client count must be 1 to {MAX_N_LIMIT}, got {max_n}")
    ns: list[int] = []
    n = 1
    while n < max_n:
        ns.append(n)
        n = n * 2 if n < DOUBLING_UP_TO else n + LINEAR_STEP
    return [*ns, max_n]


def check_ns(ns: Sequence[int]) -> list[int]:
    """Client counts given by hand, sorted and checked against the bounds."""
    chosen = sorted(set(ns))
    if not chosen or chosen[0] < 1 or chosen[-1] > MAX_N_LIMIT:
        raise ValueError(f"client counts must be 1 to {MAX_N_LIMIT}, got {list(ns)}")
    return chosen


def check_step_duration(seconds: float) -> float:
    if not 1.0 <= seconds <= MAX_STEP_DURATION_S:
        raise ValueError(
            f"a step's audio must be 1 to {MAX_STEP_DURATION_S:g} s per client, got {seconds:g}"
        )
    return seconds


@dataclass(frozen=True)
class Capacity:
    """The steps that ran, in order, and what they say."""

    planned: list[int]
    runs: list[StreamRun]
    step_duration_s: float

    @property
    def largest(self) -> int | None:
        """The largest N that kept real time (None: not even one client did)."""
        return largest_real_time(self.runs)

    @property
    def broke(self) -> bool:
        """Whether a step missed real time; if not, the capacity is at least `largest`."""
        return any(not run.keeps_real_time for run in self.runs)

    def describe(self) -> str:
        largest = self.largest
        if largest is None:
            return "none (one client did not keep real time)"
        return f"{largest}" if self.broke else f"at least {largest} (the largest N tried)"

    def soak_clients(self) -> int:
        """`SOAK_FRACTION` of the capacity, rounded down, and at least one client."""
        return max(1, math.floor(SOAK_FRACTION * (self.largest or 0)))


def sweep(
    ns: Sequence[int], run_step: Callable[[int], StreamRun], reporter: Reporter | None = None
) -> list[StreamRun]:
    """``run_step(n)`` for each N in order, stopping after the first that misses real time."""
    reporter = reporter or LogReporter()
    runs: list[StreamRun] = []
    for n in ns:
        run = run_step(n)
        runs.append(run)
        keeps, why = run.real_time_verdict()
        reporter.line(f"  N={n}: {step_summary(run)}: {why}")
        if not keeps:
            break
    return runs


def step_summary(run: StreamRun) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    lag = run.client_lag
    cpu = run.usage.server_cores if run.usage else None
    return (
        f"lag p50/p95/p99 {ms(lag.p50)}/{ms(lag.p95)}/{ms(lag.p99)} ms, "
        f"frames {run.frames}/{run.frames_expected}, late {run.late_frames}, "
        f"server CPU {'-' if cpu is None else f'{cpu:.2f}'} cores, RSS "
        f"{'-' if run.peak_rss_bytes is None else f'{run.peak_rss_bytes / 1e6:.0f} MB'}"
    )


async def _step(target: Target, n: int, duration_s: float, reporter: Reporter) -> StreamRun:
    """One step, with the elapsed audio time shown while it runs."""
    started = time.perf_counter()

    async def tick() -> None:
        while True:
            elapsed = time.perf_counter() - started
            reporter.advance(min(elapsed, duration_s), f"N={n}")
            await asyncio.sleep(TICK_S)

    ticker = asyncio.create_task(tick())
    try:
        return await stream_run(target, n, duration_s)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


def measure_capacity(
    target: Target,
    ns: Sequence[int],
    step_duration_s: float,
    reporter: Reporter | None = None,
) -> Capacity:
    """Step N through ``ns`` against the server at ``target`` until real time breaks."""
    reporter = reporter or LogReporter()
    planned = check_ns(ns)
    step_duration_s = check_step_duration(step_duration_s)

    def run_step(n: int) -> StreamRun:
        reporter.stage(f"capacity: {n} client(s), {step_duration_s:g} s", step_duration_s)
        try:
            return asyncio.run(_step(target, n, step_duration_s, reporter))
        except RuntimeError as exc:  # not every client could connect: this N is over capacity
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            return failed_run(n, step_duration_s, f"{exc}{cause}")

    return Capacity(planned, sweep(planned, run_step, reporter), step_duration_s)
