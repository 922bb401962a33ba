"""Animations as Live Link Face CSV takes, the file the iPhone app exports for each recording.

The header is ``Timecode,BlendShapeCount`` and then 61 value columns: the 52 ARKit shapes in
PascalCase and the 9 head and eye rotations. The app's CSV lists the shapes in Apple's order
except two pairs, ``JawRight,JawLeft`` and ``MouthRight,MouthLeft`` (right first), and this
writer keeps that column order; values are placed by name. Each row is one frame: a timecode
``HH:MM:SS:FF.fff`` with FF counting frames at the animation's rate (30 here, where the app
records at 60), the count 61, then the values. `models.data.livelink.read_livelink_csv` reads
these files back (pass ``fps_in=30``).
"""

from __future__ import annotations

import csv
from typing import Final, TextIO

import numpy as np

from models.blendshapes import FPS
from pmmtalk.rigs.profiles import LIVELINK61_NAMES

_SWAPPED: Final = {"JawLeft": "JawRight", "JawRight": "JawLeft"} | {
    "MouthLeft": "MouthRight",
    "MouthRight": "MouthLeft",
}
LLF_CSV_VALUE_COLUMNS: Final[tuple[str, ...]] = tuple(
    _SWAPPED.get(name, name) for name in LIVELINK61_NAMES
)
"""The 61 value columns of a Live Link Face CSV, in the app's order."""
LLF_CSV_HEADER: Final[tuple[str, ...]] = ("Timecode", "BlendShapeCount", *LLF_CSV_VALUE_COLUMNS)

_COLUMN_SOURCE: Final = np.array([LIVELINK61_NAMES.index(name) for name in LLF_CSV_VALUE_COLUMNS])


def timecode(frame_number: int, fps: int = FPS) -> str:
    """Frame ``frame_number`` at ``fps`` -> ``HH:MM:SS:FF.000`` (hours keep counting past 24)."""
    if frame_number < 0:
        raise ValueError(f"a timecode needs a frame number >= 0, got {frame_number}")
    seconds, frame = divmod(frame_number, fps)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{second:02d}:{frame:02d}.000"


def write_livelink_csv(
    frames: np.ndarray, handle: TextIO, fps: int = FPS, start_frame: int = 0
) -> None:
    """Write frames (T, 61) in `profiles.LIVELINK61_NAMES` order (the ``livelink61`` profile)
    as a Live Link Face CSV; row ``i`` is stamped ``timecode(start_frame + i, fps)``."""
    values = np.asarray(frames, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(LIVELINK61_NAMES):
        raise ValueError(
            f"a Live Link Face CSV takes frames (T, {len(LIVELINK61_NAMES)}) from the "
            f"livelink61 profile, got {values.shape}"
        )
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(LLF_CSV_HEADER)
    for index, row in enumerate(values[:, _COLUMN_SOURCE]):
        writer.writerow(
            [timecode(start_frame + index, fps), len(LLF_CSV_VALUE_COLUMNS)]
            + [f"{v:.6f}" for v in row]
        )
