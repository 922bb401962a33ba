"""`pmmtalk bench`: the whole performance picture of this machine in one command.

Parts, run in this order (``--parts`` picks; ``--soak`` adds the last):

1. **offline**: the real-time factor of every runtime backend present on whole clips of 1, 10
   and 60 s, lite preset; the paper preset too where a GPU is present (`benchmarks.backends`).
2. **capacity**: `pmmtalk serve` started twice (the ready time of the second, warm start is
   the figure), ``POST /animate`` of a 10 s clip, then real-time clients stepped up until real
   time breaks (`benchmarks.capacity`): frame lag, compute, batch sizes, CPU, memory, late and
   missing frames per step.
3. **sequential**: 1000 short sessions one after another against a fresh server
   (`benchmarks.soak.sequential_soak`).
4. **soak** (``--soak``): 75 % of the measured capacity for 10 minutes (`timed_soak`).

A ``--quick`` run is a smoke test of the whole path: one server for every part, short steps,
50 sessions. Everything goes to ``docs/benchmarks/bench.{json,md}`` and PNG plots beside them,
stamped with the machine and the git commit. The default parts take about 15 minutes on a
2-core CPU; the soak adds its duration. Clients only ever reach the server this command
started, on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from benchmarks.backends import Timing
from benchmarks.capacity import (
    MAX_N_DEFAULT,
    SOAK_FRACTION,
    STEP_DURATION_S_DEFAULT,
    Capacity,
    check_ns,
    check_step_duration,
    measure_capacity,
    step_ns,
)
from benchmarks.machine import describe, machine
from benchmarks.process import ServeOptions, ServerProcess, free_port, running_server
from benchmarks.progress import LogReporter, Reporter
from benchmarks.prometheus import Quantiles
from benchmarks.server import (
    ANIMATE_CLIP_S,
    TARGET_ANIMATE_S,
    TARGET_READY_S,
    TARGET_RSS_BYTES,
    TARGET_SINGLE_STREAM_EXTRA_S,
    TARGET_STREAMS,
    AnimateTiming,
    StartTiming,
    bench_animate,
)
from benchmarks.soak import (
    SEQUENTIAL_SESSIONS_DEFAULT,
    TIMED_DURATION_S_DEFAULT,
    SoakResult,
    sequential_soak,
    timed_soak,
)
from benchmarks.streams import (
    CHUNK_S,
    LATE_FRAME_LAG_S,
    REAL_TIME_GROWTH_S,
    REAL_TIME_P95_LAG_S,
    StreamRun,
)

logger = logging.getLogger(__name__)

DOCS_DIR: Final = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
PART_NAMES: Final = ("offline", "capacity", "sequential", "soak")
DEFAULT_PARTS: Final = ("offline", "capacity", "sequential")
OFFLINE_CLIPS_S: Final = (1.0, 10.0, 60.0)
PAPER_CLIPS_S: Final = (1.0, 10.0)
OFFLINE_BACKENDS: Final = ("torch", "onnx", "tensorrt")
ANIMATE_REPEATS: Final = 5
MAX_SESSIONS_FLOOR: Final = 32
TARGET_10S_CLIP_S: Final = 0.2  # issue 4, lite preset on a 2-core CPU

QUICK_CLIPS_S: Final = (1.0,)
QUICK_MAX_N: Final = 2
QUICK_STEP_S: Final = 5.0
QUICK_SESSIONS: Final = 50
QUICK_SOAK_S: Final = 20.0
QUICK_ANIMATE_REPEATS: Final = 2

LAG_PLOT: Final = "lag_vs_n.png"
OFFLINE_PLOT: Final = "offline_rtf.png"
SOAK_PLOT: Final = "soak_memory.png"


@dataclass(frozen=True)
class BenchOptions:
    """What `pmmtalk bench` runs; None = the default (or the --quick value)."""

    out_dir: Path = DOCS_DIR
    quick: bool = False
    parts: tuple[str, ...] = DEFAULT_PARTS
    ns: tuple[int, ...] | None = None
    max_n: int | None = None
    step_duration_s: float | None = None
    sessions: int | None = None
    soak_duration_s: float | None = None
    soak_clients: int | None = None
    backend: str = "auto"  # the server's
    offline_backends: tuple[str, ...] = OFFLINE_BACKENDS
    presets: tuple[str, ...] | None = None  # None: lite, and paper where a GPU is present
    clips_s: tuple[float, ...] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        unknown = [p for p in self.parts if p not in PART_NAMES]
        if unknown or not self.parts:
            raise ValueError(
                f"unknown or no parts {unknown or list(self.parts)}; choose from "
                f"{', '.join(PART_NAMES)}"
            )
        if "soak" in self.parts and "capacity" not in self.parts and self.soak_clients is None:
            raise ValueError(
                "the timed soak runs at 75 % of the capacity measured in the same run: add the "
                "capacity part, or give --soak-clients"
            )
        self.planned_ns()  # raises on out-of-bounds counts
        check_step_duration(self.step_s)
        for name, value in (
            ("--sessions", self.sessions),
            ("--soak-clients", self.soak_clients),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.soak_duration_s is not None and self.soak_duration_s <= 0:
            raise ValueError(f"--soak-duration-s must be positive, got {self.soak_duration_s:g}")
        if any(s <= 0 for s in self.clips_s or ()):
            raise ValueError(f"clip lengths must be positive, got {self.clips_s}")

    def planned_ns(self) -> list[int]:
        if self.ns is not None:
            return check_ns(self.ns)
        return step_ns(self.max_n or (QUICK_MAX_N if self.quick else MAX_N_DEFAULT))

    @property
    def step_s(self) -> float:
        default = QUICK_STEP_S if self.quick else STEP_DURATION_S_DEFAULT
        return self.step_duration_s or default

    @property
    def n_sessions(self) -> int:
        return self.sessions or (QUICK_SESSIONS if self.quick else SEQUENTIAL_SESSIONS_DEFAULT)

    @property
    def soak_s(self) -> float:
        return self.soak_duration_s or (QUICK_SOAK_S if self.quick else TIMED_DURATION_S_DEFAULT)

    @property
    def clips(self) -> tuple[float, ...]:
        return self.clips_s or (QUICK_CLIPS_S if self.quick else OFFLINE_CLIPS_S)

    def command_line(self) -> str:
        """The `pmmtalk bench` command that asks for these options (the report quotes it)."""

        def joined(values: Sequence[object]) -> str:
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

        words = ["pmmtalk", "bench"] + (["--quick"] if self.quick else [])
        if self.parts != DEFAULT_PARTS:
            words += ["--parts", ",".join(self.parts)]
        given: list[tuple[str, object]] = [
            ("--ns", None if self.ns is None else joined(self.ns)),
            ("--max-n", self.max_n),
            ("--step-duration-s", self.step_duration_s),
            ("--sessions", self.sessions),
            ("--soak-duration-s", self.soak_duration_s),
            ("--soak-clients", self.soak_clients),
            ("--backend", None if self.backend == "auto" else self.backend),
            (
                "--backends",
                None
                if self.offline_backends == OFFLINE_BACKENDS
                else ",".join(self.offline_backends),
            ),
            ("--presets", None if self.presets is None else ",".join(self.presets)),
            ("--clips", None if self.clips_s is None else joined(self.clips_s)),
            ("--note", self.note or None),
            ("--out", None if self.out_dir == DOCS_DIR else str(self.out_dir)),
        ]
        for flag, value in given:
            if value is not None:
                words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return shlex.join(words)


@dataclass
class BenchResult:
    """Everything one `pmmtalk bench` measured, and how."""

    command: str
    machine: dict[str, Any]
    parts: list[str]
    quick: bool = False
    note: str = ""
    server_command: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # GET /info: model, backend, window
    starts: list[StartTiming] = field(default_factory=list)
    animate: AnimateTiming | None = None
    offline: list[Timing] = field(default_factory=list)
    offline_skipped: list[str] = field(default_factory=list)
    capacity: Capacity | None = None
    sequential: SoakResult | None = None
    timed: SoakResult | None = None
    plots: dict[str, str] = field(default_factory=dict)  # what -> file name


# --- running ----------------------------------------------------------------------------------


def _offline(options: BenchOptions, result: BenchResult, scratch: Path, reporter: Reporter) -> None:
    """Whole-clip timings of every backend present; the ones missing here are listed."""
    from benchmarks.backends import bench_backends, checkpoint_for
    from server.settings import StreamSettings

    # The server's window: the ONNX export the capacity part needs serves the clips too.
    window = StreamSettings().window()

    presets = options.presets or (("lite", "paper") if result.machine.get("gpu") else ("lite",))
    if "paper" not in presets:
        result.offline_skipped.append(
            "paper preset: not run: "
            + (
                "this machine has no GPU (nvidia-smi found none); it is slow on a CPU (about "
                "3 s per second of audio): ask for it with --presets lite,paper"
                if not result.machine.get("gpu")
                else "left out by --presets"
            )
        )
    for preset in presets:
        clips = PAPER_CLIPS_S if preset == "paper" and options.clips_s is None else options.clips
        checkpoint = checkpoint_for(preset, scratch)
        names = list(options.offline_backends)
        lengths = ", ".join(f"{c:g}" for c in clips)
        reporter.stage(f"offline: {preset} on {', '.join(names)} in turn, {lengths} s clips", 1)
        timings, missing = bench_backends(preset, names, checkpoint, clips, [], None, window)
        for line in missing:
            result.offline_skipped.append(line)
            reporter.line(f"  {line[:100]}...")
        result.offline += timings
        for t in timings:
            reporter.line(
                f"  {preset} {t.backend} ({t.device}), {t.size:g} s clip: {t.median_s:.3f} s, "
                f"real-time factor {t.median_s / t.size:.4f}"
            )


@contextlib.contextmanager
def _server(
    serve: ServeOptions, scratch: Path, label: str, reporter: Reporter
) -> Iterator[ServerProcess]:
    """A `pmmtalk serve` process for the block, its log in ``scratch``."""
    reporter.stage(f"server: {label}", 1)
    port = free_port()
    log = scratch / f"server-{label.replace(' ', '-')}.log"
    with running_server(serve.command(port), port, log) as server:
        reporter.line(f"  {label}: ready in {server.ready_s:.2f} s")
        yield server


def _capacity(
    options: BenchOptions, server: ServerProcess, result: BenchResult, reporter: Reporter
) -> None:
    """/info, /animate and the capacity steps against a running server."""
    info = httpx.get(server.http + "/info", timeout=30.0).json()
    result.info = {k: info.get(k) for k in ("model", "preset", "backend", "device", "window")}
    result.info["batching"] = info.get("batching")
    repeats = QUICK_ANIMATE_REPEATS if options.quick else ANIMATE_REPEATS
    reporter.stage(f"POST /animate, {ANIMATE_CLIP_S:g} s clip x {repeats}", 1)
    result.animate = bench_animate(server.http, ANIMATE_CLIP_S, repeats)
    reporter.line(
        f"  /animate {ANIMATE_CLIP_S:g} s: {result.animate.wall_median_s:.3f} s wall, "
        f"{result.animate.compute_median_ms:.0f} ms compute"
    )
    result.capacity = measure_capacity(
        server.target, options.planned_ns(), options.step_s, reporter
    )
    reporter.line(f"  capacity: {result.capacity.describe()} real-time clients")


def _soaks(
    options: BenchOptions,
    result: BenchResult,
    server_for: Callable[[str], contextlib.AbstractContextManager[ServerProcess]],
    reporter: Reporter,
) -> None:
    """The soak parts, each on the server ``server_for(label)`` gives."""
    if "sequential" in options.parts:
        with server_for("fresh start for the sequential soak") as server:
            result.sequential = asyncio.run(
                sequential_soak(server.target, options.n_sessions, reporter=reporter)
            )
        reporter.line("  " + soak_summary(result.sequential))
    if "soak" in options.parts:
        clients = options.soak_clients or (result.capacity.soak_clients() if result.capacity else 1)
        with server_for("fresh start for the timed soak") as server:
            result.timed = asyncio.run(
                timed_soak(server.target, clients, options.soak_s, reporter=reporter)
            )
        reporter.line("  " + soak_summary(result.timed))


def soak_summary(soak: SoakResult) -> str:
    return "; ".join(f"{figure}: {measured}" for figure, measured, _, _ in soak.verdicts())


def run(options: BenchOptions, reporter: Reporter | None = None) -> BenchResult:
    """Run the chosen parts and write the report into ``options.out_dir``."""
    reporter = reporter or LogReporter()
    stamp = machine()
    reporter.line(f"{describe(stamp)}; commit {stamp['commit']}; load {stamp['loadavg']}")
    ns = options.planned_ns()
    serve = ServeOptions(backend=options.backend, max_sessions=max(*ns, MAX_SESSIONS_FLOOR))
    result = BenchResult(
        command=options.command_line(),
        machine=stamp,
        parts=list(options.parts),
        quick=options.quick,
        note=options.note,
        server_command=serve.shown(),
    )
    with tempfile.TemporaryDirectory(prefix="pmmtalk-bench-") as folder:
        scratch = Path(folder)

        def fresh(label: str) -> contextlib.AbstractContextManager[ServerProcess]:
            return _server(serve, scratch, label, reporter)

        if "offline" in options.parts:
            _offline(options, result, scratch, reporter)
        if "capacity" not in options.parts:
            _soaks(options, result, fresh, reporter)
        elif options.quick:
            # One start, one server for every part: a smoke run tests the path, not the figures.
            with fresh("first start") as server:
                result.starts.append(StartTiming("first start", server.ready_s))
                _capacity(options, server, result, reporter)
                _soaks(options, result, lambda _: contextlib.nullcontext(server), reporter)
        else:
            # The first start finds the export cache as it is (a cold one adds the ONNX
            # export); the second finds it warm, as a restarted server does: the ready target
            # is for that one. Each soak gets a fresh server, so its memory is its own.
            for label in ("first start", "warm start"):
                with fresh(label) as server:
                    result.starts.append(StartTiming(label, server.ready_s))
                    if label == "warm start":
                        _capacity(options, server, result, reporter)
            _soaks(options, result, fresh, reporter)
    write_report(result, options.out_dir)
    return result


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    target: str
    verdict: str  # "met", "NOT met", "not measured", or "" (no target)


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _triple(q: Quantiles) -> str:
    return f"{_ms(q.p50)} / {_ms(q.p95)} / {_ms(q.p99)}"


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.0f} MB"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary(result: BenchResult) -> list[Row]:
    """Each target of the server issue (and the soak and offline targets) against this run."""
    rows: list[Row] = []
    if result.starts:
        warm = result.starts[-1]
        rows.append(
            Row(
                "ready after start (warm export cache)"
                if warm.label == "warm start"
                else f"ready after the {warm.label} (export cache as found)",
                f"{warm.ready_s:.1f} s",
                f"{TARGET_READY_S:g} s",
                _verdict(warm.ready_s <= TARGET_READY_S),
            )
        )
    if result.animate is not None:
        a = result.animate
        rows.append(
            Row(
                f"`POST /animate`, {a.clip_s:g} s WAV (wall, median of {a.repeats})",
                f"{a.wall_median_s:.3f} s",
                f"{TARGET_ANIMATE_S:g} s",
                _verdict(a.wall_median_s < TARGET_ANIMATE_S),
            )
        )
    capacity = result.capacity
    if capacity is not None:
        lookahead = float((result.info.get("window") or {}).get("lookahead_s", 0.0))
        single = next((r for r in capacity.runs if r.n == 1), None)
        bound = TARGET_SINGLE_STREAM_EXTRA_S + lookahead
        p95 = single.client_lag.p95 if single else None
        rows.append(
            Row(
                "one stream: frame lag p95 (audio a frame needs sent -> frame received)",
                "-" if p95 is None else f"{p95 * 1000:.0f} ms",
                f"{bound * 1000:.0f} ms",
                _verdict(None if p95 is None else p95 <= bound),
            )
        )
        largest = capacity.largest or 0
        tried = max((r.n for r in capacity.runs), default=0)
        met: bool | None = True if largest >= TARGET_STREAMS else None
        if met is None and capacity.broke:
            met = False
        rows.append(
            Row(
                f"real-time streams (p95 lag at most {REAL_TIME_P95_LAG_S * 1000:.0f} ms, "
                "every frame)",
                f"**{capacity.describe()}**",
                f"{TARGET_STREAMS}",
                _verdict(met) + ("" if met is not None else f" (N up to {tried} only)"),
            )
        )
        at_target = next((r for r in capacity.runs if r.n == TARGET_STREAMS), None)
        if at_target is not None and at_target.peak_rss_bytes is not None:
            rows.append(
                Row(
                    f"server memory with {TARGET_STREAMS} streams (peak)",
                    _mb(at_target.peak_rss_bytes),
                    f"{TARGET_RSS_BYTES / 1e9:g} GB",
                    _verdict(at_target.peak_rss_bytes < TARGET_RSS_BYTES),
                )
            )
        else:
            peak = max((r.peak_rss_bytes or 0 for r in capacity.runs), default=0)
            rows.append(
                Row(
                    f"server memory with {TARGET_STREAMS} streams (peak)",
                    f"{_mb(peak or None)} at N = {tried} (the largest N run)",
                    f"{TARGET_RSS_BYTES / 1e9:g} GB",
                    "not measured",
                )
            )
    cpu_10s = [
        t
        for t in result.offline
        if t.preset == "lite"
        and t.case == "clip"
        and t.size == 10.0
        and not t.device.startswith("cuda")
    ]
    if cpu_10s:
        best = min(cpu_10s, key=lambda t: t.median_s)
        rows.append(
            Row(
                f"offline 10 s clip, lite, fastest CPU backend ({best.backend})",
                f"{best.median_s:.3f} s",
                f"{TARGET_10S_CLIP_S:g} s",
                _verdict(best.median_s < TARGET_10S_CLIP_S),
            )
        )
    for soak, label in ((result.sequential, "sequential soak"), (result.timed, "timed soak")):
        if soak is None:
            continue
        what = (
            f"{soak.sessions} sessions"
            if soak.kind == "sequential"
            else f"{soak.clients} client(s), {soak.wall_s:.0f} s"
        )
        for figure, measured, target, met_soak in soak.verdicts():
            rows.append(Row(f"{label} ({what}): {figure}", measured, target, _verdict(met_soak)))
    return rows


def _summary_table(rows: Sequence[Row]) -> list[str]:
    lines = ["| figure | measured | target | verdict |", "|---|---:|---:|---|"]
    lines += [f"| {r.figure} | {r.measured} | {r.target} | {r.verdict} |" for r in rows]
    return lines


def _capacity_table(runs: Sequence[StreamRun]) -> list[str]:
    lines = [
        "| N | frames | missing | late | client lag | end to end | server lag | compute "
        "| windows per call (mean, p95) | CPU server / clients / machine (cores) "
        "| server RSS peak | keeps real time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        batch = "-" if r.batch_mean is None else f"{r.batch_mean:.1f}, <= {r.batch_p95 or 0:g}"
        u = r.usage
        cpu = (
            "-"
            if u is None
            else f"{_cores(u.server_cores)} / {_cores(u.client_cores)} / {_cores(u.machine_cores)}"
        )
        lines.append(
            f"| {r.n} | {r.frames}/{r.frames_expected} | {r.missing_frames} | {r.late_frames} "
            f"| {_triple(r.client_lag)} | {_triple(r.end_to_end)} | {_triple(r.server_lag)} "
            f"| {_triple(r.server_compute)} | {batch} | {cpu} | {_mb(r.peak_rss_bytes)} "
            f"| {r.real_time_verdict()[1]} |"
        )
    return lines


def _soak_table(soaks: Sequence[SoakResult]) -> list[str]:
    lines = [
        "| run | clients | sessions (server: completed) | audio | wall | frames lost "
        "| sessions open at end | memory read every | RSS after warm-up -> end (peak) | growth "
        "| session wall p50 / p95 | frame lag | late | server CPU (cores) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in soaks:
        g = s.growth
        rss = (
            "-"
            if g is None
            else f"{_mb(g.baseline_bytes)} -> {_mb(g.final_bytes)} ({_mb(g.peak_bytes)})"
        )
        growth = "-" if g is None else f"{g.growth * 100:+.1f} %"
        lag = "-" if s.kind == "sequential" else _triple(s.client_lag)
        late = "-" if s.kind == "sequential" else str(s.late_frames)
        walls = f"{_ms(s.session_wall.p50)} / {_ms(s.session_wall.p95)} ms"
        lines.append(
            f"| {s.kind} | {s.clients} | {s.sessions} ({s.streams_completed}) | {s.audio_s:.0f} s "
            f"| {s.wall_s:.0f} s | {s.frames_lost} ({s.broken_sessions} sessions off) "
            f"| {s.sessions_open_end} | {s.rss_every:g} {s.unit} | {rss} | {growth} | {walls} "
            f"| {lag} | {late} "
            f"| {_cores(s.usage.server_cores if s.usage else None)} |"
        )
    return lines


def markdown(result: BenchResult) -> str:
    """The Markdown report: set-up, the targets table, then each part's own table."""
    m, info = result.machine, result.info
    window, batching = info.get("window") or {}, info.get("batching") or {}
    lines = [
        "# `pmmtalk bench`",
        "",
        f"Written by `{result.command}` on {m.get('date')}, commit `{m.get('commit')}`"
        + (" (a --quick smoke run: too short to judge by)." if result.quick else "."),
        "",
        f"- {describe(m)}; load average at start {m.get('loadavg') or '-'}",
        f"- Python {m.get('python')}, torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}",
        f"- Parts: {', '.join(result.parts)}",
    ]
    if result.server_command and ("capacity" in result.parts or result.sequential or result.timed):
        lines.append(
            f"- Server: `{result.server_command}`"
            + (
                f": model {info.get('model')} on {info.get('backend')} ({info.get('device')}); "
                f"window {window.get('left_context_s')} s left context + {window.get('hop_s')} s "
                f"hop + {window.get('lookahead_s')} s lookahead; at most "
                f"{batching.get('max_batch_size')} windows per call, "
                f"{batching.get('max_wait_ms')} ms wait"
                if info
                else ""
            )
        )
    if result.note:
        lines.append(f"- Note: {result.note}")
    lines += ["", "## Targets", "", *_summary_table(summary(result))]
    if result.offline or result.offline_skipped:
        lines += [
            "",
            "## Offline real-time factor",
            "",
            "Whole clips through each backend in this process, the backends timed in turn on "
            "the same inputs; median of several runs after a warm-up (7 for 1 s, 5 for 10 s, "
            "3 for 60 s). Real-time factor = compute seconds per second of audio.",
            "",
            "| preset | backend | device | clip | median | real-time factor | x real time |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for t in result.offline:
            rtf = t.median_s / t.size
            lines.append(
                f"| {t.preset} | {t.backend} | {t.device} | {t.size:g} s | {t.median_s:.4f} s "
                f"| {rtf:.4f} | {1 / rtf:.1f} |"
            )
        if OFFLINE_PLOT in result.plots.values():
            lines += ["", f"![real-time factor per backend and clip length]({OFFLINE_PLOT})"]
        if result.offline_skipped:
            lines += ["", "Not run here:", ""] + [f"- {s}" for s in result.offline_skipped]
    capacity = result.capacity
    if capacity is not None:
        lines += [
            "",
            "## Streaming capacity",
            "",
            f"Steps of N = {', '.join(map(str, capacity.planned))} simulated clients (one "
            f"asyncio process on this machine), each sending {capacity.step_duration_s:g} s of "
            f"16 kHz s16 speech in {CHUNK_S * 1000:.0f} ms chunks at real time, then end; "
            "stepping stops at the first N that does not keep real time. Times in ms as "
            "p50 / p95 / p99.",
            "",
            "- **client lag**: frame arrival - when the audio the frame's window needs (its hop "
            "and the lookahead, or end) had been sent; **end to end**: from the audio at the "
            "frame's own instant; **server lag**: the server's `pmmtalk_frame_lag_seconds`; "
            '**compute**: `pmmtalk_compute_seconds{kind="stream"}`, one batched backend call.',
            f"- **keeps real time**: every stream complete, client p95 lag at most "
            f"{REAL_TIME_P95_LAG_S * 1000:.0f} ms, and the median lag of the last quarter at most "
            f"{REAL_TIME_GROWTH_S * 1000:.0f} ms above the first quarter's. **late**: frames whose "
            f"client lag exceeds {LATE_FRAME_LAG_S * 1000:.0f} ms; **missing**: frames of the "
            "contract that never arrived.",
            "- **CPU**: the server process, the simulated clients (this process) and the whole "
            "machine (other load included), in cores busy on average.",
            "",
            *_capacity_table(capacity.runs),
            "",
            f"Largest N that keeps real time: **{capacity.describe()}**; the timed soak runs at "
            f"{SOAK_FRACTION * 100:.0f} % of it: {capacity.soak_clients()} client(s).",
        ]
        if LAG_PLOT in result.plots.values():
            lines += ["", f"![frame lag percentiles against N]({LAG_PLOT})"]
    soaks = [s for s in (result.sequential, result.timed) if s is not None]
    if soaks:
        lines += [
            "",
            "## Soak",
            "",
            "Sequential: short sessions (0.75 to 1.25 s of speech, sent as fast as the server "
            "reads) one after another. Timed: real-time clients reconnecting with a new 3 to 8 s "
            "utterance each time. Both against a freshly started server; the warm-up is the "
            "first tenth of the sessions or of the time. **frames lost**: frames of the contract "
            "`ceil(samples * 30 / 16000)` that never arrived (and sessions whose frames were off "
            "in any way); **sessions open at end**: the server's `pmmtalk_active_sessions` after "
            "the last client closed.",
            "",
            *_soak_table(soaks),
        ]
        for s in soaks:
            if s.failures:
                lines += ["", f"First failures ({s.kind}):", ""] + [f"- {f}" for f in s.failures]
        if SOAK_PLOT in result.plots.values():
            lines += ["", f"![server memory through the soak runs]({SOAK_PLOT})"]
    return "\n".join(lines) + "\n"


def report_json(result: BenchResult) -> dict[str, Any]:
    payload = asdict(result)
    if result.capacity is not None:
        payload["capacity"]["largest_real_time_n"] = result.capacity.largest
        payload["capacity"]["soak_clients"] = result.capacity.soak_clients()
        for run, data in zip(result.capacity.runs, payload["capacity"]["runs"], strict=True):
            data["keeps_real_time"], data["verdict"] = run.real_time_verdict()
    payload["summary"] = [asdict(row) for row in summary(result)]
    payload["definitions"] = {
        "real_time_p95_lag_s": REAL_TIME_P95_LAG_S,
        "real_time_growth_s": REAL_TIME_GROWTH_S,
        "late_frame_lag_s": LATE_FRAME_LAG_S,
        "chunk_s": CHUNK_S,
        "soak_fraction": SOAK_FRACTION,
    }
    return payload


def write_report(result: BenchResult, out_dir: Path) -> list[Path]:
    """bench.json, bench.md and the plots of the parts that ran; the paths written."""
    from benchmarks import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{result.machine.get('cpu')}, {result.machine.get('cores')} cores, " + (
        f"commit {result.machine.get('commit')}"
    )
    written: list[Path] = []
    if result.capacity is not None and result.capacity.runs:
        written.append(
            plots.lag_against_n(result.capacity.runs, out_dir / LAG_PLOT, f"pmmtalk bench: {stamp}")
        )
        result.plots["lag"] = LAG_PLOT
    if result.offline:
        written.append(
            plots.offline_rtf(result.offline, out_dir / OFFLINE_PLOT, f"pmmtalk bench: {stamp}")
        )
        result.plots["offline"] = OFFLINE_PLOT
    soaks = [s for s in (result.sequential, result.timed) if s is not None]
    if soaks:
        written.append(plots.soak_memory(soaks, out_dir / SOAK_PLOT, f"pmmtalk bench: {stamp}"))
        result.plots["soak"] = SOAK_PLOT
    (out_dir / "bench.md").write_text(markdown(result))
    (out_dir / "bench.json").write_text(json.dumps(report_json(result), indent=2) + "\n")
    return [*written, out_dir / "bench.md", out_dir / "bench.json"]


# --- command-line helpers (pmmtalk bench) -----------------------------------------------------


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{what} takes whole numbers separated by commas, got {text!r}") from None


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{what} takes numbers separated by commas, got {text!r}") from None


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
