"""Frozen-branch features, computed once per clip so training epochs only run trainable parts.

In PMMTalk psi_AE (the CNN feature encoder), the whole text branch and the talking-head generator
are frozen. Their outputs for a clip therefore never change during training, so the trainer runs
them once and keeps: the CNN latents (the trainable psi_AD transformer reads them), the text
posteriors at the frame rate, and the generator's video for the clip's reference face. Each epoch
then costs only psi_AD, the image encoder, the alignment module and the decoder.

Clips are cropped on 0.1 s boundaries: 3 frames at 30 fps and 5 latents at 50 Hz start at the
same instant there, so a crop of the cached latents is what the CNN gives at that offset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from models.data.batch import Clip
from models.mel import mel_windows
from models.pmmtalk import PMMTalk
from models.resample import features_to_frames, samples_for_frames
from models.training.recognizer import latent_lengths

logger = logging.getLogger(__name__)

CROP_UNIT_FRAMES = 3
"""Crops start on multiples of 3 frames (0.1 s), where frame and latent grids coincide."""
CROP_UNIT_LATENTS = 5
"""Latents per crop unit: 0.1 s at 50 Hz."""
VIDEO_CHUNK_FRAMES = 256
"""The generator runs on at most this many frames at once, to bound memory on long clips."""

FaceSource = Callable[[int], Tensor]
"""Index of a clip -> its reference face, (3, S, S) float in [0, 1]."""


@dataclass(frozen=True)
class CachedClip:
    """One clip's frozen-branch outputs and its targets."""

    id: str
    language: str
    style: int  # training-subject index, -1 when unknown
    latents: Tensor  # (F, C) float32: psi_AE on the clip padded as PMMTalk.encode_speech pads it
    text: Tensor  # (T, V) float32: text posteriors at 30 fps
    video: Tensor  # (T, 3, S, S) uint8: the generator's frames for this clip's reference face
    targets: Tensor  # (T, 32) float32

    @property
    def num_frames(self) -> int:
        return int(self.targets.shape[0])


@torch.no_grad()
def cache_clip(model: PMMTalk, clip: Clip, face: Tensor) -> CachedClip:
    """Run the frozen branches on one clip. face: (3, S, S) float in [0, 1]."""
    frames = int(clip.targets.shape[0])
    wave = torch.from_numpy(np.ascontiguousarray(clip.wave, dtype=np.float32))[None]  # (1, S)
    needed = samples_for_frames(frames, model.cfg.fps)
    padded = F.pad(wave, (0, max(needed - wave.shape[-1], 0)))
    latents = model.speech.extract_latents(padded)  # (1, F, C)
    text = model.text(latents).softmax(dim=-1)  # (1, F, V)
    windows = mel_windows(
        model.mel(wave), frames, fps=model.cfg.fps, mel_steps=model.cfg.wav2lip.mel_steps
    )  # (1, T, 1, m, s)
    identity = model.encode_face(face[None])
    chunks = []
    for start in range(0, frames, VIDEO_CHUNK_FRAMES):
        part = windows[:, start : start + VIDEO_CHUNK_FRAMES]
        chunks.append(model.generate_video(part, identity)[0])  # (t, 3, S, S)
    video = torch.cat(chunks).clamp(0, 1).mul(255).round().to(torch.uint8)
    return CachedClip(
        id=clip.id,
        language=clip.language,
        style=clip.style,
        latents=latents[0].contiguous(),
        text=features_to_frames(text, frames, model.cfg.fps)[0].contiguous(),
        video=video,
        targets=torch.from_numpy(np.ascontiguousarray(clip.targets, dtype=np.float32)),
    )


def cache_clips(
    model: PMMTalk,
    clips: Sequence[Clip],
    faces: FaceSource,
    *,
    progress: bool = True,
    desc: str = "caching frozen features",
) -> list[CachedClip]:
    """`cache_clip` over a dataset, with the model in eval mode and a progress bar."""
    was_training = model.training
    model.eval()
    try:
        return [
            cache_clip(model, clips[i], faces(i))
            for i in tqdm(range(len(clips)), desc=desc, disable=not progress, unit="clip")
        ]
    finally:
        model.train(was_training)


def latent_count(model: PMMTalk, frames: int) -> int:
    """Latents psi_AE yields for the padded input of a ``frames``-frame clip."""
    samples = torch.tensor([int(samples_for_frames(frames, model.cfg.fps))])
    return int(latent_lengths(model, samples)[0])


@dataclass(frozen=True)
class CachedBatch:
    """Equal-length crops of several cached clips: no padding, so no masks are needed."""

    latents: Tensor  # (B, F, C)
    text: Tensor  # (B, T, V)
    video: Tensor  # (B, T, 3, S, S) float in [0, 1]
    targets: Tensor  # (B, T, 32)
    style: Tensor  # (B,) long, -1 = unknown


def crop_batch(
    model: PMMTalk,
    clips: Sequence[CachedClip],
    max_frames: int,
    rng: np.random.Generator,
) -> CachedBatch:
    """Crop every clip to the same length (the shortest clip's, at most ``max_frames``).

    Crop starts are random multiples of `CROP_UNIT_FRAMES`.
    """
    unit = CROP_UNIT_FRAMES
    shortest = min(c.num_frames for c in clips)
    frames = min(shortest, max_frames)
    count = latent_count(model, frames)
    latents, text, video, targets = [], [], [], []
    for clip in clips:
        units = (clip.num_frames - frames) // unit
        start_unit = int(rng.integers(0, units + 1))
        first = start_unit * unit
        lat = clip.latents[start_unit * CROP_UNIT_LATENTS :][:count]
        if lat.shape[0] < count:  # the clip's end: hold the last latent, as inference clamps
            lat = torch.cat([lat, lat[-1:].expand(count - lat.shape[0], -1)])
        latents.append(lat)
        text.append(clip.text[first : first + frames])
        video.append(clip.video[first : first + frames])
        targets.append(clip.targets[first : first + frames])
    return CachedBatch(
        latents=torch.stack(latents),
        text=torch.stack(text),
        video=torch.stack(video).float().div_(255),
        targets=torch.stack(targets),
        style=torch.tensor([c.style for c in clips], dtype=torch.long),
    )


def length_batches(
    clips: Sequence[CachedClip], batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Indices grouped so clips of similar length share a batch; batch order shuffled.

    A little jitter on the lengths makes the grouping differ between epochs.
    """
    lengths = np.array([c.num_frames for c in clips], dtype=np.float64)
    jitter = rng.uniform(0.9, 1.1, size=lengths.shape)
    order = np.argsort(lengths * jitter, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
