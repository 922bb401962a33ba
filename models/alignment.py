"""Cross-modal alignment of the three pseudo modalities (training only).

The image I, text C and audio A features of one clip are frame-aligned (T frames at 30 fps) but
come from different encoders. For each pair (I, C), (I, A), (C, A) both sides get their own
Linear + LayerNorm into a shared width, and two losses pull the pair together:

    L_tem = (1/3) * sum over pairs of l_tem   (frame t of X should match frame t of Y)
    L_sem = (1/3) * sum over pairs of l_sem   (the clip-level means should point the same way)

(`models.losses` gives both formulas.) Inference never calls this module; its projections exist
only to shape the encoders' features during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor, nn

from models.config import AlignmentConfig
from models.losses import semantic_alignment_loss, temporal_alignment_loss

MAX_LOGIT_SCALE: Final = 100.0
"""Cap on s = exp(logit_scale), CLIP's, so the similarity softmax cannot become a hard argmax."""

MODALITY_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    ("image", "text"),
    ("image", "audio"),
    ("text", "audio"),
)
"""The paper's pairs (I, C), (I, A), (C, A), as (X, Y)."""


@dataclass(frozen=True)
class AlignmentLosses:
    """L_tem and L_sem, each a scalar tensor averaged over the three modality pairs."""

    tem: Tensor
    sem: Tensor


class _PairProjection(nn.Module):
    """X^ = LayerNorm(Linear(X)) and Y^ = LayerNorm(Linear(Y)) for one pair, one set per side."""

    def __init__(self, x_dim: int, y_dim: int, dim: int) -> None:
        super().__init__()
        self.x = nn.Sequential(nn.Linear(x_dim, dim), nn.LayerNorm(dim))
        self.y = nn.Sequential(nn.Linear(y_dim, dim), nn.LayerNorm(dim))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, Dx), y: (B, T, Dy) -> x^, y^: (B, T, dim) each."""
        return self.x(x), self.y(y)


class CrossModalAlignment(nn.Module):
    """The six projections, the learned similarity scale, and L_tem / L_sem over the three pairs.

    One logit scale is shared by the three pairs: s = min(exp(logit_scale), 100), initialised to
    exp(cfg.init_logit_scale).
    """

    def __init__(self, cfg: AlignmentConfig, image_dim: int, text_dim: int, audio_dim: int) -> None:
        super().__init__()
        dims = {"image": image_dim, "text": text_dim, "audio": audio_dim}
        if cfg.dim < 1 or min(dims.values()) < 1:
            raise ValueError(f"alignment widths must be positive, got dim={cfg.dim} and {dims}")
        if cfg.init_logit_scale > math.log(MAX_LOGIT_SCALE):
            # Above the cap the clamp passes no gradient, so the scale could never move.
            raise ValueError(
                f"init_logit_scale must be <= log({MAX_LOGIT_SCALE:g}) = "
                f"{math.log(MAX_LOGIT_SCALE):.4f}, got {cfg.init_logit_scale}"
            )
        self.pairs = nn.ModuleDict(
            {f"{x}_{y}": _PairProjection(dims[x], dims[y], cfg.dim) for x, y in MODALITY_PAIRS}
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    def scale(self) -> Tensor:
        """s = exp(logit_scale) capped at `MAX_LOGIT_SCALE`, a scalar tensor."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def forward(
        self, image: Tensor, text: Tensor, audio: Tensor, lengths: Tensor | None = None
    ) -> AlignmentLosses:
        """L_tem and L_sem of image (B, T, Di), text (B, T, Dt) and audio (B, T, Da) features.

        The three inputs must share B and T (frame t of each is the same 1/30 s of speech);
        lengths: (B,) valid frame counts or None. Returns the two losses, each the mean over the
        three pairs.
        """
        features = {"image": image, "text": text, "audio": audio}
        shapes = {name: tuple(f.shape) for name, f in features.items()}
        if any(f.dim() != 3 or f.shape[:2] != image.shape[:2] for f in features.values()):
            raise ValueError(
                f"image, text and audio features must be (B, T, D) with the same B and T, "
                f"got {shapes}"
            )
        scale = self.scale()
        tem: list[Tensor] = []
        sem: list[Tensor] = []
        for x_name, y_name in MODALITY_PAIRS:
            x_hat, y_hat = self.pairs[f"{x_name}_{y_name}"](features[x_name], features[y_name])
            tem.append(temporal_alignment_loss(x_hat, y_hat, scale, lengths))
            sem.append(semantic_alignment_loss(x_hat, y_hat, lengths))
        return AlignmentLosses(tem=torch.stack(tem).mean(), sem=torch.stack(sem).mean())
