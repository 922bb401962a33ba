"""The PMMTalk trainer: the paper's loss on the trainable parts, validation, checkpoints, resume.

What the paper freezes (psi_AE, the text branch, the generator) is run once per clip by
`models.training.features`; each step then trains psi_AD, the image encoder, the alignment module
and the decoder with L = L_pos + 10 L_mot + 1e-4 L_tem + 1e-5 L_sem. After every epoch the model
is validated (LVE, ALE), a line goes to ``metrics.jsonl`` and a resumable state is written, so an
interrupted run continues from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.config import LossConfig
from models.losses import LossTerms, total_loss
from models.metrics import MetricAccumulator, Metrics
from models.pmmtalk import PMMTalk, PMMTalkOutput
from models.resample import features_to_frames
from models.training.features import CachedBatch, CachedClip, crop_batch, length_batches

logger = logging.getLogger(__name__)

STATE_FILE: Final = "trainer_state.pt"
METRICS_FILE: Final = "metrics.jsonl"
ABLATIONS: Final = frozenset({"text", "image", "audio", "tem", "sem"})
"""What `TrainConfig.ablate` may remove: a modality from the decoder's input, or a loss term."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the paper: Adam, lr 1e-4, batch 1, 80 epochs)."""

    epochs: int = 40
    batch_size: int = 16  # clips per step; crops of equal length, so no padding
    crop_seconds: float = 4.0  # longest crop fed per clip
    lr: float = 5e-4  # peak AdamW learning rate (batches of 16, not the paper's 1)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    ablate: tuple[str, ...] = ()  # subset of ABLATIONS, for the paper's ablation rows

    def __post_init__(self) -> None:
        unknown = set(self.ablate) - ABLATIONS
        if unknown:
            raise ValueError(f"unknown ablation {sorted(unknown)}; choose from {sorted(ABLATIONS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.crop_seconds <= 0:
            raise ValueError("epochs, batch_size and crop_seconds must be positive")


@dataclass
class TrainReport:
    """What a run did: per-epoch metrics and the best validation epoch."""

    epochs_run: int
    best_epoch: int
    best_val: Metrics | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def style_vectors(model: PMMTalk, style: Tensor) -> Tensor:
    """(B,) subject indices -> (B, style_dim); -1 (unknown subject) takes the mean style."""
    table = model.decoder.style_table.weight  # (S, D)
    known = table[style.clamp(min=0)]
    mean = table.mean(dim=0, keepdim=True).expand_as(known)
    return torch.where((style >= 0)[:, None], known, mean)


def forward_cached(model: PMMTalk, batch: CachedBatch, ablate: Sequence[str] = ()) -> PMMTalkOutput:
    """The trainable half of `PMMTalk.forward` on cached frozen-branch features."""
    frames = batch.targets.shape[1]
    audio = features_to_frames(model.speech.contextualize(batch.latents), frames, model.cfg.fps)
    image = model.image(batch.video)  # (B, T, Di)
    text = batch.text
    p = style_vectors(model, batch.style)
    blendshapes = model.decoder(
        torch.zeros_like(image) if "image" in ablate else image,
        torch.zeros_like(text) if "text" in ablate else text,
        torch.zeros_like(audio) if "audio" in ablate else audio,
        p,
        0,
    )
    return PMMTalkOutput(blendshapes=blendshapes, image=image, text=text, audio=audio)


def loss_config(model: PMMTalk, ablate: Sequence[str]) -> LossConfig:
    """The model's loss weights with ablated alignment terms set to zero."""
    cfg = model.cfg.loss
    if "tem" in ablate:
        cfg = dataclasses.replace(cfg, tem=0.0)
    if "sem" in ablate:
        cfg = dataclasses.replace(cfg, sem=0.0)
    return cfg


def batch_loss(model: PMMTalk, batch: CachedBatch, ablate: Sequence[str] = ()) -> LossTerms:
    output = forward_cached(model, batch, ablate)
    aligned = model.alignment(output.image, output.text, output.audio)
    return total_loss(
        output.blendshapes, batch.targets, aligned.tem, aligned.sem, loss_config(model, ablate)
    )


@torch.no_grad()
def validate(model: PMMTalk, clips: Sequence[CachedClip], ablate: Sequence[str] = ()) -> Metrics:
    """LVE and ALE over whole validation clips (no cropping), predictions clipped to [0, 1]."""
    was_training = model.training
    model.eval()
    accumulator = MetricAccumulator()
    rng = np.random.default_rng(0)
    try:
        for clip in clips:
            batch = crop_batch(model, [clip], clip.num_frames, rng)
            pred = forward_cached(model, batch, ablate).blendshapes.clamp(0, 1)
            accumulator.update(pred, batch.targets)
    finally:
        model.train(was_training)
    return accumulator.compute()


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(
    model: PMMTalk,
    train_clips: Sequence[CachedClip],
    val_clips: Sequence[CachedClip],
    cfg: TrainConfig,
    run_dir: Path,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainReport:
    """Train ``model`` (its frozen parts already frozen) and leave the best weights in it.

    ``run_dir`` receives ``metrics.jsonl`` and ``trainer_state.pt`` (model, optimizer, schedule,
    random states, history); a run started on a directory with a state resumes after its last
    finished epoch. Returns the per-epoch history; the model ends with the weights of the epoch
    with the lowest validation ALE.
    """
    if not train_clips:
        raise ValueError("no training clips: the training split is empty")
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_clips) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, total_steps, cfg.warmup_steps)
    )
    max_frames = round(cfg.crop_seconds * model.cfg.fps)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    start_epoch = 0
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["config"] != dataclasses.asdict(cfg):
            raise ValueError(
                f"{state_path} was written with different training settings; use a new run "
                "directory or the same settings to resume"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        start_epoch = state["epoch"]
        if state["best"] is not None:
            best = state["best"]
        logger.info("resuming %s after epoch %d", run_dir, start_epoch)

    started = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        sums: dict[str, float] = {}
        batches = length_batches(train_clips, cfg.batch_size, rng)
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, unit="step"
        )
        for indices in bar:
            batch = crop_batch(model, [train_clips[i] for i in indices], max_frames, rng)
            terms = batch_loss(model, batch, cfg.ablate)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            for name in ("total", "pos", "mot", "tem", "sem"):
                sums[name] = sums.get(name, 0.0) + float(getattr(terms, name).detach())
            bar.set_postfix(loss=f"{float(terms.total.detach()):.4f}")
        val = validate(model, val_clips, cfg.ablate) if val_clips else None
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "seconds": round(time.perf_counter() - epoch_start, 2),
            "lr": scheduler.get_last_lr()[0],
            **{f"train_{k}": v / len(batches) for k, v in sums.items()},
        }
        if val is not None:
            record.update(val_lve=val["lve"], val_ale=val["ale"], val_frames=val["frames"])
            if best is None or val["ale"] < best[0]:
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = (val["ale"], epoch + 1, weights)
        history.append(record)
        with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        logger.info("epoch %d: %s", epoch + 1, record)
        torch.save(
            {
                "config": dataclasses.asdict(cfg),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "epoch": epoch + 1,
                "best": best,
            },
            state_path.with_suffix(".tmp"),
        )
        state_path.with_suffix(".tmp").replace(state_path)  # never a half-written state
        if on_epoch is not None:
            on_epoch(record)

    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    return TrainReport(
        epochs_run=cfg.epochs - start_epoch,
        best_epoch=best[1] if best is not None else cfg.epochs,
        best_val=_as_metrics(history, best[1]) if best is not None else None,
        history=history,
        seconds=time.perf_counter() - started,
    )


def _as_metrics(history: list[dict[str, Any]], epoch: int) -> Metrics:
    record = next(r for r in history if r["epoch"] == epoch)
    return Metrics(lve=record["val_lve"], ale=record["val_ale"], frames=record["val_frames"])
