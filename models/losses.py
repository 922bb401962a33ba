"""PMMTalk's training losses: position, motion and the two cross-modal alignment terms.

    L = w_pos * L_pos + w_mot * L_mot + w_tem * L_tem + w_sem * L_sem

with the paper's weights in `models.config.LossConfig` (1, 10, 1e-4, 1e-5). Blendshape tensors are
``(B, T, K)`` coefficients (K = 32, unitless ARKit weights, nominally in [0, 1]) at 30 fps, and
``d_t = b^_t - b_t`` is the prediction error of frame t.

Every function takes an optional ``lengths`` (B,) of valid frame counts. Padded frames (index >=
length) never count: they are zeroed before any arithmetic, so even NaN padding changes neither the
value nor the gradients. Batch values are the plain mean over items of each item's own value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import LossConfig


def frame_mask(lengths: Tensor | None, batch: int, max_frames: int, device: torch.device) -> Tensor:
    """Valid-frame mask ``(B, T)`` (True where frame t < lengths[b]).

    ``lengths`` is an integer tensor of shape (B,) with 1 <= lengths[b] <= T; None means every
    frame of every item is valid. A zero length is rejected because an empty clip has no mean.
    """
    if max_frames < 1:
        raise ValueError(f"sequences need at least one frame, got T={max_frames}")
    if lengths is None:
        return torch.ones(batch, max_frames, dtype=torch.bool, device=device)
    if lengths.shape != (batch,):
        raise ValueError(
            f"lengths must have shape ({batch},), one count per batch item, "
            f"got {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"lengths must be an integer tensor of frame counts, got {lengths.dtype}")
    if bool(((lengths < 1) | (lengths > max_frames)).any()):
        raise ValueError(
            f"lengths must lie in [1, {max_frames}] (T of the padded batch), got {lengths.tolist()}"
        )
    frames = torch.arange(max_frames, device=device)  # (T,)
    return frames[None, :] < lengths.to(device)[:, None]  # (B, T)


def _check_blendshapes(pred: Tensor, target: Tensor) -> None:
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(
            "pred and target must both have shape (B, T, K), got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def _masked_error(pred: Tensor, target: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """The error d = pred - target with padded frames set to 0, and the mask.

    Returns ``d`` (B, T, K) and ``mask`` (B, T).
    """
    _check_blendshapes(pred, target)
    batch, frames, _ = pred.shape
    mask = frame_mask(lengths, batch, frames, pred.device)  # (B, T)
    d = torch.where(mask[..., None], pred - target, 0.0)  # (B, T, K)
    return d, mask


def position_loss(pred: Tensor, target: Tensor, lengths: Tensor | None = None) -> Tensor:
    """L_pos = (1/T) * sum_{t=1..T} ||d_t||_2^2, averaged over the batch.

    ``||d_t||_2^2`` sums the squared errors of the K coefficients of frame t (no 1/K); T is each
    item's own valid length. pred, target: (B, T, K); lengths: (B,) or None. Returns a scalar in
    squared coefficient units.
    """
    d, mask = _masked_error(pred, target, lengths)  # (B, T, K), (B, T)
    per_item = d.pow(2).sum(dim=(1, 2)) / mask.sum(dim=1)  # (B,)
    return per_item.mean()


def motion_loss(pred: Tensor, target: Tensor, lengths: Tensor | None = None) -> Tensor:
    """L_mot = (1/T) * sum_{t=2..T} ||d_t - d_{t-1}||_2^2, averaged over the batch.

    ``d_t - d_{t-1} = (b^_t - b^_{t-1}) - (b_t - b_{t-1})`` is the error of the frame-to-frame
    velocity. The sum starts at t=2 (frame 1 has no predecessor) but is divided by T, not T-1, as
    the paper writes it; a one-frame clip gives 0. pred, target: (B, T, K); lengths: (B,) or None.
    Returns a scalar in squared coefficient units per frame^2.
    """
    d, mask = _masked_error(pred, target, lengths)  # (B, T, K), (B, T)
    # A difference is valid when its later frame is: d is already 0 past the end, but the step from
    # the last valid frame into padding would otherwise count as -d_last.
    step = torch.where(mask[:, 1:, None], d[:, 1:] - d[:, :-1], 0.0)  # (B, T-1, K)
    per_item = step.pow(2).sum(dim=(1, 2)) / mask.sum(dim=1)  # (B,)
    return per_item.mean()


def _check_features(x_hat: Tensor, y_hat: Tensor) -> None:
    if x_hat.dim() != 3 or x_hat.shape != y_hat.shape:
        raise ValueError(
            "x_hat and y_hat must both have shape (B, T, D) (project both sides to the shared "
            f"alignment dim first), got {tuple(x_hat.shape)} and {tuple(y_hat.shape)}"
        )


def temporal_alignment_loss(
    x_hat: Tensor, y_hat: Tensor, scale: Tensor | float, lengths: Tensor | None = None
) -> Tensor:
    """l_tem of one modality pair: a symmetric cross-entropy between D's and W's row softmaxes.

    For an item of T valid frames:

        D[i, j] = s * cos(x^_i, y^_j)                      (T, T), s = ``scale``
        W       = I_T                                      (T, T)
        P_D = softmax(D), P_W = softmax(W)                 row-wise, over the T valid columns
        l_tem = -(1/T) * sum_i sum_j ( P_D[i,j] * log P_W[i,j] + P_W[i,j] * log P_D[i,j] )

    The paper writes ``-(D~ log W~ + W~ log D~)`` with ``D~ = LogSoftmax(D)``, ``W~ = Softmax(W)``;
    read literally the first product would multiply a log by a log, so it is read as the term
    weighted by D's probabilities: cross-entropy of P_W under P_D plus that of P_D under P_W. With
    W = I the target row puts e / (e + T - 1) on the diagonal, so the loss rewards each frame of X
    being most similar to the same frame of Y. T = 1 gives 0.

    The similarity is cosine (rows are l2-normalised inside): LayerNorm outputs have norm about
    sqrt(D), so a raw dot product would reach s * D (thousands at D = 256) and saturate the softmax,
    while the learned scale is initialised from CLIP's temperature, which assumes unit vectors.

    x_hat, y_hat: (B, T, D) projected, LayerNorm-ed, frame-aligned features of the two modalities;
    scale: s > 0 (a scalar tensor passes gradients on); lengths: (B,) or None. Padded frames take
    part in no softmax row or column. Computed in float32. Returns the batch mean, a scalar in nats.
    """
    _check_features(x_hat, y_hat)
    batch, frames, _ = x_hat.shape
    mask = frame_mask(lengths, batch, frames, x_hat.device)  # (B, T)
    x = F.normalize(torch.where(mask[..., None], x_hat.float(), 0.0), dim=-1)  # (B, T, D)
    y = F.normalize(torch.where(mask[..., None], y_hat.float(), 0.0), dim=-1)  # (B, T, D)
    valid_col = mask[:, None, :]  # (B, 1, T)
    valid = mask[:, :, None] & valid_col  # (B, T, T)

    sim = scale * torch.bmm(x, y.transpose(1, 2))  # (B, T, T)
    log_p_d = torch.log_softmax(sim.masked_fill(~valid_col, float("-inf")), dim=-1)  # (B, T, T)
    eye = torch.eye(frames, device=x.device).expand(batch, frames, frames)  # (B, T, T)
    log_p_w = torch.log_softmax(eye.masked_fill(~valid_col, float("-inf")), dim=-1)  # (B, T, T)

    # Zero every padded entry before multiplying: 0 * -inf would be NaN.
    p_d = log_p_d.exp().masked_fill(~valid, 0.0)
    p_w = log_p_w.exp().masked_fill(~valid, 0.0)
    log_p_d = log_p_d.masked_fill(~valid, 0.0)
    log_p_w = log_p_w.masked_fill(~valid, 0.0)
    cross = p_d * log_p_w + p_w * log_p_d  # (B, T, T)
    per_item = -cross.sum(dim=(1, 2)) / mask.sum(dim=1)  # (B,)
    return per_item.mean()


def semantic_alignment_loss(x_hat: Tensor, y_hat: Tensor, lengths: Tensor | None = None) -> Tensor:
    """l_sem of one modality pair: 1 - cos(X~, Y~) of the time-averaged features.

    ``X~ = (1/T) * sum_{t=1..T} x^_t`` over the T valid frames, ``Y~`` likewise, and
    ``l_sem = 1 - X~ . Y~ / (||X~|| ||Y~||)``, in [0, 2]. x_hat, y_hat: (B, T, D); lengths: (B,)
    or None. Computed in float32. Returns the batch mean, a unitless scalar.
    """
    _check_features(x_hat, y_hat)
    batch, frames, _ = x_hat.shape
    mask = frame_mask(lengths, batch, frames, x_hat.device)  # (B, T)
    count = mask.sum(dim=1, keepdim=True)  # (B, 1)
    x_mean = torch.where(mask[..., None], x_hat.float(), 0.0).sum(dim=1) / count  # (B, D)
    y_mean = torch.where(mask[..., None], y_hat.float(), 0.0).sum(dim=1) / count  # (B, D)
    return (1.0 - F.cosine_similarity(x_mean, y_mean, dim=-1)).mean()


@dataclass(frozen=True)
class LossTerms:
    """Each term of the training loss (scalar tensors) and their weighted sum ``total``."""

    pos: Tensor
    mot: Tensor
    tem: Tensor
    sem: Tensor
    total: Tensor


def total_loss(
    pred: Tensor,
    target: Tensor,
    tem: Tensor,
    sem: Tensor,
    weights: LossConfig,
    lengths: Tensor | None = None,
) -> LossTerms:
    """L = w_pos * L_pos + w_mot * L_mot + w_tem * L_tem + w_sem * L_sem.

    pred, target: (B, T, K) blendshape coefficients; tem, sem: scalar alignment losses already
    averaged over the three modality pairs (`models.alignment.CrossModalAlignment`); weights: the
    four w's; lengths: (B,) or None. Returns every term and the weighted total.
    """
    pos = position_loss(pred, target, lengths)
    mot = motion_loss(pred, target, lengths)
    total = weights.pos * pos + weights.mot * mot + weights.tem * tem + weights.sem * sem
    return LossTerms(pos=pos, mot=mot, tem=tem, sem=sem, total=total)
