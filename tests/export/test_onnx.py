"""ONNX export: parity with PyTorch for all three graphs, the in-graph frame count, the batched
stream-window graph, metadata, the DFT front end, and the CLI's answers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from skimage import data
from typer.testing import CliRunner

from export.cache import CACHE_DIR_ENV, ensure_exported
from export.graphs import SPEECH_TO_FRAMES_FILE, STREAM_WINDOW_FILE
from export.onnx import (
    PARITY_TOLERANCE,
    DftLogMel,
    ExportedModel,
    check_parity,
    export_speech_to_frames,
    identity_names,
    read_metadata,
    read_stream_window,
    read_style_table,
)
from models.blendshapes import num_frames
from models.checkpoint import WEIGHTS_FILE, save_checkpoint
from models.config import PMMTalkConfig
from models.mel import LogMelSpectrogram
from models.pmmtalk import PMMTalk
from models.streaming import StreamWindow, window_step
from pmmtalk.cli import app
from pmmtalk.face import reference_face

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    # One cache for the session: the export (about a minute on 2 cores) runs once for all of
    # tests/export/, whichever file runs first.
    cache = tmp_path_factory.getbasetemp() / "export-cache"
    return ensure_exported(tiny_checkpoint, cache_dir=cache, progress=False)


def test_parity_with_pytorch_over_clip_lengths_and_window_batches(
    tiny_model: PMMTalk, exported: ExportedModel
) -> None:
    # 1 and 533 samples are a single frame; 534 is the first two-frame clip.
    lengths = (1, 400, 533, 534, 16_000, 112_000)
    results = check_parity(tiny_model, exported, face=data.astronaut(), clip_samples=lengths)
    speech = [r for r in results if r.graph == SPEECH_TO_FRAMES_FILE]
    windows = [r for r in results if r.graph == STREAM_WINDOW_FILE]
    assert [r.samples for r in speech] == list(lengths)
    assert [r.frames for r in speech] == [num_frames(n, 16_000) for n in lengths]
    assert [(r.batch, r.samples, r.frames) for r in windows] == [(1, 28_800, 54), (3, 28_800, 54)]
    assert all(r.passed for r in results)
    assert max(r.max_abs_error for r in results) <= PARITY_TOLERANCE


def test_frame_count_comes_from_the_wave_length(
    tiny_config: PMMTalkConfig, exported: ExportedModel
) -> None:
    size = tiny_config.wav2lip.img_size
    face = ort.InferenceSession(str(exported.face_encoder), providers=CPU)
    speech = ort.InferenceSession(str(exported.speech_to_frames), providers=CPU)
    identity = face.run(None, {"face": reference_face(data.astronaut(), size)[None]})
    feeds = dict(zip(identity_names(tiny_config), identity, strict=True))
    style = read_style_table(exported.speech_to_frames)[:1]
    for count in (1, 532, 534, 1067, 16_001, 47_999):
        wave = np.zeros((1, count), np.float32)
        (out,) = speech.run(None, {"wave": wave, "style": style, **feeds})
        assert out.shape == (1, -(-count * 30 // 16_000), 32)


def test_stream_window_graph_takes_any_batch_and_honours_the_offsets(
    tiny_model: PMMTalk, tiny_config: PMMTalkConfig, exported: ExportedModel
) -> None:
    window = StreamWindow()
    session = ort.InferenceSession(str(exported.stream_window), providers=CPU)
    generator = torch.Generator().manual_seed(5)
    size = tiny_config.wav2lip.img_size
    batch = 4  # neither the example batch (2) the graph was traced with, nor 1
    waves = 0.2 * torch.randn(batch, window.window_samples, generator=generator)
    faces = torch.rand(batch, 3, size, size, generator=generator)
    styles = torch.randn(batch, tiny_config.decoder.style_dim, generator=generator)
    offsets = torch.tensor([-window.left_frames, 0, 6, 90_001])
    identity = [t.detach() for t in tiny_model.encode_face(faces)]
    carry = torch.randn(
        batch, window.carry_frames, tiny_config.image.hidden_size, generator=generator
    )
    fresh = torch.tensor([1.0, 0.0, 0.0, 1.0])  # two streams start, two carry
    feeds = {
        "wave": waves.numpy(),
        "style": styles.numpy(),
        "carry": carry.numpy(),
        "fresh_start": fresh.numpy(),
    }
    feeds.update({n: t.numpy() for n, t in zip(identity_names(tiny_config), identity, strict=True)})

    def run(frame_offset: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        out, carry_out = session.run(
            ["blendshapes", "carry_out"], {**feeds, "frame_offset": frame_offset.numpy()}
        )
        return np.asarray(out), np.asarray(carry_out)

    got, got_carry = run(offsets)
    with torch.no_grad():
        expected, expected_carry = window_step(
            tiny_model, window, waves, identity, styles, offsets, carry, fresh
        )
    assert got.shape == (batch, window.window_frames, 32)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=PARITY_TOLERANCE)
    np.testing.assert_allclose(got_carry, expected_carry.numpy(), rtol=0, atol=PARITY_TOLERANCE)
    # The offsets reach the positional encoding inside the graph: moving them moves the output.
    assert np.abs(run(offsets + 1)[0] - got).max() > 1e-3


def test_metadata_round_trip(
    tiny_model: PMMTalk, tiny_config: PMMTalkConfig, exported: ExportedModel
) -> None:
    for path in (exported.face_encoder, exported.speech_to_frames, exported.stream_window):
        props = read_metadata(path)
        assert PMMTalkConfig.from_json(props["pmmtalk_config"]) == tiny_config
        assert json.loads(props["blendshape_names"]) == list(tiny_config.blendshape_names)
        assert int(props["fps"]) == 30 and int(props["sample_rate_hz"]) == 16_000
        assert onnx.load(str(path)).opset_import[0].version >= 17
    table = tiny_model.decoder.style_table.weight.detach().numpy()
    np.testing.assert_array_equal(read_style_table(exported.speech_to_frames), table)
    np.testing.assert_array_equal(read_style_table(exported.stream_window), table)
    assert read_stream_window(exported.stream_window) == StreamWindow()
    stored = json.loads(read_metadata(exported.stream_window)["stream_window"])
    assert stored == StreamWindow().to_dict()
    with pytest.raises(ValueError, match="not a stream-window graph"):
        read_stream_window(exported.speech_to_frames)

    graph = onnx.load(str(exported.speech_to_frames)).graph
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_param == "samples"
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_param == "frames"
    graph = onnx.load(str(exported.stream_window)).graph
    names = ["wave", "style", "frame_offset", "carry", "fresh_start", *identity_names(tiny_config)]
    assert [value.name for value in graph.input] == names
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    wave_dims = graph.input[0].type.tensor_type.shape.dim
    assert wave_dims[1].dim_value == StreamWindow().window_samples
    assert graph.input[2].type.tensor_type.elem_type == onnx.TensorProto.INT64
    frames = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    assert frames == StreamWindow().window_frames == 54
    # The STFT operator is gone: the front end is matrix products (see DftLogMel).
    assert "STFT" not in {node.op_type for node in graph.node}


@pytest.mark.parametrize("samples", [1, 399, 16_000])
def test_dft_front_end_computes_the_log_mel_spectrogram(samples: int) -> None:
    generator = torch.Generator().manual_seed(samples)
    t = torch.arange(samples, dtype=torch.float64) / 16_000
    chirp = 0.5 * torch.sin(2 * torch.pi * (100 + 2_000 * t) * t)
    wave = torch.stack([chirp, 0.1 * torch.randn(samples, generator=generator).double()])
    reference = LogMelSpectrogram().double()
    # In float64 both are exact up to the basis's float32 storage: any drift between the two
    # definitions (pre-emphasis, window, padding, scaling) shows far above this tolerance.
    with torch.no_grad():
        expected = reference(wave)
        got = DftLogMel().double()(wave)
    assert got.shape == expected.shape == (2, 80, samples // 200 + 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_cli_reports_a_missing_or_corrupt_checkpoint(
    tiny_config: PMMTalkConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    runner = CliRunner()
    out = tmp_path / "out"
    for target in (["-o", str(out)], []):  # into a folder, and into the cache
        missing = runner.invoke(
            app, ["export", "onnx", "--checkpoint", str(tmp_path / "nope"), *target]
        )
        assert missing.exit_code == 2
        assert "checkpoint directory not found" in missing.output
    torch.manual_seed(0)
    folder = save_checkpoint(PMMTalk(tiny_config), tmp_path / "ckpt")
    (folder / WEIGHTS_FILE).write_bytes(b"not safetensors")
    for target in (["-o", str(out)], []):
        corrupt = runner.invoke(app, ["export", "onnx", "--checkpoint", str(folder), *target])
        assert corrupt.exit_code == 2
        assert "corrupt" in corrupt.output
    assert not out.exists()
    exports = tmp_path / "cache" / "exports"
    assert [p.suffix for p in exports.iterdir()] == [".lock"]  # nothing cached, no leftovers

    both = runner.invoke(
        app, ["export", "onnx", "--checkpoint", str(folder), "--untrained", "lite"]
    )
    assert both.exit_code == 2 and "not both" in both.output
    untrained = runner.invoke(app, ["export", "onnx", "--untrained", "lite"])
    assert untrained.exit_code == 2 and "needs -o" in untrained.output
    variant = runner.invoke(app, ["export", "onnx", "--variants", "fp8"])
    assert variant.exit_code == 2 and "choose from fp16, int8" in variant.output


def test_cli_prints_the_parity_table_of_the_cached_export(
    tiny_checkpoint: Path,
    exported: ExportedModel,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.getbasetemp() / "export-cache"))
    result = CliRunner().invoke(app, ["export", "onnx", "--checkpoint", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    assert str(exported.directory) in result.output
    rows = [line.split() for line in result.output.splitlines() if ".onnx  " in line]
    assert [row[0] for row in rows] == [SPEECH_TO_FRAMES_FILE] * 3 + [STREAM_WINDOW_FILE] * 2
    assert all(row[-1] == "pass" for row in rows)
    assert all(float(row[-2]) <= PARITY_TOLERANCE for row in rows)


def test_a_model_with_banded_attention_everywhere_exports_faithfully(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    """Every attention banded, as in the lite preset. The speech-to-frames graph then computes
    attention chunk by chunk (`export.attention`), which must match the masked form on a clip
    shorter than one chunk and on one of several chunks. With a mask, PyTorch's transformer
    layers also take a fused fast path in eval mode that the ONNX exporter cannot translate; the
    export must take the plain path and restore the setting."""
    config = dataclasses.replace(
        tiny_config,
        audio=dataclasses.replace(tiny_config.audio, attention_span_s=(0.5, 0.1)),
        text=dataclasses.replace(tiny_config.text, attention_span_s=(0.3, 0.2)),
        image=dataclasses.replace(tiny_config.image, attention_span_s=(0.2, 0.1)),
        decoder=dataclasses.replace(tiny_config.decoder, attention_span_s=0.2),
    )
    torch.manual_seed(0)
    model = PMMTalk(config).eval()
    path = export_speech_to_frames(model, tmp_path / SPEECH_TO_FRAMES_FILE)
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the export
    assert type(model.decoder.layers[0].biased_attention).__name__ == "SelfAttention"  # restored
    size = config.wav2lip.img_size
    face = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    identity = [t.detach() for t in model.encode_face(face)]
    style = model.decoder.style_table.weight.mean(dim=0, keepdim=True)
    session = ort.InferenceSession(str(path), providers=CPU)
    # 0.25 s: 12 latent frames, less than a chunk; 5 s: 250 latent frames, 8 chunks.
    for samples in (4_000, 80_000):
        wave = 0.3 * torch.randn(1, samples, generator=torch.Generator().manual_seed(samples))
        with torch.no_grad():
            expected = model(wave, face, style=style).blendshapes.numpy()
        feeds = {"wave": wave.numpy(), "style": style.detach().numpy()}
        feeds.update({n: t.numpy() for n, t in zip(identity_names(config), identity, strict=True)})
        (got,) = session.run(["blendshapes"], feeds)
        assert got.shape == expected.shape == (1, num_frames(samples, 16_000), 32)
        np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY_TOLERANCE)
