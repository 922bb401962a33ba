"""Lip-sync review videos: the procedural face beside its coefficient curves, with the speech.

:func:`write_render` encodes an H.264/AAC MP4 whose frame i shows the face drawn from
coefficient row i (see :mod:`models.renderer`) on the left and, on the right, the key mouth
curves with a cursor at frame i's time, so a person can watch, listen and read the curves at
once. The curve panel is drawn once with matplotlib; per frame only the cursor is drawn (numpy
and OpenCV), because a matplotlib redraw per frame would cost far more than the encoding.

Encoding is the ffmpeg binary bundled by ``imageio-ffmpeg``: raw RGB frames go in through a pipe,
the speech from a temporary WAV. The WAV is padded with silence past the last frame, so
``-shortest`` ends the file on the video's last frame and never cuts one.

:func:`write_curves_png` plots every curve over time, and :func:`read_animation` reads the files
:func:`pmmtalk.outputs.write_animation` writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import cv2
import numpy as np
import soundfile as sf

from models.blendshapes import BLENDSHAPE_NAMES, FPS, NUM_BLENDSHAPES, num_frames
from models.renderer import FaceIdentity, FaceRenderer
from pmmtalk.animate import COEFFICIENT_RANGE, Animation
from pmmtalk.errors import InputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

VIDEO_SUFFIX: Final = ".mp4"
COEFFICIENT_SUFFIXES: Final = (".json", ".csv", ".npy")
MIN_FACE_SIZE_PX: Final = 64
"""Smallest face panel: below it the curve legend is unreadable."""
MAX_FACE_SIZE_PX: Final = 1024
MAX_FPS: Final = 240
MAX_DURATION_MISMATCH_S: Final = 0.5
"""Coefficients and speech whose lengths differ by more than this are taken to be from different
clips and refused; smaller differences (rounding by another tool) are rendered with a warning."""
AUDIO_TAIL_PAD_S: Final = 0.5
"""Silence added after the audio so it outlasts the video and ``-shortest`` cuts audio, not
frames."""
KEY_SHAPES: Final[tuple[str, ...]] = (
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthLowerDownLeft",
    "mouthUpperUpLeft",
)
"""Curves shown beside the face: the shapes that carry most of the visible articulation."""
_KEY_COLOURS: Final = {
    "jawOpen": "tab:blue",
    "mouthClose": "tab:orange",
    "mouthFunnel": "tab:green",
    "mouthPucker": "tab:red",
    "mouthStretch": "tab:purple",
    "mouthSmile": "tab:brown",
    "mouthRollLower": "tab:pink",
    "mouthRollUpper": "tab:gray",
    "mouthLowerDown": "tab:olive",
    "mouthUpperUp": "tab:cyan",
}
"""Line colour per shape; a left/right pair shares one (keyed by the name without the side)."""
CURSOR_RGB: Final = (0, 0, 0)
"""Black: no curve uses it."""
X264_CRF: Final = 18
"""x264 quality (lower is better); 18 keeps thin curve lines crisp."""
AAC_BITRATE: Final = "128k"
_DPI: Final = 100


class VideoEncodingError(RuntimeError):
    """ffmpeg failed or wrote something other than what was asked for."""


def check_video_options(path: Path, face_size: int, fps: int = FPS) -> None:
    """Raise ValueError, saying what to change, if :func:`write_render` would refuse these.

    Lets a caller fail before spending time on the network.
    """
    if Path(path).suffix.lower() != VIDEO_SUFFIX:
        raise ValueError(f"cannot write {Path(path).name!r}: the video must be an {VIDEO_SUFFIX}")
    if not MIN_FACE_SIZE_PX <= face_size <= MAX_FACE_SIZE_PX or face_size % 2:
        raise ValueError(
            f"face size must be an even number of pixels from {MIN_FACE_SIZE_PX} to "
            f"{MAX_FACE_SIZE_PX} (H.264 in yuv420p needs even sides), got {face_size}"
        )
    if not 1 <= fps <= MAX_FPS:
        raise ValueError(f"fps must be from 1 to {MAX_FPS}, got {fps}")


def write_render(
    path: Path,
    wave: np.ndarray,
    sample_rate: int,
    coefficients: np.ndarray,
    identity: FaceIdentity | None = None,
    face_size: int = 256,
    fps: int = FPS,
) -> Path:
    """Encode the review video.

    Args:
        path: the ``.mp4`` to write; written through a temporary file, so a failure leaves no
            partial video.
        wave: (n,) mono speech, float in [-1, 1].
        sample_rate: rate of ``wave`` in Hz.
        coefficients: (T, 32) ARKit weights in ``BLENDSHAPE_NAMES`` order, frame i at i / fps s.
        identity: the face to draw; :meth:`FaceIdentity.default` when None.
        face_size: side of the face panel in pixels (even, 64-1024); the curve panel beside it
            is twice as wide, so frames are (face_size, 3 * face_size) pixels.
        fps: frame rate of ``coefficients`` and of the video.

    Returns:
        ``path``. The video has exactly T frames (T / fps seconds), H.264 in yuv420p, and an AAC
        audio track of the speech, padded with silence if it is shorter than the frames.

    Raises:
        ValueError: bad arguments, or speech and coefficients of clearly different lengths.
        VideoEncodingError: ffmpeg failed.
    """
    out = Path(path)
    check_video_options(out, face_size, fps)
    samples = _check_wave(wave, sample_rate)
    frames = _check_frames(coefficients, NUM_BLENDSHAPES)
    _check_lengths(frames.shape[0], samples.size, sample_rate, fps)
    renderer = FaceRenderer(identity or FaceIdentity.default(), face_size)
    panel = _CurvePanel(frames, fps, width=2 * face_size, height=face_size)
    width, height = 3 * face_size, face_size

    # The padded audio outlasts the video, so -shortest stops at the last frame.
    audio_len = math.ceil(frames.shape[0] * sample_rate / fps + AUDIO_TAIL_PAD_S * sample_rate)
    padded = np.zeros(max(audio_len, samples.size), np.float32)
    padded[: samples.size] = samples
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pmmtalk-render-") as scratch:
        wav = Path(scratch) / "speech.wav"
        sf.write(wav, np.clip(padded, -1.0, 1.0), sample_rate, subtype="PCM_16")
        partial = out.with_name(f".{out.stem}.partial{VIDEO_SUFFIX}")
        command = _ffmpeg_command(width, height, fps, wav, partial)
        log_path = Path(scratch) / "ffmpeg.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=log)
            assert process.stdin is not None  # Popen(stdin=PIPE) always sets it
            try:
                for index, face in enumerate(renderer.frames(frames)):
                    frame = np.concatenate([face, panel.frame(index)], axis=1)
                    process.stdin.write(frame.tobytes())
                process.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg quit early; its exit status and log say why
            finally:
                returncode = process.wait()
        if returncode != 0:
            partial.unlink(missing_ok=True)
            detail = log_path.read_text(errors="replace").strip()[-2000:]
            raise VideoEncodingError(f"ffmpeg failed (exit {returncode}) writing {out}: {detail}")
        os.replace(partial, out)
    logger.info("wrote %s: %d frames at %d fps, %dx%d", out, frames.shape[0], fps, width, height)
    return out


def write_curves_png(
    path: Path,
    coefficients: np.ndarray,
    fps: int = FPS,
    names: Sequence[str] = BLENDSHAPE_NAMES,
) -> Path:
    """Plot every coefficient over time into a PNG, one lane per curve, stacked top to bottom.

    Each lane spans weights 0 to 1 (clipped) over the whole clip; lanes share the time axis, so
    a vertical line through the plot reads one frame of every curve.

    Args:
        path: the PNG to write.
        coefficients: (T, K) weights, frame i at i / fps seconds.
        fps: frame rate of ``coefficients``.
        names: the K column names, used as lane labels.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(names) == 0:
        raise ValueError("names must list at least one curve")
    frames = _check_frames(coefficients, len(names))
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    times = np.arange(frames.shape[0]) / fps
    lanes = len(names)
    height_in = 0.32 * lanes + 1.0
    # Built on an explicit Agg canvas, never through pyplot, so no global backend or figure
    # registry is touched. One axes with lanes rather than K subplots: K axes cost seconds.
    figure = Figure(figsize=(14, height_in), dpi=_DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_axes((0.13, 0.55 / height_in, 0.85, 1 - 1.0 / height_in))
    # Lane k's baseline sits at lanes - 1 - k, so the first name is at the top.
    baselines = lanes - 1 - np.arange(lanes)
    for index, base in enumerate(baselines):
        curve = base + 0.85 * np.clip(frames[:, index], 0.0, 1.0)
        colour = f"C{index % 10}"
        ax.fill_between(times, base, curve, color=colour, alpha=0.25, linewidth=0)
        ax.plot(times, curve, color=colour, linewidth=1.0)
    ax.set_yticks(baselines + 0.4, labels=list(names), fontsize=8)
    ax.set_yticks(baselines, minor=True)
    ax.grid(axis="y", which="minor", alpha=0.4)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(-0.1, lanes)
    ax.set_xlim(0, max(times[-1], 1 / fps))
    ax.set_xlabel("time (s)")
    ax.set_title(
        f"{lanes} coefficients (each lane 0 to 1), {frames.shape[0]} frames at {fps} fps",
        fontsize=10,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def read_animation(path: Path) -> Animation:
    """Read coefficients written by :func:`pmmtalk.outputs.write_animation`.

    ``.npy``: a (T, 32) array at 30 fps. ``.json``: the ``fps``/``names``/``frames`` document.
    ``.csv``: a header row naming the columns (all 32 blendshape names must be among them, in
    any order; other columns are ignored) and one row per frame; the frame rate comes from a
    ``time_s`` column when there is one, else 30 fps. Values outside [0, 1] are clipped.

    Returns:
        An :class:`Animation` with frames (T, 32) float32 in ``BLENDSHAPE_NAMES`` order.

    Raises:
        InputError: the file is missing, of another type, or does not hold (T, 32) finite
            coefficients.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if suffix not in COEFFICIENT_SUFFIXES:
        raise InputError(
            f"cannot read coefficients from {source.name!r}: use a "
            f"{', '.join(COEFFICIENT_SUFFIXES)} file as written by `pmmtalk animate`"
        )
    if not source.is_file():
        raise InputError(f"coefficient file not found: {source}; check the path")
    frames: np.ndarray
    fps: int
    model: str | None
    try:
        if suffix == ".npy":
            frames, fps, model = np.load(source, allow_pickle=False), FPS, None
        elif suffix == ".json":
            frames, fps, model = _read_json(source)
        else:
            frames, fps, model = _read_csv(source)
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        # Covers numpy's and json's parse errors and undecodable text (both ValueErrors).
        raise InputError(
            f"{source} is not a readable {suffix} coefficient file ({exc}); write it with "
            "`pmmtalk animate -o FILE`"
        ) from exc
    try:
        frames = _check_frames(frames, NUM_BLENDSHAPES)
    except ValueError as exc:
        raise InputError(f"{source}: {exc}") from exc
    if frames.shape[0] == 0:
        raise InputError(f"{source} holds no frames; it needs at least one row of coefficients")
    low, high = COEFFICIENT_RANGE
    if frames.min() < low or frames.max() > high:
        logger.warning("%s has values outside [%g, %g]; clipping them", source, low, high)
    frames = np.clip(frames, low, high).astype(np.float32)
    return Animation(
        frames=frames,
        fps=fps,
        names=BLENDSHAPE_NAMES,
        duration_s=frames.shape[0] / fps,
        model=model or f"file:{source.name}",
    )


def _read_json(source: Path) -> tuple[np.ndarray, int, str | None]:
    document = json.loads(source.read_text())
    if not isinstance(document, dict) or "frames" not in document:
        raise InputError(f"{source} has no 'frames' list; expected the `pmmtalk animate` JSON")
    names = document.get("names", list(BLENDSHAPE_NAMES))
    frames = np.asarray(document["frames"], dtype=np.float64)
    if frames.ndim != 2 or frames.shape[1] != len(names):
        raise InputError(
            f"{source}: 'frames' must be a list of rows with one value per name "
            f"({len(names)}), got shape {frames.shape}"
        )
    fps = document.get("fps", FPS)
    if not isinstance(fps, int) or not 1 <= fps <= MAX_FPS:
        raise InputError(f"{source}: 'fps' must be an integer from 1 to {MAX_FPS}, got {fps!r}")
    model = document.get("model")
    return _in_blendshape_order(source, frames, names), fps, str(model) if model else None


def _read_csv(source: Path) -> tuple[np.ndarray, int, str | None]:
    with source.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise InputError(f"{source} is empty; expected a header row and one row per frame")
    header, body = rows[0], [row for row in rows[1:] if row]
    frames = np.array([[float(value) for value in row] for row in body], dtype=np.float64)
    if body and frames.shape[1] != len(header):
        raise InputError(f"{source}: rows have {frames.shape[1]} values for {len(header)} columns")
    frames = frames.reshape(len(body), len(header))
    fps = FPS
    if "time_s" in header and frames.shape[0] >= 2:
        step_s = float(np.median(np.diff(frames[:, header.index("time_s")])))
        if step_s <= 0:
            raise InputError(f"{source}: the time_s column must increase from row to row")
        fps = round(1 / step_s)
    return _in_blendshape_order(source, frames, header), fps, None


def _in_blendshape_order(source: Path, frames: np.ndarray, names: Sequence[str]) -> np.ndarray:
    missing = [name for name in BLENDSHAPE_NAMES if name not in names]
    if missing:
        raise InputError(
            f"{source} lacks the columns {', '.join(missing)}; all 32 ARKit names are needed"
        )
    columns = [list(names).index(name) for name in BLENDSHAPE_NAMES]
    return frames[:, columns]


def _check_wave(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    samples = np.asarray(wave)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"wave must be non-empty mono audio of shape (n,), got {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError("wave holds NaN or infinite samples; pass finite audio")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    return samples.astype(np.float32)


def _check_frames(coefficients: np.ndarray, width: int) -> np.ndarray:
    frames = np.asarray(coefficients)
    if frames.ndim != 2 or frames.shape[1] != width:
        raise ValueError(f"coefficients must have shape (T, {width}), got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("coefficients hold no frames; pass at least one row")
    if not np.issubdtype(frames.dtype, np.number) or not np.isfinite(frames).all():
        raise ValueError("coefficients must be finite numbers; found NaN or infinity")
    return frames.astype(np.float32)


def _check_lengths(frame_count: int, sample_count: int, sample_rate: int, fps: int) -> None:
    expected = num_frames(sample_count, sample_rate, fps)
    if frame_count == expected:
        return
    message = (
        f"{frame_count} frames at {fps} fps cover {frame_count / fps:.2f} s, but the speech is "
        f"{sample_count / sample_rate:.2f} s ({expected} frames)"
    )
    if abs(frame_count - expected) / fps > MAX_DURATION_MISMATCH_S:
        raise ValueError(f"{message}; pass the coefficients made from this speech")
    logger.warning("%s; rendering anyway", message)


def _ffmpeg_command(width: int, height: int, fps: int, wav: Path, out: Path) -> list[str]:
    import imageio_ffmpeg

    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-framerate",
        str(fps),
        "-i",
        "pipe:0",
        "-i",
        str(wav),
        "-map",
        "0:v:0",
        "-map",
        "1:a:0",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        str(X264_CRF),
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        AAC_BITRATE,
        "-movflags",
        "+faststart",
        "-shortest",
        str(out),
    ]


class _CurvePanel:
    """The key curves drawn once; :meth:`frame` adds the cursor for one frame."""

    def __init__(self, frames: np.ndarray, fps: int, width: int, height: int) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._fps = fps
        self._height = height
        figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
        canvas = FigureCanvasAgg(figure)
        # Fixed axes placement (no automatic layout), so data-to-pixel mapping is known exactly.
        ax = figure.add_axes((0.09, 0.16, 0.6, 0.74))
        self._plot(figure, ax, frames, fps, height)
        canvas.draw()
        self._image = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (height, width, 3)
        # Display coordinates have their origin at the bottom left; image rows run down.
        end_s = max(frames.shape[0] - 1, 1) / fps
        (x0, y0), (x1, y1) = ax.transData.transform([(0.0, -0.05), (end_s, 1.05)])
        self._x0, self._px_per_s = float(x0), float(x1 - x0) / end_s
        self._rows = (height - round(y1), height - round(y0))
        self._font_scale = height / 700

    @staticmethod
    def _plot(figure: Figure, ax: Axes, frames: np.ndarray, fps: int, height: int) -> None:
        times = np.arange(frames.shape[0]) / fps
        font = max(5.0, height / 42)
        for name in KEY_SHAPES:
            stem = name.removesuffix("Left").removesuffix("Right")
            ax.plot(
                times,
                frames[:, BLENDSHAPE_NAMES.index(name)],
                linewidth=1.0,
                # The subject's right side of a pair is dashed.
                linestyle="--" if name.endswith("Right") else "-",
                color=_KEY_COLOURS[stem],
                label=name,
            )
        ax.set_xlim(0, max(frames.shape[0] - 1, 1) / fps)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("time (s)", fontsize=font)
        ax.tick_params(labelsize=font * 0.9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=font * 0.85, frameon=False)
        figure.patch.set_facecolor("white")

    def frame(self, index: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB: the panel with a cursor at frame ``index``'s time."""
        image = self._image.copy()
        x = round(self._x0 + self._px_per_s * index / self._fps)
        top, bottom = self._rows
        cv2.line(image, (x, top), (x, bottom), CURSOR_RGB, max(1, self._height // 200))
        label = f"{index / self._fps:6.2f} s  frame {index}"
        cv2.putText(
            image,
            label,
            (round(self._x0), max(12, round(self._height * 0.07))),
            cv2.FONT_HERSHEY_SIMPLEX,
            self._font_scale,
            (40, 40, 40),
            1,
            cv2.LINE_AA,
        )
        return image
