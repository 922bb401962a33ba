"""Shared fixtures: the tiny model as a checkpoint, its export (made once per session), inputs.

The export is the slow part (about a minute for the three tiny graphs on 2 cores), so every test
here reuses one, through the same cache `export.backends.select` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from export.backends.base import Backend, Identity
from export.backends.onnx_backend import OnnxBackend
from export.backends.torch_backend import TorchBackend
from pmmtalk.face import reference_face


@pytest.fixture(scope="session")
def export_cache(isolated_export_cache: Path) -> Path:
    """The session's export cache (tests/conftest.py), so every test dir shares one export."""
    return isolated_export_cache


@pytest.fixture(scope="session")
def export_dir(tiny_checkpoint: Path, export_cache: Path) -> Path:
    from export.cache import ensure_exported

    return ensure_exported(tiny_checkpoint, cache_dir=export_cache, progress=False).directory


@pytest.fixture(scope="session")
def torch_backend(tiny_checkpoint: Path) -> TorchBackend:
    return TorchBackend.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def onnx_backend(export_dir: Path) -> OnnxBackend:
    return OnnxBackend(export_dir, ["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def faces(torch_backend: Backend) -> list[np.ndarray]:
    """Two different real reference faces, (3, S, S) float32."""
    size = torch_backend.spec.config.wav2lip.img_size
    return [reference_face(data.astronaut(), size), reference_face(None, size)[:, ::-1].copy()]


@pytest.fixture(scope="session")
def identities(torch_backend: Backend, faces: list[np.ndarray]) -> list[Identity]:
    return [torch_backend.encode_face(face) for face in faces]
