"""Every backend present gives PyTorch-on-CPU's frames for the same face, clip and windows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from export.backends.base import Backend, BackendUnavailableError, Identity
from export.backends.onnx_backend import CPU_PROVIDER, CUDA_PROVIDER, OnnxBackend
from export.backends.tensorrt_backend import TensorRTBackend
from export.backends.torch_backend import TorchBackend
from models.blendshapes import num_frames
from pmmtalk.animate import Animator

TOLERANCE = 1e-4
"""The issue's fp32 parity bound on the unclipped coefficients."""
TENSORRT_TOLERANCE = 2e-2
"""The TensorRT engines run in fp16 (norms and softmax in fp32); the bound is on coefficients
that live in [0, 1]."""

Opener = Callable[[Path, Path], Backend]
BACKENDS: dict[str, tuple[Opener, float]] = {
    "onnx-cpu": (lambda ckpt, export: OnnxBackend(export, [CPU_PROVIDER]), TOLERANCE),
    "torch-cuda": (
        lambda ckpt, export: TorchBackend.from_checkpoint(ckpt, device="cuda"),
        TOLERANCE,
    ),
    "onnx-cuda": (
        lambda ckpt, export: OnnxBackend(export, [CUDA_PROVIDER, CPU_PROVIDER]),
        TOLERANCE,
    ),
    "tensorrt": (lambda ckpt, export: TensorRTBackend(export), TENSORRT_TOLERANCE),
}
GPU_BACKENDS = ("torch-cuda", "onnx-cuda", "tensorrt")


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(key, marks=pytest.mark.gpu if key in GPU_BACKENDS else ()) for key in BACKENDS
    ],
)
def candidate(
    request: pytest.FixtureRequest, tiny_checkpoint: Path, export_dir: Path
) -> Iterator[tuple[Backend, float]]:
    opener, tolerance = BACKENDS[request.param]
    try:
        backend = opener(tiny_checkpoint, export_dir)
    except BackendUnavailableError as exc:
        pytest.skip(f"{request.param} is not present here: {exc}")
    yield backend, tolerance
    backend.close()


def _max_diff(left: np.ndarray, right: np.ndarray) -> float:
    assert left.shape == right.shape
    return float(np.abs(left - right).max())


def test_face_encoder_matches(
    candidate: tuple[Backend, float], faces: list[np.ndarray], identities: list[Identity]
) -> None:
    backend, tolerance = candidate
    for face, expected in zip(faces, identities, strict=True):
        got = backend.encode_face(face)
        assert len(got) == len(expected)
        assert max(_max_diff(a, b) for a, b in zip(got, expected, strict=True)) <= tolerance


@pytest.mark.parametrize("samples", [1, 534, 16_000, 40_001])
def test_offline_frames_match(
    candidate: tuple[Backend, float],
    torch_backend: TorchBackend,
    identities: list[Identity],
    samples: int,
) -> None:
    backend, tolerance = candidate
    wave = 0.3 * np.random.default_rng(samples).standard_normal(samples).astype(np.float32)
    style = torch_backend.spec.style_table[1]
    expected = torch_backend.speech_to_frames(wave, identities[0], style)
    got = backend.speech_to_frames(wave, identities[0], style)
    assert got.shape == (num_frames(samples, 16_000), 32)
    assert _max_diff(got, expected) <= tolerance


def test_stream_windows_match(
    candidate: tuple[Backend, float], torch_backend: TorchBackend, identities: list[Identity]
) -> None:
    """A batch of three sessions: different faces, styles and clocks, one starting in padding."""
    backend, tolerance = candidate
    spec = torch_backend.spec
    rng = np.random.default_rng(7)
    waves = (0.3 * rng.standard_normal((3, spec.window.window_samples))).astype(np.float32)
    faces = [identities[0], identities[1], identities[0]]
    styles = np.stack([spec.style_table[0], spec.mean_style, spec.style_table[2]])
    offsets = np.array([-spec.window.left_frames, 0, 1_234], dtype=np.int64)
    # The first starts its stream; the others carry features (random ones, as a test input).
    carried = (0.5 * rng.standard_normal((2, *spec.carry_shape))).astype(np.float32)
    carries = [None, carried[0], carried[1]]
    expected = torch_backend.stream_windows(waves, faces, styles, offsets, carries)
    got = backend.stream_windows(waves, faces, styles, offsets, carries)
    assert got.frames.shape == (3, spec.window.window_frames, 32)
    assert got.carries.shape == (3, *spec.carry_shape)
    assert _max_diff(got.frames, expected.frames) <= tolerance
    assert _max_diff(got.carries, expected.carries) <= tolerance
    # Each window is its own: running one alone gives what it got inside the batch.
    alone = backend.stream_windows(waves[1:2], faces[1:2], styles[1:2], offsets[1:2], carries[1:2])
    assert _max_diff(alone.frames, got.frames[1:2]) <= tolerance


def test_animator_matches_on_every_backend(
    candidate: tuple[Backend, float], torch_backend: TorchBackend
) -> None:
    backend, tolerance = candidate
    wave = 0.3 * np.random.default_rng(3).standard_normal(24_000).astype(np.float32)
    expected = Animator(torch_backend).animate(wave, style=2)
    got = Animator(backend).animate(wave, style=2)
    assert got.frames.shape == expected.frames.shape == (45, 32)
    assert _max_diff(got.frames, expected.frames) <= tolerance
