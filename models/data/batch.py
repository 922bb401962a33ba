"""The item every reader returns, batching, random crops and a length-bucketed batch sampler.

A `Clip` holds speech at 16 kHz and its blendshape targets at 30 fps under the project's frame
contract, ``T == models.blendshapes.num_frames(S, 16000)``: frame i sits at i / 30 s of the
audio clock and the last frame is the one whose time falls inside the audio. Readers bring their
files onto that contract with `fit_frames`; `collate` pads clips into a `Batch` whose
``num_frames`` are the ``lengths`` that `models.losses` and `PMMTalk.loss` take.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal, Protocol, cast, get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from models.blendshapes import FPS, NUM_BLENDSHAPES, SAMPLE_RATE_HZ, num_frames
from models.corpus.manifest import PhoneSegment

logger = logging.getLogger(__name__)

ClipLanguage = Literal["en", "zh", "unknown"]
CLIP_LANGUAGES: Final[tuple[ClipLanguage, ...]] = get_args(ClipLanguage)

UNKNOWN_STYLE: Final = -1
"""`Clip.style` of a speaker outside the training subjects (no learned style vector)."""

# 16000 / 30 = 533.33 samples per frame, so only every third frame boundary falls on a whole
# sample: 3 frames = 1600 samples = 0.1 s. Crops start on those boundaries (see `crop`).
CROP_STEP_FRAMES: Final = 3
CROP_STEP_SAMPLES: Final = CROP_STEP_FRAMES * SAMPLE_RATE_HZ // FPS
CROP_STEP_S: Final = CROP_STEP_SAMPLES / SAMPLE_RATE_HZ


def as_clip_language(language: str, where: str) -> ClipLanguage:
    """Check a language code read from a file or an argument; ``where`` names it for errors."""
    if language not in CLIP_LANGUAGES:
        raise ValueError(
            f"{where}: language must be one of {', '.join(CLIP_LANGUAGES)}, got {language!r}"
        )
    return cast(ClipLanguage, language)


@dataclass(frozen=True, eq=False)
class Clip:
    """One training or evaluation item.

    ``eq=False``: clips hold arrays, whose ``==`` is elementwise; compare fields explicitly.
    """

    id: str
    """Identifier unique within its dataset (a manifest id or a path stem)."""
    wave: np.ndarray
    """Mono speech at 16 kHz, shape (S,), float32, nominally in [-1, 1]; S >= 1."""
    targets: np.ndarray
    """Blendshape coefficients, shape (T, 32), float32, columns in
    `models.blendshapes.BLENDSHAPE_NAMES` order, T == num_frames(S, 16000)."""
    language: ClipLanguage
    """Spoken language: ``en``, ``zh`` or ``unknown``."""
    style: int
    """Training-subject index for the style vector p; -1 (`UNKNOWN_STYLE`) when unknown."""
    phones: list[PhoneSegment] | None
    """Phone segments in seconds of this clip's audio clock, or None where none are known."""
    source: str
    """Which reader produced the clip (``corpus:<engine>``, ``livelink``, ``plain``), so metrics
    can be split by source."""

    def __post_init__(self) -> None:
        if self.wave.ndim != 1 or self.wave.dtype != np.float32 or self.wave.shape[0] == 0:
            raise ValueError(
                f"clip {self.id!r}: wave must be a non-empty 1-D float32 array (mono samples at "
                f"16 kHz), got shape {self.wave.shape} and dtype {self.wave.dtype}"
            )
        expected = num_frames(self.wave.shape[0], SAMPLE_RATE_HZ)
        if self.targets.shape != (expected, NUM_BLENDSHAPES) or self.targets.dtype != np.float32:
            raise ValueError(
                f"clip {self.id!r}: targets must be float32 of shape ({expected}, "
                f"{NUM_BLENDSHAPES}) for {self.wave.shape[0]} samples (num_frames(S, 16000)), "
                f"got {self.targets.shape} {self.targets.dtype}; bring them onto the contract "
                "with models.data.batch.fit_frames"
            )
        as_clip_language(self.language, f"clip {self.id!r}")
        if self.style < UNKNOWN_STYLE:
            raise ValueError(
                f"clip {self.id!r}: style must be a subject index >= 0 or -1 (unknown), "
                f"got {self.style}"
            )

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return self.wave.shape[0] / SAMPLE_RATE_HZ


class ClipDataset(Protocol):
    """What training and evaluation need from a reader: a torch map-style dataset of clips."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Clip: ...


class SizedClipDataset(ClipDataset, Protocol):
    """A clip dataset that knows each item's length without loading it (for bucketing)."""

    @property
    def sample_counts(self) -> tuple[int, ...]:
        """Samples at 16 kHz of each item, in index order (estimated for resampled files)."""
        ...


def fit_frames(targets: np.ndarray, frames: int) -> np.ndarray:
    """Bring (T, K) targets to exactly ``frames`` rows: repeat the last row, or drop trailing rows.

    Readers call this after checking that the mismatch is small (a rounding difference between
    the capture's clock and the audio's length): holding the last pose is the least surprising
    value for a frame the capture did not reach, and dropped rows lie past the end of the audio.
    Returns a float32 array of shape (frames, K); a copy only when something changed.
    """
    if targets.ndim != 2 or targets.shape[0] == 0:
        raise ValueError(f"targets must be a non-empty (T, K) array, got shape {targets.shape}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    have = targets.shape[0]
    if have > frames:
        targets = targets[:frames]
    elif have < frames:
        tail = np.repeat(targets[-1:], frames - have, axis=0)
        targets = np.concatenate([targets, tail], axis=0)
    return np.ascontiguousarray(targets, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Batch:
    """Clips padded to a common length. B items, S_max samples, T_max frames."""

    wave: Tensor
    """(B, S_max) float32 speech at 16 kHz, zero after each item's ``num_samples``."""
    num_samples: Tensor
    """(B,) int64 valid samples per item."""
    targets: Tensor
    """(B, T_max, 32) float32 blendshape targets, zero after each item's ``num_frames``."""
    num_frames: Tensor
    """(B,) int64 valid frames per item: the ``lengths`` of `models.losses` and `PMMTalk.loss`."""
    style: Tensor
    """(B,) int64 style index per item, -1 where unknown."""
    language: list[ClipLanguage]
    ids: list[str]
    phones: list[list[PhoneSegment] | None]

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on ``device``."""
        return replace(
            self,
            wave=self.wave.to(device),
            num_samples=self.num_samples.to(device),
            targets=self.targets.to(device),
            num_frames=self.num_frames.to(device),
            style=self.style.to(device),
        )


def collate(clips: Sequence[Clip]) -> Batch:
    """Pad clips into a `Batch` (use as a DataLoader's ``collate_fn``).

    Waves and targets are zero-padded at the end; padded frames are excluded by the losses
    through ``num_frames``, and padded samples are silence to the audio encoder.
    """
    if len(clips) == 0:
        raise ValueError("collate needs at least one clip; check the sampler's batch size")
    samples = [clip.wave.shape[0] for clip in clips]
    frames = [clip.targets.shape[0] for clip in clips]
    wave = torch.zeros(len(clips), max(samples), dtype=torch.float32)  # (B, S_max)
    targets = torch.zeros(len(clips), max(frames), NUM_BLENDSHAPES)  # (B, T_max, 32)
    for i, clip in enumerate(clips):
        wave[i, : samples[i]] = torch.from_numpy(clip.wave)
        targets[i, : frames[i]] = torch.from_numpy(clip.targets)
    return Batch(
        wave=wave,
        num_samples=torch.tensor(samples, dtype=torch.long),
        targets=targets,
        num_frames=torch.tensor(frames, dtype=torch.long),
        style=torch.tensor([clip.style for clip in clips], dtype=torch.long),
        language=[clip.language for clip in clips],
        ids=[clip.id for clip in clips],
        phones=[clip.phones for clip in clips],
    )


def crop(clip: Clip, max_seconds: float, rng: np.random.Generator) -> Clip:
    """A random window of at most ``max_seconds`` of ``clip``, with targets and phones to match.

    The window starts on a frame boundary that is also a whole sample: frame k starts at
    k * 16000 / 30 samples, a whole number only when k is a multiple of 3, so starts lie on a
    0.1 s grid (`CROP_STEP_SAMPLES` = 1600 samples). Carrying a fractional start instead would
    put the crop's frame 0 a third of a sample off its audio time, which the frame contract (frame
    i at exactly i / 30 s) cannot express; the coarser grid costs nothing for training variety.
    With a whole-frame start k, the crop's frames are rows k .. k + T' - 1 of the original, with
    T' = num_frames(window samples, 16000), and k + T' never exceeds the original T.

    The window is ``floor(max_seconds * 16000)`` samples long, except that the last start on the
    grid may leave less audio than that, so the end of the clip can be drawn too. Phones are
    shifted to the window's clock, clipped to it, and dropped when they fall outside. A clip no
    longer than ``max_seconds`` comes back unchanged.
    """
    if not max_seconds >= CROP_STEP_S:
        raise ValueError(
            f"max_seconds must be at least {CROP_STEP_S} s (crops start on a 0.1 s grid), "
            f"got {max_seconds}"
        )
    total = clip.wave.shape[0]
    window = math.floor(max_seconds * SAMPLE_RATE_HZ)
    if total <= window:
        return clip
    # Starts 0, 1600, ...: enough of them that the last reaches the final `window` samples.
    num_starts = -(-(total - window) // CROP_STEP_SAMPLES) + 1
    step = int(rng.integers(num_starts))
    start = step * CROP_STEP_SAMPLES
    stop = min(start + window, total)
    first_frame = step * CROP_STEP_FRAMES
    frames = num_frames(stop - start, SAMPLE_RATE_HZ)
    return replace(
        clip,
        wave=clip.wave[start:stop],
        targets=clip.targets[first_frame : first_frame + frames],
        phones=_crop_phones(clip.phones, start / SAMPLE_RATE_HZ, stop / SAMPLE_RATE_HZ),
    )


def _crop_phones(
    phones: list[PhoneSegment] | None, start_s: float, stop_s: float
) -> list[PhoneSegment] | None:
    if phones is None:
        return None
    duration_s = stop_s - start_s
    kept = []
    for segment in phones:
        begin = max(segment.start_s - start_s, 0.0)
        end = min(segment.end_s - start_s, duration_s)
        if end > begin:
            kept.append(PhoneSegment(segment.phone, begin, end))
    return kept


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of clips of similar length, reshuffled every epoch from a seed.

    Each epoch the indices are shuffled, cut into pools of ``pool_batches * batch_size``, each
    pool is sorted by length and cut into batches, and the batches are shuffled. Sorting within a
    pool keeps padding small while the shuffle keeps batches different from epoch to epoch; a
    larger pool pads less and varies less. The order depends only on (seed, epoch): iterating
    uses the current epoch and then advances it, and `set_epoch` picks one (to resume a run).
    ``shuffle=False`` gives one deterministic order sorted by length, for evaluation.

    Yields lists of dataset indices; pass it as a DataLoader's ``batch_sampler``.
    """

    def __init__(
        self,
        sample_counts: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        pool_batches: int = 50,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(
                f"batch_size and pool_batches must be >= 1, got {batch_size} and {pool_batches}"
            )
        if len(sample_counts) == 0:
            raise ValueError("LengthBucketSampler needs at least one item; the dataset is empty")
        self._lengths = np.asarray(sample_counts, dtype=np.int64)  # (N,)
        self.batch_size = batch_size
        self.seed = seed
        self.pool_batches = pool_batches
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch``'s order."""
        self.epoch = epoch

    def __len__(self) -> int:
        count = len(self._lengths)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1
        if not self.shuffle:
            order = np.argsort(self._lengths, kind="stable")
            batches = _cut(order, self.batch_size)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            permuted = rng.permutation(len(self._lengths))
            pool_size = self.batch_size * self.pool_batches
            batches = []
            for begin in range(0, len(permuted), pool_size):
                pool = permuted[begin : begin + pool_size]
                # Stable sort of a random permutation: equal lengths stay in random order.
                pool = pool[np.argsort(self._lengths[pool], kind="stable")]
                batches += _cut(pool, self.batch_size)
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        yield from batches


def _cut(indices: np.ndarray, size: int) -> list[list[int]]:
    return [indices[i : i + size].tolist() for i in range(0, len(indices), size)]


def padding_waste(sample_counts: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of the padded wave tensors' samples that are padding, over all ``batches``.

    ``sample_counts[i]`` is item i's length; each batch pads to its longest item. 0 means no
    padding at all; random batches of 8 to 32 clips of 1-10 s waste about 40 %.
    """
    lengths = np.asarray(sample_counts, dtype=np.int64)
    padded = 0
    used = 0
    for batch in batches:
        sizes = lengths[list(batch)]
        padded += int(sizes.max()) * len(sizes)
        used += int(sizes.sum())
    if padded == 0:
        raise ValueError("padding_waste needs at least one non-empty batch")
    return 1.0 - used / padded
