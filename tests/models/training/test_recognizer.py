from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models.config import PMMTalkConfig
from models.corpus.manifest import (
    MANIFEST_NAME,
    PhoneSegment,
    Split,
    Utterance,
    read_manifest,
    read_phone_table,
    write_manifest,
    write_phone_table,
)
from models.corpus.phones import BLANK, PHONE_INDEX, VOCABULARY
from models.pmmtalk import PMMTalk
from models.training.recognizer import (
    CHECKPOINT_NAME,
    EpochStats,
    RecognizerConfig,
    ctc_labels,
    frame_labels,
    greedy_ctc_decode,
    latent_lengths,
    phone_edits,
    phone_error_rate,
    summarize_phone_errors,
    train_recognizer,
)

RATE = 16_000
# Each phone is a pure tone of its own pitch, so a tiny network can learn to tell them apart.
TONES_HZ = {"AA": 250.0, "S": 5000.0, "a": 800.0, "sh": 2400.0}
ENGLISH = ("AA", "S")
MANDARIN = ("a", "sh")


def write_corpus(
    root: Path, train: int = 12, test: int = 4, seed: int = 0, phones: tuple[int, int] = (3, 6)
) -> Path:
    """A corpus of tone sequences with matching phone tables, in the generator's layout."""
    rng = np.random.default_rng(seed)
    for folder in ("wav", "phones", "targets"):
        (root / folder).mkdir(parents=True)
    rows = []
    for n in range(train + test):
        language = "en" if n % 2 == 0 else "zh"
        inventory = ENGLISH if language == "en" else MANDARIN
        # Alternating phones: no two alike in a row, which CTC labels would merge.
        first = int(rng.integers(2))
        sequence = [inventory[(first + k) % 2] for k in range(int(rng.integers(*phones)))]
        segments = [PhoneSegment("sil", 0.0, 0.1)]
        pieces = [np.zeros(int(0.1 * RATE), np.float32)]
        t = 0.1
        for phone in sequence:
            length = int(rng.integers(int(0.12 * RATE), int(0.2 * RATE)))
            time = np.arange(length) / RATE
            pieces.append((0.5 * np.sin(2 * np.pi * TONES_HZ[phone] * time)).astype(np.float32))
            segments.append(PhoneSegment(phone, t, t + length / RATE))
            t += length / RATE
        pieces.append(np.zeros(int(0.1 * RATE), np.float32))
        segments.append(PhoneSegment("sil", t, t + 0.1))
        wave = np.concatenate(pieces)
        uid = f"u{n:03d}"
        sf.write(root / "wav" / f"{uid}.wav", wave, RATE, subtype="PCM_16")
        write_phone_table(root / "phones" / f"{uid}.tsv", segments)
        split: Split = "train" if n < train else "test"
        rows.append(
            Utterance(
                id=uid,
                split=split,
                language=language,
                engine="espeak-ng",
                voice="v",
                text="",
                audio=f"wav/{uid}.wav",
                targets=f"targets/{uid}.npy",
                phones=f"phones/{uid}.tsv",
                num_samples=len(wave),
                num_frames=math.ceil(len(wave) * 30 / RATE),
                # Half the test rows come from held-out voices.
                style=0 if split == "train" or n % 4 < 2 else -1,
            )
        )
    write_manifest(root / MANIFEST_NAME, rows)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def phone_config(tiny_config: PMMTalkConfig) -> PMMTalkConfig:
    text = dataclasses.replace(tiny_config.text, vocab_size=len(VOCABULARY))
    return dataclasses.replace(tiny_config, text=text)


def fresh_model(cfg: PMMTalkConfig) -> PMMTalk:
    torch.manual_seed(0)
    return PMMTalk(cfg)


FAST = RecognizerConfig(
    epochs=6, batch_seconds=4.0, batch_size=4, lr=3e-3, warmup_steps=3, threads=1, seed=1
)


def trained_state(model: PMMTalk) -> dict[str, torch.Tensor]:
    parts = {"cnn": model.speech.wav2vec2.feature_extractor, "text": model.text}
    return {f"{k}.{n}": t.clone() for k, m in parts.items() for n, t in m.state_dict().items()}


def test_ctc_loss_decreases_and_only_recogniser_parts_change(
    corpus: Path, phone_config: PMMTalkConfig
) -> None:
    model = fresh_model(phone_config)
    untouched = {n: t.clone() for n, t in model.decoder.state_dict().items()}
    cnn_before = trained_state(model)
    report = train_recognizer(model, corpus, FAST, progress=False)
    losses = [e.loss for e in report.epochs]
    assert len(losses) == FAST.epochs
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert report.utterances == 12 and report.skipped == 0 and report.resumed_from == 0
    assert all(torch.equal(t, model.decoder.state_dict()[n]) for n, t in untouched.items())
    after = trained_state(model)
    assert any(not torch.equal(cnn_before[n], after[n]) for n in after if n.startswith("cnn."))


def test_interrupted_run_resumes_to_the_same_result(
    corpus: Path, phone_config: PMMTalkConfig, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(FAST, epochs=3)
    straight = fresh_model(phone_config)
    straight_report = train_recognizer(straight, corpus, cfg, progress=False)

    class SimulatedCrashError(Exception):
        pass

    def crash_after_first(stats: EpochStats) -> None:
        if stats.epoch == 1:
            raise SimulatedCrashError

    with pytest.raises(SimulatedCrashError):
        train_recognizer(
            fresh_model(phone_config),
            corpus,
            cfg,
            checkpoint_dir=tmp_path,
            progress=False,
            log=crash_after_first,
        )
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    seen: list[int] = []
    resumed = fresh_model(phone_config)
    report = train_recognizer(
        resumed,
        corpus,
        cfg,
        checkpoint_dir=tmp_path,
        progress=False,
        log=lambda stats: seen.append(stats.epoch),
    )
    assert report.resumed_from == 1
    assert seen == [2, 3]
    assert [e.loss for e in report.epochs] == [e.loss for e in straight_report.epochs]
    expected = trained_state(straight)
    assert all(torch.equal(expected[n], t) for n, t in trained_state(resumed).items())


def test_resume_with_another_config_is_refused(
    corpus: Path, phone_config: PMMTalkConfig, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(FAST, epochs=1)
    train_recognizer(
        fresh_model(phone_config), corpus, cfg, checkpoint_dir=tmp_path, progress=False
    )
    with pytest.raises(ValueError, match="lr"):
        train_recognizer(
            fresh_model(phone_config),
            corpus,
            dataclasses.replace(cfg, lr=1e-4),
            checkpoint_dir=tmp_path,
            progress=False,
        )


def test_phone_error_rate_end_to_end(corpus: Path, phone_config: PMMTalkConfig) -> None:
    """A text branch that says "AA" on every frame: PER follows from the phone tables by hand."""
    model = fresh_model(phone_config)
    with torch.no_grad():
        model.text.lm_head.weight.zero_()
        model.text.lm_head.bias.zero_()
        model.text.lm_head.bias[PHONE_INDEX["AA"]] = 1.0
    per = phone_error_rate(model, corpus)
    assert set(per) == {"en", "zh", "all", "held_out/en", "held_out/zh", "held_out/all"}
    edits = dict.fromkeys(per, 0)
    phones = dict.fromkeys(per, 0)
    for row in read_manifest(corpus / MANIFEST_NAME):
        if row.split != "test":
            continue
        reference = [s.phone for s in read_phone_table(corpus / row.phones) if s.phone != "sil"]
        # Against the one-phone hypothesis ["AA"]: delete all but one, substitute it unless AA.
        errors = len(reference) - 1 if "AA" in reference else len(reference)
        keys = [row.language, "all"]
        keys += [f"held_out/{k}" for k in keys] if row.style == -1 else []
        for key in keys:
            edits[key] += errors
            phones[key] += len(reference)
    assert per == pytest.approx({key: edits[key] / phones[key] for key in per})
    assert per["zh"] == 1.0 and 0 < per["en"] < 1
    only_en = phone_error_rate(model, corpus, languages=("en",))
    assert set(only_en) == {"en", "all", "held_out/en", "held_out/all"}
    assert only_en["en"] == only_en["all"] == pytest.approx(per["en"])
    assert only_en["held_out/all"] == pytest.approx(per["held_out/en"])


@pytest.mark.slow
def test_training_makes_a_working_recogniser(corpus: Path, phone_config: PMMTalkConfig) -> None:
    model = fresh_model(phone_config)
    untrained = phone_error_rate(model, corpus, split="train")
    cfg = dataclasses.replace(FAST, epochs=60, batch_size=2, warmup_steps=10, threads=1)
    train_recognizer(model, corpus, cfg, progress=False)
    trained = phone_error_rate(model, corpus, split="train")
    # Untrained, the branch emits nothing or junk (PER 1 or more).
    assert untrained["all"] >= 1.0
    assert trained["all"] < 0.75, trained


def test_per_on_a_hand_counted_example() -> None:
    scored = [
        # en, training voice: one deletion against 3 reference phones
        ("en", False, ["AA", "S", "M"], ["AA", "M"]),
        # zh, held-out voice: one substitution and two insertions against 2 phones
        ("zh", True, ["a", "sh"], ["a", "u", "u", "sh", "a"]),
    ]
    assert phone_edits(["a", "sh"], ["a", "u", "u", "sh", "a"]) == 3
    per = summarize_phone_errors(scored)
    assert per["en"] == pytest.approx(1 / 3)
    assert per["zh"] == pytest.approx(3 / 2)
    assert per["all"] == pytest.approx(4 / 5)
    assert per["held_out/zh"] == pytest.approx(3 / 2)
    assert per["held_out/all"] == pytest.approx(3 / 2)
    assert math.isnan(per["held_out/en"])


def test_labels_and_greedy_decoding() -> None:
    segments = [
        PhoneSegment("sil", 0.0, 0.3),
        PhoneSegment("AA", 0.3, 0.4),
        PhoneSegment("sil", 0.4, 0.42),  # a gap too short to hear: dropped, then AA AA merge
        PhoneSegment("AA", 0.42, 0.5),
        PhoneSegment("S", 0.5, 0.6),
        PhoneSegment("sil", 0.6, 0.9),
    ]
    assert ctc_labels(segments, min_silence_s=0.05) == ["sil", "AA", "S", "sil"]
    with pytest.raises(KeyError, match="XX"):
        ctc_labels([PhoneSegment("XX", 0.0, 0.1)])
    aa, s = VOCABULARY.index("AA"), VOCABULARY.index("S")
    # Repeats merge unless a blank (0) separates them.
    assert greedy_ctc_decode([0, aa, aa, 0, aa, s, s, 0]) == ["AA", "AA", "S"]
    assert greedy_ctc_decode(torch.tensor([0, 0])) == []


def test_latent_lengths_match_the_cnn(phone_config: PMMTalkConfig) -> None:
    model = fresh_model(phone_config).eval()
    samples = torch.tensor([399, 400, 719, 720, 16000])
    assert latent_lengths(model, samples).tolist() == [0, 1, 1, 2, 49]
    with torch.no_grad():
        assert model.speech.extract_latents(torch.zeros(1, 16000)).shape[1] == 49


def test_bad_inputs_get_clear_errors(
    tiny_config: PMMTalkConfig, phone_config: PMMTalkConfig, corpus: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_recognizer(PMMTalk(tiny_config), corpus, FAST, progress=False)
    with pytest.raises(FileNotFoundError, match="manifest"):
        phone_error_rate(fresh_model(phone_config), tmp_path)
    with pytest.raises(ValueError, match="epochs"):
        RecognizerConfig(epochs=0)
    frozen = fresh_model(phone_config)
    frozen.freeze_pretrained()
    with pytest.raises(ValueError, match="freeze_pretrained"):
        train_recognizer(frozen, corpus, FAST, progress=False)


def test_frame_labels_follow_the_phone_table() -> None:
    segments = [PhoneSegment("sil", 0.0, 0.1), PhoneSegment("AA", 0.1, 0.3)]
    labels = frame_labels(segments, 20).tolist()
    # Latent j is centred at (320 j + 200) / 16000 s: 0.0125 s, 0.0325 s, ...
    assert labels[:5] == [PHONE_INDEX["sil"]] * 5  # centres up to 0.0925 s
    assert labels[5:15] == [PHONE_INDEX["AA"]] * 10  # 0.1125 s .. 0.2925 s
    assert labels[15:] == [PHONE_INDEX["sil"]] * 5  # past the table: silence


def test_alignment_term_trains_alongside_ctc(corpus: Path, phone_config: PMMTalkConfig) -> None:
    aligned = dataclasses.replace(FAST, alignment_weight=1.0)
    plain_model = fresh_model(phone_config)
    plain = train_recognizer(plain_model, corpus, FAST, progress=False)
    model = fresh_model(phone_config)
    report = train_recognizer(model, corpus, aligned, progress=False)
    losses = [e.loss for e in report.epochs]
    assert losses[-1] < 0.7 * losses[0], losses
    # Same data, seed and schedule: only the added frame-wise term can make the runs differ.
    assert [e.loss for e in plain.epochs] != losses


def test_frame_wise_recogniser_without_ctc(corpus: Path, phone_config: PMMTalkConfig) -> None:
    framewise = dataclasses.replace(FAST, alignment_weight=1.0, ctc_weight=0.0)
    model = fresh_model(phone_config)
    report = train_recognizer(model, corpus, framewise, progress=False)
    losses = [e.loss for e in report.epochs]
    assert losses[-1] < 0.7 * losses[0], losses
    # No CTC term: nothing teaches blank, so the trained posteriors name a phone at every frame.
    wave, _ = sf.read(next((corpus / "wav").glob("*.wav")), dtype="float32")
    with torch.no_grad():
        logits = model.text(model.speech.extract_latents(torch.from_numpy(wave)[None]))
    assert logits.shape[1] > 10
    assert (logits.argmax(-1) != PHONE_INDEX[BLANK]).float().mean() > 0.99


def test_a_config_that_learns_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="ctc_weight \\+ alignment_weight"):
        RecognizerConfig(ctc_weight=0.0, alignment_weight=0.0)
