"""TalkingHead's animation template (met4citizen/TalkingHead), the ``anim`` of ``speakAudio``.

TalkingHead plays ``{"name", "dt", "vs"}`` in sync with the audio it speaks: ``dt`` holds segment
durations in milliseconds and ``vs`` one list of values per morph target, value ``k`` being
reached at the end of segment ``k``. The first segment here lasts 0 ms, so value ``i`` sits at
``i / fps`` seconds, on the frame clock; TalkingHead treats a zero-length segment as a jump.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.blendshapes import FPS

ANIM_NAME = "pmmtalk"
VALUE_DECIMALS = 6


def talkinghead_anim(
    names: Sequence[str], frames: np.ndarray, fps: int = FPS, name: str = ANIM_NAME
) -> dict[str, Any]:
    """Frames (T, K) with channel ``names`` (K,) -> ``{"name", "dt", "vs"}`` for TalkingHead.

    ``dt`` has T entries (0, then ``1000 / fps`` ms; none for T = 0); ``vs`` maps each name
    to its T values.
    """
    values = np.asarray(frames, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"frames must be (T, {len(names)}) to match the names, got {values.shape}")
    count = values.shape[0]
    step_ms = 1000.0 / fps
    return {
        "name": name,
        "dt": [0.0] + [step_ms] * (count - 1) if count else [],
        "vs": {
            channel: np.round(values[:, k], VALUE_DECIMALS).tolist()
            for k, channel in enumerate(names)
        },
    }
