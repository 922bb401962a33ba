from __future__ import annotations

import numpy as np
import pytest
import torch

from models.blendshapes import NUM_BLENDSHAPES, num_frames
from models.corpus.manifest import PhoneSegment
from models.data.batch import (
    CROP_STEP_SAMPLES,
    Clip,
    LengthBucketSampler,
    collate,
    crop,
    fit_frames,
    padding_waste,
)
from models.losses import frame_mask

SR = 16_000


def make_clip(samples: int, clip_id: str = "a", phones: list[PhoneSegment] | None = None) -> Clip:
    """A clip whose wave value is the sample index and whose target row k is k (every column)."""
    frames = num_frames(samples, SR)
    targets = np.repeat(np.arange(frames, dtype=np.float32)[:, None], NUM_BLENDSHAPES, axis=1)
    return Clip(
        id=clip_id,
        wave=np.arange(samples, dtype=np.float32),
        targets=targets,
        language="en",
        style=2,
        phones=phones,
        source="test",
    )


def test_clip_enforces_the_frame_contract() -> None:
    with pytest.raises(ValueError, match=r"targets must be float32 of shape \(2, 32\)"):
        Clip("x", np.zeros(534, np.float32), np.zeros((1, 32), np.float32), "en", -1, None, "t")
    with pytest.raises(ValueError, match="non-empty 1-D float32"):
        Clip("x", np.zeros(0, np.float32), np.zeros((0, 32), np.float32), "en", -1, None, "t")
    with pytest.raises(ValueError, match="language must be one of en, zh, unknown"):
        Clip("x", np.zeros(533, np.float32), np.zeros((1, 32), np.float32), "fr", -1, None, "t")  # type: ignore[arg-type]


def test_fit_frames_repeats_the_last_frame_or_trims() -> None:
    targets = np.arange(3 * 32, dtype=np.float32).reshape(3, 32)
    padded = fit_frames(targets, 5)
    np.testing.assert_array_equal(padded[:3], targets)
    np.testing.assert_array_equal(padded[3], targets[2])
    np.testing.assert_array_equal(padded[4], targets[2])
    np.testing.assert_array_equal(fit_frames(targets, 2), targets[:2])


def test_collate_pads_with_zeros_and_reports_lengths() -> None:
    short, long = make_clip(1000, "s"), make_clip(3000, "l")
    batch = collate([short, long])
    assert batch.wave.shape == (2, 3000)
    assert batch.targets.shape == (2, num_frames(3000, SR), NUM_BLENDSHAPES)
    assert batch.num_samples.tolist() == [1000, 3000]
    assert batch.num_frames.tolist() == [num_frames(1000, SR), num_frames(3000, SR)]
    assert batch.num_frames.dtype == torch.long and batch.style.tolist() == [2, 2]
    assert batch.ids == ["s", "l"] and batch.language == ["en", "en"]
    torch.testing.assert_close(batch.wave[0, :1000], torch.from_numpy(short.wave))
    assert not batch.wave[0, 1000:].any()
    assert not batch.targets[0, num_frames(1000, SR) :].any()
    # The lengths are exactly what the losses take: the mask covers each item's real frames.
    mask = frame_mask(batch.num_frames, 2, batch.targets.shape[1], torch.device("cpu"))
    assert mask.sum(dim=1).tolist() == batch.num_frames.tolist()


def test_collate_rejects_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="at least one clip"):
        collate([])


def test_crop_keeps_wave_targets_and_phones_aligned() -> None:
    phones = [
        PhoneSegment("sil", 0.0, 1.0),
        PhoneSegment("AA", 1.0, 2.05),
        PhoneSegment("B", 2.05, 3.0),
    ]
    clip = make_clip(3 * SR, phones=phones)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        piece = crop(clip, 1.0, rng)
        start = int(piece.wave[0])  # wave value = original sample index
        starts.add(start)
        assert start % CROP_STEP_SAMPLES == 0
        assert 0 < piece.wave.shape[0] <= SR
        # Frame contract holds, and the crop's frame 0 is original frame start * 30 / 16000.
        assert piece.targets.shape[0] == num_frames(piece.wave.shape[0], SR)
        assert piece.targets[0, 0] == start * 30 // SR
        np.testing.assert_array_equal(piece.wave, clip.wave[start : start + piece.wave.shape[0]])
        assert piece.phones is not None
        start_s, dur_s = start / SR, piece.wave.shape[0] / SR
        for seg in piece.phones:
            assert 0.0 <= seg.start_s < seg.end_s <= dur_s + 1e-9
            original = next(p for p in phones if p.phone == seg.phone)
            assert seg.start_s == pytest.approx(max(original.start_s - start_s, 0.0))
            assert seg.end_s == pytest.approx(min(original.end_s - start_s, dur_s))
    # Windows reach both ends of the clip.
    assert 0 in starts and max(starts) + SR >= 3 * SR


def test_crop_returns_short_clips_unchanged_and_checks_its_argument() -> None:
    clip = make_clip(SR // 2)
    assert crop(clip, 1.0, np.random.default_rng(0)) is clip
    with pytest.raises(ValueError, match=r"at least 0\.1 s"):
        crop(clip, 0.05, np.random.default_rng(0))


def test_bucket_sampler_covers_every_item_once_and_pads_little() -> None:
    rng = np.random.default_rng(1)
    lengths = rng.integers(SR, 10 * SR, size=1000).tolist()  # 1-10 s
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=3)
    first = list(sampler)
    second = list(sampler)
    assert len(first) == len(sampler) == 125
    assert sorted(i for batch in first for i in batch) == list(range(1000))
    assert first != second  # reshuffled per epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # and reproducible from (seed, epoch)
    random_batches = [list(b) for b in np.array_split(rng.permutation(1000), 125)]
    assert padding_waste(lengths, first) < 0.05
    assert padding_waste(lengths, random_batches) > 0.25


def test_bucket_sampler_drop_last_and_sorted_order() -> None:
    lengths = [5, 1, 4, 2, 3]
    assert list(LengthBucketSampler(lengths, 2, shuffle=False)) == [[1, 3], [4, 2], [0]]
    batches = list(LengthBucketSampler(lengths, 2, drop_last=True))
    assert len(batches) == 2 and all(len(b) == 2 for b in batches)
