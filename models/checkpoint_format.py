"""A checkpoint directory's format: its file names, its config file, and its errors.

Reading a checkpoint's config needs no PyTorch, so the ONNX serving path (which only hashes the
checkpoint and checks its config before running a cached export) stays free of it;
`models.checkpoint` loads and saves the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.config import PMMTalkConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "pmmtalk-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or for another architecture."""


def read_config(directory: str | Path) -> tuple[PMMTalkConfig, dict[str, Any]]:
    """The config and metadata of a checkpoint directory, without loading its weights."""
    folder = Path(directory)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {folder}")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a PMMTalk checkpoint: {CONFIG_FILE} is missing")
    try:
        document = json.loads(path.read_text())
        if document.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path} is not a PMMTalk checkpoint config")
        if document.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has checkpoint format version {document.get('version')}; "
                f"this release reads version {FORMAT_VERSION}"
            )
        config = PMMTalkConfig.from_dict(document["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a valid PMMTalk checkpoint config: {exc}") from exc
    return config, dict(document.get("metadata", {}))
