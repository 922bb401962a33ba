"""Writing an animation through a profile in each format, and `pmmtalk animate --profile`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.blendshapes import BLENDSHAPE_NAMES
from pmmtalk.animate import Animation
from pmmtalk.cli import app
from pmmtalk.rigs import PROFILES, UnknownProfileError
from pmmtalk.rigs.formats import format_for_path, profile_for_format, write_rig_animation
from pmmtalk.rigs.talkinghead import talkinghead_anim

SAMPLE_WAV = Path(__file__).resolve().parents[3] / "samples" / "hello.wav"
runner = CliRunner()


@pytest.fixture
def animation() -> Animation:
    frames = np.random.default_rng(8).random((12, 32), dtype=np.float32)
    return Animation(frames, 30, BLENDSHAPE_NAMES, 0.4, "test:model")


@pytest.mark.parametrize(
    ("path", "requested", "expected"),
    [
        ("a.json", "auto", "json"),
        ("a.CSV", "auto", "csv"),
        ("a.npy", "auto", "npy"),
        ("take.llf.csv", "auto", "livelink_csv"),
        ("anim.json", "talkinghead", "talkinghead"),
    ],
)
def test_formats_come_from_the_suffix_or_the_request(
    path: str, requested: str, expected: str
) -> None:
    assert format_for_path(path, requested) == expected


def test_unknown_formats_and_suffixes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"use \.json, \.csv, \.npy or \.llf\.csv"):
        format_for_path("out.mp4")
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        format_for_path("out.json", "xml")


def test_the_livelink_csv_takes_only_the_livelink_profile() -> None:
    assert profile_for_format("livelink_csv", "arkit32") == "livelink61"
    assert profile_for_format("livelink_csv", "livelink61") == "livelink61"
    assert profile_for_format("json", "visemes15") == "visemes15"
    with pytest.raises(UnknownProfileError, match="fixed columns"):
        profile_for_format("livelink_csv", "visemes15")


def test_a_talkinghead_anim_puts_value_i_at_frame_time_i() -> None:
    frames = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], dtype=np.float32)
    anim = talkinghead_anim(("jawOpen", "mouthClose"), frames)
    assert anim["name"] == "pmmtalk"
    assert anim["dt"] == [0.0, pytest.approx(1000 / 30), pytest.approx(1000 / 30)]
    # TalkingHead reaches vs[k] at the end of dt[k]: at 0, 33.3 and 66.7 ms
    assert np.cumsum(anim["dt"]) == pytest.approx([0, 1000 / 30, 2000 / 30])
    assert anim["vs"] == {"jawOpen": [0.1, 0.3, 0.5], "mouthClose": [0.2, 0.4, 0.6]}
    assert talkinghead_anim(("a",), np.zeros((0, 1))) == {
        "name": "pmmtalk",
        "dt": [],
        "vs": {"a": []},
    }


def test_each_format_is_written_with_the_profile_channels(
    animation: Animation, tmp_path: Path
) -> None:
    out = write_rig_animation(animation, tmp_path / "a.json", "arkit52")
    document = json.loads(out.read_text())
    assert document["names"] == list(PROFILES["arkit52"].names)
    assert np.asarray(document["frames"]).shape == (12, 52)

    out = write_rig_animation(animation, tmp_path / "v.csv", "visemes15")
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["frame", "time_s", *PROFILES["visemes15"].names] and len(rows) == 13

    out = write_rig_animation(animation, tmp_path / "a.npy", "livelink61")
    assert np.load(out).shape == (12, 61)

    out = write_rig_animation(animation, tmp_path / "take.llf.csv")
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"] and len(rows) == 13

    out = write_rig_animation(animation, tmp_path / "th.json", "visemes15", "talkinghead")
    anim = json.loads(out.read_text())
    assert set(anim) == {"name", "dt", "vs"} and list(anim["vs"]) == list(
        PROFILES["visemes15"].names
    )
    assert all(len(v) == 12 for v in anim["vs"].values())

    with pytest.raises(ValueError, match=r"needs the \.json suffix"):
        write_rig_animation(animation, tmp_path / "a.csv", "arkit32", "json")


def test_pmmtalk_animate_writes_profiles_and_refuses_unknown_ones(tmp_path: Path) -> None:
    base = ["animate", str(SAMPLE_WAV), "--backend", "torch", "--device", "cpu"]
    plain = runner.invoke(app, [*base, "-o", str(tmp_path / "a.json")])
    assert plain.exit_code == 0, plain.output
    wide = runner.invoke(app, [*base, "--profile", "arkit52", "-o", str(tmp_path / "b.json")])
    assert wide.exit_code == 0, wide.output
    frames32 = np.asarray(json.loads((tmp_path / "a.json").read_text())["frames"])
    frames52 = np.asarray(json.loads((tmp_path / "b.json").read_text())["frames"])
    names52 = list(PROFILES["arkit52"].names)
    np.testing.assert_allclose(
        frames52[:, [names52.index(n) for n in BLENDSHAPE_NAMES]], frames32, atol=1e-6
    )

    llf = runner.invoke(app, [*base, "-o", str(tmp_path / "take.llf.csv")])
    assert llf.exit_code == 0, llf.output
    assert (tmp_path / "take.llf.csv").read_text().startswith("Timecode,BlendShapeCount,")

    bad = runner.invoke(app, [*base, "--profile", "arkit99", "-o", str(tmp_path / "c.json")])
    assert bad.exit_code == 2 and "arkit32, arkit52, livelink61, visemes15" in bad.output
    assert not (tmp_path / "c.json").exists()
