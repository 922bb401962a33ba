"""Loading Hugging Face-format wav2vec 2.0 and CTC directories, as XLSR-53 and the paper's
Mandarin recogniser are distributed, using tiny models these tests write to disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2ForCTC, Wav2Vec2Model

from models.audio_encoder import SpeechEncoder, hf_config
from models.config import PMMTalkConfig
from models.pmmtalk import PMMTalk
from models.text_decoder import TextDecoder


def save_hf_audio(cfg: PMMTalkConfig, path: Path, seed: int) -> Wav2Vec2Model:
    torch.manual_seed(seed)
    model = Wav2Vec2Model(hf_config(cfg.audio)).eval()
    model.save_pretrained(path)
    return model


def save_hf_ctc(cfg: PMMTalkConfig, path: Path, seed: int) -> Wav2Vec2ForCTC:
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(hf_config(cfg.audio, cfg.text)).eval()
    model.save_pretrained(path)
    return model


def test_speech_encoder_loads_a_wav2vec2_directory(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    reference = save_hf_audio(tiny_config, tmp_path / "w2v", seed=3)
    encoder = SpeechEncoder(tiny_config.audio).eval()
    encoder.load_pretrained(tmp_path / "w2v")
    wave = torch.randn(1, 8000)
    with torch.no_grad():
        latents, features = encoder(wave)
        expected = reference(wave).last_hidden_state
        expected_latents = reference.feature_extractor(wave).transpose(1, 2)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(latents, expected_latents)


def test_text_decoder_loads_a_ctc_directory_over_shared_latents(
    tiny_config: PMMTalkConfig, tmp_path: Path
) -> None:
    """Fed the recogniser's own CNN latents, our text branch reproduces its logits exactly."""
    reference = save_hf_ctc(tiny_config, tmp_path / "ctc", seed=4)
    decoder = TextDecoder(tiny_config.text, tiny_config.audio).eval()
    decoder.load_pretrained(tmp_path / "ctc")
    wave = torch.randn(1, 8000)
    with torch.no_grad():
        latents = reference.wav2vec2.feature_extractor(wave).transpose(1, 2)
        torch.testing.assert_close(decoder(latents), reference(wave).logits)


def test_pmmtalk_loads_both_parts(tiny_config: PMMTalkConfig, tmp_path: Path) -> None:
    audio = save_hf_audio(tiny_config, tmp_path / "w2v", seed=5)
    ctc = save_hf_ctc(tiny_config, tmp_path / "ctc", seed=6)
    model = PMMTalk(tiny_config)
    model.load_pretrained_parts(wav2vec2_dir=tmp_path / "w2v", ctc_dir=tmp_path / "ctc")
    torch.testing.assert_close(
        model.speech.wav2vec2.encoder.layers[0].attention.q_proj.weight,
        audio.encoder.layers[0].attention.q_proj.weight,
    )
    torch.testing.assert_close(model.text.lm_head.weight, ctc.lm_head.weight)


def test_mismatched_architecture_is_named(tiny_config: PMMTalkConfig, tmp_path: Path) -> None:
    other = dataclasses.replace(
        tiny_config, audio=dataclasses.replace(tiny_config.audio, num_layers=3)
    )
    save_hf_audio(other, tmp_path / "w2v", seed=0)
    with pytest.raises(ValueError, match="num_layers: expected 2, found 3"):
        SpeechEncoder(tiny_config.audio).load_pretrained(tmp_path / "w2v")
    wide = dataclasses.replace(
        tiny_config, text=dataclasses.replace(tiny_config.text, vocab_size=40)
    )
    save_hf_ctc(wide, tmp_path / "ctc", seed=0)
    with pytest.raises(ValueError, match="vocab_size: expected 12, found 40"):
        TextDecoder(tiny_config.text, tiny_config.audio).load_pretrained(tmp_path / "ctc")


def test_missing_or_wrong_directories_are_clear(tiny_config: PMMTalkConfig, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="directory not found"):
        SpeechEncoder(tiny_config.audio).load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no config\.json"):
        TextDecoder(tiny_config.text, tiny_config.audio).load_pretrained(tmp_path / "empty")
