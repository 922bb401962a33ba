"""Writing an animation to disk as JSON, CSV or NPY, chosen by the file's suffix."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TextIO

import numpy as np

from pmmtalk.animate import Animation

SUFFIXES = (".json", ".csv", ".npy")


def animation_document(animation: Animation) -> dict[str, object]:
    """The JSON shape: fps, names, frames (T lists of 32 floats), duration_s, model."""
    return {
        "fps": animation.fps,
        "names": list(animation.names),
        "frames": animation.frames.astype(np.float64).round(6).tolist(),
        "duration_s": animation.duration_s,
        "model": animation.model,
    }


def write_animation(animation: Animation, path: str | Path) -> Path:
    """Write by suffix: ``.json`` (document above), ``.csv`` (frame, time_s, 32 named columns)
    or ``.npy`` (a (T, 32) float32 array)."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot write {out.name!r}: the output suffix must be one of {SUFFIXES}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        out.write_text(json.dumps(animation_document(animation)) + "\n")
    elif suffix == ".npy":
        np.save(out, animation.frames.astype(np.float32))
    else:
        with out.open("w", newline="") as handle:
            write_csv(animation, handle)
    return out


def write_csv(animation: Animation, handle: TextIO) -> None:
    """The CSV shape: a ``frame, time_s, <32 names>`` header, then one row per frame."""
    writer = csv.writer(handle)
    writer.writerow(["frame", "time_s", *animation.names])
    for index, row in enumerate(animation.frames):
        time_s = index / animation.fps
        writer.writerow([index, f"{time_s:.6f}", *(f"{v:.6f}" for v in row)])
