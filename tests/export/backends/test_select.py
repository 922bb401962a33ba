"""Choosing and opening backends, and the CLI's --backend option, on a CPU-only machine."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from export.backends import select
from export.backends.base import BackendUnavailableError
from export.backends.onnx_backend import OnnxBackend
from export.backends.select import choose_backend, open_backend
from export.backends.torch_backend import TorchBackend
from pmmtalk.cli import app

runner = CliRunner()


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "gpu_present", lambda: False)


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    """0.7 s of a wobbling tone at 22.05 kHz (the CLI resamples it to 16 kHz)."""
    rate = 22_050
    t = np.arange(int(0.7 * rate)) / rate
    path = tmp_path / "speech.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 4 * t), rate)
    return path


def test_auto_picks_onnx_without_a_gpu(
    no_gpu: None,
    tiny_checkpoint: Path,
    export_cache: Path,
    export_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert choose_backend()[:2] == ("onnx", "cpu")
    with caplog.at_level(logging.INFO, logger="export.backends.select"):
        backend = open_backend("auto", tiny_checkpoint, cache_dir=export_cache)
    assert isinstance(backend, OnnxBackend)
    assert backend.directory == export_dir  # the cached export, not a new one
    assert backend.spec.name == f"tiny:{tiny_checkpoint.name}"
    assert "backend auto -> onnx on cpu: no GPU" in caplog.text


def test_auto_order_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "gpu_present", lambda: True)
    monkeypatch.setattr(select, "tensorrt_installed", lambda: True)
    assert choose_backend()[:2] == ("tensorrt", "cuda")
    assert choose_backend("cuda:1")[:2] == ("tensorrt", "cuda:1")
    monkeypatch.setattr(select, "tensorrt_installed", lambda: False)
    monkeypatch.setattr(select, "torch_cuda_available", lambda: True)
    assert choose_backend()[:2] == ("torch", "cuda")
    assert choose_backend("cpu")[:2] == ("onnx", "cpu")


def test_auto_without_engines_falls_back(
    monkeypatch: pytest.MonkeyPatch, export_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPU with tensorrt installed but no engines built: run the export on ONNX Runtime."""
    monkeypatch.setattr(select, "gpu_present", lambda: True)
    monkeypatch.setattr(select, "tensorrt_installed", lambda: True)
    with caplog.at_level(logging.WARNING, logger="export.backends.select"):
        backend = open_backend("auto", None, export_dir=export_dir)
    assert isinstance(backend, OnnxBackend)
    assert "has no TensorRT engines yet" in caplog.text


def test_bad_choices_are_explained(no_gpu: None, tiny_checkpoint: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU"):
        choose_backend("cuda")
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        open_backend("openvino", tiny_checkpoint)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        open_backend("torch", tiny_checkpoint, device="gpu")
    with pytest.raises(ValueError, match="give a checkpoint directory or an export directory"):
        open_backend("onnx", None)
    with pytest.raises(ValueError, match="torch backend loads a checkpoint"):
        open_backend("torch", None)


def test_torch_and_export_directory_paths(tiny_checkpoint: Path, export_dir: Path) -> None:
    torch_backend = open_backend("torch", tiny_checkpoint, device="cpu")
    assert isinstance(torch_backend, TorchBackend)
    onnx_backend = open_backend("onnx", None, export_dir=export_dir, device="cpu")
    assert isinstance(onnx_backend, OnnxBackend)
    assert onnx_backend.spec.name == f"tiny:{export_dir.name}"
    assert onnx_backend.device == "CPUExecutionProvider"


def test_cli_animates_on_onnx_like_torch(
    tiny_checkpoint: Path,
    export_cache: Path,
    export_dir: Path,
    speech: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PMMTALK_CACHE_DIR", str(export_cache))
    frames = {}
    for backend in ("onnx", "torch"):
        out = tmp_path / f"{backend}.npy"
        args = ["animate", str(speech), "--checkpoint", str(tiny_checkpoint), "-o", str(out)]
        result = runner.invoke(app, [*args, "--backend", backend, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert f"on {backend}" in result.output
        frames[backend] = np.load(out)
    assert frames["onnx"].shape == (21, 32)
    assert np.abs(frames["onnx"] - frames["torch"]).max() <= 1e-4


def test_cli_reports_a_backend_it_cannot_run(
    tiny_checkpoint: Path,
    export_cache: Path,
    speech: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PMMTALK_CACHE_DIR", str(export_cache))
    out = str(tmp_path / "o.npy")
    base = ["animate", str(speech), "-o", out]
    result = runner.invoke(
        app, [*base, "--checkpoint", str(tiny_checkpoint), "--backend", "tensorrt"]
    )
    assert result.exit_code == 2 and "TensorRT" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(app, [*base, "--untrained", "lite", "--backend", "onnx"])
    assert result.exit_code == 2 and "torch backend only" in result.output
    result = runner.invoke(app, [*base, "--checkpoint", str(tiny_checkpoint), "--backend", "x"])
    assert result.exit_code == 2 and "choose one of auto, torch, onnx, tensorrt" in result.output


def test_auto_runs_torch_when_the_export_is_unfaithful(
    no_gpu: None,
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unfaithful(*args: object) -> Path:
        raise select.UnfaithfulExportError("the ONNX export differs from PyTorch by 3e-3")

    monkeypatch.setattr(select, "_export_dir", unfaithful)
    with caplog.at_level(logging.WARNING, logger="export.backends.select"):
        backend = open_backend("auto", tiny_checkpoint)
    assert isinstance(backend, TorchBackend)
    assert "differs from PyTorch by 3e-3; using torch" in caplog.text
    with pytest.raises(BackendUnavailableError, match="differs from PyTorch"):
        open_backend("onnx", tiny_checkpoint)
