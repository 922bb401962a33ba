"""The decoder: fuses image, text and audio features with the style vector into 32 coefficients.

FaceFormer lineage, as the paper describes it: per-modality Linear layers, concatenation with
the personal style vector p, a periodic positional encoding (PPE), then per layer a multi-head
self-attention with ALiBi-style linear biases (nearby frames weigh more), a masked self-attention
and a feed-forward network, and a final fully connected layer. Every attention is causal: frame
t never sees frames after t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blendshapes import FPS, NUM_BLENDSHAPES
from models.config import DecoderConfig
from models.local_attention import band_bias


def periodic_positional_encoding(
    num_frames: int, dim: int, period: int, start_index: int | Tensor = 0
) -> Tensor:
    """PPE (FaceFormer): sinusoids of the frame index modulo ``period``.

    ``start_index`` is the absolute index of the first frame, so a streaming window gets the
    same encoding as the same frames inside the whole clip. An int gives (T, dim); a (B,) integer
    tensor (one window per batch item, as the streaming graph batches them) gives (B, T, dim).
    """
    freq = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))  # (dim/2,)
    if isinstance(start_index, Tensor):
        steps = torch.arange(num_frames, device=start_index.device)
        position = torch.remainder(steps[None] + start_index.long()[:, None], period)  # (B, T)
        angle = position[..., None].float() * freq.to(start_index.device)  # (B, T, dim/2)
        # Interleaved sin/cos: the int path's layout (dims 0, 2, ... sin; 1, 3, ... cos).
        return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)[..., :dim]
    position = (torch.arange(num_frames) + start_index) % period  # (T,)
    angle = position[:, None].float() * freq[None, :]  # (T, dim/2)
    encoding = torch.zeros(num_frames, dim)
    encoding[:, 0::2] = torch.sin(angle)
    encoding[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return encoding


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head slopes of the linear distance penalty: 2^(-8 h / H) for h = 1..H."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)])


def causal_mask(num_frames: int, device: torch.device | None = None) -> Tensor:
    """Additive mask (T, T): 0 on and below the diagonal, -inf above (future frames)."""
    future = torch.ones(num_frames, num_frames, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(num_frames, num_frames, device=device).masked_fill(future, float("-inf"))


def alibi_causal_bias(num_frames: int, slopes: Tensor) -> Tensor:
    """Additive bias (H, T, T): -slope_h * (i - j) for past frames j <= i, -inf for the future."""
    index = torch.arange(num_frames, device=slopes.device)
    distance = (index[:, None] - index[None, :]).clamp(min=0).float()  # (T, T)
    bias = -slopes[:, None, None] * distance[None]  # (H, T, T)
    return bias + causal_mask(num_frames, slopes.device)[None]


class SelfAttention(nn.Module):
    """Multi-head self-attention with an additive mask/bias of shape (H or 1, T, T)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        batch, frames, dim = x.shape
        qkv = self.qkv(x).view(batch, frames, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, head_dim)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, head_dim)
        return self.out(y.transpose(1, 2).reshape(batch, frames, dim))


class DecoderLayer(nn.Module):
    """ALiBi-biased causal self-attention, masked self-attention, feed-forward (pre-norm)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.norm_biased = nn.LayerNorm(cfg.d_model)
        self.biased_attention = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.norm_masked = nn.LayerNorm(cfg.d_model)
        self.masked_attention = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.norm_ffn = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.intermediate_size),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.intermediate_size, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, alibi: Tensor, causal: Tensor) -> Tensor:
        x = x + self.drop(self.biased_attention(self.norm_biased(x), alibi))
        x = x + self.drop(self.masked_attention(self.norm_masked(x), causal))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class FusionDecoder(nn.Module):
    """(I, C, A, p) -> blendshape coefficients (B, T, 32)."""

    slopes: Tensor  # (H,) ALiBi slopes, a non-persistent buffer

    def __init__(self, cfg: DecoderConfig, image_dim: int, text_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_proj = nn.Linear(image_dim, cfg.modality_dim)
        self.text_proj = nn.Linear(text_dim, cfg.modality_dim)
        self.audio_proj = nn.Linear(audio_dim, cfg.modality_dim)
        self.style_table = nn.Embedding(cfg.num_styles, cfg.style_dim)
        self.fuse = nn.Linear(3 * cfg.modality_dim + cfg.style_dim, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, NUM_BLENDSHAPES)
        self.register_buffer("slopes", alibi_slopes(cfg.num_heads), persistent=False)

    def style_vector(self, style: int | Tensor | None, batch: int) -> Tensor:
        """The style p as (B, style_dim).

        ``style`` is a subject index (int or (B,) integer tensor) into the learned table, a
        (B, style_dim) or (style_dim,) float vector given directly, or None for the mean of all
        training styles (the choice for an unseen speaker).
        """
        table = self.style_table.weight  # (S, style_dim)
        if style is None:
            return table.mean(dim=0, keepdim=True).expand(batch, -1)
        if isinstance(style, int):
            if not 0 <= style < self.cfg.num_styles:
                last = self.cfg.num_styles - 1
                raise ValueError(f"style {style} is out of range; this model has styles 0..{last}")
            return table[style].expand(batch, -1)
        if style.is_floating_point():
            vector = style if style.dim() == 2 else style[None]
            if vector.shape[-1] != self.cfg.style_dim:
                raise ValueError(
                    f"a style vector must have {self.cfg.style_dim} values, got {vector.shape[-1]}"
                )
            return vector.expand(batch, -1)
        return self.style_table(style.long())

    def forward(
        self,
        image: Tensor,
        text: Tensor,
        audio: Tensor,
        style: Tensor,
        start_index: int | Tensor = 0,
    ) -> Tensor:
        """image (B,T,Di), text (B,T,Dt), audio (B,T,Da), style (B, style_dim) -> (B, T, 32).

        ``start_index`` is the absolute index of the first frame (for the periodic encoding):
        one int for the batch, or a (B,) integer tensor with one per item.
        """
        frames = image.shape[1]
        fused = torch.cat(
            [
                self.image_proj(image),
                self.text_proj(text),
                self.audio_proj(audio),
                style[:, None, :].expand(-1, frames, -1),
            ],
            dim=-1,
        )  # (B, T, 3*modality + style)
        x = self.fuse(fused)  # (B, T, d_model)
        ppe = periodic_positional_encoding(
            frames, self.cfg.d_model, self.cfg.ppe_period, start_index
        ).to(x)
        x = x + (ppe if ppe.dim() == 3 else ppe[None])
        alibi = alibi_causal_bias(frames, self.slopes).to(x)  # (H, T, T)
        causal = causal_mask(frames, x.device).to(x)[None]  # (1, T, T)
        if self.cfg.attention_span_s is not None:  # nothing further back than the span
            band = band_bias(frames, round(self.cfg.attention_span_s * FPS), frames, x)[0]
            alibi, causal = alibi + band, causal + band  # band (1, T, T)
        for layer in self.layers:
            x = layer(x, alibi, causal)
        return self.head(self.norm(x))  # (B, T, 32)
