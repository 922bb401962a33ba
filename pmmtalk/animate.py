"""Offline animation: a whole clip through the PyTorch network, face prepared once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.blendshapes import num_frames
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.config import PMMTalkConfig, preset_config
from models.pmmtalk import PMMTalk
from pmmtalk.face import reference_face

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
"""Where the project's bundled default model lives (trained by `pmmtalk train`)."""

COEFFICIENT_RANGE = (0.0, 1.0)
"""ARKit blendshape weights run from 0 (neutral) to 1 (full shape); outputs are clipped to it."""


@dataclass(frozen=True)
class Animation:
    """The result of animating one clip."""

    frames: np.ndarray  # (T, 32) float32 in [0, 1]
    fps: int
    names: tuple[str, ...]
    duration_s: float
    model: str


class Animator:
    """Holds one network in eval mode and animates clips with it."""

    def __init__(self, model: PMMTalk, name: str, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.cfg: PMMTalkConfig = model.cfg
        self.name = name
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path | None = None, device: torch.device | str = "cpu"
    ) -> Animator:
        """Load a checkpoint directory, or the bundled default model when ``directory`` is None."""
        folder = Path(directory) if directory is not None else DEFAULT_CHECKPOINT_DIR
        if directory is None and not folder.is_dir():
            raise CheckpointError(
                f"no checkpoint given and no bundled default model at {folder}; "
                "pass --checkpoint DIR, or --untrained PRESET to run random weights "
                "(for shape and speed checks only)"
            )
        checkpoint: Checkpoint = load_checkpoint(folder, device)
        return cls(
            checkpoint.model, name=f"{checkpoint.config.preset}:{folder.name}", device=device
        )

    @classmethod
    def untrained(cls, preset: str, device: torch.device | str = "cpu", seed: int = 0) -> Animator:
        """A randomly initialised network: its output is meaningless, its shapes and speed real."""
        torch.manual_seed(seed)
        logger.warning(
            "using an UNTRAINED %s network: the animation will not follow the speech", preset
        )
        return cls(PMMTalk(preset_config(preset)), name=f"{preset}:untrained", device=device)

    @torch.inference_mode()
    def animate(
        self,
        samples: np.ndarray,
        face: np.ndarray | None = None,
        style: int | None = None,
    ) -> Animation:
        """samples (n,) float32 at 16 kHz; face an RGB photo (H, W, 3) uint8 or None for the
        default reference; style a training-subject index or None for the average style.

        Returns exactly ceil(n * 30 / 16000) frames.
        """
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError("animate needs a non-empty mono clip of shape (n,)")
        size = self.cfg.wav2lip.img_size
        reference = torch.from_numpy(reference_face(face, size))[None].to(self.device)
        wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
        frames = num_frames(samples.size, self.cfg.sample_rate_hz, self.cfg.fps)
        output = self.model(wave.to(self.device), reference, style=style, num_frames=frames)
        coefficients = output.blendshapes[0].clamp(*COEFFICIENT_RANGE)
        return Animation(
            frames=coefficients.float().cpu().numpy(),
            fps=self.cfg.fps,
            names=self.cfg.blendshape_names,
            duration_s=samples.size / self.cfg.sample_rate_hz,
            model=self.name,
        )
