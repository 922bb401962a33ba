"""Checkpoints: ``model.safetensors`` (weights) plus ``config.json`` (architecture and metadata).

``config.json`` holds the full `PMMTalkConfig` (preset, sizes, fps, the 32 blendshape names) and a
free-form ``metadata`` object (for example the training recipe). Saving then loading gives a
network whose every tensor is bit-identical.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.checkpoint_format import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CheckpointError,
    read_config,
)
from models.config import PMMTalkConfig
from models.pmmtalk import PMMTalk

__all__ = [
    "CONFIG_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "read_config",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the network (in eval mode) and what its config.json said."""

    model: PMMTalk
    config: PMMTalkConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None


def save_checkpoint(
    model: PMMTalk, directory: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``directory`` (created if needed); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "metadata": metadata or {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    logger.info("saved %s checkpoint to %s", model.cfg.preset, out)
    return out


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load a checkpoint directory written by `save_checkpoint`; the model is in eval mode."""
    folder = Path(directory)
    config, metadata = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{folder} is not a PMMTalk checkpoint: {WEIGHTS_FILE} is missing")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path} is corrupt or not a safetensors file: {exc}"
        ) from exc
    model = PMMTalk(config)
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(
            f"{weights_path} does not fit the {config.preset!r} architecture: {exc}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights_path} does not fit the {config.preset!r} architecture in {CONFIG_FILE}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return Checkpoint(
        model=model.to(device).eval(), config=config, metadata=metadata, directory=folder
    )
