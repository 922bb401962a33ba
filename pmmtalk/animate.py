"""Offline animation: a whole clip through one runtime backend, each reference face encoded once.

The `Animator` runs on any `export.backends.base.Backend` (PyTorch, ONNX Runtime, TensorRT) and
imports none of them itself, so animating from an exported model needs no PyTorch.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from export.backends.base import Backend, Identity
from models.blendshapes import num_frames
from models.config import PMMTalkConfig
from models.streaming import UNIT_FRAMES, UNIT_SAMPLES
from pmmtalk.face import reference_face
from pmmtalk.silence import frame_gains

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
"""Where the project's bundled default model lives (trained by `pmmtalk train`)."""

COEFFICIENT_RANGE = (0.0, 1.0)
"""ARKit blendshape weights run from 0 (neutral) to 1 (full shape); outputs are clipped to it."""

DEFAULT_SILENCE_GATE_DBFS: Final = -50.0
"""Audio quieter than this around a frame eases it to neutral (see `pmmtalk.silence`)."""

FACE_CACHE_SIZE: Final = 8
"""Reference faces whose identity pyramid an `Animator` keeps; a face costs one encoder run
(and a face detection) to re-encode, and the lite model's pyramid is about 0.4 MB."""


@dataclass(frozen=True)
class Animation:
    """The result of animating one clip."""

    frames: np.ndarray  # (T, 32) float32 in [0, 1]
    fps: int
    names: tuple[str, ...]
    duration_s: float
    model: str


def face_key(face: np.ndarray | None) -> str:
    """Hash of the photo's pixels (with shape and dtype), or "default" for the bundled face."""
    if face is None:
        return "default"
    digest = hashlib.sha256(f"{face.shape}{face.dtype}".encode())
    digest.update(np.ascontiguousarray(face).tobytes())
    return digest.hexdigest()


class Animator:
    """Animates clips on one backend; caches the identity of the last `FACE_CACHE_SIZE` faces."""

    def __init__(
        self,
        backend: Backend,
        face_cache_size: int = FACE_CACHE_SIZE,
        silence_gate_dbfs: float | None = DEFAULT_SILENCE_GATE_DBFS,
    ) -> None:
        """``silence_gate_dbfs``: the `pmmtalk.silence` threshold; None turns the gate off."""
        if face_cache_size < 1:
            raise ValueError(f"face_cache_size must be >= 1, got {face_cache_size}")
        self.backend = backend
        self.silence_gate_dbfs = silence_gate_dbfs
        self._faces: OrderedDict[str, Identity] = OrderedDict()
        self._face_cache_size = face_cache_size
        self._lock = threading.Lock()

    @property
    def cfg(self) -> PMMTalkConfig:
        return self.backend.spec.config

    @property
    def name(self) -> str:
        """The model's name, e.g. ``lite:default``."""
        return self.backend.spec.name

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | Path | None = None,
        device: str = "auto",
        backend: str = "auto",
        cache_dir: Path | None = None,
    ) -> Animator:
        """Open a checkpoint directory, or the bundled default model when ``directory`` is None,
        on ``backend`` (auto, torch, onnx or tensorrt; see `export.backends.select`).

        ``device``: auto, cpu, cuda or cuda:N. onnx and tensorrt run the checkpoint's cached
        export, made on first use in ``cache_dir`` (default ``$PMMTALK_CACHE_DIR`` or
        ``~/.cache/pmmtalk``). Raises `models.checkpoint.CheckpointError` for a missing or bad
        checkpoint and `export.backends.base.BackendUnavailableError` for a backend this machine
        cannot run.
        """
        from export.backends.select import open_backend

        folder = Path(directory) if directory is not None else DEFAULT_CHECKPOINT_DIR
        if directory is None and not folder.is_dir():
            from models.checkpoint_format import CheckpointError

            raise CheckpointError(
                f"no checkpoint given and no bundled default model at {folder}; "
                "pass --checkpoint DIR, or --untrained PRESET to run random weights "
                "(for shape and speed checks only)"
            )
        return cls(open_backend(backend, folder, device=device, cache_dir=cache_dir))

    @classmethod
    def untrained(cls, preset: str, device: str = "cpu", seed: int = 0) -> Animator:
        """A randomly initialised network on PyTorch: its output is meaningless, its shapes and
        speed real (other backends need an exported checkpoint)."""
        import torch

        from export.backends.torch_backend import TorchBackend
        from models.config import preset_config
        from models.pmmtalk import PMMTalk

        torch.manual_seed(seed)
        logger.warning(
            "using an UNTRAINED %s network: the animation will not follow the speech", preset
        )
        model = PMMTalk(preset_config(preset))
        return cls(TorchBackend(model, name=f"{preset}:untrained", device=device))

    def identity(self, face: np.ndarray | None) -> Identity:
        """The identity pyramid of an RGB photo (H, W, 3) uint8, or of the bundled default face
        for None; encoded on first sight, then served from the cache while it stays recent."""
        key = face_key(face)
        with self._lock:
            cached = self._faces.get(key)
            if cached is not None:
                self._faces.move_to_end(key)
                return cached
        identity = self.backend.encode_face(reference_face(face, self.cfg.wav2lip.img_size))
        with self._lock:
            self._faces[key] = identity
            while len(self._faces) > self._face_cache_size:
                self._faces.popitem(last=False)
        return identity

    def style_vector(self, style: int | None) -> np.ndarray:
        """(style_dim,) float32: row ``style`` of the model's style table, or for None the mean
        row (the style for a speaker the model was not trained on)."""
        spec = self.backend.spec
        if style is None:
            return spec.mean_style
        count = spec.style_table.shape[0]
        if not 0 <= style < count:
            raise ValueError(f"style {style} is out of range; this model has styles 0..{count - 1}")
        return np.asarray(spec.style_table[style], dtype=np.float32)

    def animate(
        self,
        samples: np.ndarray,
        face: np.ndarray | None = None,
        style: int | None = None,
        frame_count: int | None = None,
    ) -> Animation:
        """samples (n,) float32 at 16 kHz; face an RGB photo (H, W, 3) uint8 or None for the
        default reference; style a training-subject index or None for the average style.

        Returns ``frame_count`` frames, by default ceil(n * 30 / 16000), clipped to
        `COEFFICIENT_RANGE`. Audio resampled from another rate passes the count of its source
        (`pmmtalk.audio.DecodedAudio.num_frames`), which resampling can shift by one.
        """
        vector = self.style_vector(style)
        return self.animate_with(samples, self.identity(face), vector, frame_count)

    def animate_with(
        self,
        samples: np.ndarray,
        identity: Identity,
        style: np.ndarray,
        frame_count: int | None = None,
    ) -> Animation:
        """`animate` with the face already encoded and the style vector (style_dim,) chosen.

        The clip runs with the stream window's left context of silence before it and its
        lookahead of silence after it, as the first and last windows of a stream of the same
        audio see them, so offline and streamed frames agree at both ends too.
        """
        if samples.ndim != 1:
            raise ValueError(f"animate needs a mono clip of shape (n,), got {samples.shape}")
        window = self.backend.spec.window
        left = window.left_frames // UNIT_FRAMES * UNIT_SAMPLES
        expected = (
            num_frames(samples.size, self.cfg.sample_rate_hz, self.cfg.fps)
            if frame_count is None
            else frame_count
        )
        if expected < 1:
            raise ValueError("animate needs at least one frame's worth of audio")
        # Audio for every frame asked for (a count from the source rate can need a few samples
        # more than resampling gave), then the lookahead.
        covered = max(samples.size, -(-expected * self.cfg.sample_rate_hz // self.cfg.fps))
        wave = np.concatenate(
            [
                np.zeros(left, dtype=np.float32),
                np.asarray(samples, dtype=np.float32),
                np.zeros(covered - samples.size + window.lookahead_samples, dtype=np.float32),
            ]
        )
        padded = self.backend.speech_to_frames(wave, identity, style)  # (T', 32)
        frames = padded[window.left_frames : window.left_frames + expected]
        if self.silence_gate_dbfs is not None and frames.shape[0] == expected:
            gains = frame_gains(samples, 0, 0, expected, self.silence_gate_dbfs)
            frames = frames * gains[:, None]
        if frames.shape != (expected, len(self.cfg.blendshape_names)):
            raise RuntimeError(
                f"the {self.backend.name} backend gave {padded.shape} for {wave.size} samples; "
                f"expected at least ({window.left_frames + expected}, "
                f"{len(self.cfg.blendshape_names)})"
            )
        return Animation(
            frames=np.clip(frames, *COEFFICIENT_RANGE).astype(np.float32),
            fps=self.cfg.fps,
            names=self.cfg.blendshape_names,
            duration_s=samples.size / self.cfg.sample_rate_hz,
            model=self.name,
        )

    def close(self) -> None:
        """Release the backend's sessions, engines or network."""
        self.backend.close()
