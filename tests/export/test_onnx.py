"""ONNX export: parity with PyTorch, the in-graph frame count, metadata, and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from skimage import data
from typer.testing import CliRunner

from export.onnx import (
    PARITY_TOLERANCE,
    ExportedModel,
    check_parity,
    export_onnx,
    identity_names,
    read_metadata,
    read_style_table,
)
from models.blendshapes import num_frames
from models.checkpoint import WEIGHTS_FILE, save_checkpoint
from models.config import PMMTalkConfig
from models.pmmtalk import PMMTalk
from pmmtalk.cli import app
from pmmtalk.face import reference_face


@pytest.fixture(scope="module")
def exported(tiny_model: PMMTalk, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx"))


def test_parity_with_pytorch_over_clip_lengths(
    tiny_model: PMMTalk, exported: ExportedModel
) -> None:
    # 1 and 533 samples are a single frame; 534 is the first two-frame clip.
    lengths = (1, 400, 533, 534, 16_000, 112_000)
    results = check_parity(tiny_model, exported, face=data.astronaut(), clip_samples=lengths)
    assert [r.samples for r in results] == list(lengths)
    assert [r.frames for r in results] == [num_frames(n, 16_000) for n in lengths]
    assert max(r.max_abs_error for r in results) <= PARITY_TOLERANCE


def test_frame_count_comes_from_the_wave_length(
    tiny_config: PMMTalkConfig, exported: ExportedModel
) -> None:
    size = tiny_config.wav2lip.img_size
    face = ort.InferenceSession(str(exported.face_encoder), providers=["CPUExecutionProvider"])
    speech = ort.InferenceSession(
        str(exported.speech_to_frames), providers=["CPUExecutionProvider"]
    )
    identity = face.run(None, {"face": reference_face(data.astronaut(), size)[None]})
    feeds = dict(zip(identity_names(tiny_config), identity, strict=True))
    style = read_style_table(exported.speech_to_frames)[:1]
    for count in (1, 532, 534, 1067, 16_001, 47_999):
        wave = np.zeros((1, count), np.float32)
        (out,) = speech.run(None, {"wave": wave, "style": style, **feeds})
        assert out.shape == (1, -(-count * 30 // 16_000), 32)


def test_metadata_round_trip(
    tiny_model: PMMTalk, tiny_config: PMMTalkConfig, exported: ExportedModel
) -> None:
    for path in (exported.face_encoder, exported.speech_to_frames):
        props = read_metadata(path)
        assert PMMTalkConfig.from_json(props["pmmtalk_config"]) == tiny_config
        assert json.loads(props["blendshape_names"]) == list(tiny_config.blendshape_names)
        assert int(props["fps"]) == 30 and int(props["sample_rate_hz"]) == 16_000
        assert onnx.load(str(path)).opset_import[0].version >= 17
    table = tiny_model.decoder.style_table.weight.detach().numpy()
    np.testing.assert_array_equal(read_style_table(exported.speech_to_frames), table)
    graph = onnx.load(str(exported.speech_to_frames)).graph
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_param == "samples"
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_param == "frames"


def test_cli_reports_a_missing_or_corrupt_checkpoint(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    missing = runner.invoke(
        app, ["export", "onnx", "--checkpoint", str(tmp_path / "nope"), "-o", str(out)]
    )
    assert missing.exit_code == 2
    assert "checkpoint directory not found" in missing.output
    torch.manual_seed(0)
    folder = save_checkpoint(PMMTalk(tiny_config), tmp_path / "ckpt")
    (folder / WEIGHTS_FILE).write_bytes(b"not safetensors")
    corrupt = runner.invoke(app, ["export", "onnx", "--checkpoint", str(folder), "-o", str(out)])
    assert corrupt.exit_code == 2
    assert "corrupt" in corrupt.output
    neither = runner.invoke(app, ["export", "onnx", "-o", str(out)])
    assert neither.exit_code == 2 and "--checkpoint" in neither.output
    assert not out.exists()
