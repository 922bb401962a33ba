"""Phonetic sanity checks on predicted coefficients, read at the phones' centres.

Three questions a person judging lip-sync asks, answered with numbers:

- **bilabial closure**: on /p b m/ the lips meet, so the lip opening is small;
- **vowel openness**: open vowels (/a/-like) open the jaw wider than close vowels (/i u/-like);
- **silence**: in long pauses, away from speech, the face is neutral (all coefficients near 0).

The lip opening is jawOpen plus the mean of the lip-parting shapes (mouthLowerDown and
mouthUpperUp, left and right) minus mouthClose; it is 0 for a closed neutral mouth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.blendshapes import BLENDSHAPE_NAMES, FPS
from models.corpus.manifest import PhoneSegment
from models.corpus.phones import SILENCE

BILABIALS = frozenset({"P", "B", "M", "p", "b", "m"})
OPEN_VOWELS = frozenset({"AA", "AE", "AH", "AW", "AY", "a"})
CLOSE_VOWELS = frozenset({"IY", "IH", "UW", "UH", "i", "u", "v"})
SILENCE_MIN_S = 0.4
"""Only pauses at least this long count, read at least `SILENCE_MARGIN_S` from speech."""
SILENCE_MARGIN_S = 0.15

_INDEX = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}
_PARTING = [
    _INDEX[n]
    for n in ("mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight")
]


def lip_opening(coefficients: np.ndarray) -> np.ndarray:
    """(T, 32) -> (T,) lip opening, see the module docstring."""
    c = np.asarray(coefficients, dtype=np.float64)
    return c[:, _INDEX["jawOpen"]] + c[:, _PARTING].mean(axis=1) - c[:, _INDEX["mouthClose"]]


@dataclass(frozen=True)
class SanityReport:
    """Means over the phones found; counts say how many phones or frames each rests on."""

    bilabial_opening: float  # mean lip opening at bilabial centres
    vowel_opening: float  # mean lip opening at all vowel centres (the scale to compare with)
    open_vowel_jaw: float  # mean jawOpen at open-vowel centres
    close_vowel_jaw: float  # mean jawOpen at close-vowel centres
    silence_level: float  # mean |coefficient| over silent frames
    speech_level: float  # mean |coefficient| over frames inside speech, for scale
    bilabials: int
    open_vowels: int
    close_vowels: int
    silent_frames: int

    @property
    def bilabials_close(self) -> bool:
        """The lips at bilabials open less than half as much as at vowels."""
        return self.bilabial_opening < 0.5 * self.vowel_opening

    @property
    def open_wider_than_close(self) -> bool:
        return self.open_vowel_jaw > self.close_vowel_jaw

    @property
    def silence_neutral(self) -> bool:
        """Silent frames move less than a fifth as much as speech frames."""
        return self.silence_level < 0.2 * self.speech_level


def _centre_frame(segment: PhoneSegment, frames: int, fps: int) -> int:
    return min(round((segment.start_s + segment.end_s) / 2 * fps), frames - 1)


def phonetic_sanity(
    items: Sequence[tuple[np.ndarray, Sequence[PhoneSegment]]], fps: int = FPS
) -> SanityReport:
    """Pool the checks over (coefficients (T, 32), phone table) pairs."""
    bilabial, vowel, open_jaw, close_jaw, silent, speech = [], [], [], [], [], []
    vowels = OPEN_VOWELS | CLOSE_VOWELS | {"EH", "EY", "AO", "OW", "OY", "ER", "o", "e", "ee"}
    jaw = _INDEX["jawOpen"]
    for coefficients, phones in items:
        frames = coefficients.shape[0]
        opening = lip_opening(coefficients)
        level = np.abs(coefficients).mean(axis=1)
        for seg in phones:
            centre = _centre_frame(seg, frames, fps)
            if seg.phone in BILABIALS:
                bilabial.append(opening[centre])
            if seg.phone in vowels:
                vowel.append(opening[centre])
            if seg.phone in OPEN_VOWELS:
                open_jaw.append(coefficients[centre, jaw])
            if seg.phone in CLOSE_VOWELS:
                close_jaw.append(coefficients[centre, jaw])
            first = int(np.ceil(seg.start_s * fps))
            last = min(int(np.floor(seg.end_s * fps)), frames - 1)
            if seg.phone == SILENCE:
                if seg.end_s - seg.start_s >= SILENCE_MIN_S:
                    lo = int(np.ceil((seg.start_s + SILENCE_MARGIN_S) * fps))
                    hi = min(int(np.floor((seg.end_s - SILENCE_MARGIN_S) * fps)), frames - 1)
                    silent.extend(level[lo : hi + 1])
            else:
                speech.extend(level[first : last + 1])

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return SanityReport(
        bilabial_opening=mean(bilabial),
        vowel_opening=mean(vowel),
        open_vowel_jaw=mean(open_jaw),
        close_vowel_jaw=mean(close_jaw),
        silence_level=mean(silent),
        speech_level=mean(speech),
        bilabials=len(bilabial),
        open_vowels=len(open_jaw),
        close_vowels=len(close_jaw),
        silent_frames=len(silent),
    )
