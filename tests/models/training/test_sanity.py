"""The phonetic sanity checks tell good mouth motion from bad."""

from __future__ import annotations

import numpy as np

from models.blendshapes import BLENDSHAPE_NAMES
from models.corpus.manifest import PhoneSegment
from models.training.sanity import lip_opening, phonetic_sanity

JAW = BLENDSHAPE_NAMES.index("jawOpen")
CLOSE = BLENDSHAPE_NAMES.index("mouthClose")

PHONES = [
    PhoneSegment("sil", 0.0, 0.6),
    PhoneSegment("M", 0.6, 0.7),
    PhoneSegment("AA", 0.7, 0.9),
    PhoneSegment("P", 0.9, 1.0),
    PhoneSegment("IY", 1.0, 1.2),
    PhoneSegment("sil", 1.2, 2.0),
]


def _track(good: bool) -> np.ndarray:
    frames = 60
    out = np.zeros((frames, 32), dtype=np.float32)
    for seg in PHONES:
        lo, hi = round(seg.start_s * 30), round(seg.end_s * 30)
        if seg.phone == "AA":
            out[lo:hi, JAW] = 0.7
        elif seg.phone == "IY":
            out[lo:hi, JAW] = 0.2
        elif seg.phone in ("M", "P"):
            out[lo:hi, CLOSE] = 0.3 if good else 0.0
            out[lo:hi, JAW] = 0.0 if good else 0.5
        elif not good:
            out[lo:hi, JAW] = 0.3  # a mouth that never rests
    return out


def test_good_motion_passes_every_check() -> None:
    report = phonetic_sanity([(_track(True), PHONES)])
    assert report.bilabials == 2 and report.open_vowels == 1 and report.close_vowels == 1
    assert report.bilabials_close
    assert report.open_wider_than_close
    assert report.silence_neutral
    assert report.silent_frames > 0


def test_bad_motion_fails_the_checks() -> None:
    report = phonetic_sanity([(_track(False), PHONES)])
    assert not report.bilabials_close
    assert not report.silence_neutral


def test_lip_opening_is_zero_for_a_neutral_mouth() -> None:
    assert lip_opening(np.zeros((3, 32))).tolist() == [0.0, 0.0, 0.0]
