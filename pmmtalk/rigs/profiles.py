"""Rig profiles: the network's 32 ARKit weights mapped to the channel sets rigs expect.

A profile is a fixed mapping from frames ``(T, 32)`` in `models.blendshapes.BLENDSHAPE_NAMES`
order to frames ``(T, K)`` in the profile's own channel order:

- ``arkit32``: the network's 32 shapes unchanged (the default everywhere).
- ``arkit52``: all 52 ARKit face shapes in Apple's order (ARFaceAnchor.BlendShapeLocation, the
  same order as Unreal's ``EARFaceBlendShape``); the 20 eye, brow and tongue shapes are 0.
- ``livelink61``: the 61 curves of a Live Link Face stream (Unreal's names, PascalCase): the 52
  shapes in ``arkit52`` order, then head yaw/pitch/roll and both eyes' yaw/pitch/roll, which are
  0 (the network moves no head or eyes).
- ``visemes15``: the 15 Oculus/Meta visemes under the morph names Ready Player Me and TalkingHead
  avatars carry (``viseme_sil`` ... ``viseme_U``), as the non-negative mix of viseme poses that
  best rebuilds each frame (see `VisemeSolver`).

Per-channel gain, offset and clamp come afterwards, from `pmmtalk.rigs.config`. docs/rigs.md
has every table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

from models.blendshapes import BLENDSHAPE_NAMES, NUM_BLENDSHAPES
from models.corpus.visemes import viseme_poses
from pmmtalk.errors import InputError

ARKIT52_NAMES: Final[tuple[str, ...]] = (
    "eyeBlinkLeft",
    "eyeLookDownLeft",
    "eyeLookInLeft",
    "eyeLookOutLeft",
    "eyeLookUpLeft",
    "eyeSquintLeft",
    "eyeWideLeft",
    "eyeBlinkRight",
    "eyeLookDownRight",
    "eyeLookInRight",
    "eyeLookOutRight",
    "eyeLookUpRight",
    "eyeSquintRight",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawRight",
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthLeft",
    "mouthRight",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "noseSneerLeft",
    "noseSneerRight",
    "tongueOut",
)
"""ARKit's 52 face blendshapes in Apple's documented order, which is also the order of
Unreal's ``EARFaceBlendShape`` enum and so of a Live Link Face UDP packet."""

LIVELINK_ROTATION_NAMES: Final[tuple[str, ...]] = (
    "HeadYaw",
    "HeadPitch",
    "HeadRoll",
    "LeftEyeYaw",
    "LeftEyePitch",
    "LeftEyeRoll",
    "RightEyeYaw",
    "RightEyePitch",
    "RightEyeRoll",
)
"""The 9 rotation curves after the 52 shapes in a Live Link Face packet and CSV."""


def pascal_case(name: str) -> str:
    """``jawOpen`` -> ``JawOpen``: how Unreal and Live Link Face name the ARKit curves."""
    return name[:1].upper() + name[1:]


LIVELINK61_NAMES: Final[tuple[str, ...]] = (
    *(pascal_case(name) for name in ARKIT52_NAMES),
    *LIVELINK_ROTATION_NAMES,
)
"""Live Link Face's 61 curves in packet order (``EARFaceBlendShape`` values 0..60)."""

OCULUS_VISEMES: Final[tuple[str, ...]] = (
    "sil",
    "PP",
    "FF",
    "TH",
    "DD",
    "kk",
    "CH",
    "SS",
    "nn",
    "RR",
    "aa",
    "E",
    "ih",
    "oh",
    "ou",
)
"""The 15 Oculus/Meta visemes in their SDK's order (as `models.corpus.phones.VISEMES`)."""

_MORPH_SUFFIX: Final[dict[str, str]] = {"ih": "I", "oh": "O", "ou": "U"}
VISEME_NAMES: Final[tuple[str, ...]] = tuple(
    f"viseme_{_MORPH_SUFFIX.get(v, v)}" for v in OCULUS_VISEMES
)
"""The visemes' morph-target names on Ready Player Me and TalkingHead avatars, same order."""

DEFAULT_PROFILE: Final = "arkit32"

VISEME_RIDGE: Final = 1e-4
"""Tikhonov weight on the viseme mix: keeps the solve unique where visemes look alike (DD, nn,
kk) while a frame equal to one viseme's pose still comes back as that viseme at ~1."""

SEAL_JAW: Final = 0.15
"""jawOpen (and mouthClose) given to the PP pose. The corpus closes the lips of /p b m/ through
mouthClose = jawOpen with the jaw of the vowels around them; this is a typical such jaw, so a
closed-lips frame whose jaw is open still reads as PP."""


class UnknownProfileError(InputError):
    """A profile name the server or command line does not know."""


class VisemeSolver:
    """Frames ``(T, 32)`` -> viseme weights ``(T, 15)`` by non-negative least squares.

    Each of the 14 non-silent visemes has a pose over the 32 shapes: the corpus's pose
    (`models.corpus.visemes.viseme_poses`, which the network was trained on), with PP's lips
    also sealed (`SEAL_JAW`). A frame ``x`` gets the weights ``w >= 0`` minimising
    ``|P^T w - x|^2 + VISEME_RIDGE * |w|^2``, and ``sil = max(0, 1 - sum(w))``. Weights can
    exceed 1 for a frame stronger than every pose; the profile's clamp bounds them.
    """

    def __init__(self) -> None:
        index = {name: k for k, name in enumerate(BLENDSHAPE_NAMES)}
        poses = viseme_poses()
        spoken = OCULUS_VISEMES[1:]
        pose = np.zeros((len(spoken), NUM_BLENDSHAPES))  # (14, 32)
        for row, viseme in enumerate(spoken):
            for shape, value in poses[viseme].items():
                pose[row, index[shape]] = value
        pp = spoken.index("PP")
        pose[pp, index["jawOpen"]] = SEAL_JAW
        pose[pp, index["mouthClose"]] = SEAL_JAW
        self.poses = pose
        # The 32-row problem reduced to its 14-row normal form: with R^T R = P P^T + ridge I,
        # |P^T w - x|^2 + ridge |w|^2 = |R w - R^-T P x|^2 + const, which nnls solves faster.
        gram = pose @ pose.T + VISEME_RIDGE * np.eye(len(spoken))
        self._r = np.linalg.cholesky(gram).T  # (14, 14) upper triangular
        self._project = np.linalg.solve(self._r.T, pose)  # (14, 32): R^-T P
        self._nnls: Callable[..., tuple[np.ndarray, float]] | None = None

    def prepare(self) -> None:
        """Import SciPy's solver (about a second), so a server can do it off its event loop
        rather than at start-up or on the first frame."""
        if self._nnls is None:
            from scipy.optimize import nnls

            self._nnls = nnls

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, 32) -> (T, 15) float32, columns in `OCULUS_VISEMES` order (sil first)."""
        self.prepare()
        assert self._nnls is not None
        targets = np.asarray(frames, dtype=np.float64) @ self._project.T  # (T, 14)
        weights = np.zeros((len(targets), len(OCULUS_VISEMES)), dtype=np.float64)
        for t, target in enumerate(targets):
            if target.any():  # a neutral frame is all silence; skip the solve
                weights[t, 1:] = self._nnls(self._r, target)[0]
        weights[:, 0] = np.maximum(0.0, 1.0 - weights[:, 1:].sum(axis=1))
        return weights.astype(np.float32)


def _selection(names: tuple[str, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """A map placing each of the 32 shapes in its channel of ``names``; other channels 0."""
    lower = [name.lower() for name in names]
    columns = np.array([lower.index(name.lower()) for name in BLENDSHAPE_NAMES])

    def place(frames: np.ndarray) -> np.ndarray:
        out = np.zeros((frames.shape[0], len(names)), dtype=np.float32)
        out[:, columns] = frames
        return out

    return place


def _same(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Profile:
    """One output channel set: its name, channel names in order, and the mapping to them."""

    name: str
    names: tuple[str, ...]
    summary: str
    _map: Callable[[np.ndarray], np.ndarray]

    def prepare(self) -> None:
        """Load what the mapping needs on first use (SciPy, for visemes15); cheap otherwise."""
        prepare = getattr(self._map, "prepare", None)
        if prepare is not None:
            prepare()

    def map(self, frames: np.ndarray) -> np.ndarray:
        """(T, 32) ARKit weights in `BLENDSHAPE_NAMES` order -> (T, len(names)) float32."""
        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != NUM_BLENDSHAPES:
            raise ValueError(f"frames must be (T, {NUM_BLENDSHAPES}), got {frames.shape}")
        return self._map(frames)


PROFILES: Final[Mapping[str, Profile]] = MappingProxyType(
    {
        profile.name: profile
        for profile in (
            Profile(
                "arkit32",
                BLENDSHAPE_NAMES,
                "the network's 32 ARKit mouth, jaw, cheek and nose shapes",
                _same,
            ),
            Profile(
                "arkit52",
                ARKIT52_NAMES,
                "all 52 ARKit shapes, Apple's order; eyes, brows and tongue 0",
                _selection(ARKIT52_NAMES),
            ),
            Profile(
                "livelink61",
                LIVELINK61_NAMES,
                "Live Link Face's 61 curves (Unreal names); head and eye rotations 0",
                _selection(LIVELINK61_NAMES),
            ),
            Profile(
                "visemes15",
                VISEME_NAMES,
                "the 15 Oculus/Meta visemes as Ready Player Me morph names",
                VisemeSolver(),
            ),
        )
    }
)
"""Every profile by name."""

TALKINGHEAD_HINT: Final = (
    "TalkingHead's anim object is an output format, not a profile: ask POST /animate for "
    "format=talkinghead (with profile arkit32 or visemes15); a stream's frames convert to "
    "TalkingHead's streaming anims as docs/rigs.md shows"
)


def get_profile(name: str) -> Profile:
    """The profile called ``name``; `UnknownProfileError` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        hint = f"; {TALKINGHEAD_HINT}" if name.strip().lower() == "talkinghead" else ""
        raise UnknownProfileError(
            f"unknown rig profile {name!r}; choose one of {', '.join(PROFILES)}{hint}"
        ) from None
