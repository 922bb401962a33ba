"""Generator training on rendered faces: inputs as at inference, learning, resume, evaluation."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from models.blendshapes import BLENDSHAPE_NAMES, NUM_BLENDSHAPES, SAMPLE_RATE_HZ, num_frames
from models.config import PMMTalkConfig, lite_config
from models.corpus.manifest import (
    MANIFEST_NAME,
    PhoneSegment,
    Utterance,
    write_manifest,
    write_phone_table,
)
from models.mel import mel_windows
from models.pmmtalk import PMMTalk
from models.training.generator import (
    CHECKPOINT_NAME,
    GeneratorTrainConfig,
    _load_split,
    evaluate_generator,
    generator_loss,
    train_generator,
)

JAW_OPEN = BLENDSHAPE_NAMES.index("jawOpen")
SYLLABLE_HZ = 3.0  # the synthetic speech's loudness and the jaw both move at this rate


def _write_corpus(root: Path, splits: dict[str, int], seconds: float = 1.0) -> Path:
    """A tiny corpus: a buzz whose loudness swells at SYLLABLE_HZ, jawOpen following it."""
    rng = np.random.default_rng(7)
    for folder in ("wav", "targets", "phones"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in splits.items():
        for index in range(count):
            uid = f"{split}{index:02d}"
            samples = int(seconds * SAMPLE_RATE_HZ) + 37 * index  # lengths off the frame grid
            t = np.arange(samples) / SAMPLE_RATE_HZ
            phase = rng.uniform(0, 2 * np.pi)
            envelope = 0.5 - 0.5 * np.cos(2 * np.pi * SYLLABLE_HZ * t + phase)  # (S,) in [0, 1]
            buzz = np.sign(np.sin(2 * np.pi * rng.uniform(110, 220) * t))
            wave = (0.4 * envelope * buzz + 0.003 * rng.standard_normal(samples)).astype(np.float32)
            frames = num_frames(samples, SAMPLE_RATE_HZ)
            frame_t = np.arange(frames) / 30
            targets = rng.uniform(0.0, 0.1, (frames, NUM_BLENDSHAPES)).astype(np.float32)
            targets[:, JAW_OPEN] = 0.5 - 0.5 * np.cos(2 * np.pi * SYLLABLE_HZ * frame_t + phase)
            soundfile.write(root / "wav" / f"{uid}.wav", wave, SAMPLE_RATE_HZ, subtype="PCM_16")
            np.save(root / "targets" / f"{uid}.npy", targets)
            write_phone_table(root / "phones" / f"{uid}.tsv", [PhoneSegment("AA", 0.0, seconds)])
            rows.append(
                Utterance(
                    id=uid,
                    split=split,  # type: ignore[arg-type]
                    language="en",
                    engine="espeak-ng",
                    voice="en-us",
                    text="ah",
                    audio=f"wav/{uid}.wav",
                    targets=f"targets/{uid}.npy",
                    phones=f"phones/{uid}.tsv",
                    num_samples=samples,
                    num_frames=frames,
                )
            )
    write_manifest(root / MANIFEST_NAME, rows)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus"), {"train": 4, "val": 2})


@pytest.fixture
def model(tiny_config: PMMTalkConfig) -> PMMTalk:
    """The tiny network with the lite preset's 24 px generator (RGB), fresh per test."""
    torch.manual_seed(0)
    return PMMTalk(dataclasses.replace(tiny_config, wav2lip=lite_config().wav2lip))


def _config(**changes: Any) -> GeneratorTrainConfig:
    base = GeneratorTrainConfig(
        epochs=50,
        frames_per_batch=32,
        lr=3e-3,
        identities=4,
        references_per_utterance=2,
        log_every_steps=5,
        threads=1,  # one thread is fastest when the 2 cores are shared with other work
    )
    return dataclasses.replace(base, **changes)


def test_training_windows_are_the_inference_windows(model: PMMTalk, corpus: Path) -> None:
    """Each frame's mel window is the one PMMTalk.encode_speech cuts from the whole clip."""
    data = _load_split(model, corpus, "train", None)
    rows = [json.loads(line) for line in (corpus / MANIFEST_NAME).read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert data.num_frames == sum(row["num_frames"] for row in train)
    for u, row in enumerate(train):
        wave, _ = soundfile.read(corpus / row["audio"], dtype="float32")
        with torch.no_grad():
            mel = model.mel(torch.from_numpy(wave)[None])  # (1, 80, M)
        expected = mel_windows(mel, row["num_frames"])[0]  # (T, 1, 80, 16)
        frames = torch.arange(int(data.offsets[u]), int(data.offsets[u + 1]))
        torch.testing.assert_close(data.windows(frames), expected, rtol=0, atol=0)


def test_loss_weights_the_lower_half() -> None:
    cfg = GeneratorTrainConfig(l1_weight=1.0, lower_half_weight=4.0)
    target = torch.zeros(2, 3, 24, 24)
    upper_wrong, lower_wrong = target.clone(), target.clone()
    upper_wrong[:, :, :12] = 0.5
    lower_wrong[:, :, 12:] = 0.5
    assert float(generator_loss(lower_wrong, target, cfg)) == pytest.approx(0.25 + 4 * 0.5)
    assert float(generator_loss(upper_wrong, target, cfg)) == pytest.approx(0.25)
    assert float(generator_loss(target, target, cfg)) == 0.0


def test_training_lowers_the_loss_and_touches_only_the_generator(
    model: PMMTalk, corpus: Path
) -> None:
    model.freeze_pretrained()  # the generator trains even when frozen for the main training
    others_before = {
        name: t.clone()
        for name, t in model.state_dict().items()
        if not name.startswith("generator.")
    }
    generator_before = {k: v.clone() for k, v in model.generator.state_dict().items()}

    # One identity: with several, each epoch's new identity draw makes the loss jump about.
    cfg = _config(max_steps=40, identities=1, log_every_steps=10)
    report = train_generator(model, corpus, cfg, checkpoint_dir=None, progress=False)

    assert report.steps == 40 and report.resumed_from_step == 0
    losses = [loss for _, loss in report.loss_history]
    assert [step for step, _ in report.loss_history] == [10, 20, 30, 40]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))
    assert report.final_loss < 0.8 * report.first_loss
    assert report.train_frames_per_s > 0 and report.render_frames_per_s > 0
    for name, before in others_before.items():
        assert torch.equal(model.state_dict()[name], before), name
    changed = [
        k
        for k, v in model.generator.state_dict().items()
        if not torch.equal(v, generator_before[k])
    ]
    assert changed
    # Freezing and the modes are as they were.
    assert not any(p.requires_grad for p in model.generator.parameters())
    assert not model.generator.training


def test_resume_continues_the_same_run(
    tiny_config: PMMTalkConfig, corpus: Path, tmp_path: Path
) -> None:
    def fresh() -> PMMTalk:
        torch.manual_seed(0)
        return PMMTalk(dataclasses.replace(tiny_config, wav2lip=lite_config().wav2lip))

    straight = fresh()
    train_generator(straight, corpus, _config(max_steps=8), checkpoint_dir=None, progress=False)

    interrupted = fresh()
    first = train_generator(
        interrupted,
        corpus,
        _config(max_steps=5, checkpoint_every_steps=2),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert first.checkpoint == tmp_path / CHECKPOINT_NAME and first.checkpoint.is_file()
    resumed = fresh()  # a new process: nothing but the checkpoint carries over
    report = train_generator(
        resumed, corpus, _config(max_steps=8), checkpoint_dir=tmp_path, progress=False
    )

    assert report.resumed_from_step == 5 and report.steps == 8
    assert [step for step, _ in report.loss_history] == [8]
    for name, weight in straight.generator.state_dict().items():
        torch.testing.assert_close(resumed.generator.state_dict()[name], weight, msg=name)


def test_resume_refuses_another_architecture(
    model: PMMTalk, tiny_config: PMMTalkConfig, corpus: Path, tmp_path: Path
) -> None:
    train_generator(model, corpus, _config(max_steps=1), checkpoint_dir=tmp_path, progress=False)
    wider = dataclasses.replace(lite_config().wav2lip, output_hidden=12)
    other = PMMTalk(dataclasses.replace(tiny_config, wav2lip=wider))
    with pytest.raises(ValueError, match="another generator architecture"):
        train_generator(
            other, corpus, _config(max_steps=2), checkpoint_dir=tmp_path, progress=False
        )


def test_bad_corpus_is_reported(model: PMMTalk, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no corpus manifest"):
        train_generator(model, tmp_path, _config(), checkpoint_dir=None, progress=False)
    broken = _write_corpus(tmp_path / "broken", {"train": 1})
    np.save(broken / "targets" / "train00.npy", np.zeros((3, NUM_BLENDSHAPES), np.float32))
    with pytest.raises(ValueError, match=r"train00\.npy: expected shape"):
        train_generator(model, broken, _config(), checkpoint_dir=None, progress=False)
    with pytest.raises(ValueError, match="no 'test' utterances"):
        evaluate_generator(model, broken, "test", None)


def test_evaluate_reports_both_references(model: PMMTalk, corpus: Path) -> None:
    evaluation = evaluate_generator(model, corpus, "val", None)
    result = evaluation.to_dict()
    assert result["split"] == "val" and result["utterances"] == 2
    numbers = {k: v for k, v in result.items() if k != "split"}
    assert set(numbers) == {
        "utterances",
        "frames",
        "rendered_mouth_l1",
        "copy_reference_mouth_l1",
        "rendered_upper_l1",
        "rendered_open_corr",
        "ground_truth_open_corr",
        "photo_open_corr",
        "photo_upper_l1",
        "photo_mouth_std",
    }
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in numbers.values())
    # The measure itself works: the renders of the targets open their mouths with jawOpen.
    assert evaluation.ground_truth_open_corr > 0.8
    with pytest.raises(ValueError, match="unknown split"):
        evaluate_generator(model, corpus, "dev", None)
