from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from models.config import PMMTalkConfig
from models.pmmtalk import PMMTalk


def test_save_load_round_trips_bit_exactly(tiny_config: PMMTalkConfig, tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = PMMTalk(tiny_config).eval()
    # Non-default batch-norm statistics must survive too.
    model.generator.state_dict()["output_block.0.conv_block.1.running_mean"].add_(0.5)
    save_checkpoint(model, tmp_path / "ckpt", metadata={"recipe": {"epochs": 3}})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == tiny_config
    assert loaded.metadata == {"recipe": {"epochs": 3}}
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name
    wave = torch.randn(1, 4000) * 0.1
    face = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(
            model(wave, face, style=1).blendshapes, loaded.model(wave, face, style=1).blendshapes
        )


def test_config_json_is_readable(tiny_config: PMMTalkConfig, tmp_path: Path) -> None:
    save_checkpoint(PMMTalk(tiny_config), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert document["config"]["preset"] == "tiny"
    assert document["config"]["fps"] == 30
    assert document["config"]["blendshape_names"][3] == "jawOpen"


def test_missing_and_corrupt_checkpoints_are_clear(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent")
    save_checkpoint(PMMTalk(tiny_config), tmp_path / "ok")
    (tmp_path / "ok" / WEIGHTS_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ok")
    (tmp_path / "ok" / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "ok")
    (tmp_path / "ok" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid"):
        load_checkpoint(tmp_path / "ok")


def test_weights_of_another_architecture_are_rejected(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    save_checkpoint(PMMTalk(tiny_config), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    document["config"]["decoder"]["d_model"] = 64
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path)
