"""psi_HG: the Wav2Lip talking-head generator, built from `Wav2LipConfig`.

Module and attribute names follow the official Wav2Lip generator so that, with the default
config, its released 96x96 checkpoints (``wav2lip.pth``, ``wav2lip_gan.pth``) load with strict
key matching. Unlike the official forward, which re-encodes the reference face for every frame,
the identity pyramid is computed once per face (`Wav2Lip.encode_identity`) and broadcast to that
face's frames in `Wav2Lip.decode`; in eval mode the result is the same.

Channel order is whatever the weights were trained on: the official checkpoints saw OpenCV's BGR.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.config import Wav2LipConfig

logger = logging.getLogger(__name__)

# The speech encoder's four stages, each opened by a 3x3 conv with these (height, width) strides:
# (80 mels, 16 steps) -> (80, 16) -> (27, 16) -> (9, 6) -> (3, 3), then a 3x3 valid conv to 1x1.
AUDIO_STAGE_STRIDES: tuple[tuple[int, int], ...] = ((1, 1), (3, 1), (3, 3), (3, 2))

_FACE_STEM_KERNEL = 7
_MISMATCH_KEYS_SHOWN = 5


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm2d (+ the input, if residual) + ReLU.

    ``(B, cin, H, W) -> (B, cout, H', W')``; a residual block keeps the shape.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and (cin != cout or stride not in (1, (1, 1))):
            raise ValueError(f"a residual conv block keeps its shape, got {cin=} {cout=} {stride=}")
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d + BatchNorm2d + ReLU: ``(B, cin, H, W) -> (B, cout, H', W')``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


def _residuals(channels: int, count: int) -> list[nn.Module]:
    return [ConvBlock(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


class Wav2Lip(nn.Module):
    """Speech mel windows plus one reference face -> a lip-synced face per video frame.

    Identity encoder: a stride-1 stem, one stride-2 stage per ``face_stages`` entry
    (img_size -> 3), then a 3x3 valid conv to a 1x1 ``embed_dim`` identity code. Speech encoder:
    four stages (``audio_stages``) reducing an (80, 16) mel window to a 1x1 ``embed_dim`` code.
    Decoder: a 1x1 conv on the speech code, then one upsampling stage per ``decoder_stages`` entry
    (1 -> 3 -> 6 -> ... -> img_size); after every decoder block the output is concatenated with
    the identity feature of the same resolution, deepest first (U-Net skips). Both 1x1 codes
    have ``embed_dim`` channels, as in the official network (512 and 512).
    """

    def __init__(self, config: Wav2LipConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else Wav2LipConfig()
        n_stages = len(cfg.face_stages)
        if cfg.img_size != 3 * 2**n_stages:
            raise ValueError(
                f"img_size must be 3 * 2**{n_stages} = {3 * 2**n_stages} for {n_stages} face "
                f"stages, got {cfg.img_size}"
            )
        if len(cfg.decoder_stages) != n_stages + 1:
            raise ValueError(
                f"need {n_stages + 1} decoder stages for {n_stages} face stages, "
                f"got {len(cfg.decoder_stages)}"
            )
        if len(cfg.audio_stages) != len(AUDIO_STAGE_STRIDES):
            raise ValueError(
                f"need {len(AUDIO_STAGE_STRIDES)} audio stages, got {len(cfg.audio_stages)}"
            )
        self.config = cfg

        # Identity encoder; its outputs, shallow to deep, are the skip features.
        face_blocks: list[nn.Sequential] = [
            nn.Sequential(
                ConvBlock(6, cfg.face_stem_channels, _FACE_STEM_KERNEL, 1, _FACE_STEM_KERNEL // 2)
            )
        ]
        skip_channels = [cfg.face_stem_channels]
        cin = cfg.face_stem_channels
        for cout, n_res in cfg.face_stages:
            face_blocks.append(
                nn.Sequential(ConvBlock(cin, cout, 3, 2, 1), *_residuals(cout, n_res))
            )
            skip_channels.append(cout)
            cin = cout
        face_blocks.append(
            nn.Sequential(
                ConvBlock(cin, cfg.embed_dim, 3, 1, 0),
                ConvBlock(cfg.embed_dim, cfg.embed_dim, 1, 1, 0),
            )
        )
        skip_channels.append(cfg.embed_dim)
        self.face_encoder_blocks = nn.ModuleList(face_blocks)

        # Speech encoder: one flat Sequential, as in the official key layout.
        audio_layers: list[nn.Module] = []
        cin = 1
        for (cout, n_res), stride in zip(cfg.audio_stages, AUDIO_STAGE_STRIDES, strict=True):
            audio_layers.append(ConvBlock(cin, cout, 3, stride, 1))
            audio_layers.extend(_residuals(cout, n_res))
            cin = cout
        audio_layers.append(ConvBlock(cin, cfg.embed_dim, 3, 1, 0))
        audio_layers.append(ConvBlock(cfg.embed_dim, cfg.embed_dim, 1, 1, 0))
        self.audio_encoder = nn.Sequential(*audio_layers)

        # Decoder: block 0 works at 1x1 on the speech code, blocks 1.. upsample; every block's
        # output is concatenated with the identity feature of its resolution, so each block's
        # input width is the previous block's output plus that skip.
        skips = skip_channels[::-1]  # deepest first
        decoder_blocks: list[nn.Sequential] = [
            nn.Sequential(ConvBlock(cfg.embed_dim, cfg.embed_dim, 1, 1, 0))
        ]
        cin = cfg.embed_dim + skips[0]
        for index, (cout, n_res) in enumerate(cfg.decoder_stages):
            upsample = (
                ConvTransposeBlock(cin, cout, 3, 1, 0)  # 1x1 -> 3x3
                if index == 0
                else ConvTransposeBlock(cin, cout, 3, 2, 1, output_padding=1)  # doubles H, W
            )
            decoder_blocks.append(nn.Sequential(upsample, *_residuals(cout, n_res)))
            cin = cout + skips[index + 1]
        self.face_decoder_blocks = nn.ModuleList(decoder_blocks)

        self.output_block = nn.Sequential(
            ConvBlock(cin, cfg.output_hidden, 3, 1, 1),
            nn.Conv2d(cfg.output_hidden, 3, 1, 1, 0),
            nn.Sigmoid(),
        )

    @staticmethod
    def reference_input(face: Tensor) -> Tensor:
        """The identity encoder's input, as Wav2Lip's inference builds it.

        Args:
            face: (B, 3, H, W) reference face in [0, 1].

        Returns:
            (B, 6, H, W): the face with rows ``H // 2`` onwards zeroed, then the full face.
        """
        height = face.shape[2]
        keep_upper = (torch.arange(height, device=face.device) < height // 2).to(face.dtype)
        masked = face * keep_upper[:, None]  # (B, 3, H, W), lower half zero
        return torch.cat([masked, face], dim=1)  # (B, 6, H, W)

    def encode_identity(self, face6: Tensor) -> list[Tensor]:
        """Identity feature pyramid of one reference input per item; cache it per face.

        Args:
            face6: (B, 6, img_size, img_size) from `reference_input`.

        Returns:
            Feature maps shallow to deep: (B, face_stem_channels, S, S), then
            (B, c_k, S / 2**k, S / 2**k) per face stage, then (B, embed_dim, 1, 1).
        """
        features: list[Tensor] = []
        x = face6
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        return features

    def encode_audio(self, mel_windows: Tensor) -> Tensor:
        """Speech code of each mel window.

        Args:
            mel_windows: (N, 1, num_mels, mel_steps) normalised log-mel windows.

        Returns:
            (N, embed_dim, 1, 1).
        """
        return self.audio_encoder(mel_windows)

    def decode(
        self, audio_embedding: Tensor, identity: list[Tensor], frames_per_item: int
    ) -> Tensor:
        """Generate faces from speech codes and cached identity pyramids.

        Args:
            audio_embedding: (N, embed_dim, 1, 1) with N = B * T, batch-major: item b's frames
                are rows ``b * T`` to ``b * T + T - 1``.
            identity: `encode_identity` output for the B items.
            frames_per_item: T.

        Returns:
            (N, 3, img_size, img_size) faces in [0, 1].
        """
        num_rows = audio_embedding.shape[0]
        batch = identity[0].shape[0]
        if num_rows != batch * frames_per_item:
            raise ValueError(
                f"decode got {num_rows} speech codes for {batch} faces x {frames_per_item} frames"
            )
        x = audio_embedding
        for block, feature in zip(self.face_decoder_blocks, reversed(identity), strict=True):
            x = block(x)  # (N, c, h, w)
            per_frame = feature.unsqueeze(1).expand(batch, frames_per_item, *feature.shape[1:])
            x = torch.cat([x, per_frame.reshape(num_rows, *feature.shape[1:])], dim=1)
        return self.output_block(x)  # (N, 3, S, S)

    def forward(self, mel_windows: Tensor, face: Tensor) -> Tensor:
        """Lip-synced video for each item's speech and reference face.

        Args:
            mel_windows: (B, T, 1, num_mels, mel_steps) from `models.mel.mel_windows`.
            face: (B, 3, img_size, img_size) reference face in [0, 1].

        Returns:
            (B, T, 3, img_size, img_size) generated frames in [0, 1].
        """
        batch, frames = mel_windows.shape[:2]
        identity = self.encode_identity(self.reference_input(face))
        speech = self.encode_audio(mel_windows.flatten(0, 1))  # (B * T, embed_dim, 1, 1)
        video = self.decode(speech, identity, frames)  # (B * T, 3, S, S)
        return video.reshape(batch, frames, *video.shape[1:])

    @classmethod
    def load_official(cls, path: str | os.PathLike[str]) -> Wav2Lip:
        """The default (96x96) generator holding an official checkpoint's weights.

        See `load_wav2lip_checkpoint` for the accepted formats and the errors raised.
        """
        model = cls(Wav2LipConfig())
        load_wav2lip_checkpoint(model, path)
        return model


def load_wav2lip_checkpoint(model: Wav2Lip, path: str | os.PathLike[str]) -> None:
    """Load an official Wav2Lip generator checkpoint into ``model`` (strict key and shape match).

    Accepts the released training checkpoint (``{"state_dict": ..., "optimizer": ...,
    "global_step": ..., "global_epoch": ...}``) or a bare state dict, with or without
    DataParallel's ``module.`` key prefix. Reads with ``weights_only=True``, so no pickled code
    runs.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not a readable torch checkpoint, or its tensors do not match ``model``.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no Wav2Lip checkpoint file at {file}")
    try:
        loaded: Any = torch.load(file, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # the unpickler fails on arbitrary bytes with arbitrary types
        raise ValueError(
            f"{file} is not a readable torch checkpoint (corrupt, truncated or another "
            f"format): {err}"
        ) from err
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{file} holds no state dict of tensors; expected an official Wav2Lip checkpoint "
            "(a dict with 'state_dict') or a bare state dict"
        )
    weights = {str(k).removeprefix("module."): v for k, v in state.items()}

    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(weights[k].shape)} (want {tuple(v.shape)})"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    )
    if missing or unexpected or wrong_shape:
        shown = _MISMATCH_KEYS_SHOWN
        raise ValueError(
            f"{file} does not match this Wav2Lip generator: {len(missing)} missing keys "
            f"{missing[:shown]}, {len(unexpected)} unexpected keys {unexpected[:shown]}, "
            f"{len(wrong_shape)} wrong shapes {wrong_shape[:shown]}. Only the official 96x96 "
            "generator format (wav2lip.pth / wav2lip_gan.pth) is supported, loaded into "
            "Wav2Lip(Wav2LipConfig())."
        )
    model.load_state_dict(weights, strict=True)
    logger.info("loaded Wav2Lip weights from %s (%d tensors)", file, len(weights))
