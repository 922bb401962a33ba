"""The audio branch: wav2vec 2.0's CNN feature encoder (psi_AE) and transformer (psi_AD).

Built on `transformers`' Wav2Vec2Model so that a Hugging Face-format wav2vec 2.0 directory
(XLSR-53 for the paper preset) loads as it is. The CNN latents are shared with the text branch.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from models.config import AudioEncoderConfig, TextDecoderConfig
from models.local_attention import run_encoder

logger = logging.getLogger(__name__)

# Samples the CNN needs for one latent frame, and the hop between frames (16 kHz).
RECEPTIVE_FIELD_SAMPLES = 400
HOP_SAMPLES = 320


def hf_config(audio: AudioEncoderConfig, text: TextDecoderConfig | None = None) -> Wav2Vec2Config:
    """A `transformers` config for the audio model, or for the text model when ``text`` is given.

    The text model shares the audio CNN, so its conv layers are always the audio branch's.
    """
    body: AudioEncoderConfig | TextDecoderConfig = text if text is not None else audio
    return Wav2Vec2Config(
        conv_dim=list(audio.conv_dim),
        conv_kernel=list(audio.conv_kernel),
        conv_stride=list(audio.conv_stride),
        conv_bias=audio.conv_bias,
        feat_extract_norm=audio.feat_extract_norm,
        hidden_size=body.hidden_size,
        num_hidden_layers=body.num_layers,
        num_attention_heads=body.num_heads,
        intermediate_size=body.intermediate_size,
        num_conv_pos_embeddings=body.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=body.num_conv_pos_embedding_groups,
        do_stable_layer_norm=body.do_stable_layer_norm,
        vocab_size=text.vocab_size if text is not None else Wav2Vec2Config().vocab_size,
    )


def audio_config_from_hf(hf: Wav2Vec2Config, normalize_input: bool) -> AudioEncoderConfig:
    """The `AudioEncoderConfig` that describes a Hugging Face wav2vec 2.0 config."""
    return AudioEncoderConfig(
        conv_dim=tuple(hf.conv_dim),
        conv_kernel=tuple(hf.conv_kernel),
        conv_stride=tuple(hf.conv_stride),
        conv_bias=bool(hf.conv_bias),
        feat_extract_norm="layer" if hf.feat_extract_norm == "layer" else "group",
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        num_conv_pos_embeddings=hf.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=hf.num_conv_pos_embedding_groups,
        do_stable_layer_norm=hf.do_stable_layer_norm,
        normalize_input=normalize_input,
    )


def text_config_from_hf(hf: Wav2Vec2Config) -> TextDecoderConfig:
    """The `TextDecoderConfig` that describes a Hugging Face wav2vec 2.0 CTC config."""
    return TextDecoderConfig(
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        num_conv_pos_embeddings=hf.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=hf.num_conv_pos_embedding_groups,
        do_stable_layer_norm=hf.do_stable_layer_norm,
        vocab_size=int(hf.vocab_size or 0),
    )


def num_latent_frames(num_samples: int) -> int:
    """Latent frames the CNN yields for ``num_samples`` samples (0 below one receptive field)."""
    if num_samples < RECEPTIVE_FIELD_SAMPLES:
        return 0
    return (num_samples - RECEPTIVE_FIELD_SAMPLES) // HOP_SAMPLES + 1


def config_mismatch(expected: object, found: object) -> list[str]:
    """Human-readable ``field: expected != found`` lines for two configs of one dataclass type."""
    return [
        f"{name}: expected {getattr(expected, name)!r}, found {getattr(found, name)!r}"
        for name in vars(expected)
        if getattr(expected, name) != getattr(found, name)
    ]


class SpeechEncoder(nn.Module):
    """psi_AE + psi_AD: raw 16 kHz speech -> CNN latents L (50 Hz) -> contextual features A."""

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(hf_config(cfg))

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def output_dim(self) -> int:
        return self.cfg.hidden_size

    def extract_latents(self, wave: Tensor) -> Tensor:
        """psi_AE. wave (B, S) at 16 kHz, S >= 400 -> latents L (B, F, C) at 50 Hz.

        With ``normalize_input`` each clip is scaled to zero mean and unit variance first, as
        XLSR-53's feature extractor expects.
        """
        if wave.shape[-1] < RECEPTIVE_FIELD_SAMPLES:
            raise ValueError(
                f"the speech encoder needs at least {RECEPTIVE_FIELD_SAMPLES} samples, "
                f"got {wave.shape[-1]}; pad short clips first"
            )
        if self.cfg.normalize_input:
            mean = wave.mean(dim=-1, keepdim=True)
            var = wave.var(dim=-1, keepdim=True, unbiased=False)
            wave = (wave - mean) / torch.sqrt(var + 1e-7)
        latents = self.wav2vec2.feature_extractor(wave)  # (B, C, F)
        return latents.transpose(1, 2)  # (B, F, C)

    def contextualize(self, latents: Tensor) -> Tensor:
        """psi_AD. latents (B, F, C) -> contextual audio features A (B, F, hidden)."""
        hidden, _ = self.wav2vec2.feature_projection(latents)  # (B, F, hidden)
        return run_encoder(
            self.wav2vec2.encoder, hidden, self.cfg.attention_span_s
        )  # (B, F, hidden)

    def forward(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """wave (B, S) -> (latents L (B, F, C), features A (B, F, hidden))."""
        latents = self.extract_latents(wave)
        return latents, self.contextualize(latents)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a Hugging Face-format wav2vec 2.0 directory (``config.json`` + weights).

        The directory's architecture must match this encoder's config; a mismatch names the
        differing fields.
        """
        directory = existing_model_dir(path, "wav2vec 2.0")
        loaded = Wav2Vec2Model.from_pretrained(str(directory))
        found = audio_config_from_hf(loaded.config, self.cfg.normalize_input)
        found = dataclasses.replace(found, attention_span_s=self.cfg.attention_span_s)
        problems = config_mismatch(self.cfg, found)
        if problems:
            raise ValueError(
                f"wav2vec 2.0 model in {directory} does not match this preset's audio branch: "
                + "; ".join(problems)
            )
        own = self.wav2vec2.state_dict()
        weights = {k: v for k, v in loaded.state_dict().items() if k in own}
        missing = sorted(set(own) - set(weights))
        if missing:
            raise ValueError(f"wav2vec 2.0 model in {directory} lacks weights: {missing[:5]}")
        self.wav2vec2.load_state_dict(weights, strict=True)
        logger.info("loaded wav2vec 2.0 weights from %s", directory)


def existing_model_dir(path: str | Path, what: str) -> Path:
    """``path`` as a directory holding a Hugging Face ``config.json``, or a clear error."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {directory}")
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"{directory} is not a Hugging Face-format {what} directory (no config.json)"
        )
    return directory
