"""The training losses against values worked out by hand, and padding that never counts."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from models.config import LossConfig
from models.losses import (
    motion_loss,
    position_loss,
    semantic_alignment_loss,
    temporal_alignment_loss,
    total_loss,
)

K = 32
Tensors = tuple[Tensor, Tensor]

# Per-frame errors d_t = pred_t - target_t in the first three coefficients (the rest are exact).
ERRORS = [[0.1, -0.3, 0.2], [0.5, 0.0, -0.1], [0.5, 0.2, -0.1]]
# ||d_t||^2: 0.01 + 0.09 + 0.04, 0.25 + 0.01, 0.25 + 0.04 + 0.01
SQ_NORMS = [0.14, 0.26, 0.30]
# ||d_2 - d_1||^2 = 0.4^2 + 0.3^2 + 0.3^2 and ||d_3 - d_2||^2 = 0.2^2
STEP_SQ_NORMS = [0.34, 0.04]


def _clip(errors: list[list[float]], seed: int = 0) -> tuple[Tensor, Tensor]:
    """(1, T, 32) target in [0, 1] and pred = target + the given errors."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(1, len(errors), K, generator=gen, dtype=torch.float64)
    d = torch.zeros_like(target)
    d[0, :, : len(errors[0])] = torch.tensor(errors, dtype=torch.float64)
    return target + d, target


def _pad(x: Tensor, frames: int, value: float = float("nan")) -> Tensor:
    """Pad (1, T, ...) to (1, frames, ...) along time with ``value``."""
    pad = x.new_full((1, frames - x.shape[1], *x.shape[2:]), value)
    return torch.cat([x, pad], dim=1)


def test_position_loss_is_mean_squared_norm_over_frames() -> None:
    pred, target = _clip(ERRORS[:2])
    assert position_loss(pred, target).item() == pytest.approx((0.14 + 0.26) / 2, rel=1e-12)


def test_motion_loss_sums_velocity_errors_and_divides_by_t() -> None:
    pred, target = _clip(ERRORS)
    # Divided by T = 3, not by the T - 1 = 2 differences.
    assert motion_loss(pred, target).item() == pytest.approx((0.34 + 0.04) / 3, rel=1e-12)


def test_motion_loss_ignores_a_constant_offset_that_position_loss_sees() -> None:
    pred, target = _clip([[0.2, -0.1, 0.0]] * 4)
    assert motion_loss(pred, target).item() == pytest.approx(0.0, abs=1e-15)
    assert position_loss(pred, target).item() == pytest.approx(0.05, rel=1e-12)


def test_motion_loss_of_a_single_frame_is_zero() -> None:
    pred, target = _clip(ERRORS[:1])
    assert motion_loss(pred, target).item() == 0.0


def _temporal_by_hand(sim: list[list[float]]) -> float:
    """-(1/T) sum_ij (P_D log P_W + P_W log P_D) from the logits D, with math only."""
    n = len(sim)
    total = 0.0
    for i in range(n):
        z_d = sum(math.exp(v) for v in sim[i])
        z_w = math.e + (n - 1)  # softmax of a row of the identity: exp(1) + (n-1) * exp(0)
        for j in range(n):
            p_d = math.exp(sim[i][j]) / z_d
            p_w = (math.e if i == j else 1.0) / z_w
            total += p_d * math.log(p_w) + p_w * math.log(p_d)
    return -total / n


def test_temporal_alignment_loss_two_frames_by_hand() -> None:
    x_hat = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    y_hat = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]], dtype=torch.float64)
    # Unit rows, so D = 2 * X Y^T = [[2 * 1.0, 2 * 0.6], [2 * 0.0, 2 * 0.8]].
    sim = [[2.0, 1.2], [0.0, 1.6]]
    # Softmaxes written out for this 2x2 case, as a check on the helper above.
    p_d = [
        [
            math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)),
            math.exp(1.2) / (math.exp(2.0) + math.exp(1.2)),
        ],
        [1.0 / (1.0 + math.exp(1.6)), math.exp(1.6) / (1.0 + math.exp(1.6))],
    ]
    p_w = [[math.e / (math.e + 1), 1 / (math.e + 1)], [1 / (math.e + 1), math.e / (math.e + 1)]]
    expected = (
        -sum(
            p_d[i][j] * math.log(p_w[i][j]) + p_w[i][j] * math.log(p_d[i][j])
            for i in range(2)
            for j in range(2)
        )
        / 2
    )
    assert expected == pytest.approx(_temporal_by_hand(sim), rel=1e-12)

    got = temporal_alignment_loss(x_hat, y_hat, torch.tensor(2.0)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_temporal_alignment_loss_uses_cosine_similarity() -> None:
    # Rescaling rows (LayerNorm outputs have norm ~sqrt(D), not 1) leaves the loss unchanged.
    x_hat = torch.tensor([[[3.0, 0.0], [0.0, 0.5]]])
    y_hat = torch.tensor([[[2.0, 0.0], [6.0, 8.0]]])
    got = temporal_alignment_loss(x_hat, y_hat, 2.0).item()
    assert got == pytest.approx(_temporal_by_hand([[2.0, 1.2], [0.0, 1.6]]), rel=1e-6)


def test_temporal_alignment_loss_three_frames_by_hand() -> None:
    x_hat = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    y_hat = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    # x_i . y_j: frames 1 and 2 of Y are swapped, frame 3 matches; s = 5.
    sim = [[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]
    got = temporal_alignment_loss(x_hat, y_hat, 5.0).item()
    assert got == pytest.approx(_temporal_by_hand(sim), rel=1e-6)


def test_temporal_alignment_loss_of_a_single_frame_is_zero() -> None:
    x_hat = torch.tensor([[[0.3, -1.2, 0.7]]])
    y_hat = torch.tensor([[[-2.0, 0.1, 0.4]]])
    assert temporal_alignment_loss(x_hat, y_hat, 14.3).item() == pytest.approx(0.0, abs=1e-7)


def test_semantic_alignment_loss_is_one_minus_cosine_of_time_means() -> None:
    # Means over time: X~ = (1, 1), Y~ = (1, 0); cos = 1 / sqrt(2).
    x_hat = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]], dtype=torch.float64)
    y_hat = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    got = semantic_alignment_loss(x_hat, y_hat).item()
    assert got == pytest.approx(1.0 - 1.0 / math.sqrt(2.0), rel=1e-6)


def test_semantic_alignment_loss_of_opposite_means_is_two() -> None:
    x_hat = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    y_hat = -3.0 * x_hat
    assert semantic_alignment_loss(x_hat, y_hat).item() == pytest.approx(2.0, rel=1e-6)


def test_total_loss_weights_every_term() -> None:
    pred, target = _clip(ERRORS)
    tem, sem = torch.tensor(2.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    terms = total_loss(pred, target, tem, sem, LossConfig())
    pos = sum(SQ_NORMS) / 3
    mot = sum(STEP_SQ_NORMS) / 3
    assert terms.pos.item() == pytest.approx(pos, rel=1e-12)
    assert terms.mot.item() == pytest.approx(mot, rel=1e-12)
    assert (terms.tem.item(), terms.sem.item()) == (2.0, 3.0)
    expected = 1.0 * pos + 10.0 * mot + 1e-4 * 2.0 + 1e-5 * 3.0
    assert terms.total.item() == pytest.approx(expected, rel=1e-12)


def test_padded_batch_equals_items_computed_alone() -> None:
    gen = torch.Generator().manual_seed(1)
    long_pred, long_target = _clip([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2], [0.0, 0.1]], seed=2)
    short_pred, short_target = _clip([[0.2, 0.1], [-0.4, 0.3]], seed=3)
    long_x = torch.randn(1, 4, 8, generator=gen, dtype=torch.float64)
    long_y = torch.randn(1, 4, 8, generator=gen, dtype=torch.float64)
    short_x = torch.randn(1, 2, 8, generator=gen, dtype=torch.float64)
    short_y = torch.randn(1, 2, 8, generator=gen, dtype=torch.float64)
    # NaN padding: any padded frame that leaked into a sum would poison it.
    pred = torch.cat([long_pred, _pad(short_pred, 4)]).requires_grad_()
    target = torch.cat([long_target, _pad(short_target, 4)])
    x = torch.cat([long_x, _pad(short_x, 4)]).requires_grad_()
    y = torch.cat([long_y, _pad(short_y, 4)])
    lengths = torch.tensor([4, 2])

    def alone(fn: Callable[[Tensor, Tensor], Tensor], long: Tensors, short: Tensors) -> float:
        return ((fn(*long) + fn(*short)) / 2).item()

    def tem(x: Tensor, y: Tensor, lengths: Tensor | None = None) -> Tensor:
        return temporal_alignment_loss(x, y, 3.0, lengths)

    blend = ((long_pred, long_target), (short_pred, short_target))
    feats = ((long_x, long_y), (short_x, short_y))
    batched = {
        "pos": (position_loss(pred, target, lengths), alone(position_loss, *blend)),
        "mot": (motion_loss(pred, target, lengths), alone(motion_loss, *blend)),
        "tem": (tem(x, y, lengths), alone(tem, *feats)),
        "sem": (semantic_alignment_loss(x, y, lengths), alone(semantic_alignment_loss, *feats)),
    }
    for name, (value, expected) in batched.items():
        assert value.item() == pytest.approx(expected, rel=1e-6), name

    # Padded frames get exactly zero gradient, and no NaN reaches the valid ones.
    torch.stack([value for value, _ in batched.values()]).sum().backward()
    assert pred.grad is not None and x.grad is not None
    assert torch.isfinite(pred.grad).all() and torch.isfinite(x.grad).all()
    assert (pred.grad[1, 2:] == 0).all() and (x.grad[1, 2:] == 0).all()


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        (torch.tensor([3, 0]), r"\[1, 3\]"),
        (torch.tensor([3, 4]), r"\[1, 3\]"),
        (torch.tensor([3]), r"shape \(2,\)"),
        (torch.tensor([3.0, 2.0]), "integer"),
    ],
)
def test_bad_lengths_are_rejected_with_a_clear_message(lengths: Tensor, message: str) -> None:
    pred = torch.zeros(2, 3, K)
    with pytest.raises(ValueError, match=message):
        position_loss(pred, pred, lengths)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, T, K\)"):
        position_loss(torch.zeros(1, 3, K), torch.zeros(1, 4, K))
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        temporal_alignment_loss(torch.zeros(1, 3, 8), torch.zeros(1, 3, 4), 1.0)
