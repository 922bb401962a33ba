"""Cheap checks of an audio file and its target array before any training reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def probe_pair(audio: Path, targets: Path) -> tuple[int, int, tuple[int, ...]]:
    """(frames in the audio file, its sample rate, the .npy array's shape), read from headers.

    Raises ValueError naming the file that is unreadable.
    """
    try:
        info = sf.info(str(audio))
    except sf.LibsndfileError as e:
        raise ValueError(f"{audio} is not a readable audio file: {e.error_string}") from e
    try:
        shape = np.load(targets, mmap_mode="r").shape
    except (ValueError, OSError) as e:
        raise ValueError(f"{targets} is not a readable .npy array: {e}") from e
    return int(info.frames), int(info.samplerate), tuple(shape)
