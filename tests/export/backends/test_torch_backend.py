"""PyTorch backend: devices, the checkpoint's spec, and the reference windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.backends.base import BackendUnavailableError, Identity
from export.backends.torch_backend import TorchBackend, torch_device
from models.checkpoint import CheckpointError
from models.pmmtalk import PMMTalk
from models.streaming import StreamWindow


def test_spec_is_the_checkpoints(tiny_checkpoint: Path, tiny_model: PMMTalk) -> None:
    backend = TorchBackend.from_checkpoint(tiny_checkpoint)
    assert backend.spec.name == f"tiny:{tiny_checkpoint.name}"
    assert backend.spec.config == tiny_model.cfg
    assert backend.device == "cpu"
    table = tiny_model.decoder.style_table.weight.detach().numpy()
    np.testing.assert_array_equal(backend.spec.style_table, table)
    np.testing.assert_allclose(backend.spec.mean_style, table.mean(axis=0), rtol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_unavailable(tiny_checkpoint: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"no CUDA GPU.*--device cpu"):
        TorchBackend.from_checkpoint(tiny_checkpoint, device="cuda")
    assert torch_device("auto") == torch.device("cpu")


def test_bad_device_and_checkpoint_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        torch_device("gpu")
    with pytest.raises(ValueError, match="cpu or cuda, not 'meta'"):
        torch_device("meta")
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        TorchBackend.from_checkpoint(tmp_path)


def test_offline_frames_are_the_models_forward(
    torch_backend: TorchBackend, tiny_model: PMMTalk, faces: list[np.ndarray]
) -> None:
    wave = 0.3 * np.random.default_rng(0).standard_normal(9_000).astype(np.float32)
    identity = torch_backend.encode_face(faces[0])
    got = torch_backend.speech_to_frames(wave, identity, torch_backend.spec.style_table[2])
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(wave)[None], torch.from_numpy(faces[0])[None], 2)
    assert got.shape == (17, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.blendshapes[0].numpy(), atol=1e-5)


def test_windows_follow_the_spec_window(tiny_model: PMMTalk, identities: list[Identity]) -> None:
    window = StreamWindow(left_context_s=0.5, hop_s=0.1, lookahead_s=0.2)
    backend = TorchBackend(tiny_model, name="tiny:short", window=window)
    waves = np.zeros((2, window.window_samples), np.float32)
    styles = np.stack([backend.spec.mean_style] * 2)
    output = backend.stream_windows(waves, identities, styles, np.array([0, 24], np.int64))
    frames = output.frames
    assert frames.shape == (2, window.window_frames, 32)
    assert output.carries.shape == (2, *backend.spec.carry_shape)
    # The clock offset moves the decoder's positional encoding, so the same audio differs.
    assert not np.allclose(frames[0], frames[1])
    with pytest.raises(ValueError, match="need one identity per window"):
        backend.stream_windows(waves, identities[:1], styles, np.array([0, 24], np.int64))
