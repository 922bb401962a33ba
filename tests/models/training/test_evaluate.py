"""Evaluation rows and the two baselines."""

from __future__ import annotations

import numpy as np
import pytest

from models.blendshapes import num_frames
from models.data.batch import Clip
from models.training.evaluate import (
    JAW_OPEN,
    envelope_db,
    envelope_predictor,
    evaluate,
    fit_envelope_jaw,
    markdown_table,
    mean_pose,
    mean_pose_predictor,
)


def _clip(name: str, language: str, style: int, seed: int) -> Clip:
    """Bursts of noise; jawOpen follows their loudness, as speech drives the jaw."""
    rng = np.random.default_rng(seed)
    samples = 16000
    frames = num_frames(samples, 16000)
    on = (np.arange(samples) // 4000) % 2 == 0  # 0.25 s on, 0.25 s off
    wave = (0.3 * rng.standard_normal(samples) * on).astype(np.float32)
    targets = np.full((frames, 32), 0.05, dtype=np.float32)
    frame_on = on[np.arange(frames) * 16000 // 30]
    targets[:, JAW_OPEN] = np.where(frame_on, 0.6, 0.0)
    return Clip(name, wave, targets, language, style, None, "test")  # type: ignore[arg-type]


def test_envelope_follows_loudness() -> None:
    clip = _clip("a", "en", 0, 0)
    level = envelope_db(clip.wave, clip.targets.shape[0])
    loud = level[clip.targets[:, JAW_OPEN] > 0.3]
    quiet = level[clip.targets[:, JAW_OPEN] < 0.3]
    assert loud.min() > quiet.max()


def test_envelope_baseline_beats_mean_pose_and_rows_cover_groups() -> None:
    train = [_clip(f"t{i}", "en", i % 2, i) for i in range(4)]
    test = [_clip("x0", "en", -1, 10), _clip("x1", "zh", 0, 11)]
    pose = mean_pose(train)
    assert pose[0] == pytest.approx(0.05)
    slope, intercept = fit_envelope_jaw(train)
    assert slope > 0
    rows = evaluate(
        {
            "mean pose": mean_pose_predictor(pose),
            "envelope jaw": envelope_predictor(pose, slope, intercept),
            "truth": lambda clip: clip.targets,
        },
        test,
        progress=False,
    )
    by = {(r.predictor, r.group): r for r in rows}
    assert by[("truth", "all")].ale == 0.0
    assert by[("envelope jaw", "all")].ale < 0.5 * by[("mean pose", "all")].ale
    assert by[("mean pose", "held-out voices")].clips == 1
    assert by[("mean pose", "zh")].frames == test[1].targets.shape[0]
    table = markdown_table(rows, groups=["all"])
    assert table.count("\n") == 4  # header, rule, three predictors


def test_a_predictor_with_the_wrong_frame_count_is_reported() -> None:
    clip = _clip("a", "en", 0, 0)
    with pytest.raises(ValueError, match="expected"):
        evaluate({"short": lambda c: c.targets[:-1]}, [clip], progress=False)
