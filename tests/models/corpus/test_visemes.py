"""Viseme targets: the articulatory facts each pose must show, coarticulation, styles, shapes."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from models.blendshapes import BLENDSHAPE_NAMES, FPS, NUM_BLENDSHAPES
from models.config import DecoderConfig
from models.corpus.manifest import PhoneSegment
from models.corpus.phones import PHONES, VISEMES
from models.corpus.visemes import (
    NUM_STYLES,
    ArticulationStyle,
    articulation_style,
    lip_opening,
    targets_from_phones,
    viseme_poses,
    viseme_track,
)

COL = {name: k for k, name in enumerate(BLENDSHAPE_NAMES)}
LEAD_S = 0.3  # silence before the first phone in the helper's utterances


def utterance(*phones: tuple[str, float], lead_s: float = LEAD_S) -> list[PhoneSegment]:
    """Consecutive segments from (phone, duration_s) pairs, starting at ``lead_s``."""
    segments, t = [], lead_s
    for phone, duration in phones:
        segments.append(PhoneSegment(phone, t, t + duration))
        t += duration
    return segments


def frames_for(segments: list[PhoneSegment], tail_s: float = 0.5) -> int:
    return int(np.ceil((segments[-1].end_s + tail_s) * FPS))


def at_centre(targets: np.ndarray, segment: PhoneSegment) -> np.ndarray:
    """The frame nearest the segment's centre: (32,)."""
    return targets[round(0.5 * (segment.start_s + segment.end_s) * FPS)]


def value(row: np.ndarray, base: str) -> float:
    """A blendshape, or the mean of a Left/Right pair."""
    if base in COL:
        return float(row[COL[base]])
    return float((row[COL[base + "Left"]] + row[COL[base + "Right"]]) / 2)


def isolated(phone: str, duration_s: float = 0.2) -> np.ndarray:
    """The pose at the centre of ``phone`` spoken alone between silences: (32,)."""
    segments = utterance((phone, duration_s))
    return at_centre(targets_from_phones(segments, frames_for(segments)), segments[0])


@pytest.mark.parametrize("bilabial", ["P", "B", "M", "p", "b", "m"])
@pytest.mark.parametrize("vowel", ["AA", "IY", "a"])
def test_short_bilabial_closes_the_lips(bilabial: str, vowel: str) -> None:
    # 50 ms is 1.5 frames; centre it on frame 12 so one frame samples the closure itself.
    centre_s = 12 / FPS
    segments = [
        PhoneSegment(vowel, centre_s - 0.025 - 0.15, centre_s - 0.025),
        PhoneSegment(bilabial, centre_s - 0.025, centre_s + 0.025),
        PhoneSegment(vowel, centre_s + 0.025, centre_s + 0.175),
    ]
    targets = targets_from_phones(segments, 24)
    opening = lip_opening(targets)
    around = opening[6:19]  # the three phones
    assert opening[12] == pytest.approx(around.min(), abs=0.01)
    assert opening[12] < 0.06
    if vowel != "IY":  # open vowels around it: the lips must still meet
        assert opening[12] < 0.1 * around.max()
    closure = targets[12]
    assert value(closure, "mouthPress") > 0.3
    assert value(closure, "mouthClose") == pytest.approx(value(closure, "jawOpen"), abs=0.03)
    open_vowel = at_centre(targets, segments[0])
    assert value(closure, "jawOpen") < value(open_vowel, "jawOpen") or vowel == "IY"


def test_bilabial_off_the_frame_grid_still_closes() -> None:
    segments = utterance(("AA", 0.15), ("M", 0.05), ("AA", 0.15), lead_s=0.31)
    opening = lip_opening(targets_from_phones(segments, frames_for(segments)))
    assert opening.max() > 0.8
    assert opening[round(0.5 * (segments[1].start_s + segments[1].end_s) * FPS)] < 0.1


@pytest.mark.parametrize("labiodental", ["F", "V", "f"])
@pytest.mark.parametrize("duration_s", [0.06, 0.12])
def test_labiodental_tucks_the_lower_lip(labiodental: str, duration_s: float) -> None:
    segments = utterance(("AA", 0.15), (labiodental, duration_s), ("AA", 0.15))
    targets = targets_from_phones(segments, frames_for(segments))
    tuck = at_centre(targets, segments[1])
    vowel = at_centre(targets, segments[0])
    assert value(tuck, "mouthRollLower") > 0.45
    assert value(tuck, "mouthUpperUp") > 0.15  # upper teeth show
    assert value(tuck, "mouthUpperUp") > 2 * value(tuck, "mouthLowerDown")
    assert value(tuck, "mouthLowerDown") < 0.3 * value(vowel, "mouthLowerDown")
    assert value(tuck, "jawOpen") < 0.5 * value(vowel, "jawOpen")
    assert value(vowel, "mouthRollLower") < 0.05


@pytest.mark.parametrize("rounded", ["UW", "OW", "W", "u", "v", "o"])
def test_rounded_phones_funnel_and_pucker(rounded: str) -> None:
    pose = isolated(rounded)
    assert value(pose, "mouthFunnel") + value(pose, "mouthPucker") > 0.6
    assert value(pose, "mouthStretch") == 0.0
    assert value(isolated("AA"), "mouthPucker") == 0.0


@pytest.mark.parametrize("spread", ["IY", "IH", "EY", "i", "ee"])
def test_front_vowels_spread_the_lips(spread: str) -> None:
    pose = isolated(spread)
    stretch, smile = value(pose, "mouthStretch"), value(pose, "mouthSmile")
    assert stretch > 0.15
    assert 0.05 < smile < stretch  # a little smile, less than the stretch
    assert value(pose, "mouthPucker") == 0.0
    assert stretch > 2 * value(isolated("UW"), "mouthStretch")


def test_jaw_opens_with_vowel_openness() -> None:
    jaw = {v: value(isolated(v), "jawOpen") for v in ("AA", "EH", "IY", "a", "e", "i")}
    assert jaw["AA"] > jaw["EH"] + 0.1 > jaw["IY"] + 0.2
    assert jaw["a"] > jaw["e"] > jaw["i"]
    assert jaw["AA"] > 0.5


def test_consonant_borrows_its_jaw_from_the_vowels() -> None:
    def jaw_at_d(vowel: str) -> float:
        segments = utterance((vowel, 0.15), ("D", 0.06), (vowel, 0.15))
        return value(at_centre(targets_from_phones(segments, 30), segments[1]), "jawOpen")

    assert jaw_at_d("AA") > 2 * jaw_at_d("IY")


def test_rounding_spreads_forward_over_consonants() -> None:
    def pucker_on_s(vowel: str) -> float:
        segments = utterance(("S", 0.08), ("T", 0.06), (vowel, 0.2))
        return value(at_centre(targets_from_phones(segments, 30), segments[0]), "mouthPucker")

    assert pucker_on_s("UW") > 0.25
    assert pucker_on_s("IY") == 0.0
    # Anticipation reaches further than carry-over: the S before UW rounds more than the S
    # after it, at the same distance from the vowel.
    before = utterance(("S", 0.08), ("UW", 0.2))
    after = utterance(("UW", 0.2), ("S", 0.08))
    pucker_before = value(at_centre(targets_from_phones(before, 30), before[0]), "mouthPucker")
    pucker_after = value(at_centre(targets_from_phones(after, 30), after[1]), "mouthPucker")
    assert pucker_before > pucker_after


def test_long_silence_is_neutral_and_speech_returns_smoothly() -> None:
    segments = [
        PhoneSegment("sil", 0.0, 1.0),
        *utterance(("HH", 0.08), ("AA", 0.2), ("IY", 0.15), ("UW", 0.15), lead_s=1.0),
        PhoneSegment("sil", 1.58, 3.0),
    ]
    targets = targets_from_phones(segments, 90)
    assert np.all(targets[: round(0.75 * FPS)] == 0.0)  # more than 250 ms before speech
    speech_end = round(1.58 * FPS)
    assert targets[speech_end - 3].max() > 0.3
    assert targets[math.ceil((1.58 + 0.15) * FPS) :].max() < 0.02  # ~neutral within 150 ms
    assert np.all(targets[math.ceil((1.58 + 0.4) * FPS) :] == 0.0)
    steps = np.abs(np.diff(targets[speech_end - 3 :], axis=0)).max(axis=1)
    assert steps.max() < 0.3  # no jump back to neutral
    assert np.all(np.diff(targets[speech_end:, COL["jawOpen"]]) <= 0)  # the jaw closes steadily


def test_no_phones_is_neutral() -> None:
    assert np.all(targets_from_phones([], 10) == 0.0)


def test_shape_dtype_range_and_symmetry() -> None:
    rng = np.random.default_rng(0)
    phones = [*PHONES["en"], *PHONES["zh"], "sil"]
    segments, t = [], 0.05
    for _ in range(200):
        duration = float(rng.uniform(0.03, 0.2))
        segments.append(PhoneSegment(str(rng.choice(phones)), t, t + duration))
        t += duration
    targets = targets_from_phones(segments, 400)
    assert targets.shape == (400, NUM_BLENDSHAPES)
    assert targets.dtype == np.float32
    assert targets.min() >= 0.0 and targets.max() <= 1.0
    assert np.all(np.isfinite(targets))
    lefts = [k for k, n in enumerate(BLENDSHAPE_NAMES) if n.endswith("Left")]
    rights = [COL[BLENDSHAPE_NAMES[k].removesuffix("Left") + "Right"] for k in lefts]
    np.testing.assert_array_equal(targets[:, lefts], targets[:, rights])
    assert targets.max() > 0.5  # the random speech really moved the face


@pytest.mark.parametrize("num_frames", [0, 1, 5, 200])
def test_exact_frame_count_whatever_the_phones_cover(num_frames: int) -> None:
    segments = utterance(("AA", 0.5), ("M", 0.3))  # ends at 1.1 s = frame 33
    targets = targets_from_phones(segments, num_frames)
    assert targets.shape == (num_frames, NUM_BLENDSHAPES)
    if num_frames == 200:
        assert np.all(targets[60:] == 0.0)  # after the phones: rest


def test_segment_order_does_not_matter() -> None:
    segments = utterance(("K", 0.07), ("AE", 0.15), ("T", 0.07))
    np.testing.assert_array_equal(
        targets_from_phones(segments, 25), targets_from_phones(segments[::-1], 25)
    )


def test_frame_times_follow_fps() -> None:
    segments = utterance(("AA", 0.4), lead_s=0.5)
    at_30 = targets_from_phones(segments, 45, fps=30)
    at_60 = targets_from_phones(segments, 90, fps=60)
    np.testing.assert_allclose(at_60[::2], at_30, atol=1e-6)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        (PhoneSegment("XX", 0.0, 0.1), "unknown phone"),
        (PhoneSegment("AA", 0.2, 0.1), "start_s <= end_s"),
        (PhoneSegment("AA", -0.1, 0.1), "start_s <= end_s"),
        (PhoneSegment("AA", 0.0, float("nan")), "finite"),
    ],
)
def test_bad_segments_are_rejected(segment: PhoneSegment, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        targets_from_phones([segment], 10)
    with pytest.raises(ValueError, match=message):
        viseme_track([segment], 10)


def test_bad_sizes_and_styles_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        targets_from_phones([], -1)
    with pytest.raises(ValueError, match="fps"):
        targets_from_phones([], 5, fps=0)
    for style in (NUM_STYLES, -2):
        with pytest.raises(ValueError, match="out of range"):
            targets_from_phones([], 5, style=style)


def test_style_count_matches_the_network() -> None:
    assert DecoderConfig().num_styles == NUM_STYLES


def test_styles_are_fixed_per_subject_and_differ_between_subjects() -> None:
    assert articulation_style(-1) == ArticulationStyle()
    styles = [articulation_style(s) for s in range(NUM_STYLES)]
    assert styles == [articulation_style(s) for s in range(NUM_STYLES)]
    assert len(set(styles)) == NUM_STYLES
    for style in styles:
        for gain in (style.strength, style.jaw, style.rounding, style.spreading, style.crispness):
            assert 0.8 <= gain <= 1.2
        assert abs(style.asymmetry) <= 0.08
        assert abs(style.smile_bias) <= 0.05
    # The draws are spread over their range, not all alike.
    assert np.ptp([s.strength for s in styles]) > 0.2

    segments = utterance(("HH", 0.08), ("AW", 0.2), ("B", 0.06), ("UW", 0.2), ("S", 0.1))
    by_style = [targets_from_phones(segments, 30, style=s) for s in (-1, 0, 1)]
    np.testing.assert_array_equal(by_style[1], targets_from_phones(segments, 30, style=0))
    assert np.abs(by_style[1] - by_style[2]).max() > 0.02
    assert np.abs(by_style[0] - by_style[1]).max() > 0.02
    left, right = COL["mouthSmileLeft"], COL["mouthSmileRight"]
    styled = by_style[1]
    asymmetry = articulation_style(0).asymmetry
    speaking = styled[:, right] > 0.05
    ratio = styled[speaking, left] / styled[speaking, right]
    np.testing.assert_allclose(ratio, (1 + asymmetry) / (1 - asymmetry), rtol=1e-4)


def test_style_gains_act_on_their_shapes() -> None:
    segments = utterance(("AA", 1.0), ("UW", 1.0))  # long: the core reaches the full target
    for s in range(NUM_STYLES):
        style = articulation_style(s)
        targets = targets_from_phones(segments, 80, style=s)
        aa, uw = at_centre(targets, segments[0]), at_centre(targets, segments[1])
        jaw = 0.7 * style.strength * style.jaw  # AA's jawOpen target is 0.7
        assert value(aa, "jawOpen") == pytest.approx(jaw, rel=1e-3)
        pucker = min(0.75 * style.strength * style.rounding, 1.0)  # UW's target is 0.75
        assert value(uw, "mouthPucker") == pytest.approx(pucker, rel=1e-3)


def test_viseme_track_names_the_sounding_viseme() -> None:
    segments = [
        PhoneSegment("M", 0.1, 0.2),
        PhoneSegment("AA", 0.2, 0.4),
        PhoneSegment("sh", 0.5, 0.6),
    ]
    track = viseme_track(segments, 21)
    assert len(track) == 21
    assert track[:3] == ["sil"] * 3  # 0, 33 and 67 ms
    assert track[3:6] == ["PP"] * 3  # 100 .. 167 ms
    assert track[6:12] == ["aa"] * 6  # 200 .. 367 ms
    assert track[12:15] == ["sil"] * 3  # the gap 400 .. 467 ms
    assert track[15:18] == ["CH"] * 3
    assert track[18:] == ["sil"] * 3
    assert viseme_track([], 4) == ["sil"] * 4


def test_viseme_poses_describe_all_fifteen() -> None:
    poses = viseme_poses()
    assert tuple(poses) == VISEMES
    assert poses["sil"] == {}
    for pose in poses.values():
        assert set(pose) <= set(BLENDSHAPE_NAMES)
        assert all(0.0 < v <= 1.0 for v in pose.values())
    assert poses["FF"]["mouthRollLower"] > 0.5
    assert poses["ou"]["mouthPucker"] > poses["oh"]["mouthPucker"]
    assert poses["oh"]["mouthFunnel"] > poses["ou"]["mouthFunnel"]


def test_ten_seconds_take_a_few_milliseconds() -> None:
    rng = np.random.default_rng(1)
    phones = PHONES["en"]
    segments, t = [], 0.1
    while t < 10.0:
        duration = float(rng.uniform(0.04, 0.15))
        segments.append(PhoneSegment(str(rng.choice(phones)), t, t + duration))
        t += duration
    targets_from_phones(segments, 300)  # warm-up
    start = time.perf_counter()
    for _ in range(5):
        targets_from_phones(segments, 300)
    per_call_s = (time.perf_counter() - start) / 5
    assert per_call_s < 0.05  # measured ~4 ms on 2 cores; generous for loaded CI machines
