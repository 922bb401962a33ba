"""An animation through a rig profile, written in any output format (CLI and server alike).

Formats: ``json``, ``csv`` and ``npy`` (as `pmmtalk.outputs`, with the profile's channels),
``livelink_csv`` (a Live Link Face CSV take; always the ``livelink61`` channels) and
``talkinghead`` (TalkingHead's ``anim`` object, with the profile's channels as morph targets).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Final, Literal, cast, get_args

from pmmtalk.animate import Animation
from pmmtalk.outputs import write_animation
from pmmtalk.rigs.config import RigConfig, RigMapper
from pmmtalk.rigs.llf_csv import write_livelink_csv
from pmmtalk.rigs.profiles import DEFAULT_PROFILE, UnknownProfileError
from pmmtalk.rigs.talkinghead import talkinghead_anim

RigFormat = Literal["json", "csv", "npy", "livelink_csv", "talkinghead"]
RIG_FORMATS: Final[tuple[str, ...]] = get_args(RigFormat)
LLF_CSV_SUFFIX: Final = ".llf.csv"
"""``pmmtalk animate -o take.llf.csv`` writes a Live Link Face CSV."""
_BY_SUFFIX: Final[dict[str, RigFormat]] = {".json": "json", ".csv": "csv", ".npy": "npy"}


def profile_for_format(fmt: str, profile: str) -> str:
    """The profile a format is written with: ``livelink_csv`` has the fixed ``livelink61``
    columns, so it takes the default or ``livelink61`` only (`UnknownProfileError` otherwise)."""
    if fmt != "livelink_csv":
        return profile
    if profile not in (DEFAULT_PROFILE, "livelink61"):
        raise UnknownProfileError(
            f"the Live Link Face CSV has fixed columns (the livelink61 profile), so it cannot "
            f"be written with profile {profile!r}; leave the profile out"
        )
    return "livelink61"


def format_for_path(path: str | Path, requested: str = "auto") -> RigFormat:
    """The format to write ``path`` in: ``requested``, or by suffix for ``auto`` (``.llf.csv``
    is ``livelink_csv``). ValueError for an unknown format or suffix."""
    if requested != "auto":
        if requested not in RIG_FORMATS:
            raise ValueError(
                f"unknown format {requested!r}; choose auto or {', '.join(RIG_FORMATS)}"
            )
        return cast(RigFormat, requested)
    name = Path(path).name.lower()
    if name.endswith(LLF_CSV_SUFFIX):
        return "livelink_csv"
    suffix = Path(name).suffix
    if suffix not in _BY_SUFFIX:
        raise ValueError(
            f"cannot tell the format of {Path(path).name!r} from its suffix; use .json, .csv, "
            f".npy or {LLF_CSV_SUFFIX}, or pass --format"
        )
    return _BY_SUFFIX[suffix]


def mapped_animation(animation: Animation, mapper: RigMapper) -> Animation:
    """The animation with its frames (T, 32) mapped to the profile's (T, K) and names."""
    return dataclasses.replace(animation, frames=mapper(animation.frames), names=mapper.names)


def livelink_csv_text(mapped: Animation) -> str:
    """A Live Link Face CSV of an animation already mapped through ``livelink61``."""
    out = io.StringIO()
    write_livelink_csv(mapped.frames, out, mapped.fps)
    return out.getvalue()


def write_rig_animation(
    animation: Animation,
    path: str | Path,
    profile: str = DEFAULT_PROFILE,
    fmt: str = "auto",
    config: RigConfig | None = None,
) -> Path:
    """Map an animation (T, 32) through ``profile`` and write it to ``path`` as ``fmt``.

    Raises `UnknownProfileError` for a profile the format cannot take, ValueError for an
    unknown format or suffix.
    """
    chosen = format_for_path(path, fmt)
    rigs = config if config is not None else RigConfig.default()
    mapped = mapped_animation(animation, rigs.mapper(profile_for_format(chosen, profile)))
    out = Path(path)
    if chosen in ("json", "csv", "npy"):
        if out.suffix.lower() != f".{chosen}":
            raise ValueError(f"a {chosen} file needs the .{chosen} suffix, got {out.name!r}")
        return write_animation(mapped, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if chosen == "livelink_csv":
        out.write_text(livelink_csv_text(mapped), encoding="utf-8")
    else:
        anim = talkinghead_anim(mapped.names, mapped.frames, mapped.fps)
        out.write_text(json.dumps(anim) + "\n", encoding="utf-8")
    return out
