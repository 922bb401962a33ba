"""The log-mel front end Wav2Lip was trained on, as a torch module, and per-frame mel windows.

The constants are Wav2Lip's audio hparams. The STFT runs in torch (``torch.stft``) rather than
librosa so the whole front end is one ``nn.Module`` that traces and exports with the network; only
the mel filterbank comes from librosa, computed once at construction.
"""

from __future__ import annotations

import librosa
import torch
from torch import Tensor, nn

from models.blendshapes import FPS, SAMPLE_RATE_HZ

N_FFT: int = 800
HOP_SAMPLES: int = 200
WIN_SAMPLES: int = 800
NUM_MELS: int = 80
FMIN_HZ: float = 55.0
FMAX_HZ: float = 7600.0
PREEMPHASIS: float = 0.97
MIN_LEVEL_DB: float = -100.0
REF_LEVEL_DB: float = 20.0
MAX_ABS_VALUE: float = 4.0

MEL_RATE_HZ: int = SAMPLE_RATE_HZ // HOP_SAMPLES
"""Mel frames per second (80 at 16 kHz); mel frame m is centred on sample ``m * HOP_SAMPLES``."""

SILENCE_LEVEL: float = -MAX_ABS_VALUE
"""Normalised value of a mel bin with no energy; also what windows read outside the clip."""

_MIN_AMPLITUDE: float = 10.0 ** (MIN_LEVEL_DB / 20.0)  # 1e-5, the -100 dB floor


class LogMelSpectrogram(nn.Module):
    """Speech at 16 kHz -> Wav2Lip's normalised log-mel spectrogram.

    Pre-emphasis 0.97, centred 800-point STFT (Hann, hop 200, zero padding), magnitude, 80 Slaney
    mel bands over 55-7600 Hz, ``20 log10(max(1e-5, mel)) - 20`` dB, then the symmetric
    normalisation ``clip(8 (dB + 100) / 100 - 4, -4, 4)``. Silence maps to -4.
    """

    mel_basis: Tensor
    window: Tensor

    def __init__(self) -> None:
        super().__init__()
        basis = librosa.filters.mel(
            sr=SAMPLE_RATE_HZ, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN_HZ, fmax=FMAX_HZ
        )  # (80, N_FFT // 2 + 1)
        # Derived from constants, so they stay out of checkpoints.
        self.register_buffer(
            "mel_basis", torch.from_numpy(basis).to(torch.float32), persistent=False
        )
        self.register_buffer("window", torch.hann_window(WIN_SAMPLES), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        """Normalised log-mel frames of a batch of waveforms.

        Args:
            wave: (B, S) float samples at 16 kHz, nominally in [-1, 1].

        Returns:
            (B, 80, M) with ``M = S // 200 + 1`` frames at 80 Hz, values in [-4, 4].
        """
        # y[n] = x[n] - 0.97 x[n-1], with x[-1] = 0 (scipy.signal.lfilter's initial state).
        emphasised = torch.cat(
            [wave[:, :1], wave[:, 1:] - PREEMPHASIS * wave[:, :-1]], dim=1
        )  # (B, S)
        spec = torch.stft(
            emphasised,
            n_fft=N_FFT,
            hop_length=HOP_SAMPLES,
            win_length=WIN_SAMPLES,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (B, N_FFT // 2 + 1, M) complex
        magnitude = spec.abs()  # (B, 401, M)
        mel = torch.matmul(self.mel_basis, magnitude)  # (B, 80, M)
        db = 20.0 * torch.log10(torch.clamp(mel, min=_MIN_AMPLITUDE)) - REF_LEVEL_DB
        scaled = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
        return torch.clamp(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)  # (B, 80, M)


def num_mel_frames(num_samples: int) -> int:
    """Mel frames ``LogMelSpectrogram`` yields for ``num_samples`` samples at 16 kHz."""
    return num_samples // HOP_SAMPLES + 1


def mel_window_starts(num_frames: int, fps: int = FPS, mel_steps: int = 16) -> Tensor:
    """First mel index of each video frame's window (may be negative or past the clip's end).

    Frame i sits at ``i / fps`` seconds, i.e. mel position ``i * 80 / fps``; rounding is half-up
    in integer arithmetic so long clips never drift. The window is centred there, which is close
    to how Wav2Lip's generator was trained (a window starting two 25 fps frames before the frame).

    Returns:
        (num_frames,) int64 mel indices.
    """
    frames = torch.arange(num_frames, dtype=torch.int64)  # (T,)
    centres = (2 * MEL_RATE_HZ * frames + fps) // (2 * fps)  # round(i * 80 / fps), half up
    return centres - mel_steps // 2


def mel_windows(mel: Tensor, num_frames: int, fps: int = FPS, mel_steps: int = 16) -> Tensor:
    """Cut one mel window per video frame, centred on the frame's time.

    Frame i's window covers mel indices ``round(i * 80 / fps) - mel_steps // 2`` onwards for
    ``mel_steps`` frames; indices outside ``[0, M)`` read the silence value -4. A window depends
    only on the mel frames it covers, never on ``M``, so a stream may cut windows from a partial
    mel as soon as it covers them.

    Args:
        mel: (B, 80, M) normalised log-mel from `LogMelSpectrogram`.
        num_frames: T, video frames to cut windows for.
        fps: video frame rate.
        mel_steps: window length in mel frames (16 = 0.2 s).

    Returns:
        (B, T, 1, 80, mel_steps), the layout `Wav2Lip.forward` takes.
    """
    batch, num_mels, length = mel.shape
    starts = mel_window_starts(num_frames, fps, mel_steps).to(mel.device)  # (T,)
    index = starts[:, None] + torch.arange(mel_steps, device=mel.device)  # (T, steps)
    inside = (index >= 0) & (index < length)  # (T, steps)
    flat = index.clamp(0, length - 1).reshape(-1)  # (T * steps,)
    picked = mel.index_select(2, flat).reshape(batch, num_mels, num_frames, mel_steps)
    picked = torch.where(inside, picked, torch.full_like(picked, SILENCE_LEVEL))  # (B, 80, T, s)
    return picked.permute(0, 2, 1, 3).unsqueeze(2)  # (B, T, 1, 80, steps)
