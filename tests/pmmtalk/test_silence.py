"""The silence gate (pmmtalk/silence.py)."""

from __future__ import annotations

import numpy as np

from models.streaming import StreamWindow
from pmmtalk.silence import frame_gains
from server.stream import StreamBuffer

RATE = 16_000


def tone(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """Noise at a given mean power in dB full scale."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(round(seconds * RATE)).astype(np.float32)
    return noise * np.float32(10 ** (dbfs / 20))


def test_speech_level_passes_and_silence_closes() -> None:
    wave = np.concatenate([tone(1.0, -20), np.zeros(RATE, np.float32), tone(1.0, -70)])
    gains = frame_gains(wave, 0, 0, 90, threshold_dbfs=-50)
    assert np.all(gains[3:27] == 1.0)  # well inside the loud second
    assert np.all(gains[34:90] == 0.0)  # silence, then noise 20 dB under the threshold
    assert 0 < gains[30] <= 1  # the boundary frame still hears the speech within 0.1 s


def test_the_gain_ramps_smoothly_around_the_threshold() -> None:
    levels = [-60, -54, -50, -46, -40]
    gains = [float(frame_gains(tone(1, db), 0, 15, 1, threshold_dbfs=-50)[0]) for db in levels]
    assert gains[0] == 0 and gains[-1] == 1
    assert gains == sorted(gains)
    assert abs(gains[2] - 0.5) < 0.1


def test_stream_windows_gate_each_frame_as_the_whole_clip_does() -> None:
    """The promise that keeps streaming and offline gating identical."""
    rng = np.random.default_rng(3)
    wave = np.concatenate([tone(0.7, -25), np.zeros(9000, np.float32), tone(1.3, -48, seed=1)])
    wave *= rng.uniform(0.5, 1.5, wave.size).astype(np.float32)
    total = -(-wave.size * 30 // RATE)
    offline = frame_gains(wave, 0, 0, total, threshold_dbfs=-50)
    buffer = StreamBuffer(StreamWindow(1.0, 0.4, 0.3), max_samples=10 * RATE)
    buffer.push(wave, now=0.0)
    buffer.finish(now=0.0)
    streamed = np.concatenate(
        [
            frame_gains(p.wave, p.wave_start, p.first_frame, p.count, threshold_dbfs=-50)
            for p in buffer.take(100)
        ]
    )
    np.testing.assert_allclose(streamed, offline, atol=1e-6)
