from __future__ import annotations

import dataclasses

import pytest
import torch

from models.blendshapes import num_frames
from models.config import PMMTalkConfig, paper_config
from models.pmmtalk import PMMTalk, count_parameters


def face_for(cfg: PMMTalkConfig, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    size = cfg.wav2lip.img_size
    return torch.rand(1, 3, size, size, generator=gen)


@pytest.mark.parametrize(
    "samples", [1, 100, 399, 533, 534, 1000, 5333, 16000, 16001, 47999, 123457]
)
def test_frame_count_contract(tiny_model: PMMTalk, samples: int) -> None:
    """ceil(n * 30 / 16000) frames for any length, shorter than one frame included."""
    wave = torch.randn(1, samples) * 0.1
    with torch.no_grad():
        out = tiny_model(wave, face_for(tiny_model.cfg), style=0)
    expected = num_frames(samples, 16000)
    assert out.blendshapes.shape == (1, expected, 32)
    assert out.image.shape[:2] == out.text.shape[:2] == out.audio.shape[:2] == (1, expected)
    assert torch.isfinite(out.blendshapes).all()


def test_long_clip(tiny_model: PMMTalk) -> None:
    samples = 16000 * 40 + 7  # 40 s
    with torch.no_grad():
        out = tiny_model(torch.randn(1, samples) * 0.1, face_for(tiny_model.cfg))
    assert out.blendshapes.shape == (1, 1201, 32)


def test_outputs_follow_the_speech_and_the_face(tiny_model: PMMTalk) -> None:
    wave = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        base = tiny_model(wave, face_for(tiny_model.cfg, 0), style=0).blendshapes
        other_face = tiny_model(wave, face_for(tiny_model.cfg, 1), style=0).blendshapes
        other_style = tiny_model(wave, face_for(tiny_model.cfg, 0), style=1).blendshapes
        other_speech = tiny_model(wave.flip(-1), face_for(tiny_model.cfg, 0), style=0).blendshapes
    # The forward pass is deterministic, so any difference shows the input is used; a random
    # network reacts only weakly to the face, hence the small threshold.
    for changed in (other_face, other_style, other_speech):
        assert (changed - base).abs().max() > 1e-6


def test_face_encoding_is_reusable(tiny_model: PMMTalk) -> None:
    """The identity pyramid computed once gives the same frames as the full forward."""
    wave = torch.randn(1, 6000) * 0.1
    face = face_for(tiny_model.cfg)
    frames = num_frames(6000, 16000)
    with torch.no_grad():
        full = tiny_model(wave, face, style=2).blendshapes
        identity = tiny_model.encode_face(face)
        speech = tiny_model.encode_speech(wave, frames)
        cached = tiny_model.decode(speech, identity, style=2).blendshapes
    torch.testing.assert_close(cached, full)


def test_training_step_updates_only_unfrozen_parts(tiny_config: PMMTalkConfig) -> None:
    torch.manual_seed(1)
    model = PMMTalk(tiny_config)
    model.freeze_pretrained()
    model.train()
    assert not model.generator.training and not model.text.training
    frozen_before = model.generator.state_dict()["output_block.1.weight"].clone()
    decoder_before = model.decoder.head.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    wave = torch.randn(1, 8000) * 0.1
    out = model(wave, face_for(tiny_config), style=0)
    terms = model.loss(out, torch.rand_like(out.blendshapes))
    assert torch.isfinite(terms.total)
    terms.total.backward()
    optimizer.step()
    assert torch.equal(model.generator.state_dict()["output_block.1.weight"], frozen_before)
    assert not torch.equal(model.decoder.head.weight, decoder_before)
    assert model.speech.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad is None


def test_paper_preset_parameter_count_matches_its_parts() -> None:
    """Two XLSR-53-sized branches (~315 M and ~300 M), the 96x96 Wav2Lip (~36 M), and small
    image encoder, alignment and decoder put the paper network near 0.67 B parameters."""
    with torch.device("meta"):
        model = PMMTalk(paper_config())
    audio = count_parameters(model.speech)
    text = count_parameters(model.text)
    generator = count_parameters(model.generator)
    assert 310e6 < audio < 320e6  # wav2vec 2.0 large: 315 M
    assert 305e6 < text < 320e6  # 24 large blocks, conv positions, 1024x3503 head; no CNN
    assert 36e6 < generator < 37e6  # official Wav2Lip generator: 36.3 M
    assert 640e6 < count_parameters(model) < 720e6


def test_paper_preset_runs_forward_on_cpu() -> None:
    """The full-size network instantiates with random weights and runs (about 30 s, 4 GB)."""
    torch.manual_seed(0)
    model = PMMTalk(paper_config()).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 8000) * 0.1, torch.rand(1, 3, 96, 96), style=4)
    assert out.blendshapes.shape == (1, 15, 32)
    assert out.text.shape == (1, 15, 3503)
    assert torch.isfinite(out.blendshapes).all()


def test_wrong_face_size_is_rejected(tiny_model: PMMTalk) -> None:
    with pytest.raises(ValueError, match="48x48"):
        tiny_model.encode_face(torch.rand(1, 3, 96, 96))


def test_bgr_generators_receive_the_face_channel_flipped(tiny_config: PMMTalkConfig) -> None:
    """Official Wav2Lip weights expect BGR; the model flips the RGB reference for them."""
    torch.manual_seed(2)
    rgb_model = PMMTalk(
        dataclasses.replace(
            tiny_config, wav2lip=dataclasses.replace(tiny_config.wav2lip, channel_order="rgb")
        )
    ).eval()
    bgr_model = PMMTalk(
        dataclasses.replace(
            tiny_config, wav2lip=dataclasses.replace(tiny_config.wav2lip, channel_order="bgr")
        )
    ).eval()
    bgr_model.load_state_dict(rgb_model.state_dict())
    face = face_for(tiny_config)
    with torch.no_grad():
        via_bgr = bgr_model.encode_face(face)
        via_rgb = rgb_model.encode_face(face.flip(1))
    for a, b in zip(via_bgr, via_rgb, strict=True):
        torch.testing.assert_close(a, b)
