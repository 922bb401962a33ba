"""TensorRT backend: a clear error where TensorRT or a GPU is missing (parity: test_parity)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from export.backends.base import BackendUnavailableError
from export.backends.tensorrt_backend import TensorRTBackend

needs_no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here"
)


@needs_no_tensorrt
def test_missing_tensorrt_is_named(export_dir: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="TensorRT's Python package is not installed"):
        TensorRTBackend(export_dir)


@needs_no_tensorrt
@pytest.mark.skipif(
    importlib.util.find_spec("cuda") is not None, reason="cuda-python is installed here"
)
def test_tensorrt_without_cuda_python_is_named(
    export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.3.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(BackendUnavailableError, match="cuda-python is not installed"):
        TensorRTBackend(export_dir)
