"""Export stand-ins for the banded attention layers: each query chunk against its band of keys.

Every attention layer of the lite preset is banded (`models.local_attention`): a query frame i
attends only to keys j in ``[i - left, i + right]``. The modules compute that as full T x T
attention under an additive mask that is 0 in the band and the dtype's most negative value (or
-inf) outside, so every key outside the band gets a softmax weight of exactly 0. Scores, softmax
and weighted sum over all T keys then cost T^2 per head and layer, most of it on masked keys:
at 10 s the wav2vec 2.0 branch has 500 latent frames and a band 31 wide.

`banded_attention` computes the same function chunk by chunk. The queries are cut into chunks
of C frames, and each chunk meets only the C + left + right keys its band can reach, taken from
its own chunk and the ends of its neighbours. That is (C + left + right) / T of the work, and
the result differs from the masked form only by the order of float additions. The keys past
either end of the sequence (padding) and the keys outside a query's band get the most negative
value, as in the masked form; an ALiBi distance bias, if any, depends only on a key's offset
from its query, so it is a constant (heads, C, W) block.

The speech graphs (`export.onnx`) are traced with these stand-ins in place of the attention
modules they wrap; each keeps a reference to the module it stands in for and uses its weights.
The PyTorch backend runs the network as written, so the export's parity check compares the two.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Attention

from models.blendshapes import FPS
from models.decoder import DecoderLayer, SelfAttention
from models.local_attention import span_frames
from models.pmmtalk import PMMTalk

CHUNK_FRAMES = 32
"""Query frames per chunk (raised to the band's left or right reach where that is larger). On
the lite speech graph's 10 s clip under ONNX Runtime, chunks of 16 ran within 2 % of 32 and
chunks of 64 7 % slower."""


def banded_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    left: int,
    right: int,
    *,
    scale: float,
    slopes: Tensor | None = None,
    chunk: int = CHUNK_FRAMES,
) -> Tensor:
    """softmax(q k^T * scale + bias) v over keys j in [i - left, i + right] of each query i.

    q, k, v: (B, H, T, D) -> (B, H, T, D). ``slopes`` (H,) adds the ALiBi bias
    ``-slope_h * (i - j)`` for ``j <= i`` (as `models.decoder.alibi_causal_bias`); with it the band
    must not reach the future (``right == 0``). ``chunk`` is raised to ``max(left, right)`` so a
    chunk's band lies within it and its two neighbours.
    """
    if left < 0 or right < 0:
        raise ValueError(f"band reaches must be >= 0, got {left=} {right=}")
    if slopes is not None and right != 0:
        raise ValueError("an ALiBi bias here is causal: the band must have right == 0")
    chunk = max(chunk, left, right, 1)
    batch, heads, frames, dim = q.shape
    chunks = (frames + chunk - 1) // chunk
    width = chunk + left + right
    tail = chunks * chunk - frames  # padding after the last frame

    # Queries: (B, H, n, C, D), the padded rows are dropped at the end.
    q_chunks = F.pad(q, (0, 0, 0, tail)).reshape(batch, heads, chunks, chunk, dim)

    def windows(x: Tensor) -> Tensor:
        """(B, H, T, D) -> (B, H, n, W, D): chunk c's keys c*C - left .. c*C + C + right - 1."""
        padded = F.pad(x, (0, 0, chunk, tail + chunk)).reshape(batch, heads, chunks + 2, chunk, dim)
        parts = [padded[:, :, 0:chunks, chunk - left :]] if left else []
        parts.append(padded[:, :, 1 : chunks + 1])
        if right:
            parts.append(padded[:, :, 2 : chunks + 2, :right])
        return torch.cat(parts, dim=3)

    k_windows, v_windows = windows(k), windows(v)
    scores = torch.matmul(q_chunks, k_windows.transpose(-1, -2)) * scale  # (B, H, n, C, W)

    # Key w of chunk c is frame j = c*C - left + w; query a of it is frame i = c*C + a.
    a = torch.arange(chunk, device=q.device)
    w = torch.arange(width, device=q.device)
    offset = w[None, :] - a[:, None] - left  # (C, W): j - i
    in_band = (offset >= -left) & (offset <= right)
    key = torch.arange(chunks, device=q.device)[:, None] * chunk - left + w[None, :]  # (n, W)
    in_clip = (key >= 0) & (key < frames)
    keep = in_band[None] & in_clip[:, None, :]  # (n, C, W)
    if slopes is None:
        bias = torch.zeros((), dtype=scores.dtype, device=q.device)
    else:
        distance = (-offset).clamp(min=0).to(scores.dtype)  # (C, W): i - j in the past
        bias = (-slopes.to(scores.dtype)[:, None, None] * distance)[:, None]  # (H, 1, C, W)
    lowest = torch.finfo(scores.dtype).min
    scores = scores + torch.where(keep, bias, torch.full((), lowest, dtype=scores.dtype))
    out = torch.matmul(scores.softmax(dim=-1), v_windows)  # (B, H, n, C, D)
    return out.reshape(batch, heads, chunks * chunk, dim)[:, :, :frames]


class BandedWav2Vec2Attention(nn.Module):
    """Stand-in for a Hugging Face ``Wav2Vec2Attention`` self-attention under a band mask.

    Called as the encoder layers call it, ``(hidden_states, attention_mask=..., **kwargs) ->
    (output, None)``; the mask the caller built (`models.local_attention.band_bias`) is ignored
    and the same band is applied by `banded_attention`.
    """

    inner: Wav2Vec2Attention

    def __init__(self, attention: Wav2Vec2Attention, left: int, right: int) -> None:
        super().__init__()
        self.inner = attention
        self.left, self.right = left, right

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> tuple[Tensor, None]:
        inner = self.inner
        batch, frames, _ = hidden_states.shape
        shape = (batch, frames, -1, inner.head_dim)
        q = inner.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = inner.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = inner.v_proj(hidden_states).view(shape).transpose(1, 2)
        out = banded_attention(q, k, v, self.left, self.right, scale=inner.scaling)
        return inner.out_proj(out.transpose(1, 2).reshape(batch, frames, -1)), None


class BandedMultiheadAttention(nn.Module):
    """Stand-in for the ``nn.MultiheadAttention`` of a batch-first ``nn.TransformerEncoderLayer``
    whose mask is a band (`models.image_encoder.ImageEncoder.sequence`).

    Called as the layer calls it, ``(x, x, x, attn_mask=..., ...) -> (output, None)``; the mask
    is ignored and the same band applied. It shares the wrapped module's weights and exposes the
    attributes the layer reads before choosing its (disabled) fast path.
    """

    inner: nn.MultiheadAttention
    out_proj: nn.Module

    def __init__(self, attention: nn.MultiheadAttention, left: int, right: int) -> None:
        super().__init__()
        if not attention.batch_first or not attention._qkv_same_embed_dim:
            raise ValueError("expected a batch-first self-attention with one input projection")
        self.inner = attention
        self.left, self.right = left, right
        self.batch_first = True
        self._qkv_same_embed_dim = True
        self.num_heads = attention.num_heads
        self.in_proj_weight = attention.in_proj_weight
        self.in_proj_bias = attention.in_proj_bias
        self.out_proj = attention.out_proj

    def forward(self, query: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        batch, frames, dim = query.shape
        heads = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, frames, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        out = banded_attention(
            q, k, v, self.left, self.right, scale=(dim // heads) ** -0.5
        )  # (B, H, T, D)
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, dim)), None


class BandedSelfAttention(nn.Module):
    """Stand-in for `models.decoder.SelfAttention` under the decoder's causal band: keys in
    ``[i - left, i]``, plus the ALiBi bias when ``slopes`` is given. Called as the decoder
    layer calls it, ``(x, bias) -> output``; ``bias`` is ignored and the same one applied."""

    inner: SelfAttention
    slopes: Tensor | None

    def __init__(self, attention: SelfAttention, left: int, slopes: Tensor | None = None) -> None:
        super().__init__()
        self.inner = attention
        self.left = left
        self.register_buffer("slopes", slopes, persistent=False)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        inner = self.inner
        batch, frames, dim = x.shape
        heads = inner.num_heads
        qkv = inner.qkv(x).view(batch, frames, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = banded_attention(
            q, k, v, self.left, 0, scale=(dim // heads) ** -0.5, slopes=self.slopes
        )
        result: Tensor = inner.out(out.transpose(1, 2).reshape(batch, frames, dim))
        return result


Swap = tuple[nn.Module, str, nn.Module]
"""(owner, attribute, stand-in): ``setattr(owner, attribute, stand_in)`` puts one in place."""


def _children(layers: Tensor | nn.Module) -> list[nn.Module]:
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"expected an nn.ModuleList of layers, got {type(layers)}")
    return list(layers)


def banded_swaps(model: PMMTalk) -> list[Swap]:
    """The stand-ins for every banded attention layer of ``model``: none for a branch whose
    attention is full (``attention_span_s`` None, as in the paper preset)."""
    swaps: list[Swap] = []
    for span_s, encoder in (
        (model.speech.cfg.attention_span_s, model.speech.wav2vec2.encoder),
        (model.text.cfg.attention_span_s, model.text.encoder),
    ):
        if span_s is not None:
            left, right = span_frames(span_s)
            for layer in _children(encoder.layers):
                attention = layer.get_submodule("attention")
                if not isinstance(attention, Wav2Vec2Attention):
                    raise TypeError(f"expected a Wav2Vec2Attention, got {type(attention)}")
                swaps.append((layer, "attention", BandedWav2Vec2Attention(attention, left, right)))
    image_span = model.image.cfg.attention_span_s
    if image_span is not None:
        left, right = (round(s * FPS) for s in image_span)
        for layer in _children(model.image.transformer.layers):
            self_attn = layer.get_submodule("self_attn")
            if not isinstance(self_attn, nn.MultiheadAttention):
                raise TypeError(f"expected an nn.MultiheadAttention, got {type(self_attn)}")
            swaps.append((layer, "self_attn", BandedMultiheadAttention(self_attn, left, right)))
    decoder = model.decoder
    if decoder.cfg.attention_span_s is not None:
        left = round(decoder.cfg.attention_span_s * FPS)
        for layer in _children(decoder.layers):
            if not isinstance(layer, DecoderLayer):
                raise TypeError(f"expected a DecoderLayer, got {type(layer)}")
            biased = BandedSelfAttention(layer.biased_attention, left, decoder.slopes)
            swaps.append((layer, "biased_attention", biased))
            masked = BandedSelfAttention(layer.masked_attention, left)
            swaps.append((layer, "masked_attention", masked))
    return swaps
