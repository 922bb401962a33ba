"""The silence gate: frames whose surrounding audio is silent are eased to the neutral face.

The network was trained on utterances with short pauses inside them, never on seconds of
silence; on a long silent stretch it can hold a half-open pose. Serving therefore scales each
frame by a gain from the loudness of the audio around it: 1 in speech, 0 in silence, a smooth
ramp between. The gain of frame ``i`` reads only the audio within ``GATE_RADIUS_S`` of the
frame's time, which every stream window holds (its lookahead is longer), so the offline and the
streaming paths gate a frame identically.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from models.blendshapes import FPS, SAMPLE_RATE_HZ

GATE_RADIUS_S: Final = 0.1
"""Audio on each side of a frame's time whose loudness decides its gain."""
GATE_RADIUS_SAMPLES: Final = round(GATE_RADIUS_S * SAMPLE_RATE_HZ)
GATE_RAMP_DB: Final = 10.0
"""Loudness range over which the gain goes from 0 to 1, centred on the threshold."""
_POWER_FLOOR: Final = 1e-12


def frame_gains(
    wave: np.ndarray, wave_start: int, first_frame: int, count: int, threshold_dbfs: float
) -> np.ndarray:
    """(count,) float32 gains in [0, 1] for frames ``first_frame .. first_frame + count - 1``.

    ``wave`` (n,) float32 at 16 kHz holds the stream's audio from absolute sample ``wave_start``
    on (silence is assumed outside it, as before a stream starts or after it ends). A frame's
    loudness is the mean power of the audio within `GATE_RADIUS_S` of its time, in dB relative to
    a full-scale square wave; the gain rises smoothly from 0 at ``threshold_dbfs - 5`` dB to 1 at
    ``threshold_dbfs + 5`` dB.
    """
    frames = np.arange(first_frame, first_frame + count)
    centres = frames * SAMPLE_RATE_HZ // FPS - wave_start  # a frame's time, in samples of wave
    lo = np.clip(centres - GATE_RADIUS_SAMPLES, 0, wave.size)
    hi = np.clip(centres + GATE_RADIUS_SAMPLES, 0, wave.size)
    energy = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
    power = (energy[hi] - energy[lo]) / (2 * GATE_RADIUS_SAMPLES)  # outside wave: silence
    level_db = 10 * np.log10(power + _POWER_FLOOR)
    x = np.clip((level_db - threshold_dbfs) / GATE_RAMP_DB + 0.5, 0.0, 1.0)
    return (x * x * (3 - 2 * x)).astype(np.float32)  # smoothstep: no kink at either end
