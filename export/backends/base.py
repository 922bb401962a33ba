"""The one small interface every runtime backend implements, and what it is built from.

A backend runs the trained network three ways, each a pure function of numpy arrays:

- `Backend.encode_face`: a reference face -> its identity pyramid (once per face, then cached);
- `Backend.speech_to_frames`: a whole clip -> its frames (the offline path, ``POST /animate``);
- `Backend.stream_windows`: a batch of fixed-length windows, one per streaming session, -> their
  frames (see `models.streaming`), so one call serves every session waiting for compute. Each
  window also takes its stream's carried per-frame features and gives the next window's.

Outputs are unclipped coefficients; callers clip to [0, 1]. Backends: PyTorch (`torch`), ONNX
Runtime (`onnx`) and native TensorRT (`tensorrt`); `export.backends.select` picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import numpy as np

from models.config import PMMTalkConfig
from models.streaming import StreamWindow

BackendName = Literal["torch", "onnx", "tensorrt"]
BACKEND_NAMES: tuple[BackendName, ...] = ("torch", "onnx", "tensorrt")

Identity = tuple[np.ndarray, ...]
"""The face encoder's identity pyramid for one face: float32 arrays, each with batch size 1,
shallow to deep (``identity_0`` .. ``identity_k`` in the ONNX graphs)."""


Carry = np.ndarray
"""One stream's carried per-frame features, (C, D) float32 with C = ``window.carry_frames`` and
D the image encoder's width: a `WindowOutput.carries` row, passed to the stream's next window."""


class WindowOutput(NamedTuple):
    """What `Backend.stream_windows` gives for a batch of B windows."""

    frames: np.ndarray  # (B, window_frames, 32) float32, unclipped
    carries: np.ndarray  # (B, C, D) float32: row i is window i's stream's next carry


class BackendUnavailableError(RuntimeError):
    """A backend cannot run here (its library, a GPU or an exported file is missing); the message
    says what is missing and how to get it."""


@dataclass(frozen=True)
class ModelSpec:
    """What every backend knows about the model it runs."""

    config: PMMTalkConfig
    window: StreamWindow
    style_table: np.ndarray  # (num_styles, style_dim) float32; the mean row = unseen speaker
    name: str  # shown in answers and logs, e.g. "lite:default"

    @property
    def carry_shape(self) -> tuple[int, int]:
        """(C, D) of one stream's `Carry`."""
        return self.window.carry_frames, self.config.image.hidden_size

    @property
    def mean_style(self) -> np.ndarray:
        """(style_dim,) float32: the style for a speaker the model was not trained on."""
        return np.asarray(self.style_table.mean(axis=0), dtype=np.float32)


class Backend(Protocol):
    """A loaded model on one runtime.

    Up to ``concurrent_calls`` threads may call its methods at once; with 1, calls must come
    from one thread at a time.
    """

    name: BackendName
    concurrent_calls: int
    """How many calls may run at once from different threads (at least 1). On a CPU, separate
    single-threaded calls can fill the cores better than one call spread over them: the
    stream-window graph's ops are too small for several threads to share one."""
    device: str
    """Where it runs, in words: "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)", or ONNX Runtime's
    execution providers in order."""
    spec: ModelSpec

    def encode_face(self, face: np.ndarray) -> Identity:
        """face (3, S, S) float32 RGB in [0, 1], S = ``wav2lip.img_size`` -> identity pyramid."""
        ...

    def speech_to_frames(
        self, wave: np.ndarray, identity: Identity, style: np.ndarray
    ) -> np.ndarray:
        """wave (N,) float32 at 16 kHz, N >= 1; style (style_dim,) float32 -> (T, 32) float32,
        T = ceil(N * 30 / 16000)."""
        ...

    def stream_windows(
        self,
        waves: np.ndarray,
        identities: Sequence[Identity],
        styles: np.ndarray,
        frame_offsets: np.ndarray,
        carries: Sequence[Carry | None] | None = None,
    ) -> WindowOutput:
        """waves (B, W) float32, W = ``spec.window.window_samples``; one identity per window;
        styles (B, style_dim) float32; frame_offsets (B,) int64, each window's first frame on
        its stream's clock; carries, one per window: the `WindowOutput.carries` row of the
        stream's previous window, or None for a stream's first window (None for all: every
        window starts its stream) -> `WindowOutput` (see `models.streaming.window_step`)."""
        ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""
        ...


def check_window_batch(
    spec: ModelSpec,
    waves: np.ndarray,
    identities: Sequence[Identity],
    styles: np.ndarray,
    frame_offsets: np.ndarray,
    carries: Sequence[Carry | None] | None = None,
) -> None:
    """Raise ValueError naming the first input of a `Backend.stream_windows` call that is off."""
    batch = waves.shape[0] if waves.ndim == 2 else -1
    if waves.ndim != 2 or waves.shape[1] != spec.window.window_samples:
        raise ValueError(
            f"waves must be (B, {spec.window.window_samples}), got {tuple(waves.shape)}"
        )
    if len(identities) != batch:
        raise ValueError(f"need one identity per window: {batch} windows, {len(identities)}")
    style_dim = spec.config.decoder.style_dim
    if styles.shape != (batch, style_dim):
        raise ValueError(f"styles must be ({batch}, {style_dim}), got {tuple(styles.shape)}")
    if frame_offsets.shape != (batch,):
        raise ValueError(f"frame_offsets must be ({batch},), got {tuple(frame_offsets.shape)}")
    if carries is not None:
        if len(carries) != batch:
            raise ValueError(
                f"need one carry (or None) per window: {batch} windows, {len(carries)}"
            )
        for i, carry in enumerate(carries):
            if carry is not None and carry.shape != spec.carry_shape:
                raise ValueError(
                    f"carries[{i}] must be {spec.carry_shape}, got {tuple(carry.shape)}"
                )


def carry_batch(
    spec: ModelSpec, carries: Sequence[Carry | None] | None, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """The stream-window graph's ``carry`` (B, C, D) and ``fresh_start`` (B,) float32 inputs:
    zeros and 1 for a window without a carry (its stream's first), the carry and 0 otherwise."""
    chosen = [None] * batch if carries is None else list(carries)
    carry = np.zeros((batch, *spec.carry_shape), dtype=np.float32)
    fresh = np.ones(batch, dtype=np.float32)
    for i, row in enumerate(chosen):
        if row is not None:
            carry[i] = row
            fresh[i] = 0.0
    return carry, fresh
