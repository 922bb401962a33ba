"""The corpus generator: the plan, a tiny end-to-end run, determinism and resuming."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.blendshapes import NUM_BLENDSHAPES, SAMPLE_RATE_HZ, num_frames
from models.corpus import generate, texts
from models.corpus.generate import (
    generate_corpus,
    plan_corpus,
    split_sizes,
    voice_catalogue,
)
from models.corpus.manifest import INFO_NAME, MANIFEST_NAME, read_manifest, read_phone_table
from models.corpus.phones import SILENCE

needs_engines = pytest.mark.skipif(
    not generate.is_available(),
    reason="needs espeak-ng, festival and flite with their voices (apt: espeak-ng "
    "libespeak-ng1 espeak-ng-data festival festvox-kallpc16k festvox-kdlpc16k "
    "festvox-us-slt-hts flite)",
)
TINY_SIZE = 6
TINY_SEED = 7


def test_split_sizes() -> None:
    assert split_sizes(6) == {"train": 4, "val": 1, "test": 1}
    assert split_sizes(1000) == {"train": 850, "val": 50, "test": 100}
    assert split_sizes(2) == {"train": 2, "val": 0, "test": 0}
    with pytest.raises(ValueError, match="size"):
        split_sizes(0)


def test_every_training_voice_has_a_stable_style_and_held_out_voices_none() -> None:
    catalogue = voice_catalogue()
    assert catalogue == voice_catalogue()
    assert len({v.id for v in catalogue}) == len(catalogue)
    styles = {v.id: v.style for v in catalogue}
    assert styles["festival:kal_diphone"] == 0
    assert styles["festival:ked_diphone"] == styles["flite:rms"] == -1
    # One espeak-ng speaker variant is one subject, whatever it speaks.
    assert styles["espeak-ng:en-us+m1"] == styles["espeak-ng:cmn-latn-pinyin+m1"]
    assert styles["espeak-ng:en-us+m1"] != styles["espeak-ng:en-us+f1"]
    training = [v for v in catalogue if not v.held_out]
    assert {v.style for v in training} == set(range(generate.NUM_STYLES))
    assert {v.id for v in catalogue if v.held_out} == {"festival:ked_diphone", "flite:rms"}


def test_plan_keeps_held_out_voices_and_sentences_out_of_training() -> None:
    plan = plan_corpus(400, seed=5)
    assert plan == plan_corpus(400, seed=5)
    assert len({job.id for job in plan}) == 400
    counts = Counter(job.split for job in plan)
    assert counts == {"train": 340, "val": 20, "test": 40}
    for job in plan:
        assert texts.is_held_out(job.text) == (job.split == "test")
        if job.split != "test":
            assert not job.voice.held_out
        if job.language == "zh":
            assert job.voice.engine == "espeak-ng"
        assert generate.RATE_RANGE[0] <= job.rate <= generate.RATE_RANGE[1]
        assert generate.SILENCE_RANGE_S[0] <= job.lead_s <= generate.SILENCE_RANGE_S[1]
        if not job.voice.supports_pitch:
            assert job.pitch == 1.0
    english_test = [job for job in plan if job.split == "test" and job.language == "en"]
    assert any(job.voice.held_out for job in english_test)
    assert any(not job.voice.held_out for job in english_test)
    english = sum(job.language == "en" for job in plan) / len(plan)
    assert 0.62 <= english <= 0.78


def test_plan_with_one_language() -> None:
    plan = plan_corpus(30, seed=1, languages=["zh"])
    assert {job.language for job in plan} == {"zh"}
    with pytest.raises(ValueError, match="unknown language"):
        plan_corpus(30, seed=1, languages=["fr"])  # type: ignore[list-item]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "a"
    generate_corpus(out, TINY_SIZE, TINY_SEED, workers=1, progress=False)
    return out


@needs_engines
def test_tiny_corpus_files_and_frame_counts(tiny_corpus: Path) -> None:
    rows = list(read_manifest(tiny_corpus / MANIFEST_NAME))
    assert [row.id for row in rows] == sorted(row.id for row in rows)
    assert Counter(row.split for row in rows) == {"train": 4, "val": 1, "test": 1}
    for row in rows:
        wave, rate = sf.read(tiny_corpus / row.audio, dtype="int16")
        assert rate == SAMPLE_RATE_HZ and len(wave) == row.num_samples
        assert sf.info(tiny_corpus / row.audio).subtype == "PCM_16"
        targets = np.load(tiny_corpus / row.targets)
        assert targets.dtype == np.float32
        assert targets.shape == (num_frames(row.num_samples, SAMPLE_RATE_HZ), NUM_BLENDSHAPES)
        assert row.num_frames == targets.shape[0]
        assert targets.min() >= 0.0 and targets.max() <= 1.0
        assert targets.max() > 0.1  # the face moves
        phones = read_phone_table(tiny_corpus / row.phones)
        assert phones[0].phone == SILENCE and phones[0].end_s >= 0.1  # leading padding
        assert phones[-1].phone == SILENCE
        assert abs(phones[-1].end_s - row.num_samples / SAMPLE_RATE_HZ) < 0.02
        assert (row.augment == {}) == (row.split == "test")
        assert row.style == -1 or 0 <= row.style < generate.NUM_STYLES
    info = json.loads((tiny_corpus / INFO_NAME).read_text())
    assert info["seed"] == TINY_SEED and info["size"] == TINY_SIZE
    assert info["counts"] == {"train": 4, "val": 1, "test": 1}
    assert info["hours"] == pytest.approx(
        sum(r.num_samples for r in rows) / 16_000 / 3600, abs=1e-6
    )
    assert not (tiny_corpus / generate.PARTIAL_MANIFEST_NAME).exists()


@needs_engines
def test_same_seed_gives_byte_identical_files_and_resume_redoes_only_missing(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    again = tmp_path / "b"
    generate_corpus(again, TINY_SIZE, TINY_SEED, workers=1, progress=False)
    manifest = (tiny_corpus / MANIFEST_NAME).read_bytes()
    assert (again / MANIFEST_NAME).read_bytes() == manifest
    for row in read_manifest(tiny_corpus / MANIFEST_NAME):
        for rel in (row.targets, row.audio, row.phones):
            assert (again / rel).read_bytes() == (tiny_corpus / rel).read_bytes(), rel

    lost = next(read_manifest(again / MANIFEST_NAME))
    (again / lost.audio).unlink()
    redone: list[str] = []
    generate_corpus(
        again, TINY_SIZE, TINY_SEED, workers=1, progress=False, on_row=lambda r: redone.append(r.id)
    )
    assert redone == [lost.id]
    assert (again / MANIFEST_NAME).read_bytes() == manifest


@needs_engines
def test_a_directory_of_another_corpus_is_refused(tiny_corpus: Path) -> None:
    with pytest.raises(ValueError, match="other settings"):
        generate_corpus(tiny_corpus, TINY_SIZE, TINY_SEED + 1, workers=1, progress=False)


def test_cli_reports_a_missing_engine_with_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pmmtalk.cli import app

    def missing(languages: object) -> None:
        raise generate.EngineUnavailableError(
            "the festival binary is not installed; install the apt package festival"
        )

    monkeypatch.setattr(generate, "check_engines", missing)
    result = CliRunner().invoke(app, ["corpus", str(tmp_path), "--size", "4", "--seed", "1"])
    assert result.exit_code == 2
    assert "apt package festival" in result.output
    bad = CliRunner().invoke(
        app, ["corpus", str(tmp_path), "--size", "4", "--seed", "1", "--languages", "en,fr"]
    )
    assert bad.exit_code == 2


@needs_engines
@pytest.mark.slow
def test_worker_processes_give_the_same_corpus(tiny_corpus: Path, tmp_path: Path) -> None:
    generate_corpus(tmp_path / "c", TINY_SIZE, TINY_SEED, workers=2, progress=False)
    assert (tmp_path / "c" / MANIFEST_NAME).read_bytes() == (
        tiny_corpus / MANIFEST_NAME
    ).read_bytes()
