"""Evaluation metrics over blendshape coefficients, as 3D-CAVFA reports them.

With d_t = b^_t - b_t the error of frame t over its K = 32 coefficients:

    LVE_t = max_k |d_tk|             the largest per-coefficient error (lip vertex error)
    ALE_t = (1/K) * sum_k |d_tk|     the mean per-coefficient error (average lip error)

A coefficient is a scalar, so its l2 error is its absolute error. LVE and ALE are the means of
LVE_t and ALE_t over all test frames: frame-weighted across clips, so a long clip counts more than
a short one. Values are in coefficient units; the paper's tables print them times 1e2.
`MetricAccumulator` sums per-frame values in float64 so a test set evaluated clip by clip (or batch
by batch) gives exactly the value of one pass over all frames.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from models.losses import frame_mask

ArrayLike = Tensor | np.ndarray


class Metrics(TypedDict):
    """Frame-weighted LVE and ALE (coefficient units) and the number of frames they cover."""

    lve: float
    ale: float
    frames: int


def _as_batch(x: ArrayLike, name: str) -> Tensor:
    """(T, K) or (B, T, K) torch/numpy -> float64 (B, T, K) tensor, detached."""
    # np.array copies, so read-only arrays (e.g. from np.load with mmap) convert without warnings.
    t = x.detach() if isinstance(x, Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"{name} must have shape (T, K) or (B, T, K), got {tuple(t.shape)}")
    return t.to(torch.float64)


def frame_errors(
    pred: ArrayLike, target: ArrayLike, lengths: ArrayLike | None = None
) -> tuple[Tensor, Tensor]:
    """LVE_t and ALE_t of every valid frame, flattened over the batch.

    pred, target: (T, K) or (B, T, K), torch or numpy; lengths: (B,) valid frame counts or None
    (every frame valid). Returns two float64 tensors of shape (N,), N = total valid frames.
    """
    p = _as_batch(pred, "pred")  # (B, T, K)
    t = _as_batch(target, "target").to(p.device)  # (B, T, K)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    batch, frames, _ = p.shape
    counts = None if lengths is None else torch.as_tensor(lengths).reshape(-1)
    mask = frame_mask(counts, batch, frames, p.device)  # (B, T)
    abs_err = (p - t).abs()[mask]  # (N, K)
    return abs_err.amax(dim=-1), abs_err.mean(dim=-1)


def lve(pred: ArrayLike, target: ArrayLike, lengths: ArrayLike | None = None) -> float:
    """LVE = mean over valid frames of max_k |b^_tk - b_tk|, in coefficient units.

    pred, target: (T, K) or (B, T, K), torch or numpy; lengths: (B,) or None.
    """
    per_frame, _ = frame_errors(pred, target, lengths)
    return float(per_frame.mean())


def ale(pred: ArrayLike, target: ArrayLike, lengths: ArrayLike | None = None) -> float:
    """ALE = mean over valid frames of (1/K) sum_k |b^_tk - b_tk|, in coefficient units.

    pred, target: (T, K) or (B, T, K), torch or numpy; lengths: (B,) or None.
    """
    _, per_frame = frame_errors(pred, target, lengths)
    return float(per_frame.mean())


class MetricAccumulator:
    """Streams clips or batches through `update` and gives frame-weighted LVE / ALE."""

    def __init__(self) -> None:
        self._lve_sum = 0.0
        self._ale_sum = 0.0
        self._frames = 0

    def update(self, pred: ArrayLike, target: ArrayLike, lengths: ArrayLike | None = None) -> None:
        """Add the valid frames of pred, target: (T, K) or (B, T, K); lengths: (B,) or None."""
        lve_t, ale_t = frame_errors(pred, target, lengths)
        self._lve_sum += float(lve_t.sum())
        self._ale_sum += float(ale_t.sum())
        self._frames += lve_t.numel()

    def compute(self) -> Metrics:
        """LVE and ALE over every frame seen so far, and the frame count."""
        if self._frames == 0:
            raise ValueError("no frames were added; call update() with at least one clip first")
        return Metrics(
            lve=self._lve_sum / self._frames,
            ale=self._ale_sum / self._frames,
            frames=self._frames,
        )
