"""The torch log-mel front end against a librosa reference, and per-frame mel windows."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from models.mel import LogMelSpectrogram, mel_windows, num_mel_frames

SAMPLE_RATE_HZ = 16_000


def reference_melspectrogram(wave: np.ndarray) -> np.ndarray:
    """Wav2Lip's preprocessing written out with numpy/librosa in float64: (S,) -> (80, M)."""
    emphasised = scipy.signal.lfilter([1.0, -0.97], [1.0], wave.astype(np.float64))
    spec = librosa.stft(
        y=emphasised,
        n_fft=800,
        hop_length=200,
        win_length=800,
        window="hann",
        center=True,
        pad_mode="constant",
        dtype=np.complex128,
    )
    basis = librosa.filters.mel(
        sr=SAMPLE_RATE_HZ, n_fft=800, n_mels=80, fmin=55, fmax=7600, dtype=np.float64
    )
    mel = basis @ np.abs(spec)
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - 20.0
    return np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0)


def test_log_mel_matches_librosa_reference() -> None:
    rng = np.random.default_rng(0)
    seconds = np.arange(16_123) / SAMPLE_RATE_HZ
    # Noise plus a tone and a quiet stretch, so many dB levels (and the clip) are exercised.
    wave = 0.05 * rng.standard_normal(seconds.size) + 0.3 * np.sin(2 * np.pi * 220.0 * seconds)
    wave[4_000:6_000] *= 1e-4
    expected = reference_melspectrogram(wave)

    got = LogMelSpectrogram()(torch.from_numpy(wave).float()[None])  # (1, 80, M)

    assert got.shape == (1, 80, expected.shape[1])
    assert np.abs(got[0].numpy() - expected).max() < 1e-3


def test_batch_rows_are_independent() -> None:
    waves = torch.randn(3, 4_000, generator=torch.Generator().manual_seed(1)) * 0.1
    front_end = LogMelSpectrogram()
    together = front_end(waves)
    for row in range(3):
        torch.testing.assert_close(together[row], front_end(waves[row : row + 1])[0])


def test_silence_is_minus_four() -> None:
    mel = LogMelSpectrogram()(torch.zeros(2, 8_000))
    assert torch.all(mel == -4.0)


@pytest.mark.parametrize("num_samples", [1, 199, 200, 201, 3_200, 16_000, 16_123])
def test_frame_count_is_samples_over_hop_plus_one(num_samples: int) -> None:
    mel = LogMelSpectrogram()(torch.zeros(1, num_samples))
    assert mel.shape == (1, 80, num_samples // 200 + 1)
    assert num_mel_frames(num_samples) == num_samples // 200 + 1


def test_front_end_adds_nothing_to_checkpoints() -> None:
    assert LogMelSpectrogram().state_dict() == {}


def test_mel_windows_shape() -> None:
    mel = torch.randn(2, 80, 100)
    assert mel_windows(mel, 37).shape == (2, 37, 1, 80, 16)
    assert mel_windows(mel, 5, mel_steps=8).shape == (2, 5, 1, 80, 8)


def test_mel_windows_are_centred_on_frame_time() -> None:
    marker = 40  # mel index 40 = 0.5 s = video frame 15 at 30 fps
    mel = torch.zeros(1, 80, 120)
    mel[:, :, marker] = 1.0

    windows = mel_windows(mel, 30)[0, :, 0]  # (T, 80, 16)

    hits = (windows == 1.0).all(dim=1).nonzero().tolist()  # [frame, column] pairs
    # Frame i's window starts at round(i * 8 / 3) - 8 and covers 16 mel frames.
    assert hits == [[13, 13], [14, 11], [15, 8], [16, 5], [17, 3], [18, 0]]


def test_mel_windows_read_silence_outside_the_clip() -> None:
    mel = torch.arange(80 * 10, dtype=torch.float32).reshape(1, 80, 10)

    windows = mel_windows(mel, 5)[0, :, 0]  # (5, 80, 16)

    first = windows[0]  # starts at mel index -8
    assert torch.all(first[:, :8] == -4.0)
    torch.testing.assert_close(first[:, 8:], mel[0, :, :8])
    last = windows[4]  # round(4 * 8 / 3) = 11: covers 3..18, the clip ends at 9
    torch.testing.assert_close(last[:, :7], mel[0, :, 3:10])
    assert torch.all(last[:, 7:] == -4.0)


def test_mel_windows_depend_only_on_nearby_mel() -> None:
    mel = torch.randn(2, 80, 300)
    num_frames = 10  # frame 9's window ends before mel index round(9 * 8 / 3) + 8 = 32

    full = mel_windows(mel, 100)[:, :num_frames]
    cut = mel_windows(mel[:, :, :32], num_frames)

    torch.testing.assert_close(cut, full, rtol=0, atol=0)
