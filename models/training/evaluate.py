"""Held-out evaluation: LVE and ALE per group for the model and for two baselines.

A predictor maps a clip to (T, 32) coefficients. The model runs through the full inference path
(`PMMTalk.forward` on the raw wave and a reference face), never through training caches, so the
figures are what a user of `pmmtalk animate` gets. The baselines:

- **mean pose**: the training set's mean coefficients on every frame;
- **envelope jaw**: jawOpen from the speech loudness (a line fitted on the training set from the
  RMS level in dB around each frame's time), every other coefficient at its mean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from models.blendshapes import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE_HZ
from models.data.batch import Clip
from models.metrics import MetricAccumulator, Metrics
from models.pmmtalk import PMMTalk

logger = logging.getLogger(__name__)

Predictor = Callable[[Clip], np.ndarray]
"""A clip -> (T, 32) float coefficients, T = the clip's target frame count."""

JAW_OPEN = BLENDSHAPE_NAMES.index("jawOpen")
ENVELOPE_WINDOW_S = 0.04
"""The loudness window centred on each frame's time (a little longer than a frame)."""
SILENCE_DB = -60.0
"""Levels below this floor count as silence in the envelope baseline."""


@dataclass(frozen=True)
class EvalRow:
    """One line of an evaluation table."""

    predictor: str
    group: str  # e.g. "all", "en", "zh", "held-out voices"
    lve: float
    ale: float
    frames: int
    clips: int


def model_predictor(model: PMMTalk, face: torch.Tensor, style: int | None = None) -> Predictor:
    """The network on a fixed reference face (3, S, S) in [0, 1], output clipped to [0, 1]."""

    @torch.inference_mode()
    def predict(clip: Clip) -> np.ndarray:
        model.eval()
        wave = torch.from_numpy(np.ascontiguousarray(clip.wave, dtype=np.float32))[None]
        frames = int(clip.targets.shape[0])
        out = model(wave, face[None], style=style, num_frames=frames)
        return out.blendshapes[0].clamp(0, 1).numpy()

    return predict


def mean_pose(train: Iterable[Clip]) -> np.ndarray:
    """The frame-weighted mean of the training targets, (32,)."""
    total = np.zeros(len(BLENDSHAPE_NAMES), dtype=np.float64)
    frames = 0
    for clip in train:
        total += clip.targets.sum(axis=0)
        frames += clip.targets.shape[0]
    if frames == 0:
        raise ValueError("no training frames to average")
    return (total / frames).astype(np.float32)


def mean_pose_predictor(pose: np.ndarray) -> Predictor:
    def predict(clip: Clip) -> np.ndarray:
        return np.repeat(pose[None], clip.targets.shape[0], axis=0)

    return predict


def envelope_db(wave: np.ndarray, num_frames: int, fps: int = FPS) -> np.ndarray:
    """RMS level in dB (floored at `SILENCE_DB`) around each frame's time, (num_frames,)."""
    half = round(ENVELOPE_WINDOW_S * SAMPLE_RATE_HZ / 2)
    squared = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    centres = np.arange(num_frames) * SAMPLE_RATE_HZ // fps
    lo = np.clip(centres - half, 0, wave.size)
    hi = np.clip(centres + half, 0, wave.size)
    energy = (squared[hi] - squared[lo]) / np.maximum(hi - lo, 1)
    return np.maximum(10 * np.log10(np.maximum(energy, 1e-12)), SILENCE_DB)


def fit_envelope_jaw(train: Iterable[Clip]) -> tuple[float, float]:
    """Least-squares slope and intercept from the envelope (dB) to jawOpen."""
    levels, jaw = [], []
    for clip in train:
        levels.append(envelope_db(clip.wave, clip.targets.shape[0]))
        jaw.append(clip.targets[:, JAW_OPEN])
    x = np.concatenate(levels)
    y = np.concatenate(jaw)
    slope, intercept = np.polyfit(x, y, deg=1)
    return float(slope), float(intercept)


def envelope_predictor(pose: np.ndarray, slope: float, intercept: float) -> Predictor:
    def predict(clip: Clip) -> np.ndarray:
        frames = clip.targets.shape[0]
        out = np.repeat(pose[None], frames, axis=0)
        level = envelope_db(clip.wave, frames)
        out[:, JAW_OPEN] = np.clip(slope * level + intercept, 0.0, 1.0)
        return out

    return predict


def group_names(clip: Clip) -> list[str]:
    """The table groups a clip counts in: all, its language, and seen/held-out voices."""
    voice = "held-out voices" if clip.style < 0 else "training voices"
    return ["all", clip.language, voice, f"{clip.language}, {voice}"]


def evaluate(
    predictors: dict[str, Predictor],
    clips: Sequence[Clip],
    *,
    progress: bool = True,
) -> list[EvalRow]:
    """Every predictor on every clip; one row per predictor and group (frame-weighted)."""
    rows: list[EvalRow] = []
    for name, predict in predictors.items():
        groups: dict[str, MetricAccumulator] = {}
        counts: dict[str, int] = {}
        for clip in tqdm(clips, desc=f"evaluating {name}", disable=not progress, unit="clip"):
            pred = predict(clip)
            if pred.shape != clip.targets.shape:
                raise ValueError(
                    f"{name} gave {pred.shape} for clip {clip.id}, expected {clip.targets.shape}"
                )
            for group in group_names(clip):
                groups.setdefault(group, MetricAccumulator()).update(pred, clip.targets)
                counts[group] = counts.get(group, 0) + 1
        for group, accumulator in groups.items():
            metrics: Metrics = accumulator.compute()
            rows.append(
                EvalRow(
                    name, group, metrics["lve"], metrics["ale"], metrics["frames"], counts[group]
                )
            )
    return rows


def markdown_table(rows: Sequence[EvalRow], groups: Sequence[str] | None = None) -> str:
    """Rows as a Markdown table, LVE and ALE in units of 1e-2 like the paper's tables."""
    chosen = [r for r in rows if groups is None or r.group in groups]
    lines = [
        "| predictor | group | clips | frames | LVE (x1e-2) | ALE (x1e-2) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.predictor} | {r.group} | {r.clips} | {r.frames} | {100 * r.lve:.3f} | "
        f"{100 * r.ale:.3f} |"
        for r in chosen
    ]
    return "\n".join(lines)
