from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from models.blendshapes import BLENDSHAPE_NAMES, num_frames
from models.data.livelink import (
    ARKIT_BLENDSHAPE_NAMES,
    LiveLinkDataset,
    parse_timecode,
    read_livelink_csv,
    to_project_frames,
)

SR = 16_000
ROTATIONS = (
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
START_S = 14 * 3600 + 27 * 60 + 53  # 14:27:53:00


def jaw(t: npt.ArrayLike) -> np.ndarray:
    return 0.5 + 0.4 * np.sin(2 * np.pi * 1.5 * np.asarray(t, dtype=np.float64))


def close(t: npt.ArrayLike) -> np.ndarray:
    return 0.25 * np.asarray(t, dtype=np.float64)  # linear: interpolation bridges a gap exactly


def pascal(name: str) -> str:
    return name[0].upper() + name[1:]


def timecode(row: int, fps: int = 60) -> str:
    seconds, frame = divmod(row, fps)
    s = 53 + seconds
    return f"14:27:{s:02d}:{frame:02d}.000"


def write_take(
    path: Path,
    rows: int = 72,
    drop: tuple[int, ...] = (),
    omit: tuple[str, ...] = (),
    times: list[str] | None = None,
) -> None:
    """A 60 fps take, columns shuffled; jawOpen and mouthClose follow known curves of time, every
    other shape is constant at its ARKit index / 100."""
    names = [pascal(n) for n in ARKIT_BLENDSHAPE_NAMES if pascal(n) not in omit] + list(ROTATIONS)
    order = np.random.default_rng(7).permutation(len(names))
    names = [names[i] for i in order]
    lines = [",".join(["Timecode", "BlendShapeCount", *names])]
    for row in range(rows):
        if row in drop:
            continue
        t = row / 60
        cells = []
        for name in names:
            if name == "JawOpen":
                cells.append(f"{float(jaw(t)):.6f}")
            elif name == "MouthClose":
                cells.append(f"{float(close(t)):.6f}")
            elif name in ROTATIONS:
                cells.append("0.1")
            else:
                cells.append(
                    f"{[n.lower() for n in ARKIT_BLENDSHAPE_NAMES].index(name.lower()) / 100}"
                )
        stamp = times[row] if times is not None else timecode(row)
        lines.append(",".join([stamp, "61", *cells]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_parse_timecode_reads_the_frame_and_subframe() -> None:
    assert parse_timecode("14:27:53:07.533", 60.0) == pytest.approx(START_S + 7.533 / 60)
    assert parse_timecode("00:00:01:15", 30.0) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="frame field must be below fps_in=30"):
        parse_timecode("00:00:01:45.000", 30.0)


def test_read_maps_names_to_arkit_camel_case_in_any_column_order(tmp_path: Path) -> None:
    path = tmp_path / "take.csv"
    write_take(path, rows=10)
    times, values, names = read_livelink_csv(path)
    assert values.shape == (10, 61) and times.shape == (10,)
    assert set(ARKIT_BLENDSHAPE_NAMES) <= set(names) and "HeadYaw" in names
    np.testing.assert_allclose(times - times[0], np.arange(10) / 60, atol=1e-9)
    assert times[0] == pytest.approx(START_S)
    np.testing.assert_allclose(
        values[:, names.index("jawOpen")], jaw(np.arange(10) / 60), atol=1e-6
    )
    assert values[0, names.index("noseSneerRight")] == pytest.approx(0.50)


def test_resampling_to_30_fps_bridges_dropped_rows_by_time(tmp_path: Path) -> None:
    path = tmp_path / "take.csv"
    write_take(path, rows=72, drop=(20, 41))  # row 20 falls on frame 10; row 41 between frames
    times, values, names = read_livelink_csv(path)
    assert values.shape[0] == 70
    frames = to_project_frames(times, values, names, 36)
    assert frames.shape == (36, len(BLENDSHAPE_NAMES)) and frames.dtype == np.float32
    t = np.arange(36) / 30
    jaw_col, close_col = BLENDSHAPE_NAMES.index("jawOpen"), BLENDSHAPE_NAMES.index("mouthClose")
    # The linear curve survives the gap exactly: rows are placed by timecode, not by index.
    np.testing.assert_allclose(frames[:, close_col], close(t), atol=1e-6)
    # Frame 10 (row 20, dropped) is the mean of rows 19 and 21; every other frame is a real row.
    expected = jaw(t)
    expected[10] = (jaw(19 / 60) + jaw(21 / 60)) / 2
    np.testing.assert_allclose(frames[:, jaw_col], expected, atol=1e-6)
    noses = BLENDSHAPE_NAMES.index("noseSneerLeft")
    np.testing.assert_allclose(frames[:, noses], 0.49, atol=1e-7)


def test_resampling_holds_edge_values_and_applies_the_start_offset(tmp_path: Path) -> None:
    path = tmp_path / "take.csv"
    write_take(path, rows=61)  # 0 .. 1.0 s
    times, values, names = read_livelink_csv(path)
    col = BLENDSHAPE_NAMES.index("mouthClose")
    shifted = to_project_frames(times, values, names, 30, start_s=0.2)
    np.testing.assert_allclose(shifted[:24, col], close(0.2 + np.arange(24) / 30), atol=1e-6)
    np.testing.assert_allclose(shifted[25:, col], close(1.0), atol=1e-6)  # held
    early = to_project_frames(times, values, names, 3, start_s=-0.5)
    np.testing.assert_allclose(early[:, col], 0.0, atol=1e-7)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "take.csv"
    write_take(path, rows=5, omit=("JawOpen", "CheekPuff", "EyeBlinkLeft"))
    times, values, names = read_livelink_csv(path)
    with pytest.raises(
        ValueError, match=r"lacks 2 of the project's 32 blendshapes: jawOpen, cheekPuff"
    ):
        to_project_frames(times, values, names, 3)


def test_bad_timecodes_name_the_line(tmp_path: Path) -> None:
    stamps = [timecode(r) for r in range(6)]
    backwards = stamps.copy()
    backwards[3], backwards[4] = stamps[4], stamps[3]
    path = tmp_path / "back.csv"
    write_take(path, rows=6, times=backwards)
    with pytest.raises(ValueError, match=r"back\.csv:6: timecode 14:27:53:03\.000 is not later"):
        read_livelink_csv(path)
    garbled = stamps.copy()
    garbled[2] = "14:27:5x:02.000"
    path = tmp_path / "garbled.csv"
    write_take(path, rows=6, times=garbled)
    with pytest.raises(ValueError, match=r"garbled\.csv:4: timecode '14:27:5x:02\.000' is not"):
        read_livelink_csv(path)


def test_a_take_across_midnight_keeps_counting(tmp_path: Path) -> None:
    path = tmp_path / "midnight.csv"
    write_take(path, rows=3, times=["23:59:59:58.000", "23:59:59:59.000", "00:00:00:00.000"])
    times, _, _ = read_livelink_csv(path)
    np.testing.assert_allclose(np.diff(times), [1 / 60, 1 / 60], atol=1e-9)


def write_audio(path: Path, seconds: float, sr: int = SR) -> None:
    t = np.arange(round(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), sr, subtype="PCM_16")


def test_dataset_pairs_takes_with_audio_and_follows_the_frame_contract(tmp_path: Path) -> None:
    take_dir = tmp_path / "slate_1"
    take_dir.mkdir()
    write_take(take_dir / "slate_1.csv", rows=80, drop=(30,))
    write_audio(take_dir / "slate_1.wav", 1.0, sr=44_100)
    (take_dir / "slate_1_cal.csv").write_text("not a take\n")  # calibration: skipped
    dataset = LiveLinkDataset(tmp_path, audio_offset_s=0.1, language="en")
    assert len(dataset) == 1 and dataset.sample_counts == (SR,)
    clip = dataset[0]
    assert clip.id == "slate_1/slate_1" and clip.source == "livelink" and clip.language == "en"
    assert clip.wave.shape[0] == SR and clip.style == -1 and clip.phones is None
    assert clip.targets.shape == (num_frames(SR, SR), 32)
    t = 0.1 + np.arange(30) / 30
    col = BLENDSHAPE_NAMES.index("mouthClose")
    np.testing.assert_allclose(clip.targets[:, col], close(t), atol=1e-6)


def test_dataset_errors_on_missing_audio_and_columns(tmp_path: Path) -> None:
    write_take(tmp_path / "lonely.csv", rows=4)
    with pytest.raises(ValueError, match=r"lonely\.csv has no paired audio: expected lonely\.wav"):
        LiveLinkDataset(tmp_path)
    write_audio(tmp_path / "lonely.wav", 0.1)
    write_take(tmp_path / "lonely.csv", rows=4, omit=("MouthPucker",))
    with pytest.raises(ValueError, match=r"lonely\.csv: the capture lacks 1 .*: mouthPucker"):
        LiveLinkDataset(tmp_path)
    write_take(tmp_path / "lonely.csv", rows=4)
    assert len(LiveLinkDataset(tmp_path)) == 1
