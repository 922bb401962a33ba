"""Time every runtime backend present on whole clips and on streaming windows; write the table.

    python -m benchmarks.backends                      # lite and paper, every backend present
    python -m benchmarks.backends --presets lite --clips 1,10

The lite preset runs the bundled default checkpoint; the paper preset runs randomly initialised
weights of the paper's sizes (the time does not depend on the weights' values). Each figure is
the median of several runs after a warm-up run, all measured in one process with the backends
timed in turn on the same inputs, so the ratios between backends come from the same minutes.
Results go to ``docs/benchmarks/backends.{json,md}``, stamped with the machine, the library
versions and the git commit.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.machine import machine

if TYPE_CHECKING:
    from export.backends.base import Backend
    from models.streaming import StreamWindow

logger = logging.getLogger(__name__)

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
CLIP_SECONDS_DEFAULT = (1.0, 10.0, 60.0)
STREAM_BATCHES_DEFAULT = (1, 4, 8)
TARGET_ORT_SPEEDUP = 1.5
"""Issue 4: the lite offline graph under ONNX Runtime at least this much faster than torch eager."""
TARGET_10S_CLIP_S = 0.2
"""Issue 4: a 10 s clip on the lite preset in under this many seconds (2-core CPU)."""


@dataclass(frozen=True)
class Timing:
    """One benchmark cell: the median wall time of ``repeats`` runs after a warm-up run."""

    preset: str
    backend: str
    device: str
    case: str  # "clip" or "stream"
    size: float  # clip seconds, or windows per batch
    median_s: float
    min_s: float
    repeats: int

    @property
    def audio_s(self) -> float:
        return self.size if self.case == "clip" else 0.0


def interleaved_times(
    runs: Sequence[Callable[[], object]], repeats: int
) -> list[tuple[float, float]]:
    """(median, min) wall seconds of each of ``runs``, timed in turn.

    Each run gets one warm-up call; then ``repeats`` rounds call every run once, starting one
    run later each round. Timed in turn rather than one after the other, a slow spell of a
    shared machine falls on every run alike, so their ratios hold even when the absolute
    times drift.
    """
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for round_index in range(repeats):
        for offset in range(len(runs)):
            index = (round_index + offset) % len(runs)
            started = time.perf_counter()
            runs[index]()
            times[index].append(time.perf_counter() - started)
    return [(statistics.median(t), min(t)) for t in times]


def repeats_for(seconds: float) -> int:
    """Fewer repeats for long clips: the median stays stable and the run stays short."""
    return 7 if seconds <= 1 else 5 if seconds <= 10 else 3


def checkpoint_for(preset: str, scratch: Path) -> Path:
    """The bundled default model for lite; a random-weight checkpoint of the preset otherwise."""
    from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR

    if preset == "lite":
        return DEFAULT_CHECKPOINT_DIR
    import torch

    from models.checkpoint import save_checkpoint
    from models.config import preset_config
    from models.pmmtalk import PMMTalk

    folder = scratch / f"{preset}-random"
    if not folder.is_dir():
        torch.manual_seed(0)
        save_checkpoint(PMMTalk(preset_config(preset)), folder)
    return folder


def bench_backends(
    preset: str,
    names: Sequence[str],
    checkpoint: Path,
    clip_seconds: Sequence[float],
    stream_batches: Sequence[int],
    cache_dir: Path | None,
    window: StreamWindow | None = None,
) -> tuple[list[Timing], list[str]]:
    """Time every backend of ``names`` present here on one preset; returns the timings and a
    line for each backend that cannot run here.

    The backends are timed in turn on the same inputs (`interleaved_times`), so the ratios
    between them come from the same minutes. ``window``: the stream window of the export to run
    (default `StreamWindow()`); clips take the same time under any window, so passing the
    server's reuses the server's export.
    """
    from export.backends.base import BackendUnavailableError
    from export.backends.select import open_backend

    backends: list[Backend] = []
    skipped: list[str] = []
    try:
        for name in names:
            try:
                backends.append(open_backend(name, checkpoint, cache_dir=cache_dir, window=window))
            except BackendUnavailableError as exc:
                skipped.append(f"{preset}/{name}: {exc}")
                logger.warning("skipping %s on %s: %s", name, preset, exc)
        return _time_backends(preset, backends, clip_seconds, stream_batches), skipped
    finally:
        for backend in backends:
            backend.close()


def _time_backends(
    preset: str,
    backends: Sequence[Backend],
    clip_seconds: Sequence[float],
    stream_batches: Sequence[int],
) -> list[Timing]:
    if not backends:
        return []
    spec = backends[0].spec
    rng = np.random.default_rng(0)
    size = spec.config.wav2lip.img_size
    face = rng.random((3, size, size), dtype=np.float32)
    identities = [backend.encode_face(face) for backend in backends]
    style = spec.mean_style
    timings: list[Timing] = []

    def record(case: str, size: float, runs: list[Callable[[], object]], repeats: int) -> None:
        for backend, (median, least) in zip(
            backends, interleaved_times(runs, repeats), strict=True
        ):
            timing = Timing(
                preset, backend.name, backend.device, case, size, median, least, repeats
            )
            timings.append(timing)
            logger.info("%s %s %s %g: %.4f s", preset, backend.name, case, size, median)

    for seconds in clip_seconds:
        samples = int(seconds * spec.config.sample_rate_hz)
        wave = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        runs: list[Callable[[], object]] = [
            functools.partial(backend.speech_to_frames, wave, identity, style)
            for backend, identity in zip(backends, identities, strict=True)
        ]
        record("clip", seconds, runs, repeats_for(seconds))
    window = spec.window
    for batch in stream_batches:
        waves = (0.1 * rng.standard_normal((batch, window.window_samples))).astype(np.float32)
        styles = np.repeat(style[None], batch, axis=0)
        offsets = np.arange(batch, dtype=np.int64) * window.hop_frames
        runs = [
            functools.partial(backend.stream_windows, waves, [identity] * batch, styles, offsets)
            for backend, identity in zip(backends, identities, strict=True)
        ]
        record("stream", batch, runs, 7)
    return timings


def markdown(timings: Sequence[Timing], info: dict[str, Any], window: dict[str, Any]) -> str:
    """The Markdown report: machine, offline table, streaming table, targets."""
    lines = [
        "# Runtime backend benchmark",
        "",
        f"Written by `python -m benchmarks.backends` on {info['date']}, commit `{info['commit']}`.",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; GPU: {info['gpu'] or 'none'}",
        f"- Python {info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}",
        "- Median of several runs after a warm-up run (7 for 1 s clips and windows, 5 for 10 s,"
        " 3 for 60 s), the backends timed in turn on the same inputs. The paper preset runs"
        " random weights of its sizes.",
        "",
        "## Offline: whole clips",
        "",
        "| preset | backend | device | clip | median | real-time factor | x real time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in timings:
        if t.case == "clip":
            rtf = t.median_s / t.size
            lines.append(
                f"| {t.preset} | {t.backend} | {t.device} | {t.size:g} s | {t.median_s:.4f} s "
                f"| {rtf:.4f} | {1 / rtf:.1f} |"
            )
    hop = window.get("hop_s", 0.0)
    lines += [
        "",
        "## Streaming windows",
        "",
        f"One window is {window.get('window_samples')} samples "
        f"({window.get('left_context_s')} s context + {hop} s hop + "
        f"{window.get('lookahead_s')} s lookahead). A session needs one window per hop, so "
        "the streams one call keeps in real time = batch x hop / time per call.",
        "",
        "| preset | backend | device | windows per call | median per call | per window "
        "| streams in real time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in timings:
        if t.case == "stream":
            per_window = t.median_s / t.size
            streams = t.size * hop / t.median_s if t.median_s else float("inf")
            lines.append(
                f"| {t.preset} | {t.backend} | {t.device} | {t.size:g} | {t.median_s:.4f} s "
                f"| {per_window:.4f} s | {streams:.1f} |"
            )
    lines += ["", "## Targets (issue 4, lite preset, this machine)", ""]
    lines += targets(timings)
    return "\n".join(lines) + "\n"


def targets(timings: Sequence[Timing]) -> list[str]:
    """Pass/fail lines for the issue's two CPU targets, from this run's figures."""

    def cell(backend: str, seconds: float) -> Timing | None:
        return next(
            (
                t
                for t in timings
                if t.preset == "lite"
                and t.backend == backend
                and t.case == "clip"
                and t.size == seconds
                and not t.device.startswith("cuda")
            ),
            None,
        )

    lines = []
    lengths = sorted({t.size for t in timings if t.preset == "lite" and t.case == "clip"})
    for seconds in lengths:
        eager, onnx = cell("torch", seconds), cell("onnx", seconds)
        if eager and onnx:
            speedup = eager.median_s / onnx.median_s
            verdict = "met" if speedup >= TARGET_ORT_SPEEDUP else "NOT met"
            lines.append(
                f"- ONNX Runtime vs PyTorch eager, {seconds:g} s clip: {speedup:.2f}x faster "
                f"(target {TARGET_ORT_SPEEDUP}x): {verdict}."
            )
    torch_10, onnx_10 = cell("torch", 10.0), cell("onnx", 10.0)
    best = min((t for t in (torch_10, onnx_10) if t), key=lambda t: t.median_s, default=None)
    if best:
        verdict = "met" if best.median_s < TARGET_10S_CLIP_S else "NOT met"
        lines.append(
            f"- A 10 s clip in {best.median_s:.3f} s on {best.backend} "
            f"(target under {TARGET_10S_CLIP_S} s): {verdict}."
        )
    return lines or ["- The lite preset's 10 s clip was not timed on both CPU backends."]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="lite,paper", help="comma-separated presets")
    parser.add_argument("--backends", default="torch,onnx,tensorrt", help="comma-separated")
    parser.add_argument(
        "--clips", default=",".join(f"{s:g}" for s in CLIP_SECONDS_DEFAULT), help="seconds"
    )
    parser.add_argument(
        "--paper-clips", default="1,10", help="clip seconds for the paper preset (slow on CPU)"
    )
    parser.add_argument(
        "--paper-backends",
        default="torch,onnx,tensorrt",
        help="backends for the paper preset (its first onnx run exports the 2.8 GB graphs into "
        "the cache, several minutes)",
    )
    parser.add_argument("--stream-batches", default=",".join(map(str, STREAM_BATCHES_DEFAULT)))
    parser.add_argument(
        "--paper-stream-batches", default="1", help="windows per call for the paper preset"
    )
    parser.add_argument("--out", type=Path, default=DOCS_DIR, help="where the report goes")
    parser.add_argument("--cache-dir", type=Path, default=None, help="export cache root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from models.streaming import StreamWindow

    info = machine()
    timings: list[Timing] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pmmtalk-bench-") as scratch:
        for preset in args.presets.split(","):
            paper = preset == "paper"
            clips = args.paper_clips if paper else args.clips
            seconds = [float(s) for s in clips.split(",") if s]
            batches = args.paper_stream_batches if paper else args.stream_batches
            checkpoint = checkpoint_for(preset, Path(scratch))
            names = (args.paper_backends if paper else args.backends).split(",")
            found, missing = bench_backends(
                preset,
                names,
                checkpoint,
                seconds,
                [int(b) for b in batches.split(",") if b],
                args.cache_dir,
            )
            timings += found
            skipped += missing
    window = StreamWindow().to_dict()
    report = markdown(timings, info, window)
    if skipped:
        report += "\n## Not run here\n\n" + "".join(f"- {line}\n" for line in skipped)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.md").write_text(report)
    payload = {
        "machine": info,
        "window": window,
        "timings": [asdict(t) for t in timings],
        "skipped": skipped,
    }
    (args.out / "backends.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
