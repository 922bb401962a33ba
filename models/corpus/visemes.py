"""Phone tables to ARKit blendshape targets: viseme poses blended by dominance coarticulation.

Each phone of `models.corpus.phones` gets a target pose over the 32 `BLENDSHAPE_NAMES` (its
viseme's pose, with the jaw set from the vowel's openness), and each segment a dominance per
blendshape in the style of Cohen and Massaro (1993)::

    D_i(t) = alpha_i * exp(-theta_i * d_i(t))
    b(t)   = sum_i D_i(t) * target_i / sum_i D_i(t)

where ``d_i(t)`` is the distance in seconds from ``t`` to segment i's core: its centre for a short
phone, the middle of a long one (steady-state vowels and long pauses hold their pose instead of
drifting towards a neighbour). ``theta`` differs before the core (anticipation) and after it
(carry-over), which is how lip rounding reaches forward over the consonants before a rounded
vowel. Strong ``alpha`` makes a gesture reached even in a short phone (the bilabial seal, the f/v
lip tuck); weak ``alpha`` lets a consonant borrow its jaw and rounding from nearby vowels.

The lips seal of /p b m/ is blended as a hidden channel ``s`` in [0, 1] rather than as a pose,
because ARKit expresses closed lips relative to the jaw: ``mouthClose = s * jawOpen`` keeps the lips
together however far neighbouring vowels hold the jaw open, and ``s`` also closes the vertical lip
shapes. Frame i sits at ``i / fps`` seconds, the project's clock (`models.blendshapes`).

Each training subject has a fixed `ArticulationStyle` (gains drawn from its index with a fixed
seed), so the same speaker always moves the same way and the network's style vector has something
consistent to learn; style -1 is the mean style (all gains 1, left and right symmetric).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from models.blendshapes import BLENDSHAPE_NAMES, FPS, NUM_BLENDSHAPES
from models.corpus.manifest import PhoneSegment
from models.corpus.phones import OPENNESS, SILENCE, VISEMES, VOCABULARY, VOWELS, viseme

logger = logging.getLogger(__name__)

NUM_STYLES: Final = 20
"""Training subjects with their own articulation style (as `DecoderConfig.num_styles`)."""

STYLE_SEED: Final = 20_240_715
"""Seed from which every subject's `ArticulationStyle` is drawn; changing it changes the corpus."""

CORE_EDGE_S: Final = 0.04
"""A segment's dominance core ends this far inside its edges (a point at the centre if shorter)."""

REST_EPSILON: Final = 1e-3
"""Coefficients below this are written as exact zeros; no rig shows a change that small."""

_NEGLIGIBLE: Final = 1e-7  # dominance ratio below which a far segment is left out
_BLOCK_FRAMES: Final = 32  # frames evaluated together; bounds memory on long clips
_FAR_S: Final = 1e6  # the virtual silences before and after the utterance reach this far

_INDEX: Final[dict[str, int]] = {name: k for k, name in enumerate(BLENDSHAPE_NAMES)}
_SEAL: Final = NUM_BLENDSHAPES  # hidden lip-seal channel after the 32 blendshapes
_CHANNELS: Final = NUM_BLENDSHAPES + 1

_Rates = tuple[float, float, float]  # (alpha, theta before the core 1/s, theta after it 1/s)


def _sides(base: str) -> tuple[str, ...]:
    """``mouthSmile`` -> both sides; a full name (``jawOpen``) -> itself."""
    if base in _INDEX:
        return (base,)
    pair = (f"{base}Left", f"{base}Right")
    if not all(name in _INDEX for name in pair):
        raise KeyError(f"{base!r} is neither a blendshape nor a left/right pair")
    return pair


# Blendshapes that move together share dominance rates. mouthClose is in none: it is derived
# from the seal and the jaw after blending.
_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "jaw": ("jawOpen", "jawForward", "jawLeft", "jawRight"),
    "open": ("mouthLowerDown", "mouthUpperUp"),
    "press": ("mouthPress",),
    "round": ("mouthFunnel", "mouthPucker"),
    "spread": ("mouthStretch", "mouthSmile", "mouthDimple"),
    "roll": ("mouthRollLower", "mouthRollUpper"),
    "shrug": ("mouthShrugLower", "mouthShrugUpper"),
    "rest": ("mouthLeft", "mouthRight", "mouthFrown", "cheekPuff", "cheekSquint", "noseSneer"),
}

# The 15 viseme poses; pair names without Left/Right set both sides. Vowel phones replace
# jawOpen and mouthLowerDown with values from their openness (see `_phone_pose`).
_POSES: Final[dict[str, dict[str, float]]] = {
    "sil": {},
    "PP": {
        "mouthPress": 0.45,
        "mouthRollLower": 0.15,
        "mouthRollUpper": 0.1,
        "mouthShrugLower": 0.2,
        "mouthShrugUpper": 0.1,
    },
    "FF": {
        "jawOpen": 0.05,
        "mouthRollLower": 0.6,
        "mouthUpperUp": 0.25,
        "mouthShrugUpper": 0.1,
    },
    "TH": {"jawOpen": 0.12, "mouthLowerDown": 0.1, "mouthUpperUp": 0.05, "mouthStretch": 0.05},
    "DD": {"jawOpen": 0.15, "mouthLowerDown": 0.1, "mouthStretch": 0.08},
    "kk": {"jawOpen": 0.2, "mouthLowerDown": 0.08, "mouthStretch": 0.05},
    "CH": {
        "jawOpen": 0.08,
        "jawForward": 0.08,
        "mouthFunnel": 0.35,
        "mouthPucker": 0.25,
        "mouthUpperUp": 0.2,
        "mouthLowerDown": 0.2,
    },
    "SS": {
        "jawOpen": 0.05,
        "mouthStretch": 0.2,
        "mouthSmile": 0.1,
        "mouthLowerDown": 0.08,
        "mouthUpperUp": 0.05,
    },
    "nn": {"jawOpen": 0.15, "mouthLowerDown": 0.08, "mouthStretch": 0.05},
    "RR": {"jawOpen": 0.15, "mouthFunnel": 0.2, "mouthPucker": 0.3, "mouthUpperUp": 0.05},
    "aa": {"jawOpen": 0.6, "mouthLowerDown": 0.3, "mouthUpperUp": 0.1, "mouthStretch": 0.05},
    "E": {
        "jawOpen": 0.35,
        "mouthLowerDown": 0.2,
        "mouthUpperUp": 0.08,
        "mouthStretch": 0.2,
        "mouthSmile": 0.12,
    },
    "ih": {
        "jawOpen": 0.15,
        "mouthLowerDown": 0.1,
        "mouthUpperUp": 0.05,
        "mouthStretch": 0.35,
        "mouthSmile": 0.2,
        "mouthDimple": 0.05,
        "cheekSquint": 0.05,
    },
    "oh": {"jawOpen": 0.4, "mouthLowerDown": 0.1, "mouthFunnel": 0.55, "mouthPucker": 0.35},
    "ou": {"jawOpen": 0.15, "mouthFunnel": 0.3, "mouthPucker": 0.75},
}

# Jaw and lower lip of a vowel: jawOpen = JAW_CLOSED + JAW_RANGE * openness.
_JAW_CLOSED: Final = 0.05
_JAW_RANGE: Final = 0.65
_LOWER_LIP_RANGE: Final = 0.3

_DEFAULT_RATES: Final[_Rates] = (1.0, 25.0, 25.0)
# Consonants that do not shape a group themselves take it from their neighbours.
_CONSONANT_RATES: Final[dict[str, _Rates]] = {
    "jaw": (0.15, 25.0, 25.0),
    "open": (0.4, 25.0, 25.0),
    "round": (0.25, 25.0, 25.0),
    "spread": (0.3, 25.0, 25.0),
}
# What each viseme insists on. The seal and the f/v tuck are strong and sharp so that a 50 ms
# phone still reaches them without spilling far into the vowels around it; rounding decays
# slowly before its core (anticipation) and faster after it.
_VISEME_RATES: Final[dict[str, dict[str, _Rates]]] = {
    "PP": {
        "seal": (8.0, 60.0, 60.0),
        "press": (8.0, 60.0, 60.0),
        "roll": (4.0, 50.0, 50.0),
        "jaw": (2.0, 40.0, 40.0),
    },
    "FF": {"roll": (6.0, 50.0, 50.0), "open": (6.0, 50.0, 50.0), "jaw": (2.0, 40.0, 40.0)},
    "TH": {"jaw": (0.5, 25.0, 25.0), "open": (1.0, 25.0, 25.0)},
    "CH": {
        "round": (1.5, 20.0, 20.0),
        "open": (1.5, 25.0, 25.0),
        "jaw": (0.5, 25.0, 25.0),
    },
    "SS": {"spread": (1.0, 25.0, 25.0), "jaw": (0.5, 25.0, 25.0)},
    "RR": {"round": (1.2, 15.0, 20.0)},
    "ih": {"spread": (1.5, 25.0, 25.0)},
    "oh": {"round": (2.0, 10.0, 25.0)},
    "ou": {"round": (2.5, 10.0, 25.0)},
}


@dataclass(frozen=True)
class ArticulationStyle:
    """One speaker's way of articulating: multiplicative gains (1 = average) and offsets.

    ``strength`` scales every target, ``jaw`` the jaw and lower lip, ``rounding`` funnel and
    pucker, ``spreading`` stretch, smile and dimple; ``smile_bias`` is added to mouthSmile while
    speaking (coefficient units); ``asymmetry`` raises the left side by that fraction and lowers
    the right side by it; ``crispness`` scales the dominance decay rates (above 1: less
    coarticulation, sharper transitions).
    """

    strength: float = 1.0
    jaw: float = 1.0
    rounding: float = 1.0
    spreading: float = 1.0
    smile_bias: float = 0.0
    asymmetry: float = 0.0
    crispness: float = 1.0


def articulation_style(style: int) -> ArticulationStyle:
    """The fixed style of subject ``style`` (0..NUM_STYLES-1), or the mean style for -1."""
    if isinstance(style, bool) or not isinstance(style, int | np.integer):
        raise ValueError(f"style must be an integer subject index, got {style!r}")
    if style == -1:
        return ArticulationStyle()
    if not 0 <= style < NUM_STYLES:
        raise ValueError(
            f"style {style} is out of range; use 0..{NUM_STYLES - 1} for a training subject "
            "or -1 for the neutral average"
        )
    # Seeding with (seed, index) gives each subject its own stream, independent of the others.
    rng = np.random.default_rng((STYLE_SEED, int(style)))
    gains = rng.uniform(0.8, 1.2, size=5)
    return ArticulationStyle(
        strength=float(gains[0]),
        jaw=float(gains[1]),
        rounding=float(gains[2]),
        spreading=float(gains[3]),
        crispness=float(gains[4]),
        smile_bias=float(rng.uniform(-0.05, 0.05)),
        asymmetry=float(rng.uniform(-0.08, 0.08)),
    )


def _expand(pose: Mapping[str, float]) -> dict[str, float]:
    return {name: value for base, value in pose.items() for name in _sides(base)}


def viseme_poses() -> dict[str, dict[str, float]]:
    """The 15 viseme target poses as ``{viseme: {blendshape: value}}``, zeros left out.

    Values are unitless ARKit weights for the mean style. Vowels are shown with their viseme's
    representative jaw; a vowel phone's own jawOpen and mouthLowerDown follow its openness. PP
    also closes the lips through the seal (mouthClose = jawOpen there).
    """
    return {name: _expand(_POSES[name]) for name in VISEMES}


def _phone_pose(phone: str) -> np.ndarray:
    """Target of one phone over the 32 blendshapes and the seal channel: (33,) float64."""
    name = viseme(phone)
    target = np.zeros(_CHANNELS)
    for blendshape, value in _expand(_POSES[name]).items():
        target[_INDEX[blendshape]] = value
    if phone in VOWELS:
        openness = OPENNESS[phone]
        target[_INDEX["jawOpen"]] = _JAW_CLOSED + _JAW_RANGE * openness
        for side in _sides("mouthLowerDown"):
            target[_INDEX[side]] = _LOWER_LIP_RANGE * openness
    if name == "PP":
        target[_SEAL] = 1.0
    return target


_GROUP_NAMES: Final[tuple[str, ...]] = (*_GROUPS, "seal")
# Channels of each group, in `_GROUP_NAMES` order; members share their dominance in every phone.
_GROUP_CHANNELS: Final[tuple[np.ndarray, ...]] = (
    *(
        np.array([_INDEX[n] for base in members for n in _sides(base)])
        for members in _GROUPS.values()
    ),
    np.array([_SEAL]),
)


def _phone_rates(phone: str) -> np.ndarray:
    """Dominance of one phone per group: (3, G) rows alpha, theta before (1/s), theta after."""
    rates: dict[str, _Rates] = dict.fromkeys(_GROUP_NAMES, _DEFAULT_RATES)
    if phone != SILENCE and phone not in VOWELS:
        rates.update(_CONSONANT_RATES)
    rates.update(_VISEME_RATES.get(viseme(phone), {}))
    return np.array([rates[group] for group in _GROUP_NAMES]).T


def _is_phone(name: str) -> bool:
    try:
        viseme(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class _PhoneTables:
    """Per-phone arrays, row p for the phone with ``index[phone] == p``."""

    index: dict[str, int]
    target: np.ndarray  # (P, 33) targets over the blendshapes and the seal
    alpha: np.ndarray  # (P, G) dominance strength per group
    theta_before: np.ndarray  # (P, G) 1/s, decay before the core
    theta_after: np.ndarray  # (P, G) 1/s, decay after the core


def _build_tables() -> _PhoneTables:
    phones = [p for p in VOCABULARY if _is_phone(p)]  # every entry but the CTC blank
    rates = np.stack([_phone_rates(p) for p in phones])  # (P, 3, G)
    return _PhoneTables(
        index={p: i for i, p in enumerate(phones)},
        target=np.stack([_phone_pose(p) for p in phones]),
        alpha=rates[:, 0],
        theta_before=rates[:, 1],
        theta_after=rates[:, 2],
    )


_TABLES: Final = _build_tables()

_LEFT: Final = np.array([k for k, n in enumerate(BLENDSHAPE_NAMES) if n.endswith("Left")])
_RIGHT: Final = np.array([k for k, n in enumerate(BLENDSHAPE_NAMES) if n.endswith("Right")])


def _channels(*bases: str) -> np.ndarray:
    return np.array([_INDEX[name] for base in bases for name in _sides(base)])


def _styled_targets(style: ArticulationStyle) -> np.ndarray:
    """The phone targets (P, 33) with a style's gains applied (the seal is left alone)."""
    target = _TABLES.target.copy()
    target[:, :NUM_BLENDSHAPES] *= style.strength
    target[:, _channels("jawOpen", "mouthLowerDown")] *= style.jaw
    target[:, _channels("mouthFunnel", "mouthPucker")] *= style.rounding
    target[:, _channels("mouthStretch", "mouthSmile", "mouthDimple")] *= style.spreading
    speaking = np.array([p != SILENCE for p in _TABLES.index])
    smile = _channels("mouthSmile")
    # Only speech carries the bias, so pauses still rest at exactly neutral.
    target[np.ix_(speaking, smile)] += style.smile_bias
    return np.clip(target, 0.0, 1.0)


def _validated(segments: Sequence[PhoneSegment]) -> list[PhoneSegment]:
    checked = []
    for i, seg in enumerate(segments):
        if seg.phone not in _TABLES.index:
            raise ValueError(
                f"segment {i}: unknown phone {seg.phone!r}; map engine phones to the project set "
                "in models.corpus.phones (VOCABULARY) first"
            )
        if not (np.isfinite(seg.start_s) and np.isfinite(seg.end_s)):
            raise ValueError(f"segment {i} ({seg.phone}): times must be finite, got {seg}")
        if seg.start_s < 0 or seg.end_s < seg.start_s:
            raise ValueError(
                f"segment {i} ({seg.phone}): need 0 <= start_s <= end_s, got "
                f"start_s={seg.start_s}, end_s={seg.end_s}"
            )
        checked.append(seg)
    return sorted(checked, key=lambda s: s.start_s)


def _with_silences(segments: list[PhoneSegment]) -> list[PhoneSegment]:
    """Segments with `sil` filling every gap, before the first and after the last.

    Every instant then lies inside some segment, so the dominance sum never vanishes, and the
    face rests before and after the utterance rather than holding its first and last poses.
    """
    filled = [PhoneSegment(SILENCE, -_FAR_S, segments[0].start_s if segments else _FAR_S)]
    reached = filled[0].end_s
    for seg in segments:
        if seg.start_s > reached:
            filled.append(PhoneSegment(SILENCE, reached, seg.start_s))
        filled.append(seg)
        reached = max(reached, seg.end_s)
    if segments:
        filled.append(PhoneSegment(SILENCE, reached, _FAR_S))
    return filled


def _check_frames(num_frames: int, fps: int) -> None:
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")


def targets_from_phones(
    segments: Sequence[PhoneSegment], num_frames: int, style: int = -1, fps: int = FPS
) -> np.ndarray:
    """Blendshape targets for a phone table: (num_frames, 32) float32 in [0, 1].

    ``segments`` are project phones with times in seconds (any order; gaps are silence; the
    table may end before or after ``num_frames / fps``). Frame i is evaluated at ``i / fps``
    seconds. ``style`` is a training subject (0..NUM_STYLES-1) or -1 for the mean style, whose
    output is left/right symmetric. Columns follow `BLENDSHAPE_NAMES`.
    """
    _check_frames(num_frames, fps)
    chosen = articulation_style(style)
    table = _with_silences(_validated(segments))
    rows = np.array([_TABLES.index[s.phone] for s in table])  # (N,)
    start = np.array([s.start_s for s in table])  # (N,) s
    end = np.array([s.end_s for s in table])
    middle = 0.5 * (start + end)
    core_lo = np.minimum(start + CORE_EDGE_S, middle)
    core_hi = np.maximum(end - CORE_EDGE_S, middle)

    # float32 from here: the result is float32 anyway and numpy's float32 exp is several times
    # faster; dominances span far less than float32's range once far segments are dropped.
    alpha = _TABLES.alpha[rows].astype(np.float32)  # (N, G)
    theta_before = (_TABLES.theta_before[rows] * chosen.crispness).astype(np.float32)  # 1/s
    theta_after = (_TABLES.theta_after[rows] * chosen.crispness).astype(np.float32)
    target = _styled_targets(chosen)[rows].astype(np.float32)  # (N, 33)
    # A frame lies inside some segment, at most CORE_EDGE_S from its core, so that segment's
    # dominance is at least `floor`; segments further than `reach_s` weigh under
    # _NEGLIGIBLE * floor and are skipped, which keeps the cost linear in the clip's length.
    theta_max = max(float(theta_before.max()), float(theta_after.max()))
    theta_min = min(float(theta_before.min()), float(theta_after.min()))
    floor = float(alpha.min()) * np.exp(-theta_max * CORE_EDGE_S)
    reach_s = np.log(float(alpha.max()) / (floor * _NEGLIGIBLE)) / theta_min

    blended = np.zeros((num_frames, _CHANNELS), dtype=np.float32)  # (T, 33)
    for first in range(0, num_frames, _BLOCK_FRAMES):
        t = np.arange(first, min(first + _BLOCK_FRAMES, num_frames)) / fps  # (B,) s
        near = np.flatnonzero((core_hi > t[0] - reach_s) & (core_lo < t[-1] + reach_s))
        # Distances in float64 first: the virtual silences' cores lie 1e6 s away.
        before = np.clip(core_lo[None, near] - t[:, None], 0.0, None).astype(np.float32)  # (B, N')
        after = np.clip(t[:, None] - core_hi[None, near], 0.0, None).astype(np.float32)
        dominance = alpha[near] * np.exp(
            -(before[..., None] * theta_before[near] + after[..., None] * theta_after[near])
        )  # (B, N', G)
        total = dominance.sum(axis=1)  # (B, G)
        for g, channels in enumerate(_GROUP_CHANNELS):
            weighted = dominance[:, :, g] @ target[np.ix_(near, channels)]  # (B, |g|)
            blended[first : first + len(t), channels] = weighted / total[:, g : g + 1]

    out = blended[:, :NUM_BLENDSHAPES]
    seal = blended[:, _SEAL : _SEAL + 1]  # (T, 1)
    out[:, _channels("mouthLowerDown", "mouthUpperUp", "mouthFunnel")] *= 1.0 - seal
    out[:, _INDEX["mouthClose"]] = seal[:, 0] * out[:, _INDEX["jawOpen"]]
    if chosen.asymmetry:
        out[:, _LEFT] *= 1.0 + chosen.asymmetry
        out[:, _RIGHT] *= 1.0 - chosen.asymmetry
    out[out < REST_EPSILON] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def lip_opening(frames: np.ndarray) -> np.ndarray:
    """How far the lips are apart per frame, from a (T, 32) target array: (T,) unitless.

    ``max(jawOpen - mouthClose, 0) + mean(mouthLowerDown*) + mean(mouthUpperUp*)``: the jaw's
    contribution minus the part the lips seal over, plus the lips' own vertical opening.
    """
    if frames.ndim != 2 or frames.shape[1] != NUM_BLENDSHAPES:
        raise ValueError(f"expected a (T, {NUM_BLENDSHAPES}) array, got shape {frames.shape}")
    jaw = frames[:, _INDEX["jawOpen"]] - frames[:, _INDEX["mouthClose"]]
    lower = frames[:, _channels("mouthLowerDown")].mean(axis=1)
    upper = frames[:, _channels("mouthUpperUp")].mean(axis=1)
    return np.maximum(jaw, 0.0) + lower + upper


def viseme_track(segments: Sequence[PhoneSegment], num_frames: int, fps: int = FPS) -> list[str]:
    """The viseme sounding at each frame time ``i / fps``: a list of ``num_frames`` names.

    A frame belongs to the segment with ``start_s <= t < end_s`` (the later-starting one where
    segments overlap); frames outside every segment are ``sil``.
    """
    _check_frames(num_frames, fps)
    table = _validated(segments)
    if not table:
        return ["sil"] * num_frames
    start = np.array([s.start_s for s in table])  # (N,) s, sorted
    end = np.array([s.end_s for s in table])
    names = [viseme(s.phone) for s in table]
    t = np.arange(num_frames) / fps  # (T,) s
    inside = (start[None, :] <= t[:, None]) & (t[:, None] < end[None, :])  # (T, N)
    last = len(table) - 1 - np.argmax(inside[:, ::-1], axis=1)  # latest-starting container
    return [names[i] if inside[f, i] else "sil" for f, i in enumerate(last.tolist())]
