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

The lag measures and the keeps-real-time rule are described in `benchmarks.streams`; the
stepping over N is `benchmarks.capacity`. `pmmtalk bench` runs the same measures and more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from benchmarks.capacity import sweep
from benchmarks.machine import machine
from benchmarks.process import ServeOptions, free_port, running_server
from benchmarks.prometheus import Quantiles
from benchmarks.streams import (
    CHUNK_S,
    REAL_TIME_GROWTH_S,
    REAL_TIME_P95_LAG_S,
    StreamRun,
    largest_real_time,
    speech,
    stream_run,
    wav_bytes,
)

logger = logging.getLogger(__name__)

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DOCS_DIR: Final = REPO_ROOT / "docs" / "benchmarks"
NS_DEFAULT: Final = (1, 4, 8, 12, 16, 20, 24, 32)
DURATION_S_DEFAULT: Final = 20.0
QUICK_NS: Final = (1, 2)
QUICK_DURATION_S: Final = 5.0
ANIMATE_CLIP_S: Final = 10.0
ANIMATE_REPEATS_DEFAULT: Final = 5
MAX_SESSIONS_DEFAULT: Final = 32
"""The server's own default; raised to the largest N swept."""

TARGET_STREAMS: Final = 16
TARGET_SINGLE_STREAM_EXTRA_S: Final = 0.15
"""The issue: one stream's p95 frame lag at most 150 ms plus the lookahead."""
TARGET_ANIMATE_S: Final = 0.3
TARGET_READY_S: Final = 5.0
TARGET_RSS_BYTES: Final = 1_000_000_000

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


# --- workloads --------------------------------------------------------------------------------


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


def _parse_ns(text: str) -> list[int]:
    ns = sorted({int(part) for part in text.split(",") if part.strip()})
    if not ns or ns[0] < 1:
        raise argparse.ArgumentTypeError(f"--ns needs positive client counts, got {text!r}")
    return ns


def serve_options(args: argparse.Namespace, max_sessions: int) -> ServeOptions:
    """The server's flags from the command line; unset window and batch flags keep the
    server's defaults."""
    return ServeOptions(
        backend=args.backend,
        max_sessions=max_sessions,
        hop_s=args.hop_s,
        left_context_s=args.left_context_s,
        lookahead_s=args.lookahead_s,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
    )


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
    options = serve_options(args, max(*ns, MAX_SESSIONS_DEFAULT))
    stamp = machine()
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
            with running_server(options.command(port), port, log, env) as server:
                starts.append(StartTiming(label, server.ready_s))
            logger.info("%s: ready in %.2f s", label, server.ready_s)
        port = free_port()
        with running_server(options.command(port), port, logs[-1], env) as server:
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
            target = server.target
            runs = sweep(ns, lambda n: asyncio.run(stream_run(target, n, duration_s)))
    report = Report(
        command=shlex.join(["python", "-m", "benchmarks.server", *given]),
        server_command=options.shown(),
        machine=stamp,
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
