"""The PyTorch backend: the network itself in eager mode, on the CPU or a CUDA GPU.

The reference every other backend is checked against, and the only one that can run a model
that was never exported (``pmmtalk animate --untrained``). Always float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from export.backends.base import (
    BackendName,
    BackendUnavailableError,
    Carry,
    Identity,
    ModelSpec,
    WindowOutput,
    carry_batch,
    check_window_batch,
)
from export.backends.inputs import (
    check_identity,
    clip_batch,
    face_batch,
    stack_identities,
    style_batch,
)
from models.blendshapes import num_frames
from models.checkpoint import load_checkpoint
from models.pmmtalk import PMMTalk
from models.streaming import StreamWindow, window_step

logger = logging.getLogger(__name__)


def torch_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a GPU if PyTorch sees one) as a torch
    device, after checking it exists here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if chosen.type == "cpu":
        return chosen
    if chosen.type != "cuda":
        raise ValueError(f"the torch backend runs on cpu or cuda, not {device!r}")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device {device!r} asked for, but PyTorch sees no CUDA GPU (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu"
        )
    index = chosen.index if chosen.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(
            f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    return torch.device("cuda", index)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return "cpu"


class TorchBackend:
    """`export.backends.base.Backend` over a `PMMTalk` in eval mode."""

    name: BackendName = "torch"
    concurrent_calls: int = 1  # torch's intra-op pool is global: concurrent calls share it

    def __init__(
        self,
        model: PMMTalk,
        *,
        name: str,
        window: StreamWindow | None = None,
        device: str = "cpu",
    ) -> None:
        """``model`` is moved to ``device`` and put in eval mode (the caller's copy with it);
        ``window`` is the stream window `stream_windows` expects (default `StreamWindow()`)."""
        self._device = torch_device(device)
        self.model = model.to(self._device).float().eval()
        self.device = _describe(self._device)
        table = self.model.decoder.style_table.weight.detach().float().cpu().numpy()
        self.spec = ModelSpec(
            config=model.cfg, window=window or StreamWindow(), style_table=table, name=name
        )
        self._levels = len(model.cfg.wav2lip.face_stages) + 2

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, *, device: str = "cpu", window: StreamWindow | None = None
    ) -> TorchBackend:
        """Load a checkpoint directory (``config.json`` + ``model.safetensors``) onto ``device``
        (cpu, cuda, cuda:N, or auto).

        Raises `models.checkpoint.CheckpointError` for a missing or corrupt checkpoint and
        `BackendUnavailableError` for a CUDA device on a machine without one.
        """
        chosen = torch_device(device)
        folder = Path(directory)
        checkpoint = load_checkpoint(folder)
        return cls(
            checkpoint.model,
            name=f"{checkpoint.config.preset}:{folder.name}",
            window=window,
            device=str(chosen),
        )

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self._device)

    @torch.inference_mode()
    def encode_face(self, face: np.ndarray) -> Identity:
        """face (3, S, S) float32 RGB in [0, 1] -> identity pyramid, each level batch 1."""
        levels = self.model.encode_face(self._tensor(face_batch(self.spec, face)))
        return tuple(level.float().cpu().numpy() for level in levels)

    @torch.inference_mode()
    def speech_to_frames(
        self, wave: np.ndarray, identity: Identity, style: np.ndarray
    ) -> np.ndarray:
        """wave (N,) float32 at 16 kHz; style (style_dim,) -> (T, 32) float32 unclipped,
        T = ceil(N * 30 / 16000)."""
        batch = clip_batch(wave)  # (1, N)
        pyramid = [self._tensor(level) for level in check_identity(identity, self._levels)]
        vector = self._tensor(style_batch(self.spec, style))  # (1, style_dim)
        cfg = self.spec.config
        frames = num_frames(batch.shape[1], cfg.sample_rate_hz, cfg.fps)
        speech = self.model.encode_speech(self._tensor(batch), frames)
        output = self.model.decode(speech, pyramid, vector).blendshapes  # (1, T, 32)
        return output[0].float().cpu().numpy()

    @torch.inference_mode()
    def stream_windows(
        self,
        waves: np.ndarray,
        identities: Sequence[Identity],
        styles: np.ndarray,
        frame_offsets: np.ndarray,
        carries: Sequence[Carry | None] | None = None,
    ) -> WindowOutput:
        """As `export.backends.base.Backend.stream_windows` (see `window_step`)."""
        check_window_batch(self.spec, waves, identities, styles, frame_offsets, carries)
        pyramid = [self._tensor(level) for level in stack_identities(identities, self._levels)]
        carry, fresh = carry_batch(self.spec, carries, len(waves))
        frames, carry_out = window_step(
            self.model,
            self.spec.window,
            self._tensor(np.ascontiguousarray(waves, dtype=np.float32)),
            pyramid,
            self._tensor(np.ascontiguousarray(styles, dtype=np.float32)),
            self._tensor(np.ascontiguousarray(frame_offsets, dtype=np.int64)),
            self._tensor(carry),
            self._tensor(fresh),
        )
        return WindowOutput(frames.float().cpu().numpy(), carry_out.float().cpu().numpy())

    def close(self) -> None:
        """Drop the network; on a GPU, give its cached memory back to the driver."""
        del self.model
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
