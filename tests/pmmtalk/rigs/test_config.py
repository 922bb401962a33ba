"""Per-profile gain, offset and clamp: the TOML format of docs/rigs.md and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pmmtalk.rigs import PROFILES, RigConfig, RigConfigError
from pmmtalk.rigs.config import TEMPLATE_PATH, parse_rig_config

JAW_OPEN_32 = 3
JAW_OPEN_52 = 17


def frames(value: float) -> np.ndarray:
    return np.full((4, 32), value, dtype=np.float32)


def test_the_defaults_change_nothing() -> None:
    rigs = RigConfig.default()
    x = np.random.default_rng(1).random((20, 32), dtype=np.float32)
    np.testing.assert_array_equal(rigs.mapper("arkit32")(x), x)
    np.testing.assert_array_equal(rigs.mapper("arkit52")(x), PROFILES["arkit52"].map(x))


def test_the_bundled_template_parses_to_the_defaults() -> None:
    template = RigConfig.load(TEMPLATE_PATH)
    assert template.source == TEMPLATE_PATH
    x = np.random.default_rng(2).random((10, 32), dtype=np.float32)
    for name in PROFILES:
        np.testing.assert_array_equal(
            template.mapper(name)(x), RigConfig.default().mapper(name)(x), err_msg=name
        )


def test_profile_and_channel_settings_apply_and_the_clamp_comes_last() -> None:
    rigs = parse_rig_config(
        """
        [arkit52]
        gain = 2.0
        offset = 0.1
        clamp = [0.0, 0.9]

        [arkit52.channels]
        jawOpen = { gain = 0.5 }
        mouthClose = { offset = -0.7, clamp = [-1.0, 1.0] }
        """
    )
    out = rigs.mapper("arkit52")(frames(0.3))
    names = PROFILES["arkit52"].names
    assert out.shape == (4, 52)
    # jawOpen: its own gain, the profile's offset and clamp: 0.5 * 0.3 + 0.1
    assert out[0, JAW_OPEN_52] == pytest.approx(0.25)
    # mouthSmileLeft: 2 * 0.3 + 0.1 = 0.7
    assert out[0, names.index("mouthSmileLeft")] == pytest.approx(0.7)
    # mouthClose: 2 * 0.3 - 0.7 = -0.1, kept by its own clamp
    assert out[0, names.index("mouthClose")] == pytest.approx(-0.1)
    # eyeBlinkLeft is 0 from the mapping: 2 * 0 + 0.1
    assert out[0, names.index("eyeBlinkLeft")] == pytest.approx(0.1)
    # large values hit the profile's clamp after gain and offset: 2 * 0.6 + 0.1 > 0.9
    assert out.max() <= 0.9
    assert rigs.mapper("arkit52")(frames(0.6))[0, names.index("mouthSmileLeft")] == (
        pytest.approx(0.9)
    )
    # other profiles keep their defaults
    np.testing.assert_array_equal(rigs.mapper("arkit32")(frames(0.3)), frames(0.3))


def test_a_livelink_rotation_can_carry_an_offset() -> None:
    rigs = parse_rig_config(
        "[livelink61.channels]\nHeadPitch = { offset = -0.05, clamp = [-1, 1] }"
    )
    out = rigs.mapper("livelink61")(frames(0.2))
    assert out[0, PROFILES["livelink61"].names.index("HeadPitch")] == pytest.approx(-0.05)


def test_a_file_is_read_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "rigs.toml"
    path.write_text("[arkit32.channels]\njawOpen = { gain = 0.5 }\n")
    out = RigConfig.load(path).mapper("arkit32")(frames(0.8))
    assert out[0, JAW_OPEN_32] == pytest.approx(0.4) and out[0, 0] == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[arkit52\ngain = 1", "not valid TOML"),
        ("[arkit25]\ngain = 1.0", r"unknown profile \[arkit25\]; the profiles are arkit32"),
        ("arkit52 = 3", "must be a table"),
        ("[arkit52]\ngian = 1.0", "unknown key 'gian'"),
        ("[arkit52]\ngain = 'high'", "gain must be a finite number"),
        ("[arkit52]\ngain = true", "gain must be a finite number"),
        ("[arkit52]\noffset = nan", "offset must be a finite number"),
        ("[arkit52]\nclamp = [0.5]", "clamp must be two numbers"),
        ("[arkit52]\nclamp = [0.8, 0.2]", "clamp low 0.8 is above clamp high 0.2"),
        ("[arkit52]\nchannels = 2", "channels must be a table"),
        ("[arkit52.channels]\nJawOpen = { gain = 1 }", "did you mean jawOpen"),
        ("[visemes15.channels]\nviseme_X = { gain = 1 }", "visemes15 has no channel 'viseme_X'"),
        ("[arkit52.channels]\njawOpen = 1.2", r"jawOpen must be a table such as \{ gain"),
        ("[arkit52.channels]\njawOpen = { scale = 1 }", "unknown key 'scale'"),
    ],
)
def test_mistakes_name_the_file_and_the_key(text: str, match: str) -> None:
    with pytest.raises(RigConfigError, match=match) as caught:
        parse_rig_config(text, Path("rigs.toml"))
    assert str(caught.value).startswith("rigs.toml")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RigConfigError, match="cannot read the rig profile file"):
        RigConfig.load(tmp_path / "nope.toml")
