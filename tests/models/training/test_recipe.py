"""Recipe plumbing: finished stages are skipped with their weights restored; fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models.blendshapes import num_frames
from models.checkpoint import load_checkpoint, read_config, save_checkpoint
from models.config import PMMTalkConfig
from models.pmmtalk import PMMTalk
from models.training.recipe import (
    RECIPES,
    StageLog,
    _run_stage,
    finetune,
    open_dataset,
    rendered_face,
)
from models.training.trainer import TrainConfig
from pmmtalk.animate import DEFAULT_CHECKPOINT_DIR


def test_a_finished_stage_is_skipped_and_its_weights_restored(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = PMMTalk(tiny_config)
    calls: list[int] = []

    def body() -> dict[str, float]:
        calls.append(1)
        with torch.no_grad():
            model.decoder.style_table.weight.fill_(0.25)
        return {"figure": 1.5}

    log = StageLog()
    _run_stage(tmp_path, "stage", model, log, body)
    assert calls == [1]

    torch.manual_seed(1)
    fresh = PMMTalk(tiny_config)
    again = StageLog()
    _run_stage(tmp_path, "stage", fresh, again, body)
    assert calls == [1]  # not run a second time
    assert torch.all(fresh.decoder.style_table.weight == 0.25)
    assert again.figures["stage"] == {"figure": 1.5}
    assert again.seconds["stage"] == log.seconds["stage"]


def test_recipes_fit_the_budget_they_promise() -> None:
    default = RECIPES["default"]()
    assert default.preset == "lite"
    assert default.corpus_size > RECIPES["quick"]().corpus_size


def test_rendered_reference_faces_are_varied_and_in_range() -> None:
    a = rendered_face((1, 0), 24)
    b = rendered_face((1, 1), 24)
    assert a.shape == (3, 24, 24)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, b)
    assert torch.equal(a, rendered_face((1, 0), 24))


def _plain_data(root: Path, clips: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(clips):
        samples = 12_000
        t = np.arange(samples) / 16_000
        wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (t % 0.5 < 0.25)).astype(np.float32)
        sf.write(root / f"take{i}.wav", wave, 16_000)
        targets = rng.uniform(0, 0.3, size=(num_frames(samples, 16_000), 32)).astype(np.float32)
        np.save(root / f"take{i}.npy", targets)


def test_finetune_continues_a_checkpoint_on_plain_data(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    base = save_checkpoint(PMMTalk(tiny_config), tmp_path / "base", {"recipe": {"name": "x"}})
    _plain_data(tmp_path / "data", 4)
    out = tmp_path / "tuned"
    metadata = finetune(
        base,
        [("plain", tmp_path / "data")],
        TrainConfig(epochs=2, batch_size=2, threads=1),
        tmp_path / "work",
        out,
        val_fraction=0.25,
        progress=False,
    )
    assert metadata["recipe"] == {"name": "x"}  # the base model's story is kept
    assert metadata["finetune"]["train_clips"] == 3
    assert metadata["finetune"]["val_clips"] == 1
    tuned = load_checkpoint(out).model
    original = load_checkpoint(base).model
    # Trainable parts moved; what the paper freezes did not.
    assert not torch.equal(tuned.decoder.head.weight, original.decoder.head.weight)
    assert torch.equal(
        tuned.generator.state_dict()["audio_encoder.0.conv_block.0.weight"],
        original.generator.state_dict()["audio_encoder.0.conv_block.0.weight"],
    )


def test_unknown_dataset_kind_is_named() -> None:
    with pytest.raises(ValueError, match="unknown dataset kind 'mocap'"):
        open_dataset("mocap", Path("."))


def test_the_default_recipe_is_the_one_the_shipped_model_was_trained_with() -> None:
    _, metadata = read_config(DEFAULT_CHECKPOINT_DIR)
    shipped = metadata["recipe"]
    current = json.loads(json.dumps(RECIPES["default"]().to_dict()))
    assert current == shipped
