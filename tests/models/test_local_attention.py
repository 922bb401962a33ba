"""Banded attention in the speech transformers (models/local_attention.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.audio_encoder import SpeechEncoder
from models.config import AudioEncoderConfig, PMMTalkConfig, lite_config
from models.local_attention import band_bias, run_encoder, span_frames
from models.text_decoder import TextDecoder


def banded(cfg: AudioEncoderConfig, span: tuple[float, float]) -> AudioEncoderConfig:
    return dataclasses.replace(cfg, attention_span_s=span)


def test_band_bias_admits_exactly_the_span() -> None:
    bias = band_bias(6, left=2, right=1, like=torch.zeros(1))[0, 0]
    allowed = bias == 0
    for query in range(6):
        keys = {k for k in range(6) if allowed[query, k]}
        assert keys == set(range(max(0, query - 2), min(6, query + 2)))


def test_span_frames_rounds_seconds_at_50_hz() -> None:
    assert span_frames((0.5, 0.1)) == (25, 5)
    with pytest.raises(ValueError, match=">= 0"):
        span_frames((-0.1, 0.1))


def test_an_unbounded_span_runs_the_encoder_as_hugging_face_does(
    tiny_config: PMMTalkConfig,
) -> None:
    torch.manual_seed(0)
    encoder = SpeechEncoder(tiny_config.audio).eval()
    hidden = torch.randn(2, 40, tiny_config.audio.hidden_size)
    with torch.no_grad():
        ours = run_encoder(encoder.wav2vec2.encoder, hidden.clone(), None)
        theirs = encoder.wav2vec2.encoder(hidden.clone()).last_hidden_state
        wide = run_encoder(encoder.wav2vec2.encoder, hidden.clone(), (100.0, 100.0))
    torch.testing.assert_close(ours, theirs)
    # A band wider than the clip is full attention, through the hand-run layer loop.
    torch.testing.assert_close(wide, theirs, atol=1e-5, rtol=1e-5)


def test_with_a_band_far_away_audio_does_not_move_a_frame(tiny_config: PMMTalkConfig) -> None:
    """What streaming needs: a frame's features depend only on audio near it."""
    torch.manual_seed(0)
    cfg = banded(tiny_config.audio, (0.2, 0.04))
    encoder = SpeechEncoder(cfg).eval()
    wave = torch.randn(1, 16_000 * 3) * 0.1
    changed = wave.clone()
    changed[:, :8_000] = torch.randn(1, 8_000)  # the first 0.5 s only
    with torch.no_grad():
        _, before = encoder(wave)
        _, after = encoder(changed)
    # Frames from 2 s on are beyond every layer's reach (2 layers x 0.2 s + the positional
    # convolution) of the first 0.5 s; the first frames are not.
    torch.testing.assert_close(before[:, 100:], after[:, 100:], atol=1e-5, rtol=1e-5)
    assert (before[:, :10] - after[:, :10]).abs().max() > 1e-3


def test_the_text_branch_takes_its_own_band(tiny_config: PMMTalkConfig) -> None:
    torch.manual_seed(0)
    text_cfg = dataclasses.replace(tiny_config.text, attention_span_s=(0.1, 0.0))
    decoder = TextDecoder(text_cfg, tiny_config.audio).eval()
    latents = torch.randn(1, 60, tiny_config.audio.latent_dim)
    changed = latents.clone()
    changed[:, 50:] = torch.randn(1, 10, tiny_config.audio.latent_dim)
    with torch.no_grad():
        before, after = decoder(latents), decoder(changed)
    # Right span 0: only the positional convolution (kernel 8) reaches back from frame 50.
    torch.testing.assert_close(before[:, :40], after[:, :40], atol=1e-5, rtol=1e-5)


def test_the_lite_preset_is_banded_and_round_trips() -> None:
    cfg = lite_config()
    assert cfg.audio.attention_span_s is not None
    assert cfg.text.attention_span_s == cfg.audio.attention_span_s
    again = PMMTalkConfig.from_json(cfg.to_json())
    assert again == cfg
    assert isinstance(again.audio.attention_span_s, tuple)


def test_the_band_exports_to_onnx_with_a_dynamic_length(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    encoder = SpeechEncoder(banded(tiny_config.audio, (0.2, 0.04))).eval()

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            return self.encoder(wave)[1]

    path = tmp_path / "band.onnx"
    torch.onnx.export(
        Features().eval(),
        (torch.randn(1, 16_000),),
        str(path),
        input_names=["wave"],
        output_names=["features"],
        dynamic_shapes={"wave": {1: torch.export.Dim("samples", min=800, max=160_000)}},
        dynamo=True,
        opset_version=18,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seconds in (0.7, 2.3):
        wave = torch.randn(1, int(16_000 * seconds)) * 0.1
        with torch.no_grad():
            expected = Features()(wave).numpy()
        (got,) = session.run(None, {"wave": wave.numpy()})
        np.testing.assert_allclose(got, expected, atol=1e-4)
