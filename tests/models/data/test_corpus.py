from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from torch.utils.data import DataLoader

from models.blendshapes import num_frames
from models.corpus.manifest import (
    MANIFEST_NAME,
    PhoneSegment,
    Split,
    Utterance,
    write_manifest,
    write_phone_table,
)
from models.data.batch import LengthBucketSampler, collate
from models.data.corpus import CorpusDataset

SR = 16_000


def add_utterance(
    root: Path,
    uid: str,
    split: Split,
    language: str,
    samples: int,
    sr: int = SR,
    frames: int | None = None,
) -> Utterance:
    """Write one utterance's files: a sine, targets whose row k is k / 100, two phones."""
    for sub in ("wav", "targets", "phones"):
        (root / sub).mkdir(exist_ok=True)
    t = np.arange(samples) / sr
    sf.write(root / f"wav/{uid}.wav", 0.3 * np.sin(2 * np.pi * 200 * t), sr, subtype="PCM_16")
    count = num_frames(samples, sr) if frames is None else frames
    targets = np.repeat((np.arange(count, dtype=np.float32) / 100)[:, None], 32, axis=1)
    np.save(root / f"targets/{uid}.npy", targets)
    duration = samples / sr
    write_phone_table(
        root / f"phones/{uid}.tsv",
        [PhoneSegment("sil", 0.0, duration / 2), PhoneSegment("AA", duration / 2, duration)],
    )
    return Utterance(
        id=uid,
        split=split,
        language=language,
        engine="espeak-ng",
        voice="v1",
        text="a",
        audio=f"wav/{uid}.wav",
        targets=f"targets/{uid}.npy",
        phones=f"phones/{uid}.tsv",
        num_samples=samples,
        num_frames=count,
        style=1 if split != "test" else -1,
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rows = [
        add_utterance(tmp_path, "en1", "train", "en", 8000),
        add_utterance(tmp_path, "zh1", "train", "zh", 12_345),
        add_utterance(tmp_path, "en2", "val", "en", 4000),
        add_utterance(tmp_path, "zh2", "test", "zh", 22_050, sr=22_050),  # resampled on load
    ]
    write_manifest(tmp_path / MANIFEST_NAME, rows)
    return tmp_path


def test_selects_splits_and_languages(corpus: Path) -> None:
    assert [u.id for u in CorpusDataset(corpus, "train").utterances] == ["en1", "zh1"]
    both = CorpusDataset(corpus, ["train", "val"], languages=["en"])
    assert [u.id for u in both.utterances] == ["en1", "en2"]
    assert both.sample_counts == (8000, 4000)
    with pytest.raises(ValueError, match="has no utterances of split val and language zh"):
        CorpusDataset(corpus, "val", languages=["zh"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        CorpusDataset(corpus, "dev")  # type: ignore[arg-type]


def test_items_follow_the_frame_contract(corpus: Path) -> None:
    dataset = CorpusDataset(corpus, ["train", "test"])
    clip = dataset[1]
    assert clip.id == "zh1" and clip.language == "zh" and clip.style == 1
    assert clip.source == "corpus:espeak-ng"
    assert clip.wave.shape == (12_345,) and clip.wave.dtype == np.float32
    assert clip.targets.shape == (num_frames(12_345, SR), 32)
    np.testing.assert_allclose(clip.targets[:, 0], np.arange(24) / 100, atol=1e-7)
    assert clip.phones is not None and [p.phone for p in clip.phones] == ["sil", "AA"]
    resampled = dataset[2]
    assert resampled.wave.shape == (SR,)  # 1 s at 22.05 kHz
    assert resampled.targets.shape == (30, 32) and resampled.style == -1
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.num_frames.tolist() == [15, 24, 30]


def test_missing_file_is_named(corpus: Path) -> None:
    (corpus / "phones/en2.tsv").unlink()
    with pytest.raises(ValueError, match=r"phones/en2\.tsv \(utterance 'en2'\) is missing"):
        CorpusDataset(corpus, "val")


def test_wrong_target_shape_is_named(corpus: Path) -> None:
    np.save(corpus / "targets/en1.npy", np.zeros((15, 52), np.float32))
    with pytest.raises(
        ValueError, match=r"targets/en1\.npy has shape \(15, 52\), expected \(T, 32\)"
    ):
        CorpusDataset(corpus, "train")


def test_frame_count_not_matching_the_audio_is_named(tmp_path: Path) -> None:
    rows = [add_utterance(tmp_path, "bad", "train", "en", 8000, frames=16)]
    write_manifest(tmp_path / MANIFEST_NAME, rows)
    with pytest.raises(ValueError, match=r"targets/bad\.npy has 16 frames but its audio .* needs"):
        CorpusDataset(tmp_path, "train")


def test_not_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a corpus directory"):
        CorpusDataset(tmp_path, "train")


def test_feeds_a_dataloader_through_the_bucket_sampler(corpus: Path) -> None:
    dataset = CorpusDataset(corpus, ["train", "val", "test"])
    sampler = LengthBucketSampler(dataset.sample_counts, batch_size=2, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    # Sorted by length: en2 (4000) with en1 (8000), then zh1 (12345) with zh2 (16000).
    assert [b.ids for b in batches] == [["en2", "en1"], ["zh1", "zh2"]]
    assert batches[1].wave.shape == (2, 16_000)
    assert batches[1].num_samples.tolist() == [12_345, 16_000]
