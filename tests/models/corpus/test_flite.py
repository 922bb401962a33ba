"""flite as a subprocess: audio, -psdur segment tables, rate and voice checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.corpus import flite
from models.corpus.espeak import EngineUnavailableError
from models.corpus.flite import parse_psdur
from models.corpus.phones import PHONES, SILENCE

needs_flite = pytest.mark.skipif(
    not flite.is_available(), reason="flite not installed (apt: flite)"
)


def test_psdur_output_is_parsed_with_later_utterances_offset() -> None:
    output = "pau:0.164 hh:0.255 ax:0.304 pau:0.400 \npau:0.100 ay:0.250 pau:0.300 \n"
    assert parse_psdur(output) == [
        ("pau", 0.164),
        ("hh", 0.255),
        ("ax", 0.304),
        ("pau", 0.4),
        ("pau", 0.5),
        ("ay", 0.65),
        ("pau", 0.7),
    ]


@needs_flite
@pytest.mark.parametrize("voice", [*flite.TRAINING_VOICES, *flite.HELD_OUT_VOICES])
def test_phone_table_spans_the_audio(voice: str) -> None:
    if not flite.is_available(voice):
        pytest.skip(f"flite voice {voice} not installed (apt: flite)")
    synthesis = flite.synthesize("Bob moved five heavy boxes. Thanks, Vivian!", voice)
    phones = synthesis.phones
    assert synthesis.wave.dtype == np.float32 and np.abs(synthesis.wave).max() <= 1.0
    assert phones[0].start_s == 0.0
    assert abs(phones[-1].end_s - synthesis.duration_s) < 0.020
    for before, after in itertools.pairwise(phones):
        assert before.end_s == after.start_s > before.start_s
    spoken = [p.phone for p in phones if p.phone != SILENCE]
    assert spoken[:3] == ["B", "AA", "B"]
    assert set(spoken) <= set(PHONES["en"])


@needs_flite
def test_rate_and_pitch_change_the_speech() -> None:
    text = "Please fetch the purple umbrella from the garage."
    normal = flite.synthesize(text, "slt")
    fast = flite.synthesize(text, "slt", rate=1.3)
    high = flite.synthesize(text, "slt", pitch=1.3)
    assert fast.duration_s < 0.85 * normal.duration_s
    assert high.phones == normal.phones
    assert not np.array_equal(high.wave, normal.wave)


@needs_flite
def test_unknown_voice_names_the_package() -> None:
    with pytest.raises(EngineUnavailableError, match="apt package flite"):
        flite.synthesize("hello", "nosuchvoice")
