"""Feature-rate conversion: wav2vec 2.0 latents at 50 Hz to animation frames at 30 fps.

Frame i sits at i / 30 s. Latent j covers samples [320 j, 320 j + 400), so its centre is at
(320 j + 200) / 16000 s. Each frame linearly interpolates the two latents around its time. The
mapping depends only on absolute times, never on the clip's length, so a window of a stream
gives the same values as the whole clip wherever both have the surrounding latents.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.audio_encoder import HOP_SAMPLES, RECEPTIVE_FIELD_SAMPLES
from models.blendshapes import FPS, SAMPLE_RATE_HZ


def latent_position(frame_index: Tensor, fps: int = FPS) -> Tensor:
    """Fractional latent index at the time of each frame (float64 for exactness on long clips)."""
    time_samples = frame_index.to(torch.float64) * SAMPLE_RATE_HZ / fps
    return (time_samples - RECEPTIVE_FIELD_SAMPLES / 2) / HOP_SAMPLES


def samples_for_frames(num_frames: Any, fps: int = FPS) -> Any:
    """Smallest input length whose latents reach past the last frame's time (so no clamping).

    Integer arithmetic, so it also works on the symbolic sizes of an ONNX export. The last
    frame's latent position ``((T - 1) * sr / fps - 200) / 320`` is, over a common denominator,
    ``((T - 1) * sr - 200 fps) / (320 fps)``; floor division gives its integer part, and the max
    with 0 covers T = 1, whose position is slightly negative. Valid for ``num_frames >= 1``.
    """
    numerator = (num_frames - 1) * SAMPLE_RATE_HZ - (RECEPTIVE_FIELD_SAMPLES // 2) * fps
    last = torch.sym_max(numerator // (HOP_SAMPLES * fps), 0)
    return (last + 1) * HOP_SAMPLES + RECEPTIVE_FIELD_SAMPLES


def features_to_frames(features: Tensor, num_frames: int, fps: int = FPS) -> Tensor:
    """features (B, F, D) at 50 Hz -> (B, num_frames, D) at ``fps`` by linear interpolation.

    Positions before the first latent or after the last one take the nearest latent.
    """
    count = features.shape[1]
    index = torch.arange(num_frames, device=features.device)
    position = latent_position(index, fps).clamp(0, count - 1)
    lower = position.floor().long().clamp(max=count - 1)
    upper = (lower + 1).clamp(max=count - 1)
    weight = (position - lower).to(features.dtype)[None, :, None]  # (1, T, 1)
    return features[:, lower] * (1 - weight) + features[:, upper] * weight  # (B, T, D)
