from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from skimage import data
from typer.testing import CliRunner

from models.blendshapes import BLENDSHAPE_NAMES
from models.checkpoint import save_checkpoint
from models.config import preset_config
from models.pmmtalk import PMMTalk
from pmmtalk.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    # The lite preset itself, so the CLI runs the real default architecture.
    return save_checkpoint(PMMTalk(preset_config("lite")), tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.3 s of stereo 44.1 kHz noise-modulated tone: exercises mixdown and resampling."""
    rate = 44100
    t = np.arange(int(1.3 * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, np.stack([tone, tone * 0.5], axis=1), rate, subtype="PCM_24")
    return path


@pytest.mark.parametrize("suffix", [".json", ".csv", ".npy"])
def test_animate_writes_each_format(
    checkpoint_dir: Path, speech: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"anim{suffix}"
    result = runner.invoke(
        app, ["animate", str(speech), "--checkpoint", str(checkpoint_dir), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    expected_frames = 39  # ceil(1.3 * 44100 * 30 / 44100)
    if suffix == ".json":
        doc = json.loads(out.read_text())
        assert doc["fps"] == 30 and doc["names"] == list(BLENDSHAPE_NAMES)
        frames = np.array(doc["frames"])
        assert doc["duration_s"] == pytest.approx(1.3, abs=1e-3)
    elif suffix == ".csv":
        rows = list(csv.reader(out.open()))
        assert rows[0] == ["frame", "time_s", *BLENDSHAPE_NAMES]
        assert rows[2][:2] == ["1", "0.033333"]
        frames = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    else:
        frames = np.load(out)
    assert frames.shape == (expected_frames, 32)
    assert frames.min() >= 0.0 and frames.max() <= 1.0


def test_animate_with_a_real_photo(checkpoint_dir: Path, speech: Path, tmp_path: Path) -> None:
    import cv2

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "a.npy"
    args = ["animate", str(speech), "--checkpoint", str(checkpoint_dir), "--face", str(photo)]
    result = runner.invoke(app, [*args, "--style", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (39, 32)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("missing.wav", None, "missing.wav"), ("notes.txt", "hello", "audio")],
)
def test_bad_audio_exits_with_a_message(
    checkpoint_dir: Path, tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    audio = tmp_path / name
    if content is not None:
        audio.write_text(content)
    out = tmp_path / "o.json"
    result = runner.invoke(
        app, ["animate", str(audio), "--checkpoint", str(checkpoint_dir), "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and message in result.output
    assert not out.exists()


def test_faceless_photo_exits_with_a_message(
    checkpoint_dir: Path, speech: Path, tmp_path: Path
) -> None:
    import cv2

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    args = ["animate", str(speech), "--checkpoint", str(checkpoint_dir), "--face", str(blank)]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 2
    assert "no face" in result.output


def test_bad_style_suffix_and_checkpoint_are_reported(
    checkpoint_dir: Path, speech: Path, tmp_path: Path
) -> None:
    base = ["animate", str(speech), "--checkpoint", str(checkpoint_dir)]
    result = runner.invoke(app, [*base, "--style", "99", "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 2 and "out of range" in result.output
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "o.mp4")])
    assert result.exit_code == 2 and ".json" in result.output
    result = runner.invoke(
        app, ["animate", str(speech), "--checkpoint", str(tmp_path), "-o", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 2 and "config.json" in result.output


def test_untrained_preset_runs(speech: Path, tmp_path: Path) -> None:
    out = tmp_path / "u.npy"
    result = runner.invoke(app, ["animate", str(speech), "--untrained", "lite", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "lite:untrained" in result.output
    assert np.load(out).shape == (39, 32)
    bad = runner.invoke(app, ["animate", str(speech), "--untrained", "huge", "-o", str(out)])
    assert bad.exit_code == 2


def test_train_fine_tuning_needs_both_init_and_data(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--init", str(tmp_path)])
    assert result.exit_code == 2
    assert "--data" in result.output
    result = runner.invoke(app, ["train", "--data", f"plain:{tmp_path}"])
    assert result.exit_code == 2


def test_train_rejects_an_unknown_data_kind(checkpoint_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--init", str(checkpoint_dir), "--data", f"mocap:{tmp_path}"]
    )
    assert result.exit_code == 2
    assert "KIND:DIR" in result.output


def test_train_rejects_an_unknown_recipe() -> None:
    result = runner.invoke(app, ["train", "--recipe", "huge"])
    assert result.exit_code == 2
    assert "default" in result.output


def test_eval_explains_a_bad_ablation_argument(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--corpus", str(tmp_path), "--ablation", "notext"])
    assert result.exit_code == 2
    assert "NAME=DIR" in result.output


def test_eval_names_a_missing_corpus(checkpoint_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["eval", "--corpus", str(tmp_path / "nowhere"), "--checkpoint", str(checkpoint_dir)]
    )
    assert result.exit_code == 2
    assert "nowhere" in result.output
