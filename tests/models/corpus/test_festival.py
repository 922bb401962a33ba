"""festival as a subprocess: audio, segment tables and the radio phone mapping."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from models.corpus import festival
from models.corpus.espeak import EngineUnavailableError
from models.corpus.festival import UnknownPhoneError, map_radio_phone, phones_from_ends, read_segs
from models.corpus.manifest import PhoneSegment
from models.corpus.phones import PHONES, SILENCE

needs_festival = pytest.mark.skipif(
    not festival.is_available(), reason="festival not installed (apt: festival)"
)


def needs_voice(voice: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not festival.is_available(voice),
        reason=f"festival voice {voice} not installed (apt: {festival.VOICE_PACKAGES[voice]})",
    )


def test_radio_phones_map_to_project_arpabet() -> None:
    assert map_radio_phone("pau") == (SILENCE,)
    assert map_radio_phone("ax") == ("AH",)
    assert map_radio_phone("axr") == ("ER",)
    assert map_radio_phone("el") == ("AH", "L")
    assert map_radio_phone("zh") == ("ZH",)
    for phone in PHONES["en"]:
        assert map_radio_phone(phone.lower()) == (phone,)


@pytest.mark.parametrize("bad", ["xx", "AA", "", "ah0"])
def test_unknown_radio_phone_raises_naming_it(bad: str) -> None:
    with pytest.raises(UnknownPhoneError, match=repr(bad)):
        map_radio_phone(bad)


def test_segs_file_becomes_a_gap_free_table(tmp_path: Path) -> None:
    segs = tmp_path / "out.segs"
    segs.write_text("#\n0.2000 100 pau\n0.3000 100 hh\n0.4500 100 el\n0.6000 100 pau\n")
    table = phones_from_ends(read_segs(segs), duration_s=0.65)
    assert table == [
        PhoneSegment(SILENCE, 0.0, 0.2),
        PhoneSegment("HH", 0.2, 0.3),
        PhoneSegment("AH", 0.3, 0.375),
        PhoneSegment("L", 0.375, 0.45),
        PhoneSegment(SILENCE, 0.45, 0.65),
    ]


@needs_festival
@pytest.mark.parametrize(
    "voice",
    [
        pytest.param(v, marks=needs_voice(v))
        for v in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
    ],
)
def test_phone_table_spans_the_audio(voice: str) -> None:
    synthesis = festival.synthesize('Bob said "move the five boxes" to me.', voice)
    phones = synthesis.phones
    assert synthesis.wave.dtype == np.float32 and np.abs(synthesis.wave).max() <= 1.0
    assert phones[0].start_s == 0.0
    assert abs(phones[-1].end_s - synthesis.duration_s) < 0.020
    for before, after in itertools.pairwise(phones):
        assert before.end_s == after.start_s > before.start_s
    spoken = [p.phone for p in phones if p.phone != SILENCE]
    assert spoken[:3] == ["B", "AA", "B"]
    assert set(spoken) <= set(PHONES["en"])
    # The table's speech ends where the audio's energy does.
    last_speech = max(p.end_s for p in phones if p.phone != SILENCE)
    hop = 80
    frames = synthesis.wave[: len(synthesis.wave) // hop * hop].reshape(-1, hop)
    level = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max() - 35)
    assert abs((loud[-1] + 1) * hop / 16_000 - last_speech) < 0.05


@needs_festival
@needs_voice("kal_diphone")
def test_rate_shortens_a_diphone_voice() -> None:
    text = "Please fetch the purple umbrella."
    normal = festival.synthesize(text, "kal_diphone")
    fast = festival.synthesize(text, "kal_diphone", rate=1.3)
    assert fast.duration_s < 0.85 * normal.duration_s


@needs_festival
def test_unknown_voice_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown festival voice"):
        festival.synthesize("hello", "nosuch_voice")


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(festival.shutil, "which", lambda _: None)
    with pytest.raises(EngineUnavailableError, match="apt package festival"):
        festival.synthesize("hello", "kal_diphone")
