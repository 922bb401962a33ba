"""Banded (local) self-attention for the wav2vec 2.0 transformers of the audio and text branches
(and the band mask the image encoder and the decoder use too).

With full attention every latent frame attends to the whole clip, so a frame's features depend
on audio seconds away: the streaming engine, which sees only a window, then answers differently
from the offline path on the same audio. A band limits each layer to ``left_s`` seconds before
and ``right_s`` seconds after the frame, so a window that holds the band (times the depth) gives
the same features as the whole clip. The Hugging Face encoder takes only a padding mask, so the
band runs the encoder's own sub-modules in its order with a 4-D additive mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2Encoder,
    Wav2Vec2EncoderStableLayerNorm,
)

LATENT_RATE_HZ = 50
"""wav2vec 2.0 latent frames per second (one every 320 samples at 16 kHz)."""


def span_frames(span_s: tuple[float, float]) -> tuple[int, int]:
    """(left_s, right_s) seconds -> (left, right) latent frames, each rounded to the nearest."""
    left_s, right_s = span_s
    if left_s < 0 or right_s < 0:
        raise ValueError(f"attention span seconds must be >= 0, got {span_s}")
    return round(left_s * LATENT_RATE_HZ), round(right_s * LATENT_RATE_HZ)


def band_bias(frames: int, left: int, right: int, like: Tensor) -> Tensor:
    """Additive mask (1, 1, F, F): 0 where key j lies in [i - left, i + right], else the dtype's
    most negative value (not -inf, so no row is ever all -inf)."""
    index = torch.arange(frames, device=like.device)
    offset = index[None, :] - index[:, None]  # (F, F): key minus query
    outside = (offset < -left) | (offset > right)
    bias = torch.zeros(frames, frames, dtype=like.dtype, device=like.device)
    return bias.masked_fill(outside, torch.finfo(like.dtype).min)[None, None]


def run_encoder(encoder: nn.Module, hidden: Tensor, span_s: tuple[float, float] | None) -> Tensor:
    """hidden (B, F, C) after the feature projection -> the encoder's last hidden state (B, F, C).

    ``span_s`` None runs the encoder as Hugging Face does (full attention).
    """
    if span_s is None:
        out: Tensor = encoder(hidden).last_hidden_state
        return out
    if not isinstance(encoder, Wav2Vec2Encoder | Wav2Vec2EncoderStableLayerNorm):
        raise TypeError(f"banded attention needs a wav2vec 2.0 encoder, got {type(encoder)}")
    left, right = span_frames(span_s)
    bias = band_bias(hidden.shape[1], left, right, hidden)
    hidden = hidden + encoder.pos_conv_embed(hidden)
    stable = isinstance(encoder, Wav2Vec2EncoderStableLayerNorm)
    if not stable:  # the post-norm variant normalises before the blocks, the stable one after
        hidden = encoder.layer_norm(hidden)
    hidden = encoder.dropout(hidden)
    for layer in encoder.layers:
        if (
            encoder.training
            and encoder.config.layerdrop > 0
            and torch.rand([]) < encoder.config.layerdrop
        ):
            continue
        hidden = layer(hidden, attention_mask=bias)
    if stable:
        hidden = encoder.layer_norm(hidden)
    return hidden
