"""LVE and ALE against hand values, frame-weighted over clips, from torch or numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.metrics import MetricAccumulator, ale, lve

K = 32


def _clip(errors: list[list[float]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(T, 32) target and pred = target + errors in the first coefficients, as float64 numpy."""
    target = np.random.default_rng(seed).uniform(0.0, 1.0, size=(len(errors), K))
    d = np.zeros_like(target)
    d[:, : len(errors[0])] = errors
    return target + d, target


def test_hand_values_of_one_clip() -> None:
    pred, target = _clip([[0.1, -0.3, 0.2], [0.05, 0.0, -0.02]])
    # LVE_t = 0.3 and 0.05; ALE_t = 0.6 / 32 and 0.07 / 32.
    assert lve(pred, target) == pytest.approx((0.3 + 0.05) / 2, rel=1e-12)
    assert ale(pred, target) == pytest.approx((0.6 / 32 + 0.07 / 32) / 2, rel=1e-12)


def test_accumulator_weights_frames_not_clips() -> None:
    short_pred, short_target = _clip([[0.4]])  # 1 frame: LVE_t = 0.4, ALE_t = 0.4 / 32
    long_pred, long_target = _clip([[0.0]] * 3)  # 3 exact frames
    acc = MetricAccumulator()
    acc.update(short_pred, short_target)
    acc.update(long_pred, long_target)
    result = acc.compute()
    # Clip-weighted means would be 0.2 and 0.2 / 32.
    assert result["lve"] == pytest.approx(0.4 / 4, rel=1e-12)
    assert result["ale"] == pytest.approx(0.4 / 32 / 4, rel=1e-12)
    assert result["frames"] == 4


def test_padded_batch_matches_clips_one_by_one() -> None:
    a_pred, a_target = _clip([[0.1, -0.3], [0.2, 0.0], [0.0, -0.05]], seed=1)
    b_pred, b_target = _clip([[-0.2, 0.15]], seed=2)
    garbage = np.full((2, K), 9.0)
    pred = torch.from_numpy(np.stack([a_pred, np.concatenate([b_pred, garbage])]))
    target = torch.from_numpy(np.stack([a_target, np.concatenate([b_target, -garbage])]))
    lengths = torch.tensor([3, 1])

    one_by_one = MetricAccumulator()
    one_by_one.update(a_pred, a_target)
    one_by_one.update(b_pred, b_target)
    batched = MetricAccumulator()
    batched.update(pred, target, lengths)

    expected = one_by_one.compute()
    assert batched.compute() == pytest.approx(expected, rel=1e-12)
    assert expected["lve"] == pytest.approx((0.3 + 0.2 + 0.05 + 0.2) / 4, rel=1e-12)
    assert lve(pred, target, lengths) == pytest.approx(expected["lve"], rel=1e-12)
    assert ale(pred, target, lengths.numpy()) == pytest.approx(expected["ale"], rel=1e-12)


def test_numpy_and_torch_inputs_agree() -> None:
    rng = np.random.default_rng(3)
    pred = rng.uniform(size=(2, 5, K)).astype(np.float32)
    target = rng.uniform(size=(2, 5, K)).astype(np.float32)
    for fn in (lve, ale):
        from_numpy = fn(pred, target)
        from_torch = fn(torch.from_numpy(pred), torch.from_numpy(target))
        mixed = fn(torch.from_numpy(pred), target)
        assert from_numpy == from_torch == mixed
        # (T, K) is one clip: the same as a batch of one.
        assert fn(pred[0], target[0]) == fn(pred[:1], target[:1])


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="no frames"):
        MetricAccumulator().compute()
    with pytest.raises(ValueError, match="shapes differ"):
        lve(np.zeros((3, K)), np.zeros((4, K)))
    with pytest.raises(ValueError, match=r"\(T, K\) or \(B, T, K\)"):
        ale(np.zeros(K), np.zeros(K))
