"""Timing-preserving audio augmentation for the generated corpus.

Clean TTS audio is made to sound more like the microphones the server will hear, without moving
a single sample in time: the blendshape targets were computed from the clean phone times, so
every stage keeps the length and adds no delay. In order, each with its own probability:

1. reverberation: a synthetic room impulse response (exponentially decaying noise) whose direct
   path sits at sample 0, convolved and cut back to the input length;
2. EQ: a few random peaking and shelving biquads, run forwards and backwards (zero phase);
3. additive noise (white, pink or babble-like) at an SNR drawn from a fixed set;
4. gain in dB;

then a peak limiter scales the clip down if it would leave [-1, 1]. `augment` returns the new
wave and a JSON-able record of exactly what it applied (the manifest's ``augment`` field).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

logger = logging.getLogger(__name__)

NoiseKind = Literal["white", "pink", "babble"]
BandType = Literal["peaking", "low_shelf", "high_shelf"]

MIN_SAMPLE_RATE_HZ: Final = 8_000
"""Lowest rate the noise and EQ bands are designed for."""

ACTIVE_FRAME_S: Final = 0.02
"""Frame length for the speech level that SNRs refer to."""

ACTIVE_RANGE_DB: Final = 40.0
"""Frames within this many dB of the loudest frame count as speech for the SNR."""

SILENT_PEAK: Final = 1e-6
"""A wave whose peak is below this has no speech level, so no SNR can place noise in it."""

_MAX_BAND_HZ_FRACTION: Final = 0.45  # of the sample rate: keeps filters clear of Nyquist
_SHELF_Q: Final = 1 / math.sqrt(2)  # the maximally flat shelf
_BABBLE_TALKERS: Final = 6
_SYLLABLE_RATE_HZ: Final = 4.0  # babble envelopes vary at about the syllable rate


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (each stage independent, in [0, 1]) and the ranges draws come from.

    Ranges are ``(low, high)`` with uniform draws between; SNRs are picked from ``snrs_db``.
    """

    reverb_prob: float = 0.3
    rt60_range_s: tuple[float, float] = (0.1, 0.6)
    """Time for the reverberant tail to decay by 60 dB."""
    drr_range_db: tuple[float, float] = (0.0, 12.0)
    """Direct-to-reverberant energy ratio; non-negative, so the direct sound stays the loudest
    arrival and the speech keeps its timing."""
    eq_prob: float = 0.3
    eq_bands_range: tuple[int, int] = (1, 3)
    """How many biquads, inclusive."""
    eq_gain_range_db: tuple[float, float] = (-9.0, 9.0)
    eq_freq_range_hz: tuple[float, float] = (80.0, 6000.0)
    """Centre or corner frequencies; capped at 0.45 of the sample rate."""
    eq_q_range: tuple[float, float] = (0.5, 2.0)
    """Quality factor of the peaking bands (shelves use 1/sqrt(2))."""
    noise_prob: float = 0.5
    snrs_db: tuple[float, ...] = (5.0, 10.0, 20.0, 30.0)
    """SNR choices, against the speech's active level (see `active_power`)."""
    noise_kinds: tuple[NoiseKind, ...] = ("white", "pink", "babble")
    gain_prob: float = 0.5
    gain_range_db: tuple[float, float] = (-12.0, 6.0)
    peak_limit: float = 0.99
    """Largest absolute sample value allowed out; louder clips are scaled down as a whole."""

    def __post_init__(self) -> None:
        for name in ("reverb_prob", "eq_prob", "noise_prob", "gain_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {p}")
        for name in (
            "rt60_range_s",
            "drr_range_db",
            "eq_bands_range",
            "eq_gain_range_db",
            "eq_freq_range_hz",
            "eq_q_range",
            "gain_range_db",
        ):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"AugmentConfig.{name} must be (low, high), got {(low, high)}")
        if self.rt60_range_s[0] <= 0:
            raise ValueError(f"rt60_range_s must be positive, got {self.rt60_range_s}")
        if self.drr_range_db[0] < 0:
            raise ValueError(
                f"drr_range_db must be >= 0 dB so the direct sound dominates, got "
                f"{self.drr_range_db}"
            )
        if self.eq_bands_range[0] < 1 or self.eq_freq_range_hz[0] <= 0 or self.eq_q_range[0] <= 0:
            raise ValueError("EQ needs at least one band, positive frequencies and positive Q")
        if self.noise_prob > 0 and not (self.snrs_db and self.noise_kinds):
            raise ValueError("noise_prob > 0 needs at least one SNR and one noise kind")
        unknown = set(self.noise_kinds) - {"white", "pink", "babble"}
        if unknown:
            raise ValueError(f"unknown noise kinds {sorted(unknown)}; use white, pink or babble")
        if not 0.0 < self.peak_limit <= 1.0:
            raise ValueError(f"peak_limit must be in (0, 1], got {self.peak_limit}")


DEFAULT_AUGMENT: Final = AugmentConfig()


def active_power(wave: np.ndarray, sample_rate: int) -> float:
    """Mean power (squared sample units) of the wave's speech frames.

    The wave is cut into `ACTIVE_FRAME_S` frames and only frames within `ACTIVE_RANGE_DB` of the
    loudest count, so the pauses around TTS output do not make the speech look quieter than it
    is. 0.0 for a silent wave.
    """
    if len(wave) == 0:
        return 0.0
    frame = min(len(wave), max(1, round(ACTIVE_FRAME_S * sample_rate)))
    count = len(wave) // frame
    # A last partial frame (shorter than ACTIVE_FRAME_S) is left out.
    frames = wave[: count * frame].reshape(count, frame)
    powers = np.mean(np.square(frames, dtype=np.float64), axis=1)  # (count,)
    loudest = float(powers.max())
    if loudest == 0.0:
        return 0.0
    return float(powers[powers >= loudest * 10 ** (-ACTIVE_RANGE_DB / 10)].mean())


def room_impulse_response(
    rt60_s: float, drr_db: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """A synthetic RIR: (L,) float64 with unit energy, the direct path at sample 0.

    The tail is Gaussian noise under an envelope that falls 60 dB in ``rt60_s`` seconds, scaled
    to ``drr_db`` below the direct path in energy; L covers the tail down to -60 dB.
    """
    length = max(2, math.ceil(rt60_s * sample_rate))
    n = np.arange(1, length)
    # Amplitude 10^-3 (-60 dB) at t = rt60: exp(-3 ln(10) t / rt60).
    tail = rng.standard_normal(length - 1) * np.exp(-3 * math.log(10) * n / (rt60_s * sample_rate))
    tail *= math.sqrt(10 ** (-drr_db / 10) / float(np.sum(tail**2)))
    rir = np.concatenate(([1.0], tail))
    # Unit energy keeps the long-term level of the reverberant speech close to the dry one.
    return rir / math.sqrt(float(np.sum(rir**2)))


def biquad(
    band: BandType, freq_hz: float, gain_db: float, q: float, sample_rate: int
) -> np.ndarray:
    """One RBJ-cookbook biquad as a second-order section: (6,) ``[b0, b1, b2, 1, a1, a2]``."""
    amp = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * freq_hz / sample_rate
    cos_w, alpha = math.cos(w0), math.sin(w0) / (2 * q)
    if band == "peaking":
        b = [1 + alpha * amp, -2 * cos_w, 1 - alpha * amp]
        a = [1 + alpha / amp, -2 * cos_w, 1 - alpha / amp]
    else:
        root = 2 * math.sqrt(amp) * alpha
        sign = 1 if band == "low_shelf" else -1  # the high shelf mirrors the low one
        b = [
            amp * ((amp + 1) - sign * (amp - 1) * cos_w + root),
            sign * 2 * amp * ((amp - 1) - sign * (amp + 1) * cos_w),
            amp * ((amp + 1) - sign * (amp - 1) * cos_w - root),
        ]
        a = [
            (amp + 1) + sign * (amp - 1) * cos_w + root,
            -sign * 2 * ((amp - 1) + sign * (amp + 1) * cos_w),
            (amp + 1) + sign * (amp - 1) * cos_w - root,
        ]
    return np.array([*b, *a]) / a[0]


def apply_eq(wave: np.ndarray, bands: list[dict[str, Any]], sample_rate: int) -> np.ndarray:
    """Filter with the given bands (as `augment` records them), zero phase: same shape as wave.

    Each band is designed with half its dB gain and the cascade run forwards then backwards, so
    the magnitude gets the full gain and the phase cancels: no sample moves in time.
    """
    if not bands or len(wave) < 2:
        return wave.copy()
    sos = np.stack(
        [biquad(b["type"], b["freq_hz"], b["gain_db"] / 2, b["q"], sample_rate) for b in bands]
    )
    padlen = min(3 * (2 * len(sos) + 1), len(wave) - 1)
    return signal.sosfiltfilt(sos, wave, padlen=padlen)


def make_noise(
    kind: NoiseKind, length: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Noise of one kind: (length,) float64 with unit mean power."""
    if length == 0:
        return np.zeros(0)
    if kind == "white":
        noise = rng.standard_normal(length)
    elif kind == "pink":
        noise = _pink(length, sample_rate, rng)
    elif kind == "babble":
        noise = _babble(length, sample_rate, rng)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; use white, pink or babble")
    power = float(np.mean(noise**2))
    return noise / math.sqrt(power) if power > 0 else noise


def _shaped_noise(length: int, shape: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with magnitude spectrum ``shape`` over `_fft_size` rfft bins: (length,)."""
    bins = len(shape)
    spectrum = (rng.standard_normal(bins) + 1j * rng.standard_normal(bins)) * shape
    return sp_fft.irfft(spectrum, n=_fft_size(length))[:length]


def _fft_size(length: int) -> int:
    # Drawing in the frequency domain at a fast size and cutting back is several times cheaper
    # than filtering white noise in time, and every noise kind here is stationary.
    return int(sp_fft.next_fast_len(length, real=True))


def _rfft_hz(length: int, sample_rate: int) -> np.ndarray:
    freqs = np.fft.rfftfreq(_fft_size(length), 1 / sample_rate)
    freqs[0] = freqs[1] if len(freqs) > 1 else 1.0  # no infinite or zero weight at DC
    return freqs


def _pink(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power spectrum."""
    return _shaped_noise(length, 1 / np.sqrt(_rfft_hz(length, sample_rate)), rng)


def _babble(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Several talker-like sources, summed: each a pinkish band around a random centre (a
    formant-like region, Gaussian on a log-frequency axis) under its own slowly varying envelope
    (syllable-rate loudness changes)."""
    freqs = _rfft_hz(length, sample_rate)
    envelope_hz = 100.0
    smooth = np.hanning(max(3, round(envelope_hz / _SYLLABLE_RATE_HZ)))
    # At least as long as the window, so the "same" convolution keeps this length.
    coarse = max(len(smooth), math.ceil(length / sample_rate * envelope_hz) + 1)
    coarse_t = np.arange(coarse) / envelope_hz
    t = np.arange(length) / sample_rate
    total = np.zeros(length)
    for _ in range(_BABBLE_TALKERS):
        centre_hz = math.exp(float(rng.uniform(math.log(250.0), math.log(2000.0))))
        width = float(rng.uniform(0.6, 1.1))  # standard deviation in natural-log frequency
        shape = np.exp(-0.5 * (np.log(freqs / centre_hz) / width) ** 2) / np.sqrt(freqs)
        envelope = np.abs(np.convolve(rng.standard_normal(coarse), smooth, mode="same"))
        loudness = np.interp(t, coarse_t, envelope / (float(envelope.max()) or 1.0))
        total += _shaped_noise(length, shape, rng) * loudness
    return total


def _draw_bands(
    config: AugmentConfig, sample_rate: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    low_band, high_band = config.eq_bands_range
    top_hz = _MAX_BAND_HZ_FRACTION * sample_rate
    bands: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(low_band, high_band + 1))):
        band: BandType = ("peaking", "low_shelf", "high_shelf")[int(rng.integers(3))]
        # Frequencies drawn on a log scale, as hearing and speech spectra are.
        log_low, log_high = (math.log(min(f, top_hz)) for f in config.eq_freq_range_hz)
        freq = math.exp(float(rng.uniform(log_low, log_high)))
        gain = float(rng.uniform(*config.eq_gain_range_db))
        q = float(rng.uniform(*config.eq_q_range)) if band == "peaking" else _SHELF_Q
        bands.append({"type": band, "freq_hz": freq, "gain_db": gain, "q": q})
    return bands


def _check_wave(wave: np.ndarray, sample_rate: int) -> None:
    if not isinstance(wave, np.ndarray) or wave.ndim != 1:
        shape = getattr(wave, "shape", type(wave).__name__)
        raise ValueError(f"augment needs a mono 1-D numpy wave, got {shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(
            f"augment needs a float wave in [-1, 1], got dtype {wave.dtype}; "
            "convert integer PCM first (e.g. samples / 32768)"
        )
    if not np.all(np.isfinite(wave)):
        raise ValueError("the wave contains NaN or infinite samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
        raise ValueError(f"sample_rate must be an integer in Hz, got {sample_rate!r}")
    if sample_rate < MIN_SAMPLE_RATE_HZ:
        raise ValueError(
            f"sample_rate must be at least {MIN_SAMPLE_RATE_HZ} Hz for speech augmentation, "
            f"got {sample_rate}"
        )


def augment(
    wave: np.ndarray,
    sample_rate: int,
    rng: np.random.Generator,
    config: AugmentConfig = DEFAULT_AUGMENT,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Augment a mono wave without moving it in time.

    ``wave`` is (N,) float in [-1, 1] at ``sample_rate`` Hz. Returns the augmented (N,) float32
    wave, its peak at most ``config.peak_limit``, and a record of what was applied::

        {"applied": ["reverb", "eq", "noise", "gain", "limiter"],  # the stages used, in order
         "reverb": {"rt60_s": float, "drr_db": float},
         "eq": [{"type": "peaking" | "low_shelf" | "high_shelf", "freq_hz": float,
                 "gain_db": float, "q": float}, ...],
         "noise": {"kind": "white" | "pink" | "babble", "snr_db": float},
         "gain_db": float,
         "limiter_db": float}  # the limiter's (negative) gain

    with only the keys of stages that ran. The same ``rng`` state gives the same result.
    """
    _check_wave(wave, sample_rate)
    out = wave.astype(np.float64)
    record: dict[str, Any] = {"applied": []}
    # Every stage's coin is tossed in a fixed order, whatever the wave, so one stage's choice
    # never shifts another's draws for a given seed.
    use_reverb, use_eq, use_noise, use_gain = (
        rng.random() < p
        for p in (config.reverb_prob, config.eq_prob, config.noise_prob, config.gain_prob)
    )
    if use_reverb:
        rt60 = float(rng.uniform(*config.rt60_range_s))
        drr = float(rng.uniform(*config.drr_range_db))
        rir = room_impulse_response(rt60, drr, sample_rate, rng)
        out = signal.fftconvolve(out, rir)[: len(out)]
        record["applied"].append("reverb")
        record["reverb"] = {"rt60_s": rt60, "drr_db": drr}
    if use_eq:
        bands = _draw_bands(config, sample_rate, rng)
        out = apply_eq(out, bands, sample_rate)
        record["applied"].append("eq")
        record["eq"] = bands
    if use_noise:
        kind: NoiseKind = config.noise_kinds[int(rng.integers(len(config.noise_kinds)))]
        snr = float(config.snrs_db[int(rng.integers(len(config.snrs_db)))])
        noise = make_noise(kind, len(out), sample_rate, rng)
        speech = active_power(out, sample_rate)
        if np.abs(out).max(initial=0.0) >= SILENT_PEAK and speech > 0.0:
            out = out + noise * math.sqrt(speech / 10 ** (snr / 10))
            record["applied"].append("noise")
            record["noise"] = {"kind": kind, "snr_db": snr}
        else:
            logger.debug("silent wave: no speech level to set an SNR against, noise skipped")
    if use_gain:
        gain = float(rng.uniform(*config.gain_range_db))
        out = out * 10 ** (gain / 20)
        record["applied"].append("gain")
        record["gain_db"] = gain
    peak = float(np.abs(out).max(initial=0.0))
    if peak > config.peak_limit:
        out = out * (config.peak_limit / peak)
        record["applied"].append("limiter")
        record["limiter_db"] = 20 * math.log10(config.peak_limit / peak)
    return out.astype(np.float32), record
