"""Per-profile gain, offset and clamp, read from a TOML file.

Every channel ``c`` of a profile's output goes through::

    out[c] = clamp(gain[c] * mapped[c] + offset[c], low[c], high[c])

after the profile's mapping. The defaults (gain 1, offset 0, clamp [0, 1]) change nothing. A
file sets a whole profile and, under ``channels``, single channels; anything it leaves out keeps
the default. pmmtalk/assets/rig_profiles.toml is a commented template; docs/rigs.md describes
the format::

    [arkit52]
    gain = 1.0
    offset = 0.0
    clamp = [0.0, 1.0]

    [arkit52.channels]
    jawOpen = { gain = 1.2 }
    mouthClose = { gain = 0.8, clamp = [0.0, 0.6] }
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np

from pmmtalk.rigs.profiles import PROFILES, Profile, get_profile

TEMPLATE_PATH: Final = Path(__file__).resolve().parent.parent / "assets" / "rig_profiles.toml"
"""The bundled, commented template; it sets every value to its default."""

DEFAULT_CLAMP: Final = (0.0, 1.0)
_KEYS: Final = ("gain", "offset", "clamp")


class RigConfigError(ValueError):
    """A rig profile file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, eq=False)
class Adjustment:
    """Per-channel ``clamp(gain * x + offset, low, high)`` for one profile; arrays of (K,)."""

    gain: np.ndarray
    offset: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def neutral(cls, channels: int) -> Adjustment:
        """Gain 1, offset 0, clamp [0, 1] on every channel: values in [0, 1] pass unchanged."""
        return cls(
            np.ones(channels, dtype=np.float32),
            np.zeros(channels, dtype=np.float32),
            np.full(channels, DEFAULT_CLAMP[0], dtype=np.float32),
            np.full(channels, DEFAULT_CLAMP[1], dtype=np.float32),
        )

    def __call__(self, mapped: np.ndarray) -> np.ndarray:
        """(T, K) -> (T, K) float32."""
        out = mapped * self.gain + self.offset
        return np.clip(out, self.low, self.high).astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class RigMapper:
    """One profile with its adjustment: call it on frames (T, 32) to get (T, len(names))."""

    profile: Profile
    adjustment: Adjustment

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def names(self) -> tuple[str, ...]:
        return self.profile.names

    def prepare(self) -> None:
        """Load what the mapping needs (see `Profile.prepare`); call it off an event loop."""
        self.profile.prepare()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, 32) ARKit weights in `models.blendshapes.BLENDSHAPE_NAMES` order -> (T, K)."""
        return self.adjustment(self.profile.map(frames))


@dataclass(frozen=True, eq=False)
class RigConfig:
    """The adjustment of every profile, and the file it came from (None: the defaults)."""

    adjustments: Mapping[str, Adjustment]
    source: Path | None = None

    @classmethod
    def default(cls) -> RigConfig:
        return cls(
            MappingProxyType(
                {name: Adjustment.neutral(len(p.names)) for name, p in PROFILES.items()}
            )
        )

    @classmethod
    def load(cls, path: str | Path | None) -> RigConfig:
        """Read a user's TOML file; None gives the defaults. Raises `RigConfigError`."""
        if path is None:
            return cls.default()
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise RigConfigError(
                f"cannot read the rig profile file {source}: {exc.strerror or exc}"
            ) from None
        return parse_rig_config(text, source)

    def mapper(self, profile: str) -> RigMapper:
        """The mapper of a profile; `profiles.UnknownProfileError` for an unknown name."""
        chosen = get_profile(profile)
        return RigMapper(chosen, self.adjustments[chosen.name])


def parse_rig_config(text: str, source: Path | None = None) -> RigConfig:
    """A rig profile file's text -> `RigConfig`; `RigConfigError` says what is wrong, where."""
    where = str(source) if source is not None else "rig profile file"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RigConfigError(f"{where} is not valid TOML: {exc}") from None
    adjustments = dict(RigConfig.default().adjustments)
    for name, table in document.items():
        if name not in PROFILES:
            raise RigConfigError(
                f"{where}: unknown profile [{name}]; the profiles are {', '.join(PROFILES)}"
            )
        if not isinstance(table, dict):
            raise RigConfigError(f"{where}: {name} must be a table ([{name}])")
        adjustments[name] = _profile_adjustment(PROFILES[name], table, f"{where}: [{name}]")
    return RigConfig(MappingProxyType(adjustments), source)


def _profile_adjustment(profile: Profile, table: dict[str, object], where: str) -> Adjustment:
    unknown = sorted(set(table) - {*_KEYS, "channels"})
    if unknown:
        raise RigConfigError(
            f"{where}: unknown key {unknown[0]!r}; a profile takes {', '.join(_KEYS)} and a "
            "channels table"
        )
    gain, offset, (low, high) = _values(table, where, (1.0, 0.0, DEFAULT_CLAMP))
    count = len(profile.names)
    adjustment = {
        "gain": np.full(count, gain),
        "offset": np.full(count, offset),
        "low": np.full(count, low),
        "high": np.full(count, high),
    }
    channels = table.get("channels", {})
    if not isinstance(channels, dict):
        raise RigConfigError(f"{where}: channels must be a table of channel = {{ ... }} entries")
    index = {name: k for k, name in enumerate(profile.names)}
    for channel, settings in channels.items():
        if channel not in index:
            near = [n for n in profile.names if n.lower() == channel.lower()]
            hint = f" (did you mean {near[0]}?)" if near else f"; see docs/rigs.md#{profile.name}"
            raise RigConfigError(f"{where}: {profile.name} has no channel {channel!r}{hint}")
        place = f"{where}.channels.{channel}"
        if not isinstance(settings, dict):
            raise RigConfigError(f"{place} must be a table such as {{ gain = 1.2 }}")
        extra = sorted(set(settings) - set(_KEYS))
        if extra:
            raise RigConfigError(
                f"{place}: unknown key {extra[0]!r}; a channel takes {', '.join(_KEYS)}"
            )
        k = index[channel]
        defaults = (
            float(adjustment["gain"][k]),
            float(adjustment["offset"][k]),
            (float(adjustment["low"][k]), float(adjustment["high"][k])),
        )
        gain_k, offset_k, (low_k, high_k) = _values(settings, place, defaults)
        adjustment["gain"][k], adjustment["offset"][k] = gain_k, offset_k
        adjustment["low"][k], adjustment["high"][k] = low_k, high_k
    return Adjustment(**{key: value.astype(np.float32) for key, value in adjustment.items()})


def _values(
    table: Mapping[str, object], where: str, defaults: tuple[float, float, tuple[float, float]]
) -> tuple[float, float, tuple[float, float]]:
    """(gain, offset, (low, high)) from a table, with defaults for what it leaves out."""
    gain = _number(table.get("gain", defaults[0]), f"{where}: gain")
    offset = _number(table.get("offset", defaults[1]), f"{where}: offset")
    clamp = table.get("clamp", defaults[2])
    if not isinstance(clamp, list | tuple) or len(clamp) != 2:
        raise RigConfigError(f"{where}: clamp must be two numbers [low, high], got {clamp!r}")
    low = _number(clamp[0], f"{where}: clamp low")
    high = _number(clamp[1], f"{where}: clamp high")
    if low > high:
        raise RigConfigError(f"{where}: clamp low {low:g} is above clamp high {high:g}")
    return gain, offset, (low, high)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RigConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)
