"""Animator: frame count and range, styles, the per-face identity cache, and loading errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from export.backends.base import Identity
from export.backends.torch_backend import TorchBackend
from models.checkpoint import CheckpointError
from models.pmmtalk import PMMTalk
from pmmtalk import animate
from pmmtalk.animate import COEFFICIENT_RANGE, Animator


class CountingBackend(TorchBackend):
    """The torch backend, counting face encodings and able to exaggerate its output."""

    def __init__(self, model: PMMTalk, scale: float = 1.0) -> None:
        super().__init__(model, name="tiny:test")
        self.face_calls = 0
        self.scale = scale

    def encode_face(self, face: np.ndarray) -> Identity:
        self.face_calls += 1
        return super().encode_face(face)

    def speech_to_frames(
        self, wave: np.ndarray, identity: Identity, style: np.ndarray
    ) -> np.ndarray:
        return self.scale * super().speech_to_frames(wave, identity, style)


@pytest.fixture
def backend(tiny_model: PMMTalk) -> CountingBackend:
    return CountingBackend(tiny_model)


def _clip(samples: int, seed: int = 0) -> np.ndarray:
    return 0.3 * np.random.default_rng(seed).standard_normal(samples).astype(np.float32)


@pytest.mark.parametrize(("samples", "frames"), [(1, 1), (533, 1), (534, 2), (16_000, 30)])
def test_frame_count_and_range(backend: CountingBackend, samples: int, frames: int) -> None:
    backend.scale = 50.0  # push the raw coefficients far outside [0, 1]
    result = Animator(backend, silence_gate_dbfs=None).animate(_clip(samples))
    assert result.frames.shape == (frames, 32) and result.frames.dtype == np.float32
    assert result.frames.min() == COEFFICIENT_RANGE[0] and result.frames.max() == 1.0
    assert result.fps == 30 and result.model == "tiny:test"
    assert result.duration_s == pytest.approx(samples / 16_000)


def test_silence_eases_to_neutral_unless_the_gate_is_off(backend: CountingBackend) -> None:
    backend.scale = 50.0
    clip = np.concatenate([_clip(16_000), np.zeros(16_000, np.float32)])
    gated = Animator(backend).animate(clip).frames
    ungated = Animator(backend, silence_gate_dbfs=None).animate(clip).frames
    assert ungated[40:].max() > 0.5  # the tiny random network does not close by itself
    assert gated[40:].max() == 0.0  # silence from 1.1 s on: every frame neutral
    np.testing.assert_array_equal(gated[:27], ungated[:27])  # speech passes untouched


def test_styles(backend: CountingBackend) -> None:
    animator = Animator(backend)
    clip = _clip(8_000)
    average = animator.animate(clip).frames
    np.testing.assert_array_equal(animator.style_vector(None), backend.spec.mean_style)
    assert not np.allclose(animator.animate(clip, style=1).frames, average)
    with pytest.raises(ValueError, match=r"style 3 is out of range; this model has styles 0\.\.2"):
        animator.animate(clip, style=3)
    with pytest.raises(ValueError, match="at least one frame"):
        animator.animate(np.zeros(0, np.float32))


def test_each_face_is_encoded_once(backend: CountingBackend) -> None:
    animator = Animator(backend, face_cache_size=2)
    photo = data.astronaut()
    clip = _clip(4_000)
    first = animator.animate(clip, photo).frames
    again = animator.animate(clip, photo.copy()).frames  # same pixels, another array
    assert backend.face_calls == 1
    np.testing.assert_array_equal(first, again)
    animator.animate(clip)  # the default face
    animator.animate(clip, photo[:, ::-1].copy())  # a mirrored photo is another face
    assert backend.face_calls == 3
    animator.animate(clip, photo)  # evicted: the cache holds the last two faces
    assert backend.face_calls == 4
    assert not np.allclose(animator.animate(clip).frames, first)


def test_loading_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(animate, "DEFAULT_CHECKPOINT_DIR", tmp_path / "absent")
    with pytest.raises(CheckpointError, match="no bundled default model"):
        Animator.from_checkpoint()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        Animator.from_checkpoint(tmp_path, device="cpu", backend="torch")
    with pytest.raises(ValueError, match="face_cache_size"):
        Animator(TorchBackend.__new__(TorchBackend), face_cache_size=0)


def test_untrained_runs_on_torch() -> None:
    animator = Animator.untrained("lite", seed=1)
    assert animator.name == "lite:untrained" and animator.backend.name == "torch"
    assert animator.cfg.preset == "lite"
