"""Live Link Face CSV takes: the app's header and rows, read back by the project's reader."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from models.blendshapes import BLENDSHAPE_NAMES
from models.data.livelink import read_livelink_csv
from pmmtalk.rigs import RigConfig
from pmmtalk.rigs.llf_csv import timecode, write_livelink_csv

# The app's export header (docs/rigs.md): Apple's order except JawRight,JawLeft and
# MouthRight,MouthLeft.
APP_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,"
    "EyeLookUpLeft,EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,"
    "EyeLookOutRight,EyeLookUpRight,EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,"
    "JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,MouthSmileLeft,"
    "MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
    "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,"
    "MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,"
    "BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,"
    "TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,"
    "RightEyePitch,RightEyeRoll"
)


def take(count: int = 40, seed: int = 4) -> tuple[np.ndarray, str]:
    frames32 = np.random.default_rng(seed).random((count, 32), dtype=np.float32)
    out = io.StringIO()
    write_livelink_csv(RigConfig.default().mapper("livelink61")(frames32), out)
    return frames32, out.getvalue()


def test_header_and_rows_follow_the_app() -> None:
    frames32, text = take()
    rows = list(csv.reader(io.StringIO(text)))
    assert ",".join(rows[0]) == APP_HEADER
    assert len(rows) == 41 and all(len(row) == 63 for row in rows)
    assert [row[0] for row in rows[1:3]] == ["00:00:00:00.000", "00:00:00:01.000"]
    assert rows[30][0] == "00:00:00:29.000" and rows[31][0] == "00:00:01:00.000"
    assert all(row[1] == "61" for row in rows[1:])
    header = rows[0]
    for i in (0, 17, 39):
        row = rows[i + 1]
        for k, name in enumerate(BLENDSHAPE_NAMES):
            cell = row[header.index(name[0].upper() + name[1:])]
            assert float(cell) == pytest.approx(float(frames32[i, k]), abs=5e-7)
        assert float(row[header.index("EyeBlinkLeft")]) == 0.0
        assert float(row[header.index("HeadYaw")]) == 0.0


def test_the_projects_reader_reads_it_back(tmp_path: Path) -> None:
    frames32, text = take(count=75)
    path = tmp_path / "take.csv"
    path.write_text(text)
    times, values, names = read_livelink_csv(path, fps_in=30)
    np.testing.assert_allclose(np.diff(times), 1 / 30, atol=1e-9)
    assert len(names) == 61
    columns = [names.index(name) for name in BLENDSHAPE_NAMES]
    np.testing.assert_allclose(values[:, columns], frames32, atol=5e-7)


def test_timecodes_roll_over_and_refuse_negative_frames() -> None:
    assert timecode(30 * 3600 + 30 * 61 + 7) == "01:01:01:07.000"
    assert timecode(25 * 3600 * 30) == "25:00:00:00.000"
    with pytest.raises(ValueError, match=">= 0"):
        timecode(-1)


def test_other_widths_are_refused() -> None:
    with pytest.raises(ValueError, match="livelink61"):
        write_livelink_csv(np.zeros((2, 52)), io.StringIO())
