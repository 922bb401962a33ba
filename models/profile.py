"""Model size and compute: parameters and multiply-adds (MACs) per second of speech, by part.

MACs are counted with PyTorch's FlopCounterMode (MACs = FLOPs / 2) on one forward pass over a
random clip; element-wise work (activations, norms, the STFT) is not counted, so the figures are
the matrix and convolution work that dominates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from models.blendshapes import num_frames
from models.config import PMMTalkConfig, preset_config
from models.mel import mel_windows
from models.pmmtalk import PMMTalk, count_parameters
from models.resample import features_to_frames, samples_for_frames

# The network's parts, as the paper names them, and the attribute that holds each one.
PARTS: tuple[tuple[str, str], ...] = (
    ("audio psi_AE+psi_AD (wav2vec 2.0)", "speech"),
    ("text psi_TD (CTC recogniser)", "text"),
    ("mel front end (generator input)", "mel"),
    ("generator psi_HG (Wav2Lip)", "generator"),
    ("image psi_IE", "image"),
    ("decoder", "decoder"),
    ("alignment (training only)", "alignment"),
)


@dataclass(frozen=True)
class PartProfile:
    name: str
    parameters: int
    macs_per_second: float
    training_only: bool = False


@dataclass(frozen=True)
class ModelProfile:
    """Parameters and MACs per second of audio for each part, plus the per-face cost."""

    preset: str
    seconds: float
    parts: tuple[PartProfile, ...]
    face_macs: float
    """MACs to encode one reference face (paid once per face, then cached)."""

    @property
    def parameters(self) -> int:
        """All parameters, the training-only alignment heads included."""
        return sum(p.parameters for p in self.parts)

    @property
    def macs_per_second(self) -> float:
        """Inference cost: the training-only alignment is left out."""
        return sum(p.macs_per_second for p in self.parts if not p.training_only)

    def to_markdown(self) -> str:
        lines = [
            f"preset `{self.preset}` (MACs counted on a {self.seconds:g} s clip)",
            "",
            "| part | parameters | MACs per second of audio |",
            "|---|---:|---:|",
        ]
        for part in self.parts:
            params_m, gmacs = part.parameters / 1e6, part.macs_per_second / 1e9
            lines.append(f"| {part.name} | {params_m:.3f} M | {gmacs:.3f} G |")
        lines.append(
            f"| **total** (MACs: inference only) | **{self.parameters / 1e6:.3f} M** | "
            f"**{self.macs_per_second / 1e9:.3f} G** |"
        )
        lines.append("")
        lines.append(
            f"Encoding one reference face (cached per face): {self.face_macs / 1e6:.1f} M MACs."
        )
        return "\n".join(lines)


def profile(cfg: PMMTalkConfig, seconds: float = 1.0) -> ModelProfile:
    """Count parameters and MACs of a randomly initialised network on a ``seconds`` clip."""
    torch.manual_seed(0)
    model = PMMTalk(cfg).eval()
    samples = max(1, round(seconds * cfg.sample_rate_hz))
    frames = num_frames(samples, cfg.sample_rate_hz, cfg.fps)
    size = cfg.wav2lip.img_size
    wave = torch.randn(1, samples) * 0.1
    face = torch.rand(1, 3, size, size)
    macs: dict[str, float] = {}

    @contextmanager
    def count(part: str) -> Iterator[None]:
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        macs[part] = counter.get_total_flops() / 2

    # One counter per stage, following PMMTalk.encode_speech and decode. no_grad rather than
    # inference_mode: FlopCounterMode cannot see through wav2vec 2.0's weight-norm
    # parametrization under inference mode.
    with torch.no_grad():
        with count("face"):
            identity = model.encode_face(face)
        padded = F.pad(wave, (0, max(0, samples_for_frames(frames, cfg.fps) - samples)))
        with count("speech"):
            latents, audio = model.speech(padded)
        with count("text"):
            text = model.text(latents).softmax(-1)
        with count("mel"):
            windows = mel_windows(model.mel(wave), frames, cfg.fps, cfg.wav2lip.mel_steps)
        with count("generator"):
            video = model.generate_video(windows, identity)
        with count("image"):
            image = model.image(video)
        audio = features_to_frames(audio, frames, cfg.fps)
        text = features_to_frames(text, frames, cfg.fps)
        with count("decoder"):
            model.decoder(image, text, audio, model.decoder.style_vector(None, 1))
        with count("alignment"):
            model.alignment(image, text, audio)
    parts = tuple(
        PartProfile(
            name=name,
            parameters=count_parameters(getattr(model, attribute)),
            macs_per_second=macs[attribute] / seconds,
            training_only=attribute == "alignment",
        )
        for name, attribute in PARTS
    )
    return ModelProfile(preset=cfg.preset, seconds=seconds, parts=parts, face_macs=macs["face"])


def profile_preset(name: str, seconds: float = 1.0) -> ModelProfile:
    """`profile` of a named preset."""
    return profile(preset_config(name), seconds)
