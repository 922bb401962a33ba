"""Each rig profile's channels (names, order, count) and mapping, checked against docs/rigs.md."""

from __future__ import annotations

import numpy as np
import pytest

from models.blendshapes import BLENDSHAPE_NAMES
from models.corpus.visemes import viseme_poses
from pmmtalk.errors import InputError
from pmmtalk.rigs import PROFILES, UnknownProfileError, get_profile
from pmmtalk.rigs.profiles import OCULUS_VISEMES

# Apple's ARFaceAnchor.BlendShapeLocation order, as docs/rigs.md lists it (written out here
# rather than imported, so a reordering in the code fails this test).
APPLE_ORDER = [
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
]
ROTATIONS = [
    "HeadYaw",
    "HeadPitch",
    "HeadRoll",
    "LeftEyeYaw",
    "LeftEyePitch",
    "LeftEyeRoll",
    "RightEyeYaw",
    "RightEyePitch",
    "RightEyeRoll",
]
VISEMES = [
    "viseme_sil",
    "viseme_PP",
    "viseme_FF",
    "viseme_TH",
    "viseme_DD",
    "viseme_kk",
    "viseme_CH",
    "viseme_SS",
    "viseme_nn",
    "viseme_RR",
    "viseme_aa",
    "viseme_E",
    "viseme_I",
    "viseme_O",
    "viseme_U",
]
INDEX = {name: k for k, name in enumerate(BLENDSHAPE_NAMES)}


def frame(**values: float) -> np.ndarray:
    """(1, 32) with the named shapes set; a name without Left/Right sets both sides."""
    out = np.zeros((1, 32), dtype=np.float32)
    for name, value in values.items():
        for full in (name, f"{name}Left", f"{name}Right"):
            if full in INDEX:
                out[0, INDEX[full]] = value
    return out


def random_frames(count: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 32), dtype=np.float32)


def test_the_profiles_and_their_channels() -> None:
    assert list(PROFILES) == ["arkit32", "arkit52", "livelink61", "visemes15"]
    assert get_profile("arkit32").names == BLENDSHAPE_NAMES
    assert list(get_profile("arkit52").names) == APPLE_ORDER
    livelink = get_profile("livelink61").names
    assert len(livelink) == 61
    assert list(livelink[:52]) == [n[0].upper() + n[1:] for n in APPLE_ORDER]
    assert list(livelink[52:]) == ROTATIONS
    assert list(get_profile("visemes15").names) == VISEMES
    for profile in PROFILES.values():
        assert len(set(profile.names)) == len(profile.names), profile.name


def test_arkit32_is_the_network_output_unchanged() -> None:
    frames = random_frames()
    np.testing.assert_array_equal(get_profile("arkit32").map(frames), frames)


@pytest.mark.parametrize("name", ["arkit52", "livelink61"])
def test_each_shape_lands_in_its_named_slot_and_the_rest_is_zero(name: str) -> None:
    profile = get_profile(name)
    frames = random_frames()
    out = profile.map(frames)
    assert out.shape == (50, len(profile.names)) and out.dtype == np.float32
    lower = [n.lower() for n in profile.names]
    placed = set()
    for k, shape in enumerate(BLENDSHAPE_NAMES):
        slot = lower.index(shape.lower())
        np.testing.assert_array_equal(out[:, slot], frames[:, k])
        placed.add(slot)
    others = [c for c in range(len(profile.names)) if c not in placed]
    assert len(others) == len(profile.names) - 32
    assert not out[:, others].any()
    # jawOpen, index 3 of the network's order, is index 17 in Apple's.
    jaw = profile.map(frame(jawOpen=0.7))
    assert jaw[0, 17] == pytest.approx(0.7) and np.count_nonzero(jaw) == 1


def test_jaw_and_mouth_sides_follow_names_not_positions() -> None:
    # The network's order has jawRight before jawLeft; Apple's has jawLeft first.
    out = get_profile("arkit52").map(frame(jawLeft=0.3, mouthRight=0.6))
    assert out[0, APPLE_ORDER.index("jawLeft")] == pytest.approx(0.3)
    assert out[0, APPLE_ORDER.index("jawRight")] == 0
    assert out[0, APPLE_ORDER.index("mouthRight")] == pytest.approx(0.6)


def test_a_neutral_frame_is_all_silence() -> None:
    out = get_profile("visemes15").map(np.zeros((3, 32), dtype=np.float32))
    np.testing.assert_array_equal(out[:, 0], 1.0)
    assert not out[:, 1:].any()


def test_a_closed_lips_frame_reads_as_pp() -> None:
    # Lips pressed and sealed while the jaw is a little open, as /p b m/ between vowels.
    closed = frame(mouthClose=0.2, mouthPress=0.35, jawOpen=0.2, mouthRollLower=0.1)
    out = get_profile("visemes15").map(closed)[0]
    assert VISEMES[int(np.argmax(out))] == "viseme_PP"
    assert out[VISEMES.index("viseme_PP")] > 0.5
    # The same jaw with the lips apart is no PP.
    open_jaw = get_profile("visemes15").map(frame(jawOpen=0.2, mouthLowerDown=0.08))[0]
    assert out[VISEMES.index("viseme_PP")] > 5 * open_jaw[VISEMES.index("viseme_PP")]


@pytest.mark.parametrize("viseme", OCULUS_VISEMES[1:])
def test_each_training_viseme_pose_comes_back_as_its_viseme(viseme: str) -> None:
    pose = frame(**viseme_poses()[viseme])
    if viseme == "PP":
        pose = frame(**viseme_poses()[viseme], jawOpen=0.15, mouthClose=0.15)
    out = get_profile("visemes15").map(pose)[0]
    k = OCULUS_VISEMES.index(viseme)
    assert int(np.argmax(out)) == k, dict(zip(VISEMES, out.round(2).tolist(), strict=True))
    # Look-alike visemes (DD, nn, kk) may share the weight, but the pose is rebuilt: little
    # is left to silence.
    assert out[0] < 0.2


def test_viseme_weights_scale_with_the_frame_and_stay_non_negative() -> None:
    aa = frame(**viseme_poses()["aa"])
    half = get_profile("visemes15").map(0.5 * aa)[0]
    full = get_profile("visemes15").map(aa)[0]
    k = OCULUS_VISEMES.index("aa")
    assert half[k] == pytest.approx(0.5 * full[k], abs=0.02)
    assert half[0] == pytest.approx(1 - half[1:].sum(), abs=1e-5)  # sil takes the rest
    many = get_profile("visemes15").map(random_frames(200, seed=3) * 0.6)
    assert many.min() >= 0.0 and np.isfinite(many).all()


def test_frames_of_another_width_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(T, 32\)"):
        get_profile("arkit52").map(np.zeros((4, 52), dtype=np.float32))


def test_an_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(UnknownProfileError, match="arkit32, arkit52, livelink61, visemes15"):
        get_profile("arkit51")
    with pytest.raises(InputError, match="format=talkinghead"):
        get_profile("talkinghead")
