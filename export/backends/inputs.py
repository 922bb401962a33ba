"""Input checks every backend runs before its runtime sees an array.

Each runtime fails on a bad shape in its own words (a PyTorch size mismatch deep in a conv, an
ONNX Runtime ``INVALID_ARGUMENT`` naming a graph node, a TensorRT log line); these checks name
the argument instead, so a caller of any backend gets the same `ValueError`. Torch-free, like
every module a serving process without PyTorch imports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from export.backends.base import Identity, ModelSpec


def face_batch(spec: ModelSpec, face: np.ndarray) -> np.ndarray:
    """face (3, S, S) RGB in [0, 1] -> (1, 3, S, S) float32 contiguous, S = ``wav2lip.img_size``."""
    size = spec.config.wav2lip.img_size
    if face.shape != (3, size, size):
        raise ValueError(
            f"face must be (3, {size}, {size}) RGB in [0, 1], got {tuple(face.shape)}; "
            "prepare photos with pmmtalk.face.reference_face"
        )
    return np.ascontiguousarray(face[None], dtype=np.float32)


def clip_batch(wave: np.ndarray) -> np.ndarray:
    """wave (N,) at 16 kHz, N >= 1 -> (1, N) float32 contiguous."""
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"wave must be a non-empty mono clip of shape (N,), got {wave.shape}")
    return np.ascontiguousarray(wave[None], dtype=np.float32)


def style_batch(spec: ModelSpec, style: np.ndarray) -> np.ndarray:
    """style (style_dim,) -> (1, style_dim) float32; a row of ``spec.style_table`` or its mean."""
    dim = spec.config.decoder.style_dim
    if style.shape != (dim,):
        raise ValueError(
            f"style must be a ({dim},) vector (a row of the model's style table, or "
            f"spec.mean_style), got {tuple(style.shape)}"
        )
    return np.ascontiguousarray(style[None], dtype=np.float32)


def check_identity(identity: Identity, levels: int) -> Identity:
    """The pyramid as float32 contiguous arrays, after checking its level count and batch of 1."""
    if len(identity) != levels:
        raise ValueError(
            f"identity must be the face encoder's {levels} arrays, got {len(identity)}; "
            "pass what encode_face returned for this model"
        )
    if any(level.ndim == 0 or level.shape[0] != 1 for level in identity):
        raise ValueError("each identity array must have batch size 1 (one face)")
    return tuple(np.ascontiguousarray(level, dtype=np.float32) for level in identity)


def stack_identities(identities: Sequence[Identity], levels: int) -> list[np.ndarray]:
    """One face per window -> per pyramid level one (B, ...) float32 array, shallow to deep."""
    checked = [check_identity(identity, levels) for identity in identities]
    return [
        np.concatenate([identity[level] for identity in checked], axis=0) for level in range(levels)
    ]
