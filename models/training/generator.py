"""Train the generator psi_HG (Wav2Lip) on procedurally rendered faces, and evaluate it.

No pretrained Wav2Lip weights can be downloaded for the small presets, so their generator learns
here from the corpus itself: each frame's ground-truth blendshapes are drawn by
`models.renderer` as a face, and the generator must reproduce that face from the frame's mel
window plus a reference picture of the same (random) identity with another mouth pose.

Train and inference see the same inputs:

- Speech: the mel windows come from the model's own front end (``model.mel``) and are cut at
  `models.mel.mel_window_starts`, exactly the windows `PMMTalk.encode_speech` builds.
- Face: at inference `Wav2Lip.reference_input` builds the identity input from the reference photo
  alone (its upper half, then the whole photo). Official Wav2Lip trains with the *target's* upper
  half instead, which lets the network read some mouth information from the target; here the
  masked half is the *reference's* too, so the network learns to take the mouth from speech only
  and the training input has exactly the inference layout.

Frames, not sequences, are sampled: each step trains on ``frames_per_batch`` frames drawn at
random across the whole training split. The renders and mel frames of a split are cached in
memory (about 2.6 KB per video frame at 24 px), re-rendered each epoch with new identities.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from models.blendshapes import BLENDSHAPE_NAMES, NUM_BLENDSHAPES, SAMPLE_RATE_HZ
from models.corpus.manifest import MANIFEST_NAME, SPLITS, Utterance, read_manifest
from models.mel import SILENCE_LEVEL, mel_window_starts
from models.pmmtalk import PMMTalk
from models.renderer import FaceIdentity, draw_face, draw_faces
from pmmtalk.face import reference_face

logger = logging.getLogger(__name__)

CHECKPOINT_NAME: Final = "generator_train.pt"
"""The resumable training state inside ``checkpoint_dir``."""
CHECKPOINT_FORMAT: Final = "pmmtalk-generator-train"
CHECKPOINT_VERSION: Final = 1

JAW_OPEN_INDEX: Final = BLENDSHAPE_NAMES.index("jawOpen")

MOUTH_ROWS: Final = (0.5, 0.875)
"""The mouth box's rows as fractions of the image height: the generated (lower) half, less the
bottom edge, where the chin and background sit."""
MOUTH_COLS: Final = (0.25, 0.75)
"""The mouth box's columns as fractions of the image width."""
_LUMA_RGB: Final = (0.299, 0.587, 0.114)  # ITU-R BT.601
_EVAL_STREAM: Final = 1 << 20
"""Seeds the evaluation identities apart from the training pool's (seed, 0) stream."""

# Settings that change which frames and renders a step sees: resuming with other values would
# not continue the same run.
_DATA_FIELDS: Final = (
    "frames_per_batch",
    "identities",
    "references_per_utterance",
    "neutral_reference_prob",
    "seed",
    "max_utterances",
)


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """How to train the generator on rendered faces."""

    epochs: int = 20
    """Passes over every training frame (each epoch re-renders with new identity draws)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (resumed steps included); None: no cap."""
    frames_per_batch: int = 128
    """Frames per optimizer step, drawn at random across the whole split."""
    lr: float = 1e-3
    """Adam learning rate."""
    identities: int = 256
    """Random faces drawn once from ``seed``; every epoch each utterance gets one of them."""
    references_per_utterance: int = 4
    """Reference pictures rendered per utterance and epoch; each frame uses one at random."""
    neutral_reference_prob: float = 0.25
    """Chance that a reference has all coefficients zero (a closed, neutral mouth, as most
    photos show); otherwise it copies a random training frame's coefficients."""
    l1_weight: float = 1.0
    """Weight of the mean absolute error over the whole image (pixel values in [0, 1])."""
    lower_half_weight: float = 4.0
    """Extra weight of the mean absolute error over the lower half: the half the generator must
    synthesise from speech, where the mouth is, and only a small part of the image."""
    seed: int = 0
    """Seeds identities, renders and frame order; a resumed run repeats the same batches."""
    threads: int | None = None
    """torch CPU threads while training; None leaves torch's setting."""
    checkpoint_every_steps: int = 500
    """Write the resumable state this often (and at the end) when a checkpoint_dir is given."""
    log_every_steps: int = 50
    """Average the loss over this many steps for the log and the report's loss history."""
    max_utterances: int | None = None
    """Use only the first N training utterances (quick runs); None: all of them."""

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "frames_per_batch": self.frames_per_batch,
            "identities": self.identities,
            "references_per_utterance": self.references_per_utterance,
            "checkpoint_every_steps": self.checkpoint_every_steps,
            "log_every_steps": self.log_every_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"GeneratorTrainConfig.{name} must be >= 1, got {value}")
        for name, optional in (
            ("max_steps", self.max_steps),
            ("threads", self.threads),
            ("max_utterances", self.max_utterances),
        ):
            if optional is not None and optional < 1:
                raise ValueError(
                    f"GeneratorTrainConfig.{name} must be >= 1 or None, got {optional}"
                )
        if not 0.0 <= self.neutral_reference_prob <= 1.0:
            raise ValueError(
                f"neutral_reference_prob must be in [0, 1], got {self.neutral_reference_prob}"
            )
        if self.lr <= 0 or self.l1_weight < 0 or self.lower_half_weight < 0:
            raise ValueError("lr must be > 0 and the loss weights >= 0")
        if self.l1_weight + self.lower_half_weight == 0:
            raise ValueError("at least one of l1_weight and lower_half_weight must be > 0")


@dataclass(frozen=True)
class GeneratorReport:
    """What a `train_generator` call did."""

    steps: int
    """Optimizer steps in total, including those of a resumed checkpoint."""
    resumed_from_step: int
    """0 for a fresh run."""
    epochs: int
    """Epochs completed in total."""
    train_frames: int
    """Frames in the cached training split."""
    loss_history: tuple[tuple[int, float], ...]
    """(step, mean loss over the preceding ``log_every_steps`` steps), this call's steps only."""
    first_loss: float
    """Mean loss of this call's first logged window; NaN when no step ran."""
    final_loss: float
    """Mean loss of this call's last logged window; NaN when no step ran."""
    train_frames_per_s: float
    """Frames through forward, backward and the optimizer per second of training-loop time."""
    render_frames_per_s: float
    """Frames (targets and references) the renderer drew per second."""
    wall_s: float
    """Seconds of the whole call: loading, mel, rendering, training, checkpoints."""
    checkpoint: Path | None
    """The resumable state written at the end, if a checkpoint_dir was given."""


@dataclass(frozen=True)
class GeneratorEval:
    """The generator on one split, against renders of the ground-truth coefficients.

    Pixel errors are mean absolute errors of RGB values in [0, 1]. An opening correlation is
    Pearson's r, per utterance and then averaged, between the jawOpen target and the dark mouth
    interior's area in the generated frames (`mouth_darkening`); an utterance where either side
    does not vary counts 0.
    """

    split: str
    utterances: int
    frames: int
    rendered_mouth_l1: float
    """Mouth-box error of frames generated from rendered references of held-out identities."""
    copy_reference_mouth_l1: float
    """The same error for the reference itself, repeated: what a generator that ignores the
    speech would score."""
    rendered_upper_l1: float
    """Upper-half error of the same frames: whether the identity comes through."""
    rendered_open_corr: float
    """Opening agreement of the frames generated from rendered references."""
    ground_truth_open_corr: float
    """Opening agreement of the rendered ground truth itself: the ceiling of the measure."""
    photo_open_corr: float
    """Opening agreement of frames generated from the real photo reference."""
    photo_upper_l1: float
    """Upper-half error between the photo-driven frames and the photo: whether the photo's
    identity comes through."""
    photo_mouth_std: float
    """Standard deviation over frames of the photo-driven frames' mouth-box pixels, averaged
    over pixels: near 0 means the mouth does not move with a photo reference."""

    def to_dict(self) -> dict[str, str | int | float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Split:
    """One corpus split in memory, frame-indexed.

    ``mel`` is every utterance's log-mel, each padded with silence so that every frame's window
    lies inside it; frame n's window is ``mel[:, window_start[n] : window_start[n] + steps]``.
    """

    ids: tuple[str, ...]
    mel: Tensor  # (num_mels, total mel frames incl. padding), float32
    window_start: Tensor  # (N,) int64
    targets: np.ndarray  # (N, 32) float32
    offsets: np.ndarray  # (U + 1,) int64: utterance u's frames are offsets[u]:offsets[u + 1]
    mel_steps: int

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    def windows(self, frames: Tensor) -> Tensor:
        """Mel windows of frames (B,) int64 -> (B, 1, num_mels, mel_steps)."""
        index = self.window_start[frames][:, None] + torch.arange(self.mel_steps)  # (B, steps)
        picked = self.mel[:, index]  # (num_mels, B, steps)
        return picked.permute(1, 0, 2).unsqueeze(1)


def train_generator(
    model: PMMTalk,
    corpus_dir: Path,
    cfg: GeneratorTrainConfig,
    *,
    checkpoint_dir: Path | None,
    progress: bool = True,
    resume: bool = True,
) -> GeneratorReport:
    """Train ``model.generator`` (only) in place on rendered faces of the corpus's train split.

    Every frame's target is the renderer's face for its ground-truth coefficients; the input is
    its mel window plus a reference render of the same identity with other coefficients, fed
    through `Wav2Lip.reference_input` as at inference. Faces are in the generator's channel
    order (``model.cfg.wav2lip.channel_order``) at ``model.cfg.wav2lip.img_size`` pixels.

    Args:
        model: the network; its generator trains on the generator's device. Freezing
            (`PMMTalk.freeze_pretrained`) is undone for the generator while training and restored
            afterwards, as are the modules' train/eval modes.
        corpus_dir: a corpus directory (`models.corpus.manifest` layout).
        cfg: the training settings.
        checkpoint_dir: where the resumable state (generator, optimizer, step) is written every
            ``cfg.checkpoint_every_steps`` steps and at the end; None writes nothing.
        progress: show a progress bar.
        resume: continue from ``checkpoint_dir``'s state when there is one.

    Returns:
        The run's report; the trained weights are in ``model.generator``.

    Raises:
        FileNotFoundError: no manifest or a missing corpus file.
        ValueError: a bad corpus, or a checkpoint for another generator or corpus.
    """
    started = time.perf_counter()
    generator = model.generator
    size = model.cfg.wav2lip.img_size
    bgr = model.cfg.wav2lip.channel_order == "bgr"

    data = _load_split(model, Path(corpus_dir), "train", cfg.max_utterances)
    batch = cfg.frames_per_batch
    if data.num_frames < batch:
        logger.warning(
            "the train split has %d frames, fewer than frames_per_batch=%d; using %d",
            data.num_frames,
            batch,
            data.num_frames,
        )
        batch = data.num_frames
    steps_per_epoch = data.num_frames // batch  # the last partial batch of an epoch is dropped
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = torch.optim.Adam(generator.parameters(), lr=cfg.lr)
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    step = 0
    if path is not None and resume and path.is_file():
        step = _load_state(path, model, optimizer, cfg, data.num_frames)
        logger.info("resuming generator training from step %d (%s)", step, path)
    resumed_from = step

    pool = [
        FaceIdentity.random(rng)
        for rng in np.random.default_rng([cfg.seed, 0]).spawn(cfg.identities)
    ]
    history: list[tuple[int, float]] = []
    window_losses: list[float] = []
    train_s = render_s = 0.0
    trained_frames = rendered_frames = 0

    with (
        _torch_threads(cfg.threads),
        _training_generator(model),
        tqdm(
            total=total_steps, initial=step, disable=not progress, desc="generator", unit="step"
        ) as bar,
    ):
        while step < total_steps:
            epoch = step // steps_per_epoch
            # One generator per epoch, seeded by (seed, epoch + 1): a resumed run redraws the
            # same renders and order, then skips the batches already done.
            rng = np.random.default_rng([cfg.seed, epoch + 1])
            tick = time.perf_counter()
            targets, references, ref_of_frame = _render_epoch(data, pool, rng, cfg, size)
            render_s += time.perf_counter() - tick
            rendered_frames += len(targets) + len(references)
            if bgr:
                targets, references = targets.flip(1), references.flip(1)
            order = torch.from_numpy(rng.permutation(data.num_frames))

            tick = time.perf_counter()
            first = step - epoch * steps_per_epoch
            last = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            for index in range(first, last):
                frames = order[index * batch : (index + 1) * batch]
                loss = _train_step(
                    model, optimizer, data, frames, targets, references[ref_of_frame[frames]], cfg
                )
                step += 1
                trained_frames += len(frames)
                window_losses.append(loss)
                bar.update(1)
                if len(window_losses) == cfg.log_every_steps or step == total_steps:
                    mean = sum(window_losses) / len(window_losses)
                    history.append((step, mean))
                    window_losses.clear()
                    bar.set_postfix(loss=f"{mean:.4f}")
                    logger.info("generator step %d/%d loss %.5f", step, total_steps, mean)
                if path is not None and step % cfg.checkpoint_every_steps == 0:
                    _save_state(path, model, optimizer, cfg, step, data.num_frames)
            train_s += time.perf_counter() - tick

    if path is not None:
        _save_state(path, model, optimizer, cfg, step, data.num_frames)
    return GeneratorReport(
        steps=step,
        resumed_from_step=resumed_from,
        epochs=step // steps_per_epoch,
        train_frames=data.num_frames,
        loss_history=tuple(history),
        first_loss=history[0][1] if history else math.nan,
        final_loss=history[-1][1] if history else math.nan,
        train_frames_per_s=trained_frames / train_s if train_s > 0 else 0.0,
        render_frames_per_s=rendered_frames / render_s if render_s > 0 else 0.0,
        wall_s=time.perf_counter() - started,
        checkpoint=path,
    )


@torch.inference_mode()
def evaluate_generator(
    model: PMMTalk,
    corpus_dir: Path,
    split: str,
    reference: np.ndarray | None,
    *,
    seed: int = 0,
    max_utterances: int | None = None,
) -> GeneratorEval:
    """Score ``model.generator`` on a split through the inference path (`PMMTalk.encode_face`,
    `PMMTalk.generate_video`), with two kinds of reference face.

    Rendered: each utterance gets a random identity drawn from ``seed`` (a stream apart from the
    training pool's) with a neutral mouth as its reference; the generated frames are compared
    with that identity's renders of the ground truth. Photo: ``reference`` (an RGB uint8 photo
    of shape (H, W, 3); the face is found and cropped by `pmmtalk.face.reference_face`), or the
    packaged default face (scikit-image's astronaut) when None. No ground truth exists for a
    real face, so it gets only the opening agreement, the identity error and the motion.

    Raises:
        ValueError: unknown split, or a bad corpus.
        pmmtalk.errors.FaceError: no face found in ``reference``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    data = _load_split(model, Path(corpus_dir), split, max_utterances)
    size = model.cfg.wav2lip.img_size
    device = next(model.generator.parameters()).device
    bgr = model.cfg.wav2lip.channel_order == "bgr"
    photo = torch.from_numpy(reference_face(reference, size))  # (3, S, S) RGB
    neutral = np.zeros(NUM_BLENDSHAPES, np.float32)
    mouth = _mouth_box(size)
    upper = (slice(None), slice(None), slice(0, size // 2), slice(None))

    sums = dict.fromkeys(("mouth", "copy", "upper", "photo_upper"), 0.0)
    correlations: dict[str, list[float]] = {"rendered": [], "truth": [], "photo": []}
    photo_mouths: list[Tensor] = []
    was_training = model.generator.training
    model.generator.eval()
    try:
        photo_identity = model.encode_face(photo[None].to(device))
        identity_rngs = np.random.default_rng([seed, _EVAL_STREAM]).spawn(len(data.ids))
        for u, rng in enumerate(identity_rngs):
            lo, hi = int(data.offsets[u]), int(data.offsets[u + 1])
            face = FaceIdentity.random(rng)
            ref = _to_chw(draw_face(neutral, face, size)).float() / 255  # (3, S, S)
            truth = _to_chw(draw_faces(data.targets[lo:hi], face, size)).float() / 255
            windows = data.windows(torch.arange(lo, hi)).unsqueeze(0).to(device)
            video = model.generate_video(windows, model.encode_face(ref[None].to(device)))[0]
            from_photo = model.generate_video(windows, photo_identity)[0]  # (T, 3, S, S)
            if bgr:  # the generator speaks its weights' channel order; the metrics want RGB
                video, from_photo = video.flip(1), from_photo.flip(1)
            video, from_photo = video.float().cpu(), from_photo.float().cpu()
            copy = ref.expand_as(truth)

            sums["mouth"] += _abs_sum(video[mouth], truth[mouth])
            sums["copy"] += _abs_sum(copy[mouth], truth[mouth])
            sums["upper"] += _abs_sum(video[upper], truth[upper])
            sums["photo_upper"] += _abs_sum(from_photo[upper], photo.expand_as(from_photo)[upper])
            jaw = torch.from_numpy(data.targets[lo:hi, JAW_OPEN_INDEX]).double()
            correlations["rendered"].append(_pearson(jaw, mouth_darkening(video, ref)))
            correlations["truth"].append(_pearson(jaw, mouth_darkening(truth, ref)))
            correlations["photo"].append(_pearson(jaw, mouth_darkening(from_photo, photo)))
            photo_mouths.append(from_photo[mouth])
    finally:
        model.generator.train(was_training)

    frames = data.num_frames
    mouth_values = frames * 3 * (mouth[2].stop - mouth[2].start) * (mouth[3].stop - mouth[3].start)
    upper_values = frames * 3 * (size // 2) * size
    return GeneratorEval(
        split=split,
        utterances=len(data.ids),
        frames=frames,
        rendered_mouth_l1=sums["mouth"] / mouth_values,
        copy_reference_mouth_l1=sums["copy"] / mouth_values,
        rendered_upper_l1=sums["upper"] / upper_values,
        rendered_open_corr=float(np.mean(correlations["rendered"])),
        ground_truth_open_corr=float(np.mean(correlations["truth"])),
        photo_open_corr=float(np.mean(correlations["photo"])),
        photo_upper_l1=sums["photo_upper"] / upper_values,
        photo_mouth_std=float(torch.cat(photo_mouths).std(dim=0).mean()),
    )


# --- data -----------------------------------------------------------------------------------


def _load_split(model: PMMTalk, corpus_dir: Path, split: str, max_utterances: int | None) -> _Split:
    """Read a split's audio and targets; compute every utterance's mel with ``model.mel``."""
    manifest = corpus_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no corpus manifest at {manifest}; pass a corpus directory (see "
            "models/corpus/manifest.py for the layout)"
        )
    rows = [row for row in read_manifest(manifest) if row.split == split]
    if max_utterances is not None:
        rows = rows[:max_utterances]
    if not rows:
        raise ValueError(f"{manifest} has no {split!r} utterances; check the corpus")
    steps = model.cfg.wav2lip.mel_steps
    mel_device = model.mel.mel_basis.device
    mels: list[Tensor] = []
    starts: list[Tensor] = []
    targets: list[np.ndarray] = []
    offsets = [0]
    position = 0
    with torch.no_grad():
        for row in rows:
            wave, coefficients = _read_utterance(corpus_dir, row)
            mel = model.mel(torch.from_numpy(wave)[None].to(mel_device))[0].cpu()  # (80, M)
            first = mel_window_starts(row.num_frames, model.cfg.fps, steps)  # (T,)
            # Silence on both sides, exactly as much as the outermost windows reach past the
            # clip: reading it equals `mel_windows`' silence fill outside [0, M).
            left = max(0, -int(first.min()))
            right = max(0, int(first.max()) + steps - mel.shape[1])
            mels.append(F.pad(mel, (left, right), value=SILENCE_LEVEL))
            starts.append(first + position + left)
            position += mels[-1].shape[1]
            targets.append(coefficients)
            offsets.append(offsets[-1] + row.num_frames)
    logger.info("loaded %d %s utterances, %d frames", len(rows), split, offsets[-1])
    return _Split(
        ids=tuple(row.id for row in rows),
        mel=torch.cat(mels, dim=1),
        window_start=torch.cat(starts),
        targets=np.concatenate(targets).astype(np.float32, copy=False),
        offsets=np.asarray(offsets, dtype=np.int64),
        mel_steps=steps,
    )


def _read_utterance(corpus_dir: Path, row: Utterance) -> tuple[np.ndarray, np.ndarray]:
    """(samples (S,) float32 at 16 kHz, targets (T, 32) float32), checked against the row."""
    wave, rate = soundfile.read(corpus_dir / row.audio, dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE_HZ or wave.ndim != 1:
        raise ValueError(
            f"{row.audio}: expected 16 kHz mono, got {rate} Hz with shape {wave.shape}; "
            "regenerate the corpus"
        )
    coefficients = np.load(corpus_dir / row.targets).astype(np.float32, copy=False)
    if coefficients.shape != (row.num_frames, NUM_BLENDSHAPES):
        raise ValueError(
            f"{row.targets}: expected shape ({row.num_frames}, {NUM_BLENDSHAPES}) as the "
            f"manifest says, got {coefficients.shape}; regenerate the corpus"
        )
    return wave, coefficients


def _render_epoch(
    data: _Split,
    pool: Sequence[FaceIdentity],
    rng: np.random.Generator,
    cfg: GeneratorTrainConfig,
    size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw one epoch's faces, RGB.

    Returns:
        targets (N, 3, S, S) uint8, one per frame; references (U * K, 3, S, S) uint8, K per
        utterance in the utterance's identity; and (N,) int64, each frame's reference row.
    """
    count = cfg.references_per_utterance
    targets, references, ref_of_frame = [], [], []
    for u in range(len(data.ids)):
        lo, hi = int(data.offsets[u]), int(data.offsets[u + 1])
        face = pool[int(rng.integers(len(pool)))]
        # Another random frame of the split: the same person with another mouth pose.
        poses = data.targets[rng.integers(data.num_frames, size=count)]  # (K, 32)
        poses[rng.random(count) < cfg.neutral_reference_prob] = 0.0
        # One call per utterance: the renderer draws an identity's static layer once per call.
        faces = _to_chw(draw_faces(np.concatenate([data.targets[lo:hi], poses]), face, size))
        targets.append(faces[: hi - lo])
        references.append(faces[hi - lo :])
        ref_of_frame.append(u * count + rng.integers(count, size=hi - lo))
    return (
        torch.cat(targets),
        torch.cat(references),
        torch.from_numpy(np.concatenate(ref_of_frame)),
    )


def _to_chw(faces: np.ndarray) -> Tensor:
    """(..., S, S, 3) uint8 images -> (..., 3, S, S) uint8 tensor, contiguous."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(faces, -1, -3)))


# --- optimisation ---------------------------------------------------------------------------


def _train_step(
    model: PMMTalk,
    optimizer: torch.optim.Optimizer,
    data: _Split,
    frames: Tensor,
    targets: Tensor,
    references: Tensor,
    cfg: GeneratorTrainConfig,
) -> float:
    """One Adam step on frames (B,) with references (B, 3, S, S) uint8; returns the loss."""
    generator = model.generator
    device = next(generator.parameters()).device
    windows = data.windows(frames).to(device)  # (B, 1, 80, steps)
    target = targets[frames].to(device, torch.float32) / 255  # (B, 3, S, S)
    face = references.to(device, torch.float32) / 255  # (B, 3, S, S)
    predicted = generator(windows.unsqueeze(1), face)[:, 0]  # (B, 3, S, S)
    loss = generator_loss(predicted, target, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def generator_loss(predicted: Tensor, target: Tensor, cfg: GeneratorTrainConfig) -> Tensor:
    """``l1_weight * L1(image) + lower_half_weight * L1(lower half)``.

    Args:
        predicted, target: (B, 3, S, S) images in [0, 1].

    Returns:
        A scalar.
    """
    error = (predicted - target).abs()  # (B, 3, S, S)
    lower = error[:, :, error.shape[2] // 2 :]
    return cfg.l1_weight * error.mean() + cfg.lower_half_weight * lower.mean()


@contextmanager
def _training_generator(model: PMMTalk) -> Iterator[None]:
    """Make only the generator trainable and in train mode; restore everything afterwards."""
    generator = model.generator
    flags = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(True)
    generator.train()
    try:
        yield
    finally:
        for param, flag in zip(generator.parameters(), flags, strict=True):
            param.requires_grad_(flag)
        model.train(model.training)  # re-applies the model's mode and keeps frozen parts in eval


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- checkpoints ----------------------------------------------------------------------------


def _save_state(
    path: Path,
    model: PMMTalk,
    optimizer: torch.optim.Optimizer,
    cfg: GeneratorTrainConfig,
    step: int,
    train_frames: int,
) -> None:
    """Write the resumable state atomically, so an interrupted write never loses the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "train_frames": train_frames,
        "wav2lip_config": dataclasses.asdict(model.cfg.wav2lip),
        "train_config": dataclasses.asdict(cfg),
        "generator": model.generator.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    logger.debug("saved generator training state at step %d to %s", step, path)


def _load_state(
    path: Path,
    model: PMMTalk,
    optimizer: torch.optim.Optimizer,
    cfg: GeneratorTrainConfig,
    train_frames: int,
) -> int:
    """Load a state written by `_save_state` into model and optimizer; returns its step."""
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises assorted types on foreign or broken files
        raise ValueError(
            f"{path} is not a readable generator training state ({err}); delete it to start over"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a generator training state; delete it to start over")
    if state["wav2lip_config"] != dataclasses.asdict(model.cfg.wav2lip):
        raise ValueError(
            f"{path} was written for another generator architecture; use another "
            "checkpoint_dir or delete it to start over"
        )
    if state["train_frames"] != train_frames:
        raise ValueError(
            f"{path} was written for a training split of {state['train_frames']} frames, this "
            f"corpus has {train_frames}; use another checkpoint_dir or delete it"
        )
    saved = state["train_config"]
    changed = [name for name in _DATA_FIELDS if saved.get(name) != getattr(cfg, name)]
    if changed:
        logger.warning(
            "resuming with other %s than %s was written with: the run continues, but not as "
            "the same batches",
            ", ".join(changed),
            path,
        )
    device = next(model.generator.parameters()).device
    model.generator.load_state_dict(state["generator"])
    optimizer.load_state_dict(state["optimizer"])
    for param_state in optimizer.state.values():  # Adam's moments follow the weights' device
        for key, value in param_state.items():
            if isinstance(value, Tensor) and key != "step":
                param_state[key] = value.to(device)
    return int(state["step"])


# --- metrics --------------------------------------------------------------------------------


def _mouth_box(size: int) -> tuple[slice, slice, slice, slice]:
    """Index of the mouth box in (N, 3, S, S) images."""
    rows = slice(round(MOUTH_ROWS[0] * size), round(MOUTH_ROWS[1] * size))
    cols = slice(round(MOUTH_COLS[0] * size), round(MOUTH_COLS[1] * size))
    return (slice(None), slice(None), rows, cols)


def _luma(images: Tensor) -> Tensor:
    """(N, 3, H, W) RGB -> (N, H, W) luminance."""
    weights = torch.tensor(_LUMA_RGB, dtype=images.dtype)
    return torch.einsum("nchw,c->nhw", images, weights)


def mouth_darkening(frames: Tensor, reference: Tensor) -> Tensor:
    """How much darker each frame's mouth box is than the reference's: the open mouth's area.

    An opening mouth replaces lips and skin with the dark mouth interior; teeth and the lowered
    chin brighten pixels, which this ignores. Differences are divided by the reference's median
    mouth-box luminance, so pale and dark faces (and photos) score alike.

    Args:
        frames: (N, 3, S, S) RGB in [0, 1].
        reference: (3, S, S) RGB in [0, 1], the face the frames were generated from.

    Returns:
        (N,) float64: the sum over mouth-box pixels of the relative darkening (a soft area in
        pixels, which moves more smoothly with the opening than a thresholded count at 24 px).
    """
    _, _, rows, cols = _mouth_box(frames.shape[-1])
    luma = _luma(frames)[:, rows, cols].double()  # (N, h, w)
    base = _luma(reference[None])[0, rows, cols].double()  # (h, w)
    scale = base.median().clamp(min=1e-3)
    return ((base - luma) / scale).clamp(min=0).flatten(1).sum(dim=1)


def _pearson(x: Tensor, y: Tensor) -> float:
    """Pearson's r of two (N,) series; 0.0 when either is constant."""
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 1e-12 else 0.0


def _abs_sum(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().sum())
