"""CrossModalAlignment: what trains, what it rewards, and the edges (T = 1, padding)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from models.alignment import MAX_LOGIT_SCALE, CrossModalAlignment
from models.config import AlignmentConfig

CFG = AlignmentConfig(dim=16)
PAIRS = ("image_text", "image_audio", "text_audio")


def _features(batch: int, frames: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Image (12-d), text (7-d) and audio (20-d) features: three random views of one latent."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(batch, frames, 6, generator=gen)
    mixes = [torch.randn(6, dim, generator=gen) for dim in (12, 7, 20)]
    image, text, audio = (latent @ mix for mix in mixes)
    return image, text, audio


def _shared_projection_module(dim_in: int) -> CrossModalAlignment:
    """A module whose six projections are one and the same map."""
    torch.manual_seed(0)
    module = CrossModalAlignment(CFG, dim_in, dim_in, dim_in)
    reference = module.get_submodule("pairs.image_text.x").state_dict()
    for pair in PAIRS:
        for side in ("x", "y"):
            module.get_submodule(f"pairs.{pair}.{side}").load_state_dict(reference)
    return module


def test_six_projections_into_the_shared_width() -> None:
    module = CrossModalAlignment(CFG, 12, 7, 20)
    widths = {}
    for pair in PAIRS:
        for side in ("x", "y"):
            linear = module.get_submodule(f"pairs.{pair}.{side}.0")
            norm = module.get_submodule(f"pairs.{pair}.{side}.1")
            assert isinstance(linear, nn.Linear) and isinstance(norm, nn.LayerNorm)
            widths[pair, side] = (linear.in_features, norm.normalized_shape)
    assert widths == {
        ("image_text", "x"): (12, (16,)),
        ("image_text", "y"): (7, (16,)),
        ("image_audio", "x"): (12, (16,)),
        ("image_audio", "y"): (20, (16,)),
        ("text_audio", "x"): (7, (16,)),
        ("text_audio", "y"): (20, (16,)),
    }
    assert module.scale().item() == pytest.approx(math.exp(CFG.init_logit_scale), rel=1e-6)


def test_gradients_reach_all_six_projections_and_the_scale() -> None:
    module = CrossModalAlignment(CFG, 12, 7, 20)
    losses = module(*_features(batch=2, frames=5))
    (losses.tem + losses.sem).backward()
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_aligned_sequences_score_lower_than_time_shuffled_ones() -> None:
    # With one projection shared by all six sides, shuffling Y in time only permutes the columns
    # of D: every row keeps the same logits, and only the diagonal's share can change. For
    # distinct frames the diagonal holds the row's largest cosine (1) when aligned and a smaller one
    # when shuffled, so L_tem must go up; L_sem only sees time means, so it must not change.
    module = _shared_projection_module(12)
    image, _, _ = _features(batch=2, frames=10)
    shift = torch.roll(torch.arange(10), 1)  # every frame moves: no fixed points
    aligned = module(image, image, image)
    shuffled = module(image, image[:, shift], image)
    assert aligned.tem.item() < shuffled.tem.item() - 0.1
    assert aligned.sem.item() == pytest.approx(0.0, abs=1e-6)
    assert shuffled.sem.item() == pytest.approx(0.0, abs=1e-6)


def test_training_the_projections_lowers_l_tem_and_separates_aligned_from_shuffled() -> None:
    torch.manual_seed(0)
    module = CrossModalAlignment(CFG, 12, 7, 20)
    image, text, audio = _features(batch=4, frames=12, seed=1)
    shift = torch.roll(torch.arange(12), 3)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-2)
    start = module(image, text, audio).tem.item()
    for _ in range(20):
        optimizer.zero_grad()
        losses = module(image, text, audio)
        (losses.tem + losses.sem).backward()
        optimizer.step()
    with torch.no_grad():
        trained = module(image, text, audio).tem.item()
        shuffled = module(image, text[:, shift], audio[:, shift]).tem.item()
    assert trained < start - 1.0
    assert trained < shuffled - 0.1


def test_single_frame_clips_give_finite_losses_and_gradients() -> None:
    module = CrossModalAlignment(CFG, 12, 7, 20)
    losses = module(*_features(batch=2, frames=1))
    assert losses.tem.item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(losses.sem.item())
    (losses.tem + losses.sem).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())


def test_padded_batch_equals_items_computed_alone() -> None:
    module = CrossModalAlignment(CFG, 12, 7, 20)
    long = _features(batch=1, frames=6, seed=2)
    short = _features(batch=1, frames=3, seed=3)
    padded = [
        torch.cat([lf, torch.cat([sf, torch.full((1, 3, sf.shape[2]), 1e6)], dim=1)])
        for lf, sf in zip(long, short, strict=True)
    ]
    batched = module(*padded, lengths=torch.tensor([6, 3]))
    alone_long, alone_short = module(*long), module(*short)
    expected_tem = (alone_long.tem + alone_short.tem).item() / 2
    expected_sem = (alone_long.sem + alone_short.sem).item() / 2
    assert batched.tem.item() == pytest.approx(expected_tem, rel=1e-5)
    assert batched.sem.item() == pytest.approx(expected_sem, rel=1e-5)


def test_scale_is_capped() -> None:
    module = CrossModalAlignment(CFG, 12, 7, 20)
    with torch.no_grad():
        module.logit_scale.fill_(10.0)
    assert module.scale().item() == pytest.approx(MAX_LOGIT_SCALE, rel=1e-6)


def test_mismatched_frame_counts_are_rejected() -> None:
    module = CrossModalAlignment(CFG, 12, 7, 20)
    image, text, audio = _features(batch=1, frames=5)
    with pytest.raises(ValueError, match="same B and T"):
        module(image, text[:, :4], audio)
