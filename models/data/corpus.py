"""The generated corpus (`models.corpus.manifest` layout) as a dataset of `Clip`s."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from models.blendshapes import NUM_BLENDSHAPES, SAMPLE_RATE_HZ, num_frames
from models.corpus.manifest import (
    MANIFEST_NAME,
    SPLITS,
    Split,
    Utterance,
    read_manifest,
    read_phone_table,
)
from models.corpus.phones import LANGUAGES
from models.data.batch import Clip, as_clip_language, fit_frames
from models.data.probe import probe_pair
from pmmtalk.audio import decode_audio

logger = logging.getLogger(__name__)


class CorpusDataset(Dataset[Clip]):
    """The utterances of one or more splits of a corpus directory, optionally of some languages.

    Every selected row is checked when the dataset is opened, so a broken corpus fails at the
    start of a run rather than hours into it: the WAV, targets and phone table must exist, the
    targets must be (T, 32) with T == num_frames(audio samples, audio rate) and equal to the
    manifest's ``num_frames``. Each check raises ValueError naming the file. Audio is expected at
    16 kHz; a WAV at another rate is resampled with soxr when loaded.
    """

    def __init__(
        self,
        root: Path,
        split: Split | Sequence[Split],
        languages: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        splits = (split,) if isinstance(split, str) else tuple(split)
        for name in splits:
            if name not in SPLITS:
                raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        if languages is not None:
            for language in languages:
                if language not in LANGUAGES:
                    raise ValueError(
                        f"unknown language {language!r}; choose from {', '.join(LANGUAGES)}"
                    )
        manifest = self.root / MANIFEST_NAME
        if not manifest.is_file():
            raise ValueError(
                f"{manifest} not found: {self.root} is not a corpus directory (generate one "
                "first, or point at the directory that holds manifest.jsonl)"
            )
        self._rows = [
            row
            for row in read_manifest(manifest)
            if row.split in splits and (languages is None or row.language in languages)
        ]
        if not self._rows:
            wanted = f"split {'/'.join(splits)}" + (
                f" and language {'/'.join(languages)}" if languages is not None else ""
            )
            raise ValueError(f"{manifest} has no utterances of {wanted}")
        self._sample_counts = tuple(self._check(row) for row in self._rows)
        logger.info(
            "corpus %s: %d utterances (%.2f h) of split %s",
            self.root,
            len(self._rows),
            sum(self._sample_counts) / SAMPLE_RATE_HZ / 3600,
            "/".join(splits),
        )

    def _check(self, row: Utterance) -> int:
        """Validate one row's files; return its length in samples at 16 kHz."""
        as_clip_language(row.language, f"{self.root / MANIFEST_NAME} row {row.id!r}")
        audio, targets, phones = (self.root / rel for rel in (row.audio, row.targets, row.phones))
        for path in (audio, targets, phones):
            if not path.is_file():
                raise ValueError(
                    f"{path} (utterance {row.id!r}) is missing; the corpus is incomplete, so "
                    "regenerate it or remove the row from manifest.jsonl"
                )
        audio_frames, rate, shape = probe_pair(audio, targets)
        expected = num_frames(audio_frames, rate)
        if len(shape) != 2 or shape[1] != NUM_BLENDSHAPES:
            raise ValueError(
                f"{targets} has shape {shape}, expected (T, {NUM_BLENDSHAPES}) blendshape "
                f"frames (here T = {expected}); regenerate the targets"
            )
        if shape[0] != expected:
            raise ValueError(
                f"{targets} has {shape[0]} frames but its audio {audio} ({audio_frames} samples at "
                f"{rate} Hz) needs num_frames = {expected}; the targets and audio do "
                "not belong together, so regenerate this utterance"
            )
        if row.num_frames != shape[0]:
            raise ValueError(
                f"{targets} has {shape[0]} frames but manifest row {row.id!r} says "
                f"{row.num_frames}; regenerate manifest.jsonl"
            )
        if rate != SAMPLE_RATE_HZ:
            return round(audio_frames * SAMPLE_RATE_HZ / rate)
        return int(audio_frames)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def sample_counts(self) -> tuple[int, ...]:
        """Samples at 16 kHz of each item, for `models.data.batch.LengthBucketSampler`."""
        return self._sample_counts

    @property
    def utterances(self) -> tuple[Utterance, ...]:
        """The selected manifest rows, in index order."""
        return tuple(self._rows)

    def __getitem__(self, index: int) -> Clip:
        row = self._rows[index]
        decoded = decode_audio(self.root / row.audio)
        if decoded.source_sample_rate_hz != SAMPLE_RATE_HZ:
            logger.debug(
                "%s is at %d Hz; resampled to 16 kHz", row.audio, decoded.source_sample_rate_hz
            )
        targets_path = self.root / row.targets
        targets = np.load(targets_path)
        if not np.isfinite(targets).all():
            raise ValueError(f"{targets_path} holds NaN or infinite values; regenerate it")
        # Resampling can round the length by a sample, which can move the frame count by one.
        frames = num_frames(decoded.samples.shape[0], SAMPLE_RATE_HZ)
        return Clip(
            id=row.id,
            wave=decoded.samples,
            targets=fit_frames(targets, frames),
            language=as_clip_language(row.language, row.id),
            style=row.style,
            phones=read_phone_table(self.root / row.phones),
            source=f"corpus:{row.engine}",
        )
