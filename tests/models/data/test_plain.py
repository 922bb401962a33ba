from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.blendshapes import num_frames
from models.data.plain import PlainDataset

SR = 16_000


def write_pair(root: Path, stem: str, samples: int, frames: int, fmt: str = "wav") -> None:
    """Audio of ``samples`` at 16 kHz and (frames, 32) targets whose row k is k."""
    path = root / f"{stem}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(samples) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * 300 * t), SR)
    rows = np.repeat(np.arange(frames, dtype=np.float64)[:, None], 32, axis=1)
    np.save(root / f"{stem}.npy", rows)  # float64 on purpose: the reader converts


def test_reads_pairs_recursively(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", 16_000, 30)
    write_pair(tmp_path, "sub/b", 8000, 15, fmt="flac")
    write_pair(tmp_path, "c", 4000, 8, fmt="ogg")
    dataset = PlainDataset(tmp_path, language="zh", style=3)
    assert len(dataset) == 3 and dataset.sample_counts == (16_000, 4000, 8000)
    clip = dataset[2]
    assert clip.id == "sub/b" and clip.source == "plain" and clip.language == "zh"
    assert clip.style == 3 and clip.phones is None
    assert clip.wave.shape == (8000,) and clip.targets.dtype == np.float32
    np.testing.assert_array_equal(clip.targets[:, 5], np.arange(15))


@pytest.mark.parametrize("frames", [13, 17])
def test_small_mismatches_are_fixed_and_logged(
    tmp_path: Path, frames: int, caplog: pytest.LogCaptureFixture
) -> None:
    write_pair(tmp_path, "a", 8000, frames)  # 8000 samples need 15 frames
    with caplog.at_level(logging.INFO, logger="models.data.plain"):
        dataset = PlainDataset(tmp_path)
    assert f"a.npy: {frames} frames for 15 expected" in caplog.text
    targets = dataset[0].targets
    assert targets.shape == (num_frames(8000, SR), 32)
    expected = np.minimum(np.arange(15), frames - 1)  # padding repeats the last frame
    np.testing.assert_array_equal(targets[:, 0], expected)


def test_large_mismatch_is_an_error(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", 8000, 18)
    with pytest.raises(ValueError, match=r"a\.npy has 18 frames but .*a\.wav .* needs 15"):
        PlainDataset(tmp_path)


def test_bad_layouts_are_explained(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", 8000, 15)
    np.save(tmp_path / "a.npy", np.zeros((15, 31)))
    with pytest.raises(ValueError, match=r"a\.npy has shape \(15, 31\), expected \(T, 32\)"):
        PlainDataset(tmp_path)
    (tmp_path / "a.npy").unlink()
    with pytest.raises(ValueError, match=r"1 audio file\(s\) have no same-stem \.npy"):
        PlainDataset(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no audio files"):
        PlainDataset(empty)
