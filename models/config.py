"""Frozen configuration for every PMMTalk component, the two presets, and JSON round-trips.

Each network module is built from one of the dataclasses below; `PMMTalkConfig` nests them and is
what a checkpoint's ``config.json`` stores.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from models.blendshapes import BLENDSHAPE_NAMES, FPS, SAMPLE_RATE_HZ, STYLE_DIM
from models.corpus.phones import VOCABULARY as PHONE_VOCABULARY

PresetName = Literal["paper", "lite"]

# wav2vec 2.0's CNN: 7 layers, 400-sample receptive field, 320-sample hop (50 Hz at 16 kHz).
WAV2VEC2_CONV_KERNEL: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
WAV2VEC2_CONV_STRIDE: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class AudioEncoderConfig:
    """wav2vec 2.0: the CNN feature encoder psi_AE and the transformer psi_AD.

    ``feat_extract_norm="layer"`` normalises each latent frame on its own (XLSR-53 does this); the
    ``"group"`` variant of wav2vec 2.0 base normalises over the whole clip, which streaming cannot.
    """

    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = WAV2VEC2_CONV_KERNEL
    conv_stride: tuple[int, ...] = WAV2VEC2_CONV_STRIDE
    conv_bias: bool = True
    feat_extract_norm: Literal["group", "layer"] = "layer"
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = True
    normalize_input: bool = True
    """Scale each clip to zero mean, unit variance (XLSR-53's feature extractor does this)."""
    attention_span_s: tuple[float, float] | None = None
    """(left, right) seconds each transformer layer attends around a frame; None = the whole
    clip. A band keeps streaming windows faithful to the offline path (models.local_attention)."""

    @property
    def latent_dim(self) -> int:
        """Channels of the CNN latents L (what the text branch receives)."""
        return self.conv_dim[-1]


@dataclass(frozen=True)
class TextDecoderConfig:
    """psi_TD: a wav2vec 2.0 CTC recogniser's transformer plus its vocabulary head.

    It reads the audio branch's CNN latents (shared psi_AE), so only the projection, the
    transformer blocks and the head live here.
    """

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = True
    vocab_size: int = 3503
    attention_span_s: tuple[float, float] | None = None
    """(left, right) seconds each layer attends around a frame; None = the whole clip."""


@dataclass(frozen=True)
class Wav2LipConfig:
    """psi_HG: the Wav2Lip talking-head generator (identity encoder, speech encoder, face decoder).

    ``img_size`` must be ``3 * 2**len(face_stages)``: each face stage halves the image, and the
    last 3x3 map is reduced to 1x1. The paper preset reproduces the official 96x96 network, so
    official checkpoints load with strict key matching.
    """

    img_size: int = 96
    num_mels: int = 80
    mel_steps: int = 16
    """Mel frames per video frame window (0.2 s at the 80 Hz mel rate)."""
    face_stem_channels: int = 16
    face_stages: tuple[tuple[int, int], ...] = ((32, 2), (64, 3), (128, 2), (256, 2), (512, 1))
    """(channels, residual blocks) of each stride-2 identity-encoder stage."""
    embed_dim: int = 512
    audio_stages: tuple[tuple[int, int], ...] = ((32, 2), (64, 2), (128, 2), (256, 1))
    """(channels, residual blocks) of the 4 speech-encoder stages (strides 1, (3,1), 3, (3,2))."""
    decoder_stages: tuple[tuple[int, int], ...] = (
        (512, 1),
        (512, 2),
        (384, 2),
        (256, 2),
        (128, 2),
        (64, 2),
    )
    """(channels, residual blocks) of each upsampling face-decoder stage, 1x1 -> img_size.

    A 1x1 convolution at ``embed_dim`` channels precedes them, as in the official network."""
    output_hidden: int = 32
    channel_order: Literal["rgb", "bgr"] = "bgr"
    """Colour order the generator's weights expect (official Wav2Lip checkpoints saw BGR)."""


@dataclass(frozen=True)
class ImageEncoderConfig:
    """psi_IE: a 2D CNN shared across generated frames, then a transformer encoder over time."""

    cnn_channels: tuple[int, ...] = (64, 128, 256, 512)
    """Output channels of each stride-2 conv stage."""
    lower_half_only: bool = True
    """Encode only the mouth half of each generated frame (the upper half comes from the photo)."""
    hidden_size: int = 512
    num_layers: int = 4
    num_heads: int = 8
    intermediate_size: int = 2048
    dropout: float = 0.1
    attention_span_s: tuple[float, float] | None = None
    """(left, right) seconds each transformer layer attends around a frame; None = the whole
    clip, which no stream window holds. The lite preset sets (0.5, 0.1)
    (`LITE_ATTENTION_SPAN_S`, as for its speech encoders)."""


@dataclass(frozen=True)
class AlignmentConfig:
    """Cross-modal alignment: per pair a Linear + LayerNorm on each side, then L_tem and L_sem."""

    dim: int = 256
    init_logit_scale: float = 2.6593
    """log(1 / 0.07), CLIP's initial temperature; the scale is learned and capped at 100."""


@dataclass(frozen=True)
class DecoderConfig:
    """The FaceFormer-style decoder that fuses I, C, A and the style p into 32 coefficients."""

    modality_dim: int = 256
    """Each of image, text and audio features is projected to this width before concatenation."""
    d_model: int = 512
    num_layers: int = 2
    num_heads: int = 8
    intermediate_size: int = 1024
    dropout: float = 0.1
    ppe_period: int = FPS
    """Period of the periodic positional encoding, in frames."""
    max_frames: int = 18_000
    """Longest sequence the positional table covers (10 minutes at 30 fps)."""
    num_styles: int = 20
    """Rows in the per-subject style table (3D-CAVFA has 20 speakers)."""
    style_dim: int = STYLE_DIM
    attention_span_s: float | None = None
    """Seconds back each decoder attention reaches (both are causal); None = every earlier
    frame of the clip, which no stream window holds. The lite preset sets 0.3
    (`LITE_DECODER_ATTENTION_SPAN_S`)."""


@dataclass(frozen=True)
class LossConfig:
    """Weights of L = w_pos L_pos + w_mot L_mot + w_tem L_tem + w_sem L_sem (the paper's)."""

    pos: float = 1.0
    mot: float = 10.0
    tem: float = 1e-4
    sem: float = 1e-5


@dataclass(frozen=True)
class PMMTalkConfig:
    """The whole network: what a checkpoint's ``config.json`` holds."""

    preset: str = "paper"
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    text: TextDecoderConfig = field(default_factory=TextDecoderConfig)
    wav2lip: Wav2LipConfig = field(default_factory=Wav2LipConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sample_rate_hz: int = SAMPLE_RATE_HZ
    fps: int = FPS
    blendshape_names: tuple[str, ...] = BLENDSHAPE_NAMES

    def __post_init__(self) -> None:
        stages = len(self.wav2lip.face_stages)
        if self.wav2lip.img_size != 3 * 2**stages:
            raise ValueError(
                f"wav2lip.img_size must be 3 * 2**{stages} = {3 * 2**stages} for "
                f"{stages} face stages, got {self.wav2lip.img_size}"
            )
        if len(self.wav2lip.decoder_stages) != stages + 1:
            raise ValueError(
                f"wav2lip needs {stages + 1} decoder stages for {stages} face stages, "
                f"got {len(self.wav2lip.decoder_stages)}"
            )
        if self.fps != FPS or self.sample_rate_hz != SAMPLE_RATE_HZ:
            raise ValueError(f"only {SAMPLE_RATE_HZ} Hz audio and {FPS} fps are supported")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PMMTalkConfig:
        """Inverse of `to_dict`; unknown keys are an error so typos in a config never pass."""
        return _build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> PMMTalkConfig:
        return cls.from_dict(json.loads(text))


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if isinstance(hint, types.UnionType) and value is not None:
        (present,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _coerce(present, value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(typing.cast(type[Any], hint), value)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    return value


def paper_config() -> PMMTalkConfig:
    """The network as the paper describes it: XLSR-53-sized branches, 96x96 Wav2Lip."""
    return PMMTalkConfig(preset="paper")


LITE_ATTENTION_SPAN_S: tuple[float, float] = (0.5, 0.1)
"""Seconds before and after a frame each lite speech-transformer layer attends to. With full
attention a frame's features moved by a third when the clip around it changed, so stream windows
disagreed with the offline path; with this band they agree (docs/model.md). The lite image
encoder's transformer uses the same band: with whole-clip attention there, and in the decoder,
single stream frames still differed from `/animate` by up to 0.11; with both bands every frame
of the parity clips is within 0.031 at a 0.4 s lookahead (docs/evaluation.md)."""

LITE_DECODER_ATTENTION_SPAN_S: float = 0.3
"""Seconds back each lite decoder attention reaches (see LITE_ATTENTION_SPAN_S)."""


def lite_config() -> PMMTalkConfig:
    """Every module of the paper, sized for many real-time streams on a CPU.

    Sizes are chosen so one second of speech costs well under a billion multiply-adds; see
    docs/model.md for the measured parameter count and MACs per second of audio.
    """
    return PMMTalkConfig(
        preset="lite",
        audio=AudioEncoderConfig(
            conv_dim=(32, 32, 64, 64, 128, 128, 128),
            hidden_size=192,
            num_layers=4,
            num_heads=4,
            intermediate_size=512,
            num_conv_pos_embeddings=32,
            num_conv_pos_embedding_groups=8,
            normalize_input=False,  # per-clip statistics would differ between stream windows
            attention_span_s=LITE_ATTENTION_SPAN_S,
        ),
        text=TextDecoderConfig(
            hidden_size=128,
            num_layers=3,
            num_heads=4,
            intermediate_size=384,
            num_conv_pos_embeddings=32,
            num_conv_pos_embedding_groups=8,
            # CTC over the project's phone sets (blank, silence, English and Mandarin phones);
            # trained here as a phoneme recogniser (models/training/recognizer.py).
            vocab_size=len(PHONE_VOCABULARY),
            attention_span_s=LITE_ATTENTION_SPAN_S,
        ),
        # 24 px frames: the generator runs once per output frame, so its resolution dominates
        # the cost (48 px with the same widths costs about 4x more per second of speech).
        wav2lip=Wav2LipConfig(
            img_size=24,
            face_stem_channels=8,
            face_stages=((16, 1), (32, 1), (64, 1)),
            embed_dim=64,
            audio_stages=((8, 0), (16, 1), (32, 1), (64, 1)),
            decoder_stages=((64, 0), (48, 1), (32, 0), (16, 0)),
            output_hidden=8,
            channel_order="rgb",
        ),
        image=ImageEncoderConfig(
            cnn_channels=(16, 32),
            hidden_size=128,
            num_layers=2,
            num_heads=4,
            intermediate_size=256,
            attention_span_s=LITE_ATTENTION_SPAN_S,
        ),
        alignment=AlignmentConfig(dim=128),
        decoder=DecoderConfig(
            modality_dim=96,
            d_model=192,
            num_layers=2,
            num_heads=4,
            intermediate_size=384,
            attention_span_s=LITE_DECODER_ATTENTION_SPAN_S,
        ),
    )


PRESETS: dict[str, typing.Callable[[], PMMTalkConfig]] = {
    "paper": paper_config,
    "lite": lite_config,
}


def preset_config(name: str) -> PMMTalkConfig:
    """The config of a named preset; a clear error names the valid ones."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
