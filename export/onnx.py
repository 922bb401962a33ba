"""ONNX export of PMMTalk as two graphs: the face encoder (once per face) and speech-to-frames.

The server runs ``face_encoder.onnx`` once per reference face, caches the identity pyramid, and
feeds it with every clip (or stream window) to ``speech_to_frames.onnx``. Both files carry the
model config, the 32 blendshape names, the frame rate and the sample rate in their
``metadata_props``; ``speech_to_frames.onnx`` also carries the style table.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). It follows the
symbolic sample count through the integer frame arithmetic, so the frame count, padding, mel
windows and 50 Hz -> 30 fps interpolation are all computed inside the graph from the wave length,
and ``torch.stft`` lowers to ONNX's STFT (opset 17+).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from models.blendshapes import num_frames
from models.checkpoint import load_checkpoint
from models.config import PMMTalkConfig
from models.pmmtalk import PMMTalk

logger = logging.getLogger(__name__)

OPSET_VERSION = 18
FACE_ENCODER_FILE = "face_encoder.onnx"
SPEECH_TO_FRAMES_FILE = "speech_to_frames.onnx"
PARITY_CLIP_SAMPLES: tuple[int, ...] = (400, 16_000, 112_000)
"""Clip lengths `check_parity` runs: under one frame (25 ms), 1 s and 7 s at 16 kHz."""
PARITY_TOLERANCE = 1e-4


def identity_names(cfg: PMMTalkConfig) -> list[str]:
    """Names of the identity pyramid tensors, shallow to deep: identity_0 .. identity_k."""
    return [f"identity_{i}" for i in range(len(cfg.wav2lip.face_stages) + 2)]


class FaceEncoder(nn.Module):
    """Export wrapper: face (1, 3, S, S) RGB in [0, 1] -> identity_0 .. identity_k."""

    def __init__(self, model: PMMTalk) -> None:
        super().__init__()
        self.model = model

    def forward(self, face: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.encode_face(face))


class SpeechToFrames(nn.Module):
    """Export wrapper: wave (1, N), style (1, 64), identity pyramid -> blendshapes (1, T, 32).

    `PMMTalk.encode_speech` + `PMMTalk.decode`, with the frame count T derived from N in-graph.
    """

    def __init__(self, model: PMMTalk) -> None:
        super().__init__()
        self.model = model

    def forward(self, wave: Tensor, style: Tensor, identity: list[Tensor]) -> Tensor:
        cfg = self.model.cfg
        frames = num_frames(wave.shape[-1], cfg.sample_rate_hz, cfg.fps)
        speech = self.model.encode_speech(wave, frames)
        return self.model.decode(speech, identity, style).blendshapes  # (1, T, 32)


def metadata(cfg: PMMTalkConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``metadata_props`` every exported file carries (all values are strings)."""
    props = {
        "pmmtalk_config": cfg.to_json(),
        "blendshape_names": json.dumps(list(cfg.blendshape_names)),
        "fps": str(cfg.fps),
        "sample_rate_hz": str(cfg.sample_rate_hz),
        "preset": cfg.preset,
    }
    props.update(extra or {})
    return props


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def read_style_table(path: str | Path) -> np.ndarray:
    """The style table (num_styles, style_dim) float32 stored in ``speech_to_frames.onnx``.

    Pass row k as ``style`` for training subject k, or the mean over rows for an unseen speaker.
    """
    return np.asarray(json.loads(read_metadata(path)["style_table"]), dtype=np.float32)


def _finish(path: Path, props: dict[str, str], axis_names: dict[str, dict[int, str]]) -> None:
    """Write ``props`` into the file's metadata and give its dynamic axes readable names.

    torch.export names a dynamic axis after its symbolic expression (``s21``,
    ``((30*s21 + 15999)//16000)``); callers see ``samples`` and ``frames`` instead.
    """
    proto = onnx.load(str(path))
    for value in [*proto.graph.input, *proto.graph.output]:
        for axis, name in axis_names.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = name
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _face_input(cfg: PMMTalkConfig) -> Tensor:
    size = cfg.wav2lip.img_size
    return torch.rand(1, 3, size, size)


def export_face_encoder(model: PMMTalk, path: str | Path) -> Path:
    """Export ``face_encoder.onnx``.

    Input ``face``: (1, 3, S, S) float32 RGB in [0, 1], S = ``wav2lip.img_size``.
    Outputs ``identity_0`` .. ``identity_k`` float32, shallow to deep: (1, stem, S, S), then
    (1, c_j, S / 2**j, S / 2**j) per face stage, then (1, embed_dim, 1, 1). No dynamic axes: the
    server runs it once per reference face and caches the result.
    """
    out = Path(path)
    names = identity_names(model.cfg)
    with torch.no_grad():
        torch.onnx.export(
            FaceEncoder(model).eval(),
            (_face_input(model.cfg),),
            str(out),
            input_names=["face"],
            output_names=names,
            opset_version=OPSET_VERSION,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    _finish(out, metadata(model.cfg, {"outputs": json.dumps(names)}), {})
    return out


def export_speech_to_frames(model: PMMTalk, path: str | Path) -> Path:
    """Export ``speech_to_frames.onnx``.

    Inputs: ``wave`` (1, N) float32 at 16 kHz, N >= 1 dynamic; ``style`` (1, style_dim) float32
    (a row of the style table in the metadata, or its mean); ``identity_0`` .. ``identity_k``
    from ``face_encoder.onnx``. Output ``blendshapes`` (1, T, 32) float32, T = ceil(N * 30 /
    16000) computed inside the graph, unclipped (callers clip to [0, 1]).

    Dynamic axes: ``wave`` axis 1 (``samples``) and ``blendshapes`` axis 1 (``frames``); every
    other axis is fixed. ``Dim.DYNAMIC`` lets torch.export keep the range it can prove (any
    N >= 0) instead of failing on the size guards it meets for T >= 2 at the example length;
    `check_parity` runs a clip of one frame to show the graph is right there too.
    """
    out = Path(path)
    cfg = model.cfg
    names = identity_names(cfg)
    identity = [t.detach() for t in model.encode_face(_face_input(cfg))]
    dynamic_shapes: tuple[Any, ...] = ({1: torch.export.Dim.DYNAMIC}, None, [None] * len(identity))
    with torch.no_grad():
        torch.onnx.export(
            SpeechToFrames(model).eval(),
            (torch.randn(1, 16_000), torch.randn(1, cfg.decoder.style_dim), identity),
            str(out),
            input_names=["wave", "style", *names],
            output_names=["blendshapes"],
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET_VERSION,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    table = model.decoder.style_table.weight.detach().cpu().numpy().tolist()
    props = metadata(
        cfg, {"inputs": json.dumps(["wave", "style", *names]), "style_table": json.dumps(table)}
    )
    _finish(out, props, {"wave": {1: "samples"}, "blendshapes": {1: "frames"}})
    return out


@dataclass(frozen=True)
class ExportedModel:
    """Paths of one export."""

    face_encoder: Path
    speech_to_frames: Path


def export_onnx(source: PMMTalk | str | Path, out_dir: str | Path) -> ExportedModel:
    """Export a model, or a checkpoint directory, to ``out_dir`` (created if needed)."""
    model = load_checkpoint(source).model if isinstance(source, str | Path) else source
    model = model.cpu().eval()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return ExportedModel(
        face_encoder=export_face_encoder(model, folder / FACE_ENCODER_FILE),
        speech_to_frames=export_speech_to_frames(model, folder / SPEECH_TO_FRAMES_FILE),
    )


@dataclass(frozen=True)
class ParityResult:
    """ONNX Runtime against PyTorch eager on one random clip."""

    samples: int
    frames: int
    max_abs_error: float


def check_parity(
    model: PMMTalk,
    exported: ExportedModel,
    face: np.ndarray | None = None,
    clip_samples: tuple[int, ...] = PARITY_CLIP_SAMPLES,
    seed: int = 0,
) -> list[ParityResult]:
    """Run both exported graphs under onnxruntime (CPU) and ``model`` on the same inputs.

    ``face`` is an RGB photo (H, W, 3) uint8, prepared by `pmmtalk.face.reference_face`; None
    uses the bundled default face. Each clip is fresh Gaussian noise (std 0.3) of the given
    length in samples at 16 kHz; the style is the mean of the table stored in the ONNX metadata
    (the unseen-speaker choice), and PyTorch gets ``style=None``. Returns the largest absolute
    difference of the (unclipped) 32 coefficients per clip.
    """
    import onnxruntime as ort

    from pmmtalk.face import reference_face

    model = model.cpu().eval()
    cfg = model.cfg
    photo = reference_face(face, cfg.wav2lip.img_size)[None]  # (1, 3, S, S) float32
    providers = ["CPUExecutionProvider"]
    face_session = ort.InferenceSession(str(exported.face_encoder), providers=providers)
    speech_session = ort.InferenceSession(str(exported.speech_to_frames), providers=providers)
    identity = face_session.run(None, {"face": photo})
    style = read_style_table(exported.speech_to_frames).mean(axis=0, keepdims=True)
    feeds_identity = dict(zip(identity_names(cfg), identity, strict=True))
    generator = torch.Generator().manual_seed(seed)
    results = []
    for count in clip_samples:
        wave = 0.3 * torch.randn(1, count, generator=generator)  # (1, N)
        with torch.no_grad():
            expected = model(wave, torch.from_numpy(photo), style=None).blendshapes.numpy()
        (got,) = speech_session.run(
            ["blendshapes"], {"wave": wave.numpy(), "style": style, **feeds_identity}
        )
        if got.shape != expected.shape:
            raise RuntimeError(
                f"ONNX gave {got.shape[1]} frames for {count} samples, PyTorch {expected.shape[1]}"
            )
        error = float(np.abs(got - expected).max())
        results.append(ParityResult(samples=count, frames=got.shape[1], max_abs_error=error))
        logger.info("parity %d samples (%d frames): max abs error %.3g", count, got.shape[1], error)
    return results
