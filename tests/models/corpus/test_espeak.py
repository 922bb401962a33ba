"""espeak-ng through libespeak-ng: audio, phone tables and the mnemonic tables."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest

from models.blendshapes import SAMPLE_RATE_HZ
from models.corpus import espeak, texts
from models.corpus.espeak import (
    EngineUnavailableError,
    Synthesis,
    UnknownPhonemeError,
    cover_with_silence,
    map_mnemonics,
    phones_from_events,
)
from models.corpus.manifest import PhoneSegment
from models.corpus.phones import PHONES, SILENCE, VOCABULARY
from models.corpus.pinyin import hanzi_to_pinyin, pinyin_syllables, syllable_units

needs_espeak = pytest.mark.skipif(
    not espeak.is_available(),
    reason=f"{espeak.LIBRARY_NAME} not installed (apt: {espeak.APT_PACKAGES})",
)

ENGLISH_PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog. Judge Thomas measured the usual vision of "
    "the treasure. Boy, how the bird heard the cure for the poor tourist! Where are you going "
    "with that huge, beautiful guitar? Hurry, the mirror in the garage is older than the car. "
    "Four hours later, the fire near the tower was out, and the button on the bottle broke. "
    "Little Owen thought the water was thin, then sang a cheerful song in Scotland by the loch."
)


def check_table(synthesis: Synthesis) -> None:
    """The phone table covers the audio exactly, in time order, with project phones only."""
    phones = synthesis.phones
    assert synthesis.wave.dtype == np.float32 and synthesis.wave.ndim == 1
    assert np.abs(synthesis.wave).max() <= 1.0
    assert phones[0].start_s == 0.0
    assert abs(phones[-1].end_s - synthesis.duration_s) < 0.020
    for before, after in itertools.pairwise(phones):
        assert before.end_s == after.start_s
        assert before.end_s > before.start_s
    assert {p.phone for p in phones} <= set(VOCABULARY)


def energy_onsets_s(wave: np.ndarray, threshold_db: float = -35.0) -> np.ndarray:
    """Times where 5 ms frame energy rises above ``threshold_db`` re the loudest frame."""
    hop = SAMPLE_RATE_HZ // 200
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop)  # (F, hop)
    level = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    loud = level > level.max() + threshold_db
    rises = np.flatnonzero(~loud[:-1] & loud[1:]) + 1
    return rises * hop / SAMPLE_RATE_HZ


def test_event_struct_has_the_64_bit_layout_of_speak_lib_h() -> None:
    event = espeak._Event
    assert event.audio_position.offset == 16
    assert event.sample.offset == 20
    assert event.user_data.offset == 24 if ctypes.sizeof(ctypes.c_void_p) == 8 else 24
    assert event.id.offset == 16 + 8 + ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(event) == 24 + 2 * ctypes.sizeof(ctypes.c_void_p)


@needs_espeak
@pytest.mark.parametrize("voice", ["en-us+m1", "en+f3", "en-gb-scotland+klatt", "en-029+f5"])
def test_english_phone_table_spans_the_audio(voice: str) -> None:
    synthesis = espeak.synthesize("Bob gave me five purple violins.", voice)
    check_table(synthesis)
    spoken = [p.phone for p in synthesis.phones if p.phone != SILENCE]
    assert spoken[:3] == ["B", "AA", "B"]
    assert set(spoken) <= set(PHONES["en"])


@needs_espeak
def test_mandarin_phone_table_spans_the_audio() -> None:
    synthesis = espeak.synthesize(hanzi_to_pinyin("我们去公园跑步。"), "cmn-latn-pinyin+f2")
    check_table(synthesis)
    spoken = [p.phone for p in synthesis.phones if p.phone != SILENCE]
    # wo3 men5 qu4 gong1 yuan2 pao3 bu4
    assert " ".join(spoken) == "u o m e n q v g o ng v a n p a o b u"


@needs_espeak
@pytest.mark.parametrize(
    ("voice", "text"),
    [
        ("en-us+m3", "Sam said so. Fine, then. Cheese please."),
        ("en+f2", "Sam said so. Fine, then. Cheese please."),
        ("cmn-latn-pinyin+m1", "ta1 shuo1, ni3 hao3. zai4 jian4."),
    ],
)
def test_sample_positions_agree_with_energy_onsets(voice: str, text: str) -> None:
    synthesis = espeak.synthesize(text, voice)
    phones = synthesis.phones
    # Speech that resumes after a pause of at least 50 ms, by the phone table.
    table_onsets = [
        after.start_s
        for before, after in itertools.pairwise(phones)
        if before.phone == SILENCE and before.end_s - before.start_s >= 0.05
    ]
    measured = energy_onsets_s(synthesis.wave)
    assert len(table_onsets) >= 2
    for onset in table_onsets:
        assert np.abs(measured - onset).min() <= 0.020, (onset, measured)


@needs_espeak
def test_large_english_sample_maps_fully_in_every_accent() -> None:
    sentences = [ENGLISH_PARAGRAPH, *texts.sentences("en", 8, seed=11)]
    seen: set[str] = set()
    for accent in espeak.ENGLISH_ACCENTS:
        for i, text in enumerate(sentences):
            variant = espeak.VARIANTS[i % len(espeak.VARIANTS)]
            synthesis = espeak.synthesize(text, f"{accent}+{variant}")
            seen |= {p.phone for p in synthesis.phones}
    assert seen == {SILENCE, *PHONES["en"]}


@needs_espeak
def test_every_pinyin_syllable_maps_to_the_splitters_units() -> None:
    pypinyin_dict = pytest.importorskip("pypinyin.pinyin_dict")
    tone_convert = pytest.importorskip("pypinyin.contrib.tone_convert")
    syllables = sorted(
        {
            tone_convert.to_normal(reading)
            for readings in pypinyin_dict.pinyin_dict.values()
            for reading in readings.split(",")
        }
    )
    assert len(syllables) > 400
    # Fifty syllables per synthesis, each followed by a comma, so a pause separates them.
    mismatched = []
    for first in range(0, len(syllables), 50):
        batch = syllables[first : first + 50]
        spoken = espeak.synthesize(", ".join(f"{s}1" for s in batch), espeak.MANDARIN_VOICE)
        runs: list[list[str]] = [[]]
        for phone in spoken.phones:
            if phone.phone == SILENCE:
                runs.append([])
            else:
                runs[-1].append(phone.phone)
        runs = [run for run in runs if run]
        assert len(runs) == len(batch)
        for syllable, run in zip(batch, runs, strict=True):
            if tuple(run) != syllable_units(f"{syllable}1"):
                mismatched.append((syllable, run))
    assert mismatched == []


@needs_espeak
def test_mandarin_sentences_map_to_the_pinyin_of_their_characters() -> None:
    for i, text in enumerate(texts.sentences("zh", 30, seed=4)):
        pinyin = hanzi_to_pinyin(text)
        voice = f"{espeak.MANDARIN_VOICE}+{espeak.VARIANTS[i % len(espeak.VARIANTS)]}"
        spoken = [p.phone for p in espeak.synthesize(pinyin, voice).phones if p.phone != SILENCE]
        expected = [unit for s in pinyin_syllables(pinyin) for unit in syllable_units(s)]
        assert spoken == expected, text


@needs_espeak
def test_rate_and_pitch_change_the_speech() -> None:
    text = "Please wash the purple umbrella by the window."
    normal = espeak.synthesize(text, "en-us+m1")
    fast = espeak.synthesize(text, "en-us+m1", rate=1.4)
    slow = espeak.synthesize(text, "en-us+m1", rate=0.8)
    high = espeak.synthesize(text, "en-us+m1", pitch=1.4)
    assert fast.duration_s < 0.85 * normal.duration_s < slow.duration_s
    assert abs(len(high.wave) - len(normal.wave)) < 0.05 * len(normal.wave)
    assert not np.array_equal(high.wave[: len(normal.wave)], normal.wave[: len(high.wave)])


@needs_espeak
def test_unknown_voice_names_the_package() -> None:
    with pytest.raises(EngineUnavailableError, match="espeak-ng-data"):
        espeak.synthesize("hello", "en-us+nosuchvariant")


def test_non_english_non_mandarin_voice_is_refused() -> None:
    with pytest.raises(ValueError, match="neither English"):
        espeak.synthesize("bonjour", "fr")


def test_unknown_mnemonic_raises_naming_it() -> None:
    with pytest.raises(UnknownPhonemeError, match="'Q\\^'"):
        map_mnemonics(["h", "Q^"], "en")


def test_r_coloured_vowels_depend_on_the_accent() -> None:
    assert map_mnemonics(["k", "A@"], "en", rhotic=True) == [("K",), ("AA", "R")]
    assert map_mnemonics(["k", "A@"], "en", rhotic=False) == [("K",), ("AA",)]
    assert espeak.is_rhotic("en-us+f3") and not espeak.is_rhotic("en+f3")


def test_multi_phone_mnemonics_share_their_span_and_repeats_merge() -> None:
    # "car" before a linking r in American English: k A@ r- -> K AA R (one R).
    table = phones_from_events([("k", 0), ("A@", 100), ("r-", 300), ("_", 400)], 500, 1000, "en")
    assert table == [
        PhoneSegment("K", 0.0, 0.1),
        PhoneSegment("AA", 0.1, 0.2),
        PhoneSegment("R", 0.2, 0.4),
        PhoneSegment(SILENCE, 0.4, 0.5),
    ]


def test_mandarin_mnemonics_before_a_coda_follow_the_spelling() -> None:
    # xian: espeak says S; iE n, pinyin writes x i a n.
    assert map_mnemonics(["S;", "iE", "n"], "zh") == [("x",), ("i", "a"), ("n",)]
    assert map_mnemonics(["S;", "iE"], "zh") == [("x",), ("i", "ee")]


def test_cover_with_silence_fills_gaps_and_clips_to_the_audio() -> None:
    table = cover_with_silence([("AA", 0.1, 0.3), ("B", 0.5, 0.7), ("M", 0.7, 1.2)], 1.0)
    assert table == [
        PhoneSegment(SILENCE, 0.0, 0.1),
        PhoneSegment("AA", 0.1, 0.3),
        PhoneSegment(SILENCE, 0.3, 0.5),
        PhoneSegment("B", 0.5, 0.7),
        PhoneSegment("M", 0.7, 1.0),
    ]
    # A sliver at the end (resampling rounding) extends the last phone instead.
    assert cover_with_silence([("AA", 0.0, 0.9995)], 1.0) == [PhoneSegment("AA", 0.0, 1.0)]
