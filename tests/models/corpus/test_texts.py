"""Sentence sources: determinism, held-out disjointness, lengths and language mix."""

from __future__ import annotations

import pytest

from models.corpus import espeak, texts
from models.corpus.pinyin import hanzi_to_pinyin


@pytest.mark.parametrize("language", ["en", "zh"])
def test_same_seed_same_sentences_other_seed_others(language: texts.Language) -> None:
    first = texts.sentences(language, 50, seed=3)
    assert first == texts.sentences(language, 50, seed=3)
    assert len(set(first)) == 50
    other = texts.sentences(language, 50, seed=4)
    assert len(set(first) & set(other)) < 10


@pytest.mark.parametrize("language", ["en", "zh"])
def test_held_out_pool_never_overlaps_the_training_pool(language: texts.Language) -> None:
    training = {s for seed in range(3) for s in texts.sentences(language, 1500, seed)}
    held_out = {s for seed in range(3) for s in texts.sentences(language, 300, seed, "held_out")}
    assert not training & held_out
    assert all(texts.is_held_out(s) for s in held_out)
    assert not any(texts.is_held_out(s) for s in training)


def test_mandarin_sentences_read_as_pinyin() -> None:
    for sentence in texts.sentences("zh", 100, seed=1):
        assert sentence[-1] in "\u3002\uff1f\uff01"
        hanzi_to_pinyin(sentence)  # raises on anything that is not Chinese or punctuation


def test_english_sentences_are_capitalised_and_punctuated() -> None:
    for sentence in texts.sentences("en", 300, seed=1):
        assert sentence[0].isupper() and sentence[-1] in ".?!"
        assert "  " not in sentence
        assert len(sentence.split()) <= texts.MAX_ENGLISH_WORDS


def test_sentence_pairs_mix_languages_as_asked() -> None:
    pairs = list(texts.sentence_pairs(1000, seed=2))
    english = sum(language == "en" for language, _ in pairs)
    assert 650 <= english <= 750
    assert pairs == list(texts.sentence_pairs(1000, seed=2))
    assert {language for language, _ in texts.sentence_pairs(20, 2, languages=["zh"])} == {"zh"}


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown language"):
        texts.sentences("fr", 1, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown sentence pool"):
        texts.sentences("en", 1, 0, "dev")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="english_fraction"):
        list(texts.sentence_pairs(3, 0, english_fraction=1.5))


@pytest.mark.skipif(not espeak.is_available(), reason="espeak-ng not installed")
@pytest.mark.parametrize(("language", "voice"), [("en", "en-us+m1"), ("zh", "cmn-latn-pinyin+f3")])
def test_sentences_last_one_to_eight_seconds(language: texts.Language, voice: str) -> None:
    for sentence in texts.sentences(language, 30, seed=5):
        spoken = hanzi_to_pinyin(sentence) if language == "zh" else sentence
        for rate in (0.85, 1.2):  # the generator's rate range
            duration_s = espeak.synthesize(spoken, voice, rate=rate).duration_s
            assert 1.0 <= duration_s <= 8.0, (sentence, rate, duration_s)
