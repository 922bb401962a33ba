"""A plain folder of audio files, each with a same-stem ``.npy`` of (T, 32) targets at 30 fps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import numpy as np
from torch.utils.data import Dataset

from models.blendshapes import NUM_BLENDSHAPES, SAMPLE_RATE_HZ, num_frames
from models.data.batch import UNKNOWN_STYLE, Clip, as_clip_language, fit_frames
from models.data.probe import probe_pair
from pmmtalk.audio import decode_audio

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES: Final = (".wav", ".flac", ".ogg")

MAX_FRAME_MISMATCH: Final = 2
"""Frames by which a target file may differ from num_frames(audio) and still be fixed (padded
by repeating its last frame, or trimmed); exporters that round the duration differently land
within this, while a larger gap means the files do not belong together."""


class PlainDataset(Dataset[Clip]):
    """Every audio file under ``root`` (recursively) with a ``.npy`` of the same stem beside it.

    The ``.npy`` holds float32-convertible (T, 32) targets at 30 fps in
    `models.blendshapes.BLENDSHAPE_NAMES` order, frame i at i / 30 s of the audio. T must lie
    within `MAX_FRAME_MISMATCH` frames of num_frames(audio samples, audio rate); smaller
    differences are fixed (logged when the dataset opens). All files are checked on open.

    Args:
        root: the folder.
        language, style: given to every clip.
    """

    def __init__(
        self, root: Path, *, language: str = "unknown", style: int = UNKNOWN_STYLE
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is not a directory")
        self.language = as_clip_language(language, "PlainDataset")
        self.style = style
        audio_files = sorted(
            path
            for path in self.root.rglob("*")
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()
        )
        if not audio_files:
            raise ValueError(
                f"{self.root} holds no audio files ({', '.join(AUDIO_SUFFIXES)}) to train on"
            )
        stems = [path.with_suffix("") for path in audio_files]
        doubled = sorted({str(stem) for stem in stems if stems.count(stem) > 1})
        if doubled:
            raise ValueError(
                f"more than one audio file shares a stem, so the .npy is ambiguous: "
                f"{', '.join(doubled[:5])}; keep one audio file per stem"
            )
        unpaired = [path for path in audio_files if not path.with_suffix(".npy").is_file()]
        if unpaired:
            listed = ", ".join(str(path) for path in unpaired[:5])
            more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
            raise ValueError(
                f"{len(unpaired)} audio file(s) have no same-stem .npy targets: {listed}{more}; "
                "add the targets or move the audio out of the folder"
            )
        self._audio = audio_files
        self._sample_counts = tuple(self._check(path) for path in audio_files)

    def _check(self, audio: Path) -> int:
        """Validate one pair; return the audio's length in samples at 16 kHz."""
        targets = audio.with_suffix(".npy")
        audio_frames, rate, shape = probe_pair(audio, targets)
        if len(shape) != 2 or shape[1] != NUM_BLENDSHAPES or shape[0] == 0:
            raise ValueError(
                f"{targets} has shape {shape}, expected (T, {NUM_BLENDSHAPES}) blendshape frames "
                "at 30 fps in models.blendshapes.BLENDSHAPE_NAMES order"
            )
        expected = num_frames(audio_frames, rate)
        if abs(shape[0] - expected) > MAX_FRAME_MISMATCH:
            raise ValueError(
                f"{targets} has {shape[0]} frames but {audio} ({audio_frames / rate:.3f}"
                f" s) needs {expected} at 30 fps; more than {MAX_FRAME_MISMATCH} frames apart, so "
                "the two files do not match (wrong frame rate or wrong pair?)"
            )
        if shape[0] != expected:
            logger.info(
                "%s: %d frames for %d expected; %s to fit the audio",
                targets,
                shape[0],
                expected,
                "padding the last frame" if shape[0] < expected else "trimming the end",
            )
        return round(audio_frames * SAMPLE_RATE_HZ / rate)

    def __len__(self) -> int:
        return len(self._audio)

    @property
    def sample_counts(self) -> tuple[int, ...]:
        """Samples at 16 kHz of each item, for `models.data.batch.LengthBucketSampler`."""
        return self._sample_counts

    def __getitem__(self, index: int) -> Clip:
        audio = self._audio[index]
        wave = decode_audio(audio).samples
        targets_path = audio.with_suffix(".npy")
        targets = np.load(targets_path).astype(np.float32, copy=False)
        if not np.isfinite(targets).all():
            raise ValueError(f"{targets_path} holds NaN or infinite values; fix or remove it")
        return Clip(
            id=audio.relative_to(self.root).with_suffix("").as_posix(),
            wave=wave,
            targets=fit_frames(targets, num_frames(wave.shape[0], SAMPLE_RATE_HZ)),
            language=self.language,
            style=self.style,
            phones=None,
            source="plain",
        )
