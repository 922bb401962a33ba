"""The text branch psi_TD: a wav2vec 2.0 CTC recogniser over the audio branch's CNN latents.

The paper's text branch is a frozen Mandarin CTC recogniser that shares psi_AE (the CNN feature
encoder) with the audio branch. So this module keeps only the recogniser's feature projection,
its transformer blocks and its vocabulary head; the recogniser's own CNN is never used.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from torch import Tensor, nn
from transformers import Wav2Vec2ForCTC
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2Encoder,
    Wav2Vec2EncoderStableLayerNorm,
    Wav2Vec2FeatureProjection,
)

from models.audio_encoder import (
    config_mismatch,
    existing_model_dir,
    hf_config,
    text_config_from_hf,
)
from models.config import AudioEncoderConfig, TextDecoderConfig
from models.local_attention import run_encoder

logger = logging.getLogger(__name__)


class TextDecoder(nn.Module):
    """psi_TD: CNN latents L (B, F, C) -> per-frame vocabulary logits (B, F, vocab_size)."""

    def __init__(self, cfg: TextDecoderConfig, audio: AudioEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_cfg = audio
        hf = hf_config(audio, cfg)
        # Outside a PreTrainedModel nothing picks the attention kernel; use PyTorch's SDPA.
        hf._attn_implementation = "sdpa"
        self.feature_projection = Wav2Vec2FeatureProjection(hf)
        self.encoder: nn.Module = (
            Wav2Vec2EncoderStableLayerNorm(hf) if cfg.do_stable_layer_norm else Wav2Vec2Encoder(hf)
        )
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    @property
    def output_dim(self) -> int:
        return self.cfg.vocab_size

    def forward(self, latents: Tensor) -> Tensor:
        """latents (B, F, C) -> CTC logits (B, F, vocab_size)."""
        hidden, _ = self.feature_projection(latents)  # (B, F, hidden)
        hidden = run_encoder(self.encoder, hidden, self.cfg.attention_span_s)  # (B, F, hidden)
        return self.lm_head(hidden)  # (B, F, vocab)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a Hugging Face-format wav2vec 2.0 CTC directory (for example a Mandarin recogniser).

        Its transformer and head sizes must match this preset's text branch, and its CNN output
        width must equal the audio branch's (the CNN itself is shared and not loaded from here).
        """
        directory = existing_model_dir(path, "wav2vec 2.0 CTC")
        loaded = Wav2Vec2ForCTC.from_pretrained(str(directory))
        hf = loaded.config
        found = dataclasses.replace(
            text_config_from_hf(hf), attention_span_s=self.cfg.attention_span_s
        )
        problems = config_mismatch(self.cfg, found)
        if hf.conv_dim[-1] != self.audio_cfg.latent_dim:
            problems.append(
                f"CNN output width: audio branch has {self.audio_cfg.latent_dim}, "
                f"recogniser has {hf.conv_dim[-1]}"
            )
        if problems:
            raise ValueError(
                f"CTC model in {directory} does not match this preset's text branch: "
                + "; ".join(problems)
            )
        body = loaded.wav2vec2
        self.feature_projection.load_state_dict(body.feature_projection.state_dict(), strict=True)
        self.encoder.load_state_dict(body.encoder.state_dict(), strict=True)
        self.lm_head.load_state_dict(loaded.lm_head.state_dict(), strict=True)
        logger.info("loaded wav2vec 2.0 CTC weights from %s", directory)
