"""Pretraining the lite preset's psi_AE and text branch as a CTC phoneme recogniser.

In the paper the text branch is a frozen, pretrained speech recogniser reading the audio branch's
CNN latents. No pretrained weights can be downloaded for the lite preset, so its psi_AE
(``model.speech.wav2vec2.feature_extractor``) and text branch (``model.text``) are trained here
with CTC on the generated corpus's phone tables, over `models.corpus.phones.VOCABULARY` (blank at
index 0). The caller then freezes both (`PMMTalk.freeze_pretrained`) and trains the rest.

Label sequences: the utterance's phones in order, ``sil`` kept as a token, but silences shorter
than ``min_silence_s`` dropped, then consecutive duplicates merged. Silence is kept because the
text posteriors feed the face decoder, where "nothing is being said" means "close the mouth";
short silences are dropped because the synthesis engines mark word-boundary gaps that are not
audible, and asking CTC to emit a token for them only teaches it to guess. Duplicates are merged
because two identical phones in a row (across a word boundary or a dropped gap) sound as one
longer phone.

Phone error rate (`phone_error_rate`) scores the same label sequences with ``sil`` removed from
reference and hypothesis alike: how many pauses an engine marks says nothing about recognition.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein
from torch import Tensor, nn
from tqdm import tqdm

from models.blendshapes import SAMPLE_RATE_HZ
from models.corpus.manifest import (
    MANIFEST_NAME,
    PhoneSegment,
    Split,
    Utterance,
    read_manifest,
    read_phone_table,
)
from models.corpus.phones import BLANK, LANGUAGES, PHONE_INDEX, SILENCE, VOCABULARY, Language
from models.pmmtalk import PMMTalk

logger = logging.getLogger(__name__)

CHECKPOINT_NAME: Final = "recognizer.pt"
"""File in ``checkpoint_dir`` holding the resumable training state."""
CHECKPOINT_VERSION: Final = 1
BLANK_INDEX: Final = PHONE_INDEX[BLANK]
ALL: Final = "all"
"""Key of the PER over every scored language."""
HELD_OUT_PREFIX: Final = "held_out/"
"""Prefix of the PER keys over held-out voices (manifest rows with ``style == -1``)."""
DEFAULT_MIN_SILENCE_S: Final = 0.08
# Fields that may change between a run and its resumption: neither alters the saved state's
# meaning (a changed epoch count only stretches or shortens the schedule's tail).
_RESUMABLE_CHANGES: Final = frozenset({"epochs", "threads"})


@dataclass(frozen=True)
class RecognizerConfig:
    """How the recogniser is trained. Sizes of the network come from the model's own config."""

    epochs: int = 40
    batch_seconds: float = 40.0
    """Padded audio per batch, in seconds (batch items x longest item): bounds step memory."""
    batch_size: int = 16
    """Most utterances per batch."""
    lr: float = 1e-3
    """Peak AdamW learning rate, reached after ``warmup_steps`` and then cosine-decayed to 0."""
    weight_decay: float = 0.01
    warmup_steps: int = 300
    """Optimizer steps of linear learning-rate warm-up."""
    max_clip_seconds: float = 20.0
    """Longer training utterances are skipped (and counted): they would dominate batch memory."""
    min_silence_s: float = DEFAULT_MIN_SILENCE_S
    """Silences shorter than this (seconds) are not labelled; see the module docstring."""
    grad_clip: float = 5.0
    """Maximum global gradient norm."""
    alignment_weight: float = 0.0
    """Weight of a frame-wise cross-entropy on the phone tables' exact timings, added to CTC.

    CTC from scratch sits for a long time on its blank plateau; the corpus knows where every
    phone is, and telling the network so gets it off the plateau in a fraction of the steps."""
    ctc_weight: float = 1.0
    """Weight of the CTC loss. 0 with ``alignment_weight > 0`` trains a frame-wise phone
    classifier (the hybrid-recogniser way): its posteriors name a phone at every frame instead of
    mostly blank, which is what the face decoder reads. Greedy decoding and PER work unchanged."""
    seed: int = 0
    threads: int = 2
    """torch.set_num_threads during training (restored afterwards)."""

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0, got {getattr(self, name)}"
            for name in (
                "epochs",
                "batch_seconds",
                "batch_size",
                "lr",
                "max_clip_seconds",
                "grad_clip",
                "threads",
            )
            if not getattr(self, name) > 0
        ]
        problems += [
            f"{name} must be >= 0, got {getattr(self, name)}"
            for name in (
                "weight_decay",
                "warmup_steps",
                "min_silence_s",
                "alignment_weight",
                "ctc_weight",
            )
            if not getattr(self, name) >= 0
        ]
        if not self.ctc_weight + self.alignment_weight > 0:
            problems.append("ctc_weight + alignment_weight must be > 0: nothing would be learned")
        if problems:
            raise ValueError("invalid RecognizerConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class EpochStats:
    """What one training epoch did."""

    epoch: int  # 1-based
    loss: float  # mean training loss: weighted CTC (per label, CTCLoss's "mean") + frame CE
    seconds: float  # wall-clock time of the epoch
    lr: float  # learning rate after the epoch's last step


@dataclass(frozen=True)
class RecognizerReport:
    """What `train_recognizer` did, the resumed epochs' statistics included."""

    epochs: tuple[EpochStats, ...]
    resumed_from: int  # epochs already done by the checkpoint this run resumed from (0: fresh)
    utterances: int  # training utterances used
    skipped: int  # training utterances skipped (too long, too short, or no labels fit)
    batches_per_epoch: int
    parameters: int  # trained parameters (psi_AE + text branch)


@dataclass(frozen=True)
class _Item:
    """One utterance ready for batching: where its audio is and its CTC labels."""

    utterance: Utterance
    audio_path: Path
    labels: tuple[str, ...]
    segments: tuple[PhoneSegment, ...] = ()


# --- labels and scoring ---------------------------------------------------------------------


def ctc_labels(
    segments: Sequence[PhoneSegment], min_silence_s: float = DEFAULT_MIN_SILENCE_S
) -> list[str]:
    """A phone table -> the CTC label sequence (``sil`` kept if at least ``min_silence_s`` long).

    Consecutive duplicates are merged after short silences are dropped; see the module docstring.
    Raises KeyError naming an unknown phone.
    """
    labels: list[str] = []
    for segment in segments:
        if segment.phone not in PHONE_INDEX or segment.phone == BLANK:
            raise KeyError(
                f"unknown phone {segment.phone!r}; phone tables must use "
                f"models.corpus.phones.VOCABULARY (without {BLANK})"
            )
        if segment.phone == SILENCE and segment.end_s - segment.start_s < min_silence_s:
            continue
        if not labels or labels[-1] != segment.phone:
            labels.append(segment.phone)
    return labels


def greedy_ctc_decode(ids: Sequence[int] | Tensor) -> list[str]:
    """Best-path CTC decoding of per-frame argmax ids (F,): merge repeats, then drop blanks."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    phones: list[str] = []
    previous = None
    for index in values:
        if index != previous and index != BLANK_INDEX:
            phones.append(VOCABULARY[index])
        previous = index
    return phones


def phone_edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two phone sequences (substitutions, insertions, deletions)."""
    return int(Levenshtein.distance(list(reference), list(hypothesis)))


def summarize_phone_errors(
    scored: Iterable[tuple[str, bool, Sequence[str], Sequence[str]]],
    languages: Sequence[str] = LANGUAGES,
) -> dict[str, float]:
    """(language, held_out, reference, hypothesis) per utterance -> PER per group.

    PER = total edits / total reference phones, over ``<language>``, ``all``, and the same three
    over held-out voices only (``held_out/<language>``, ``held_out/all``). A group with no
    reference phones is NaN, so the keys never depend on the data.
    """
    groups = [*languages, ALL]
    edits = dict.fromkeys([*groups, *(HELD_OUT_PREFIX + g for g in groups)], 0)
    phones = dict.fromkeys(edits, 0)
    for language, held_out, reference, hypothesis in scored:
        keys = [language, ALL]
        if held_out:
            keys += [HELD_OUT_PREFIX + k for k in keys]
        errors = phone_edits(reference, hypothesis)
        for key in keys:
            edits[key] += errors
            phones[key] += len(reference)
    return {key: edits[key] / phones[key] if phones[key] else math.nan for key in edits}


# --- corpus reading ---------------------------------------------------------------------------


def _read_rows(corpus_dir: Path, split: Split) -> list[Utterance]:
    manifest = corpus_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} not found: {corpus_dir} is not a generated corpus directory"
        )
    return [row for row in read_manifest(manifest) if row.split == split]


def _load_items(rows: Iterable[Utterance], corpus_dir: Path, min_silence_s: float) -> list[_Item]:
    items = []
    for row in rows:
        table = corpus_dir / row.phones
        try:
            segments = read_phone_table(table)
            labels = ctc_labels(segments, min_silence_s)
        except KeyError as exc:
            raise ValueError(f"{table}: {exc.args[0]}") from exc
        items.append(_Item(row, corpus_dir / row.audio, tuple(labels), tuple(segments)))
    return items


def _read_wave(path: Path) -> np.ndarray:
    """A corpus WAV -> float32 samples (S,) at 16 kHz."""
    wave, rate = sf.read(path, dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE_HZ or wave.ndim != 1:
        raise ValueError(
            f"{path}: expected {SAMPLE_RATE_HZ} Hz mono audio, got {rate} Hz with shape "
            f"{wave.shape}; regenerate the corpus"
        )
    return np.asarray(wave, dtype=np.float32)


def _make_batches(items: Sequence[_Item], batch_seconds: float, batch_size: int) -> list[list[int]]:
    """Indices of ``items`` grouped by similar length (ties by id, so the grouping is stable)."""
    order = sorted(
        range(len(items)), key=lambda i: (items[i].utterance.num_samples, items[i].utterance.id)
    )
    budget = batch_seconds * SAMPLE_RATE_HZ
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so this item is the longest: the padded batch is items x its length.
        longest = items[index].utterance.num_samples
        if current and ((len(current) + 1) * longest > budget or len(current) >= batch_size):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _collate(items: Sequence[_Item]) -> tuple[Tensor, Tensor]:
    """Read and right-pad with zeros -> waves (B, S_max) float32, lengths (B,) in samples."""
    waves = [_read_wave(item.audio_path) for item in items]
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = torch.from_numpy(wave)
    return batch, lengths


# --- the network pieces ---------------------------------------------------------------------


def latent_lengths(model: PMMTalk, num_samples: Tensor) -> Tensor:
    """Valid CNN latent frames for each clip length in samples (B,) -> (B,), 0 when too short.

    The conv arithmetic of psi_AE, so frames that only see right padding are excluded.
    """
    lengths = num_samples.clone()
    for kernel, stride in zip(
        model.cfg.audio.conv_kernel, model.cfg.audio.conv_stride, strict=True
    ):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def _ctc_logits(model: PMMTalk, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """waves (B, S) zero-padded, lengths (B,) samples -> logits (B, F, V), frames (B,).

    Padded latents are masked out of the text branch's attention, so an utterance's logits do
    not depend on what it was batched with (inference runs one clip at a time, unpadded).
    """
    speech = model.speech
    if speech.cfg.normalize_input:
        # Per clip over its own samples: extract_latents would include the padding.
        valid = torch.arange(waves.shape[1], device=waves.device)[None] < lengths[:, None]
        count = lengths[:, None].to(waves.dtype)
        mean = (waves * valid).sum(-1, keepdim=True) / count
        var = (((waves - mean) * valid) ** 2).sum(-1, keepdim=True) / count
        waves = (waves - mean) / torch.sqrt(var + 1e-7) * valid
        latents = speech.wav2vec2.feature_extractor(waves).transpose(1, 2)  # (B, F, C)
    else:
        latents = speech.extract_latents(waves)  # (B, F, C)
    frames = latent_lengths(model, lengths).clamp(max=latents.shape[1])
    mask = torch.arange(latents.shape[1], device=latents.device)[None] < frames[:, None]  # (B, F)
    text = model.text
    hidden, _ = text.feature_projection(latents)  # (B, F, hidden)
    hidden = text.encoder(hidden, attention_mask=mask).last_hidden_state  # (B, F, hidden)
    return text.lm_head(hidden), frames  # (B, F, V), (B,)


def _trained_parts(model: PMMTalk) -> tuple[nn.Module, nn.Module]:
    return model.speech.wav2vec2.feature_extractor, model.text


def _check_model(model: PMMTalk) -> None:
    if model.cfg.text.vocab_size != len(VOCABULARY):
        raise ValueError(
            f"the text branch has vocab_size={model.cfg.text.vocab_size}, but the phone "
            f"recogniser needs len(models.corpus.phones.VOCABULARY) = {len(VOCABULARY)}; "
            "use a preset whose text branch is a phone recogniser (lite)"
        )


# --- training -------------------------------------------------------------------------------


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    progress = min(1.0, step / max(1, total_steps))
    return warmup * 0.5 * (1.0 + math.cos(math.pi * progress))


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _load_state(path: Path, cfg: RecognizerConfig) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is not a recogniser checkpoint of version {CHECKPOINT_VERSION}; "
            "delete it or pick another checkpoint_dir"
        )
    # Fields added after a checkpoint was written take their defaults, which reproduce the
    # behaviour it was trained with.
    saved = {**dataclasses.asdict(RecognizerConfig()), **state["config"]}
    changed = [
        f"{name}: checkpoint {saved.get(name)!r}, now {value!r}"
        for name, value in dataclasses.asdict(cfg).items()
        if name not in _RESUMABLE_CHANGES and saved.get(name) != value
    ]
    if changed:
        raise ValueError(
            f"{path} was written with a different RecognizerConfig ({'; '.join(changed)}); "
            "resume with the same config or use a fresh checkpoint_dir"
        )
    return state


def train_recognizer(
    model: PMMTalk,
    corpus_dir: Path,
    cfg: RecognizerConfig,
    *,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[EpochStats], None] | None = None,
) -> RecognizerReport:
    """Train ``model``'s psi_AE and text branch in place, with CTC on the corpus's train split.

    Only those two parts get gradients; the rest of the model is untouched. With a
    ``checkpoint_dir`` the state (both parts, optimizer, schedule, RNG, epoch) is written to
    ``checkpoint_dir / CHECKPOINT_NAME`` after every epoch and, if already there, training resumes
    from it; an interrupted run resumed with the same config ends bit-identical to an
    uninterrupted one. ``log`` is called after each epoch, after its checkpoint is written. psi_AE
    and the text branch are left in eval mode.
    """
    _check_model(model)
    parts = _trained_parts(model)
    if not all(p.requires_grad for part in parts for p in part.parameters()):
        raise ValueError(
            "psi_AE or the text branch is frozen; train the recogniser before "
            "PMMTalk.freeze_pretrained()"
        )
    rows = _read_rows(Path(corpus_dir), "train")
    if not rows:
        raise ValueError(f"{corpus_dir} has no train-split utterances to train the recogniser on")
    items, skipped = _usable_items(
        _load_items(rows, Path(corpus_dir), cfg.min_silence_s), model, cfg
    )
    if not items:
        raise ValueError(
            f"none of the {len(rows)} train utterances in {corpus_dir} is usable (all longer "
            f"than max_clip_seconds={cfg.max_clip_seconds} or with more labels than frames)"
        )
    batches = _make_batches(items, cfg.batch_seconds, cfg.batch_size)
    total_steps = cfg.epochs * len(batches)
    params = [p for part in parts for p in part.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, cfg.warmup_steps, total_steps)
    )
    ctc = nn.CTCLoss(blank=BLANK_INDEX, reduction="mean", zero_infinity=True)
    device = next(model.parameters()).device
    history: list[EpochStats] = []
    torch.manual_seed(cfg.seed)
    path = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if path is not None and path.is_file():
        state = _load_state(path, cfg)
        parts[0].load_state_dict(state["feature_extractor"])
        parts[1].load_state_dict(state["text"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        history = [EpochStats(**stats) for stats in state["history"]]
        if state["config"]["epochs"] != cfg.epochs:
            logger.warning(
                "resuming a %d-epoch run as a %d-epoch run: the learning-rate schedule is "
                "recomputed for the new length",
                state["config"]["epochs"],
                cfg.epochs,
            )
        logger.info("resuming recogniser training from %s after epoch %d", path, len(history))
    resumed_from = len(history)
    logger.info(
        "recogniser: %d train utterances (%d skipped), %d batches/epoch, %d steps",
        len(items),
        skipped,
        len(batches),
        total_steps,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        for epoch in range(resumed_from + 1, cfg.epochs + 1):
            for part in parts:
                part.train()
            started = time.perf_counter()
            # A fresh generator per epoch keeps the batch order the same after a resume.
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(batches))
            total, count = 0.0, 0
            bar = tqdm(
                order,
                desc=f"recogniser epoch {epoch}/{cfg.epochs}",
                unit="batch",
                disable=not progress,
                leave=False,
            )
            for b in bar:
                batch = [items[i] for i in batches[b]]
                loss = _step(
                    model,
                    batch,
                    ctc,
                    optimizer,
                    params,
                    cfg.grad_clip,
                    device,
                    cfg.alignment_weight,
                    cfg.ctc_weight,
                )
                schedule.step()
                total += loss * len(batch)
                count += len(batch)
                bar.set_postfix(loss=f"{total / count:.3f}")
            bar.close()
            stats = EpochStats(
                epoch=epoch,
                loss=total / count,
                seconds=time.perf_counter() - started,
                lr=float(schedule.get_last_lr()[0]),
            )
            history.append(stats)
            logger.info(
                "recogniser epoch %d/%d: loss %.4f, %.1f s",
                epoch,
                cfg.epochs,
                stats.loss,
                stats.seconds,
            )
            if path is not None:
                _save_state(
                    path,
                    {
                        "version": CHECKPOINT_VERSION,
                        "epoch": epoch,
                        "config": dataclasses.asdict(cfg),
                        "feature_extractor": parts[0].state_dict(),
                        "text": parts[1].state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "rng": torch.get_rng_state(),
                        "history": [dataclasses.asdict(s) for s in history],
                    },
                )
            if log is not None:
                log(stats)
    finally:
        torch.set_num_threads(threads)
        for part in parts:
            part.eval()
    return RecognizerReport(
        epochs=tuple(history),
        resumed_from=resumed_from,
        utterances=len(items),
        skipped=skipped,
        batches_per_epoch=len(batches),
        parameters=sum(p.numel() for p in params),
    )


def _usable_items(
    items: list[_Item], model: PMMTalk, cfg: RecognizerConfig
) -> tuple[list[_Item], int]:
    """Drop utterances that are too long, have no labels, or more labels than CTC frames."""
    max_samples = cfg.max_clip_seconds * SAMPLE_RATE_HZ
    samples = torch.tensor([item.utterance.num_samples for item in items], dtype=torch.long)
    frames = latent_lengths(model, samples).tolist()
    kept = [
        item
        for item, count in zip(items, frames, strict=True)
        if item.utterance.num_samples <= max_samples and 0 < len(item.labels) <= count
    ]
    if len(kept) < len(items):
        logger.warning(
            "skipping %d of %d utterances (longer than %.1f s, no labels, or more labels "
            "than latent frames)",
            len(items) - len(kept),
            len(items),
            cfg.max_clip_seconds,
        )
    return kept, len(items) - len(kept)


def frame_labels(segments: Sequence[PhoneSegment], num_frames: int) -> Tensor:
    """The phone sounding at each latent frame's centre, (num_frames,) vocabulary indices.

    Latent j covers samples [320 j, 320 j + 400), so its centre is (320 j + 200) / 16000 s;
    times no segment covers count as silence.
    """
    centres = (np.arange(num_frames) * 320 + 200) / SAMPLE_RATE_HZ
    labels = np.full(num_frames, PHONE_INDEX[SILENCE], dtype=np.int64)
    for segment in segments:
        inside = (centres >= segment.start_s) & (centres < segment.end_s)
        labels[inside] = PHONE_INDEX[segment.phone]
    return torch.from_numpy(labels)


def _step(
    model: PMMTalk,
    batch: Sequence[_Item],
    ctc: nn.CTCLoss,
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    grad_clip: float,
    device: torch.device,
    alignment_weight: float = 0.0,
    ctc_weight: float = 1.0,
) -> float:
    """One optimizer step on a batch; returns its loss (CTC and frame terms, weighted)."""
    waves, lengths = _collate(batch)
    logits, frames = _ctc_logits(model, waves.to(device), lengths.to(device))
    total = logits.new_zeros(())
    if ctc_weight > 0:
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (F, B, V)
        targets = torch.tensor(
            [PHONE_INDEX[p] for item in batch for p in item.labels],
            dtype=torch.long,
            device=device,
        )
        target_lengths = torch.tensor([len(item.labels) for item in batch], dtype=torch.long)
        total = ctc_weight * ctc(log_probs, targets, frames, target_lengths.to(device))
    if alignment_weight > 0:
        width = logits.shape[1]
        aligned = torch.stack([frame_labels(item.segments, width) for item in batch]).to(device)
        valid = torch.arange(width, device=device)[None] < frames[:, None]  # (B, F)
        frame_loss = F.cross_entropy(logits.float()[valid], aligned[valid])
        total = total + alignment_weight * frame_loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return float(total.detach())


# --- evaluation -----------------------------------------------------------------------------


@torch.inference_mode()
def phone_error_rate(
    model: PMMTalk,
    corpus_dir: Path,
    split: Split = "test",
    languages: Sequence[Language] = LANGUAGES,
    *,
    batch_seconds: float = 80.0,
    min_silence_s: float = DEFAULT_MIN_SILENCE_S,
    progress: bool = False,
) -> dict[str, float]:
    """Greedy-CTC phone error rate of the text branch on ``split`` of ``corpus_dir``.

    Returns PER (total edits / total reference phones, ``sil`` excluded; can exceed 1 with many
    insertions) for each of ``languages``, ``all``, and the same over held-out voices
    (``held_out/en``, ``held_out/zh``, ``held_out/all``; manifest rows with ``style == -1``).
    Groups with no utterances are NaN. Rows of other languages are ignored.
    """
    _check_model(model)
    unknown = set(languages) - set(LANGUAGES)
    if unknown:
        raise ValueError(f"unknown languages {sorted(unknown)}; choose from {list(LANGUAGES)}")
    root = Path(corpus_dir)
    rows = [row for row in _read_rows(root, split) if row.language in languages]
    if not rows:
        raise ValueError(f"{corpus_dir} has no {split}-split utterances in languages {languages}")
    items = _load_items(rows, root, min_silence_s)
    parts = _trained_parts(model)
    modes = [part.training for part in parts]
    for part in parts:
        part.eval()
    device = next(model.parameters()).device
    scored: list[tuple[str, bool, list[str], list[str]]] = []
    try:
        for batch_indices in tqdm(
            _make_batches(items, batch_seconds, batch_size=64),
            desc=f"PER {split}",
            unit="batch",
            disable=not progress,
        ):
            batch = [items[i] for i in batch_indices]
            waves, lengths = _collate(batch)
            # Clips under one receptive field still get one frame, of their zero-padded audio.
            padded = F.pad(waves, (0, max(0, _min_samples(model) - waves.shape[1])))
            logits, frames = _ctc_logits(
                model, padded.to(device), lengths.clamp(min=_min_samples(model)).to(device)
            )
            best = logits.argmax(dim=-1).cpu()  # (B, F)
            for row, item in enumerate(batch):
                hypothesis = greedy_ctc_decode(best[row, : int(frames[row])])
                scored.append(
                    (
                        item.utterance.language,
                        item.utterance.style == -1,
                        [p for p in item.labels if p != SILENCE],
                        [p for p in hypothesis if p != SILENCE],
                    )
                )
    finally:
        for part, mode in zip(parts, modes, strict=True):
            part.train(mode)
    return summarize_phone_errors(scored, languages)


def _min_samples(model: PMMTalk) -> int:
    """Fewest samples psi_AE needs for one latent frame (its receptive field)."""
    samples = 1
    for kernel, stride in zip(
        reversed(model.cfg.audio.conv_kernel), reversed(model.cfg.audio.conv_stride), strict=True
    ):
        samples = (samples - 1) * stride + kernel
    return samples
