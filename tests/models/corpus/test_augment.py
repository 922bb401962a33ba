"""Augmentation: length, dtype, determinism, SNR, zero-delay reverb and EQ, gain, no clipping."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import signal

from models.corpus.augment import (
    AugmentConfig,
    active_power,
    apply_eq,
    augment,
    biquad,
    make_noise,
    room_impulse_response,
)

SR = 16_000
NOTHING = AugmentConfig(reverb_prob=0.0, eq_prob=0.0, noise_prob=0.0, gain_prob=0.0)
EVERYTHING = AugmentConfig(reverb_prob=1.0, eq_prob=1.0, noise_prob=1.0, gain_prob=1.0)


def speechlike(seconds: float, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """Band-limited noise in syllable-like bursts: (N,) float32, peak near ``level``."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    sos = signal.butter(4, (200, 4000), btype="band", output="sos", fs=SR)
    carrier = signal.sosfilt(sos, rng.standard_normal(n))
    t = np.arange(n) / SR
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.0, None) ** 2
    wave = carrier * envelope
    return (level * wave / np.abs(wave).max()).astype(np.float32)


def only(**stage: Any) -> AugmentConfig:
    """A config with every stage off except those given."""
    return dataclasses.replace(NOTHING, **stage)


RECORD_KEY = {"reverb": "reverb", "eq": "eq", "noise": "noise", "gain": "gain_db"}


@pytest.mark.parametrize(
    "config", [NOTHING, EVERYTHING, AugmentConfig()], ids=["nothing", "everything", "default"]
)
def test_same_length_float32_and_json_record(config: AugmentConfig) -> None:
    wave = speechlike(1.3)
    for seed in range(6):
        out, record = augment(wave, SR, np.random.default_rng(seed), config)
        assert out.shape == wave.shape
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))
        assert json.loads(json.dumps(record)) == record  # plain JSON types only
        # A key for each applied stage and nothing else.
        keys = {RECORD_KEY.get(stage, "limiter_db") for stage in record["applied"]}
        assert set(record) - {"applied"} == keys


def test_the_default_signature_takes_three_arguments() -> None:
    out, record = augment(speechlike(0.5), SR, np.random.default_rng(3))
    assert out.shape == (SR // 2,)
    assert isinstance(record["applied"], list)


def test_nothing_applied_leaves_the_wave_alone() -> None:
    wave = speechlike(0.7)
    out, record = augment(wave, SR, np.random.default_rng(0), NOTHING)
    np.testing.assert_array_equal(out, wave)
    assert record == {"applied": []}


def test_deterministic_for_a_seed_and_varied_across_seeds() -> None:
    wave = speechlike(1.0)
    first = augment(wave, SR, np.random.default_rng(42), EVERYTHING)
    again = augment(wave, SR, np.random.default_rng(42), EVERYTHING)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1]
    other = augment(wave, SR, np.random.default_rng(43), EVERYTHING)
    assert other[1] != first[1]
    records = [augment(wave, SR, np.random.default_rng(s))[1]["applied"] for s in range(40)]
    assert len({tuple(r) for r in records}) > 5  # the default mixes stages


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr_db", [5.0, 10.0, 20.0, 30.0])
def test_measured_snr_matches_the_request(kind: str, snr_db: float) -> None:
    wave = speechlike(2.0, seed=1)
    config = only(noise_prob=1.0, snrs_db=(snr_db,), noise_kinds=(kind,))
    out, record = augment(wave, SR, np.random.default_rng(7), config)
    assert record["noise"] == {"kind": kind, "snr_db": snr_db}
    noise = out.astype(np.float64) - wave
    measured = 10 * math.log10(active_power(wave, SR) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.1)


def test_snr_refers_to_the_speech_not_the_pauses() -> None:
    speech = speechlike(1.0, seed=2)
    padded = np.concatenate([np.zeros(SR, np.float32), speech, np.zeros(SR, np.float32)])
    config = only(noise_prob=1.0, snrs_db=(10.0,), noise_kinds=("white",))
    out, _ = augment(padded, SR, np.random.default_rng(0), config)
    noise = out.astype(np.float64) - padded
    # The speech's own active level, measured without the pauses around it.
    assert 10 * math.log10(active_power(speech, SR) / np.mean(noise**2)) == pytest.approx(
        10.0, abs=0.3
    )


def lag_of_peak(dry: np.ndarray, wet: np.ndarray) -> int:
    correlation = signal.correlate(wet.astype(np.float64), dry.astype(np.float64), mode="full")
    return int(np.argmax(np.abs(correlation))) - (len(dry) - 1)


@pytest.mark.parametrize("seed", range(6))
def test_reverb_adds_no_delay(seed: int) -> None:
    wave = speechlike(1.0, seed=seed)
    config = only(reverb_prob=1.0, rt60_range_s=(0.1, 0.6), drr_range_db=(0.0, 3.0))
    out, record = augment(wave, SR, np.random.default_rng(seed), config)
    assert 0.1 <= record["reverb"]["rt60_s"] <= 0.6
    assert lag_of_peak(wave, out) == 0
    assert not np.allclose(out, wave, atol=1e-3)  # the room was really added


@pytest.mark.parametrize("rt60_s", [0.1, 0.3, 0.6])
def test_impulse_response_starts_at_sample_zero_and_decays_at_rt60(rt60_s: float) -> None:
    rir = room_impulse_response(rt60_s, 0.0, SR, np.random.default_rng(0))
    assert np.argmax(np.abs(rir)) == 0
    assert np.sum(rir**2) == pytest.approx(1.0)
    assert rir[0] ** 2 == pytest.approx(0.5, rel=1e-6)  # 0 dB DRR: half the energy is direct
    # Energy in windows of a tenth of rt60: the slope over the tail is -60 dB per rt60.
    window = round(rt60_s * SR / 10)
    tail = rir[1:]
    energy = [np.sum(tail[i : i + window] ** 2) for i in range(0, len(tail) - window + 1, window)]
    assert len(energy) >= 9
    slope_db_per_s = np.polyfit(np.arange(len(energy)) * window / SR, 10 * np.log10(energy), 1)[0]
    assert slope_db_per_s == pytest.approx(-60.0 / rt60_s, rel=0.15)


def test_eq_adds_no_delay_and_keeps_length() -> None:
    wave = speechlike(1.0, seed=3)
    bands = [
        {"type": "peaking", "freq_hz": 300.0, "gain_db": 9.0, "q": 2.0},
        {"type": "low_shelf", "freq_hz": 150.0, "gain_db": -9.0, "q": 1 / math.sqrt(2)},
        {"type": "high_shelf", "freq_hz": 3000.0, "gain_db": 6.0, "q": 1 / math.sqrt(2)},
    ]
    out = apply_eq(wave.astype(np.float64), bands, SR)
    assert out.shape == wave.shape
    assert lag_of_peak(wave, out) == 0
    # Zero phase: the peak of each burst's envelope stays put.
    env_in = np.abs(signal.hilbert(wave))
    env_out = np.abs(signal.hilbert(out))
    smooth = np.hanning(801)
    assert (
        abs(
            int(np.argmax(np.convolve(env_in, smooth)))
            - int(np.argmax(np.convolve(env_out, smooth)))
        )
        < 20
    )
    assert len(apply_eq(np.ones(3), bands, SR)) == 3  # very short input still works


@pytest.mark.parametrize(
    ("band", "probe_hz", "flat_hz"),
    [("peaking", 1000.0, 7000.0), ("low_shelf", 20.0, 7900.0), ("high_shelf", 7900.0, 20.0)],
)
def test_biquads_have_the_requested_gain(band: str, probe_hz: float, flat_hz: float) -> None:
    sos = biquad(band, 1000.0, 6.0, 1.0 if band == "peaking" else 1 / math.sqrt(2), SR)  # type: ignore[arg-type]
    _, response = signal.sosfreqz(sos[None], worN=[probe_hz, flat_hz], fs=SR)
    gains_db = 20 * np.log10(np.abs(response))
    assert gains_db[0] == pytest.approx(6.0, abs=0.1)
    assert abs(gains_db[1]) < 0.5


def test_eq_record_gain_is_the_applied_gain() -> None:
    rng = np.random.default_rng(5)
    white = rng.standard_normal(4 * SR)
    band = {"type": "peaking", "freq_hz": 1000.0, "gain_db": 8.0, "q": 1.0}
    out = apply_eq(white, [band], SR)
    freqs, before = signal.welch(white, fs=SR, nperseg=2048)
    _, after = signal.welch(out, fs=SR, nperseg=2048)
    at_1k = np.argmin(np.abs(freqs - 1000.0))
    # Run forwards and backwards, each half the gain: the full 8 dB once, not twice.
    assert 10 * np.log10(after[at_1k] / before[at_1k]) == pytest.approx(8.0, abs=0.7)


def test_gain_stays_in_range_and_nothing_clips() -> None:
    quiet = speechlike(0.5, level=0.05)
    loud = speechlike(0.5, level=0.98)
    config = only(gain_prob=1.0)
    for seed in range(30):
        out, record = augment(quiet, SR, np.random.default_rng(seed), config)
        assert -12.0 <= record["gain_db"] <= 6.0
        ratio_db = 20 * np.log10(np.abs(out).max() / np.abs(quiet).max())
        assert ratio_db == pytest.approx(record["gain_db"], abs=0.01)
        assert "limiter" not in record["applied"]
    limited = 0
    for seed in range(30):
        out, record = augment(loud, SR, np.random.default_rng(seed), EVERYTHING)
        assert np.abs(out).max() <= 0.99 + 1e-6
        if "limiter" in record["applied"]:
            limited += 1
            assert record["limiter_db"] < 0
    assert limited > 0  # +6 dB on a 0.98 peak must have needed the limiter


def test_silence_stays_silent_except_for_noise() -> None:
    speech = speechlike(0.5, seed=4)
    wave = np.concatenate([speech, np.zeros(2 * SR, np.float32)])
    pause = slice(round(1.2 * SR), None)  # past the longest reverb tail (0.6 s)
    no_noise = only(reverb_prob=1.0, eq_prob=1.0, gain_prob=1.0)
    for seed in range(5):
        out, _ = augment(wave, SR, np.random.default_rng(seed), no_noise)
        assert np.abs(out[pause]).max() < 1e-3 * np.abs(out).max()

    noisy = only(noise_prob=1.0, snrs_db=(20.0,), noise_kinds=("pink",))
    out, _ = augment(wave, SR, np.random.default_rng(0), noisy)
    pause_power = np.mean(out[pause].astype(np.float64) ** 2)
    expected = active_power(speech, SR) / 100.0  # 20 dB below the speech
    assert pause_power == pytest.approx(expected, rel=0.25)

    silent = np.zeros(SR, np.float32)
    out, record = augment(silent, SR, np.random.default_rng(0), EVERYTHING)
    assert np.all(out == 0.0)  # no speech level, so no SNR to place noise at
    assert "noise" not in record["applied"]


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
def test_noise_kinds_have_unit_power_and_their_own_spectra(kind: str) -> None:
    noise = make_noise(kind, 3 * SR, SR, np.random.default_rng(0))  # type: ignore[arg-type]
    assert noise.shape == (3 * SR,)
    assert np.mean(noise**2) == pytest.approx(1.0)
    freqs, psd = signal.welch(noise, fs=SR, nperseg=1024)
    low = psd[(freqs > 200) & (freqs < 800)].mean()
    high = psd[(freqs > 4000) & (freqs < 7000)].mean()
    tilt_db = 10 * np.log10(low / high)
    expected = {"white": (-2.0, 2.0), "pink": (5.0, 13.0), "babble": (15.0, 100.0)}[kind]
    assert expected[0] < tilt_db < expected[1]
    for length in (0, 1, 37):  # short clips too
        short = make_noise(kind, length, SR, np.random.default_rng(0))  # type: ignore[arg-type]
        assert short.shape == (length,) and np.all(np.isfinite(short))


def test_works_at_other_speech_rates() -> None:
    wave = np.random.default_rng(0).standard_normal(22_050).astype(np.float32) * 0.1
    out, _ = augment(wave, 22_050, np.random.default_rng(1), EVERYTHING)
    assert out.shape == wave.shape and np.all(np.isfinite(out))


@pytest.mark.parametrize(
    ("wave", "rate", "message"),
    [
        (np.zeros((2, 100), np.float32), SR, "1-D"),
        (np.zeros(100, np.int16), SR, "float"),
        (np.array([0.0, np.nan], np.float32), SR, "NaN"),
        (np.zeros(100, np.float32), 4000, "at least"),
    ],
)
def test_bad_input_is_rejected(wave: np.ndarray, rate: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        augment(wave, rate, np.random.default_rng(0))


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="low, high"):
        AugmentConfig(gain_range_db=(6.0, -12.0))
    with pytest.raises(ValueError, match="direct sound"):
        AugmentConfig(drr_range_db=(-5.0, 5.0))
    with pytest.raises(ValueError, match="noise kinds"):
        AugmentConfig(noise_kinds=("brown",))  # type: ignore[arg-type]


def test_empty_wave_passes_through() -> None:
    out, _ = augment(np.zeros(0, np.float32), SR, np.random.default_rng(0), EVERYTHING)
    assert out.shape == (0,) and out.dtype == np.float32
