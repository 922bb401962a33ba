"""PMMTalk: speech + a reference face + a style -> 32 blendshape coefficients per frame at 30 fps.

The three pseudo modalities all come from speech alone:
- audio A: wav2vec 2.0 (psi_AE CNN, psi_AD transformer),
- text C: a CTC recogniser (psi_TD) reading the same CNN latents,
- image I: a Wav2Lip generator (psi_HG) animates the reference face, psi_IE encodes the frames.
The decoder fuses them with the style vector p. The alignment module only adds training losses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.alignment import CrossModalAlignment
from models.audio_encoder import SpeechEncoder
from models.blendshapes import num_frames as frame_count
from models.config import PMMTalkConfig
from models.decoder import FusionDecoder
from models.image_encoder import ImageEncoder
from models.losses import LossTerms, total_loss
from models.mel import LogMelSpectrogram, mel_windows
from models.resample import features_to_frames, samples_for_frames
from models.text_decoder import TextDecoder
from models.wav2lip import Wav2Lip, load_wav2lip_checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechFeatures:
    """Everything speech alone yields, at the animation frame rate (T frames)."""

    audio: Tensor  # (B, T, audio_dim): A
    text: Tensor  # (B, T, vocab): C, per-frame vocabulary posteriors
    mel_windows: Tensor  # (B, T, 1, num_mels, mel_steps): the generator's speech input


@dataclass(frozen=True)
class PMMTalkOutput:
    """The coefficients plus the intermediate features the training losses need."""

    blendshapes: Tensor  # (B, T, 32), unbounded; nominally [0, 1]
    image: Tensor  # (B, T, image_dim): I
    text: Tensor  # (B, T, vocab): C
    audio: Tensor  # (B, T, audio_dim): A


class PMMTalk(nn.Module):
    """The whole network, built from a `PMMTalkConfig` with random weights."""

    def __init__(self, cfg: PMMTalkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.speech = SpeechEncoder(cfg.audio)
        self.text = TextDecoder(cfg.text, cfg.audio)
        self.mel = LogMelSpectrogram()
        self.generator = Wav2Lip(cfg.wav2lip)
        self.image = ImageEncoder(cfg.image)
        self.alignment = CrossModalAlignment(
            cfg.alignment,
            image_dim=self.image.output_dim,
            text_dim=self.text.output_dim,
            audio_dim=self.speech.output_dim,
        )
        self.decoder = FusionDecoder(
            cfg.decoder,
            image_dim=self.image.output_dim,
            text_dim=self.text.output_dim,
            audio_dim=self.speech.output_dim,
        )
        self._frozen: tuple[nn.Module, ...] = ()

    # --- pretrained parts ---------------------------------------------------------------

    def load_pretrained_parts(
        self,
        wav2vec2_dir: str | Path | None = None,
        ctc_dir: str | Path | None = None,
        wav2lip_checkpoint: str | Path | None = None,
    ) -> None:
        """Load the paper's pretrained parts from local paths (any subset).

        ``wav2vec2_dir``: a Hugging Face wav2vec 2.0 directory (XLSR-53 for the paper preset);
        ``ctc_dir``: a Hugging Face wav2vec 2.0 CTC directory (the Mandarin recogniser);
        ``wav2lip_checkpoint``: an official Wav2Lip generator checkpoint (strict key match).
        """
        if wav2vec2_dir is not None:
            self.speech.load_pretrained(wav2vec2_dir)
        if ctc_dir is not None:
            self.text.load_pretrained(ctc_dir)
        if wav2lip_checkpoint is not None:
            load_wav2lip_checkpoint(self.generator, wav2lip_checkpoint)

    def freeze_pretrained(self) -> None:
        """Freeze what the paper freezes: psi_AE, the whole text branch, and the generator.

        Frozen parts also stay in eval mode (batch-norm statistics and dropout) under `train()`.
        """
        self._frozen = (self.speech.wav2vec2.feature_extractor, self.text, self.generator)
        for module in self._frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> PMMTalk:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    # --- the forward pass, in the pieces the server caches or streams -----------------------

    def encode_face(self, face: Tensor) -> list[Tensor]:
        """Reference face (B, 3, H, W) RGB in [0, 1], H = W = img_size -> identity pyramid.

        Depends only on the face: compute once per reference face and reuse for every frame.
        """
        size = self.cfg.wav2lip.img_size
        if face.shape[-2:] != (size, size):
            raise ValueError(f"reference face must be {size}x{size}, got {tuple(face.shape[-2:])}")
        if self.cfg.wav2lip.channel_order == "bgr":
            face = face.flip(1)  # (B, 3, H, W) RGB -> BGR
        return self.generator.encode_identity(self.generator.reference_input(face))

    def encode_speech(self, wave: Tensor, num_frames: int) -> SpeechFeatures:
        """wave (B, S) at 16 kHz -> audio, text and generator inputs for ``num_frames`` frames.

        The wave is zero-padded on the right so the CNN latents reach past the last frame.
        """
        needed = samples_for_frames(num_frames, self.cfg.fps)
        # sym_max, not max: the ONNX export traces this with a symbolic length.
        padded = F.pad(wave, (0, torch.sym_max(needed, wave.shape[-1]) - wave.shape[-1]))
        latents, audio = self.speech(padded)  # (B, F, C), (B, F, Da)
        text = self.text(latents).softmax(dim=-1)  # (B, F, V)
        mel = self.mel(wave)  # (B, num_mels, M)
        windows = mel_windows(
            mel, num_frames, fps=self.cfg.fps, mel_steps=self.cfg.wav2lip.mel_steps
        )  # (B, T, 1, num_mels, mel_steps)
        return SpeechFeatures(
            audio=features_to_frames(audio, num_frames, self.cfg.fps),
            text=features_to_frames(text, num_frames, self.cfg.fps),
            mel_windows=windows,
        )

    def generate_video(self, windows: Tensor, identity: list[Tensor]) -> Tensor:
        """psi_HG: mel windows (B, T, 1, m, s) + identity pyramid -> video (B, T, 3, H, W)."""
        batch, frames = windows.shape[:2]
        embedding = self.generator.encode_audio(windows.flatten(0, 1))  # (B*T, E, 1, 1)
        video = self.generator.decode(embedding, identity, frames_per_item=frames)
        return video.view(batch, frames, *video.shape[1:])

    def frame_features(self, windows: Tensor, identity: list[Tensor]) -> Tensor:
        """The per-frame work: psi_HG, then psi_IE's frame CNN. Mel windows (B, T, 1, m, s) ->
        (B, T, image hidden). A frame's result depends on its own mel window only."""
        return self.image.frame_features(self.generate_video(windows, identity))

    def decode(
        self,
        speech: SpeechFeatures,
        identity: list[Tensor],
        style: int | Tensor | None = None,
        start_index: int | Tensor = 0,
    ) -> PMMTalkOutput:
        """Speech features + identity + style -> coefficients (B, T, 32) and features."""
        frames = self.frame_features(speech.mel_windows, identity)  # (B, T, Di)
        return self.decode_frames(speech, frames, style, start_index)

    def decode_frames(
        self,
        speech: SpeechFeatures,
        frame_features: Tensor,
        style: int | Tensor | None = None,
        start_index: int | Tensor = 0,
    ) -> PMMTalkOutput:
        """`decode` from per-frame features (`frame_features`) already computed."""
        image = self.image.sequence(frame_features)  # (B, T, Di)
        batch = image.shape[0]
        p = self.decoder.style_vector(style, batch)  # (B, style_dim)
        blendshapes = self.decoder(image, speech.text, speech.audio, p, start_index)
        return PMMTalkOutput(
            blendshapes=blendshapes, image=image, text=speech.text, audio=speech.audio
        )

    def forward(
        self,
        wave: Tensor,
        face: Tensor,
        style: int | Tensor | None = None,
        num_frames: int | None = None,
    ) -> PMMTalkOutput:
        """wave (B, S) at 16 kHz, face (B, 3, H, W) in [0, 1] -> `PMMTalkOutput`.

        ``num_frames`` defaults to the contract ceil(S * 30 / 16000).
        """
        frames = (
            num_frames
            if num_frames is not None
            else frame_count(wave.shape[-1], self.cfg.sample_rate_hz, self.cfg.fps)
        )
        if frames < 1:
            raise ValueError("PMMTalk needs at least one sample of speech")
        speech = self.encode_speech(wave, frames)
        return self.decode(speech, self.encode_face(face), style)

    def loss(
        self, output: PMMTalkOutput, target: Tensor, lengths: Tensor | None = None
    ) -> LossTerms:
        """The paper's loss: L_pos + 10 L_mot + 1e-4 L_tem + 1e-5 L_sem (weights from config)."""
        aligned = self.alignment(output.image, output.text, output.audio, lengths=lengths)
        return total_loss(
            output.blendshapes,
            target,
            aligned.tem,
            aligned.sem,
            self.cfg.loss,
            lengths=lengths,
        )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
