"""ONNX export of PMMTalk as three graphs: the face encoder, speech-to-frames and stream window.

The server runs ``face_encoder.onnx`` once per reference face, caches the identity pyramid, and
feeds it with every clip to ``speech_to_frames.onnx`` (any length) or, batched over sessions,
with every fixed-length window to ``stream_window.onnx`` (see `models.streaming`). All files
carry the model config, the 32 blendshape names, the frame rate and the sample rate in their
``metadata_props``; the two speech graphs also carry the style table, and ``stream_window.onnx``
its window lengths (``stream_window``: `StreamWindow.to_dict` as JSON).

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript). It follows the
symbolic sample count through the integer frame arithmetic, so the frame count, padding, mel
windows and 50 Hz -> 30 fps interpolation are all computed inside the graph from the wave length.
The log-mel front end is exported through `DftLogMel`, which computes the STFT as a two-stage DFT
of matrix products rather than ONNX's STFT operator (see there why), and the generator through
`export.generator.SkipSplitWav2Lip`, which adds each identity skip's share of the following layer
once per face rather than once per frame. In ``speech_to_frames.onnx`` every banded attention
layer runs through its `export.attention` stand-in, which scores each chunk of queries against
the keys its band reaches rather than every frame against every other under a mask.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.attention import banded_swaps
from export.external import needs_external_data
from export.generator import SkipSplitWav2Lip
from export.graphs import (
    DEFAULT_WINDOW,
    FRONT_END_CLASS,
    OPSET_VERSION,
    PARITY_TOLERANCE,
    SPEECH_TO_FRAMES_FILE,
    STREAM_WINDOW_FILE,
    ExportedModel,
)
from export.translations import CUSTOM_TRANSLATIONS
from models.blendshapes import num_frames
from models.checkpoint import load_checkpoint
from models.config import PMMTalkConfig
from models.mel import (
    HOP_SAMPLES,
    MAX_ABS_VALUE,
    MIN_LEVEL_DB,
    N_FFT,
    PREEMPHASIS,
    REF_LEVEL_DB,
    LogMelSpectrogram,
)
from models.pmmtalk import PMMTalk
from models.streaming import StreamWindow, window_step

logger = logging.getLogger(__name__)

PARITY_CLIP_SAMPLES: tuple[int, ...] = (400, 16_000, 112_000)
"""Clip lengths `check_parity` runs: under one frame (25 ms), 1 s and 7 s at 16 kHz."""
PARITY_WINDOW_BATCHES: tuple[int, ...] = (1, 3)
"""Batch sizes of the stream-window graph `check_parity` runs."""


def identity_names(cfg: PMMTalkConfig) -> list[str]:
    """Names of the identity pyramid tensors, shallow to deep: identity_0 .. identity_k."""
    return [f"identity_{i}" for i in range(len(cfg.wav2lip.face_stages) + 2)]


DFT_OUTER: Final = 32
"""The 800-point DFT as 32 x 25: sample n = 25 n1 + n2 (n1 < 32), bin k = k1 + 32 k2 (k1 < 32)."""
DFT_INNER: Final = N_FFT // DFT_OUTER


class DftLogMel(LogMelSpectrogram):
    """Export stand-in for `LogMelSpectrogram`: the same function, with the STFT computed as a
    two-stage (Cooley-Tukey) DFT of matrix products rather than by ``torch.stft``.

    Why: ONNX Runtime's STFT kernel is much less exact than ``torch.stft``. On 7 s of noise its
    normalised log-mel is up to 3e-3 from float64, against 7e-6 for torch in fp32, which alone
    breaks the 1e-4 parity of the coefficients. Here every basis is computed in float64 with the
    angles' integer products reduced modulo their period before the sine and cosine; the result
    lands within 1e-5 of float64 under ONNX Runtime.

    The 800 samples of a frame split as n = 25 n1 + n2 and the bins as k = k1 + 32 k2:

        X[k1 + 32 k2] = sum_n2 exp(-2 pi i (k1 + 32 k2) n2 / 800)
                        * sum_n1 w x[25 n1 + n2] exp(-2 pi i k1 n1 / 32)

    The inner sums are two matrix products over n1 (real and imaginary parts), the outer ones a
    batched product over n2 for each k1. Only the bins the mel filterbank uses (3 to 379 of
    0..400) are computed, so k2 < 12. About 90 k MACs per mel frame against 640 k for a direct
    DFT, and the frames are cut from 200-sample blocks (a frame is 4 hops) with reshapes and
    slices: under ONNX Runtime on 2 cores the front end of a 10 s clip takes about 7 ms instead
    of the 13 ms of the direct DFT as a strided convolution.

    wave (B, S) float32 at 16 kHz -> (B, 80, S // 200 + 1), as `LogMelSpectrogram`.
    """

    window_grid: Tensor
    inner_cos: Tensor
    inner_sin: Tensor
    outer_from_real: Tensor
    outer_from_imag: Tensor
    mel_grid: Tensor

    def __init__(self) -> None:
        super().__init__()
        if N_FFT % HOP_SAMPLES or HOP_SAMPLES % DFT_INNER:
            raise ValueError("frames must be whole hops, and hops whole rows of the inner DFT")
        mel = self.mel_basis.double().numpy()  # (80, 401)
        self.outer_bins = int(np.nonzero(mel.any(axis=0))[0].max()) // DFT_OUTER + 1  # 12
        n1 = k1 = np.arange(DFT_OUTER)
        n2, k2 = np.arange(DFT_INNER), np.arange(self.outer_bins)
        inner = 2 * np.pi * ((k1[:, None] * n1[None, :]) % DFT_OUTER) / DFT_OUTER  # (k1, n1)
        bins = k1[:, None] + DFT_OUTER * k2[None, :]  # (k1, k2): k
        outer = 2 * np.pi * ((bins[:, None, :] * n2[None, :, None]) % N_FFT) / N_FFT
        cos, sin = np.cos(outer), np.sin(outer)  # (k1, n2, k2)
        # (a + ib) e^{-i t} = (a cos t + b sin t) + i (b cos t - a sin t); columns [real | imag].
        from_real = np.concatenate([cos, -sin], axis=2)  # (k1, n2, 2 k2)
        from_imag = np.concatenate([sin, cos], axis=2)
        grid = np.zeros((mel.shape[0], DFT_OUTER, self.outer_bins))  # (80, k1, k2)
        inside = bins <= N_FFT // 2
        grid[:, inside] = mel[:, bins[inside]]
        window = self.window.double().numpy().reshape(DFT_OUTER, 1, 1, DFT_INNER)  # (n1,1,1,n2)

        def buffer(name: str, array: np.ndarray) -> None:
            tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
            self.register_buffer(name, tensor, persistent=False)

        buffer("window_grid", window)
        buffer("inner_cos", np.cos(inner))
        buffer("inner_sin", -np.sin(inner))
        buffer("outer_from_real", from_real)
        buffer("outer_from_imag", from_imag)
        buffer("mel_grid", grid.reshape(mel.shape[0], -1))  # (80, k1 k2)

    def forward(self, wave: Tensor) -> Tensor:
        emphasised = torch.cat(
            [wave[:, :1], wave[:, 1:] - PREEMPHASIS * wave[:, :-1]], dim=1
        )  # (B, S)
        batch, samples = emphasised.shape
        frames = samples // HOP_SAMPLES + 1  # M
        hops = N_FFT // HOP_SAMPLES  # 4 hops per frame
        # torch.stft(center=True, pad_mode="constant"): half an FFT of zeros on both sides;
        # frame m is then hops m .. m + 3 of the padded wave.
        padded = F.pad(emphasised, (N_FFT // 2, N_FFT // 2))[:, : (frames + hops - 1) * HOP_SAMPLES]
        blocks = padded.reshape(batch, frames + hops - 1, HOP_SAMPLES // DFT_INNER, DFT_INNER)
        blocks = blocks.permute(2, 0, 1, 3)  # (8, B, M + 3, 25): hop sample 25 r + n2
        framed = torch.cat([blocks[:, :, j : j + frames] for j in range(hops)], dim=0)
        x = (framed * self.window_grid).reshape(DFT_OUTER, -1)  # (n1 = 8 j + r, B M 25)
        real = torch.matmul(self.inner_cos, x).reshape(DFT_OUTER, batch * frames, DFT_INNER)
        imag = torch.matmul(self.inner_sin, x).reshape(DFT_OUTER, batch * frames, DFT_INNER)
        spec = torch.matmul(real, self.outer_from_real) + torch.matmul(
            imag, self.outer_from_imag
        )  # (k1, B M, 2 k2)
        count = self.outer_bins
        magnitude = torch.sqrt(spec[..., :count] ** 2 + spec[..., count:] ** 2)  # (k1, BM, k2)
        magnitude = magnitude.transpose(1, 2).reshape(DFT_OUTER * count, batch * frames)
        mel = torch.matmul(self.mel_grid, magnitude)  # (80, B M)
        mel = mel.reshape(-1, batch, frames).transpose(0, 1)  # (B, 80, M)
        floor = 10.0 ** (MIN_LEVEL_DB / 20.0)
        db = 20.0 * torch.log10(torch.clamp(mel, min=floor)) - REF_LEVEL_DB
        scaled = 2.0 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
        return torch.clamp(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)  # (B, 80, M)


if f"{DftLogMel.__module__}.{DftLogMel.__qualname__}" != FRONT_END_CLASS:
    raise ImportError("export.graphs.FRONT_END_CLASS must name export.onnx.DftLogMel")


@contextmanager
def _speech_graph_stand_ins(model: PMMTalk, *, banded: bool) -> Iterator[None]:
    """Trace the speech graphs with their export stand-ins in place, and with PyTorch's plain
    transformer layers.

    ``model.mel`` becomes `DftLogMel` (ONNX Runtime's STFT is too inexact) and
    ``model.generator`` becomes `export.generator.SkipSplitWav2Lip` (each identity skip's share
    of the next layer computed once per face instead of once per frame). With ``banded`` every
    banded attention layer becomes its `export.attention` stand-in (each query chunk against its
    band of keys only). All compute the same function as the modules they stand in for.
    Swapped in place and back rather than copying the model, which would double its memory. In
    eval mode `nn.TransformerEncoderLayer` takes a fused "fast path" when given an attention
    mask (the banded image encoder does), an operator the ONNX exporter cannot translate; the
    plain path computes the same.
    """
    mel, generator = model.mel, model.generator
    swaps = banded_swaps(model) if banded else []
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    fast_path = torch.backends.mha.get_fastpath_enabled()
    model.mel = DftLogMel().to(mel.mel_basis.device)
    model.generator = SkipSplitWav2Lip(generator)
    for owner, name, stand_in in swaps:
        setattr(owner, name, stand_in)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        model.mel, model.generator = mel, generator
        for owner, name, original in originals:
            setattr(owner, name, original)
        torch.backends.mha.set_fastpath_enabled(fast_path)


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


class StreamWindowGraph(nn.Module):
    """Export wrapper: a batch of fixed-length windows, with their streams' carried per-frame
    features -> (blendshapes (B, Tw, 32), carry_out (B, C, D)).

    Calls `models.streaming.window_step`, the PyTorch reference the streaming engine is tested
    against, so the graph cannot drift from it.
    """

    def __init__(self, model: PMMTalk, window: StreamWindow) -> None:
        super().__init__()
        self.model = model
        self.window = window

    def forward(
        self,
        wave: Tensor,
        style: Tensor,
        frame_offset: Tensor,
        carry: Tensor,
        fresh_start: Tensor,
        identity: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        return window_step(
            self.model, self.window, wave, identity, style, frame_offset, carry, fresh_start
        )


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
    """The style table (num_styles, style_dim) float32 stored in either speech graph.

    Pass row k as ``style`` for training subject k, or the mean over rows for an unseen speaker.
    """
    return np.asarray(json.loads(read_metadata(path)["style_table"]), dtype=np.float32)


def read_stream_window(path: str | Path) -> StreamWindow:
    """The window ``stream_window.onnx`` was exported for (its ``stream_window`` metadata)."""
    props = read_metadata(path)
    if "stream_window" not in props:
        raise ValueError(f"{path} has no stream_window metadata: it is not a stream-window graph")
    lengths = json.loads(props["stream_window"])
    return StreamWindow(
        left_context_s=float(lengths["left_context_s"]),
        hop_s=float(lengths["hop_s"]),
        lookahead_s=float(lengths["lookahead_s"]),
    )


def _finish(path: Path, props: dict[str, str], axis_names: dict[str, dict[int, str]]) -> None:
    """Write ``props`` into the file's metadata and give its dynamic axes readable names.

    torch.export names a dynamic axis after its symbolic expression (``s21``,
    ``((30*s21 + 15999)//16000)``); callers see ``samples`` and ``frames`` instead. A graph
    with external data (`export.external`) keeps its side file: only the graph is rewritten.
    """
    proto = onnx.load(str(path), load_external_data=False)
    for value in [*proto.graph.input, *proto.graph.output]:
        for axis, name in axis_names.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = name
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _face_input(cfg: PMMTalkConfig, batch: int = 1) -> Tensor:
    size = cfg.wav2lip.img_size
    return torch.rand(batch, 3, size, size)


def _style_table_json(model: PMMTalk) -> str:
    return json.dumps(model.decoder.style_table.weight.detach().cpu().numpy().tolist())


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
            custom_translation_table=CUSTOM_TRANSLATIONS,
            external_data=needs_external_data(model),
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
    with torch.no_grad(), _speech_graph_stand_ins(model, banded=True):
        torch.onnx.export(
            SpeechToFrames(model).eval(),
            (torch.randn(1, 16_000), torch.randn(1, cfg.decoder.style_dim), identity),
            str(out),
            input_names=["wave", "style", *names],
            output_names=["blendshapes"],
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET_VERSION,
            dynamo=True,
            custom_translation_table=CUSTOM_TRANSLATIONS,
            external_data=needs_external_data(model),
            verbose=False,
        )
    props = metadata(
        cfg,
        {"inputs": json.dumps(["wave", "style", *names]), "style_table": _style_table_json(model)},
    )
    _finish(out, props, {"wave": {1: "samples"}, "blendshapes": {1: "frames"}})
    return out


def export_stream_window(
    model: PMMTalk, path: str | Path, window: StreamWindow = DEFAULT_WINDOW
) -> Path:
    """Export ``stream_window.onnx``: one call runs a batch of streaming windows.

    Inputs, B the dynamic axis ``batch`` (one window per streaming session, B >= 1):
    ``wave`` (B, W) float32 at 16 kHz, W = ``window.window_samples`` fixed (27,200 for the
    default 1.0 s + 0.4 s + 0.3 s window); ``style`` (B, style_dim) float32; ``frame_offset``
    (B,) int64, the index on its stream's 30 fps clock of each window's first frame (negative
    for a window that starts in the left padding before the stream); ``carry`` (B, C, D)
    float32, C = ``window.carry_frames`` and D the image encoder's width, each stream's
    ``carry_out`` from its previous window; ``fresh_start`` (B,) float32, 1 for a stream's first
    window (its ``carry`` row is then ignored: pass zeros), else 0; ``identity_0`` ..
    ``identity_k`` float32, each (B, ...) with the per-face shapes ``face_encoder.onnx`` gives
    (stack the sessions' cached pyramids along axis 0). Outputs ``blendshapes`` (B, Tw, 32)
    float32, Tw = ``window.window_frames`` fixed (54 by default), unclipped, frames
    [left_frames, left_frames + hop_frames) being the ones a window emits; and ``carry_out``
    (B, C, D), to pass as the stream's next ``carry`` (see `models.streaming.window_step`).
    """
    out = Path(path)
    cfg = model.cfg
    names = identity_names(cfg)
    carried = window.carry_frames
    if carried < 1:
        raise ValueError(
            f"a stream window needs at least 0.2 s of left context, got {window.left_context_s} s"
        )
    # Example batch 2: torch.export specialises an axis whose example size is 0 or 1.
    identity = [t.detach() for t in model.encode_face(_face_input(cfg, batch=2))]
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes: tuple[Any, ...] = (
        {0: batch},
        {0: batch},
        {0: batch},
        {0: batch},
        {0: batch},
        [{0: batch}] * len(identity),
    )
    example = (
        torch.randn(2, window.window_samples),
        torch.randn(2, cfg.decoder.style_dim),
        torch.tensor([-window.left_frames, 7]),
        torch.randn(2, carried, cfg.image.hidden_size),
        torch.tensor([1.0, 0.0]),
        identity,
    )
    inputs = ["wave", "style", "frame_offset", "carry", "fresh_start", *names]
    outputs = ["blendshapes", "carry_out"]
    # A window is short (90 latent frames by default): chunked attention saves little there
    # and its extra nodes cost more, about 2-4 % per window call under ONNX Runtime.
    with torch.no_grad(), _speech_graph_stand_ins(model, banded=False):
        torch.onnx.export(
            StreamWindowGraph(model, window).eval(),
            example,
            str(out),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET_VERSION,
            dynamo=True,
            custom_translation_table=CUSTOM_TRANSLATIONS,
            external_data=needs_external_data(model),
            verbose=False,
        )
    props = metadata(
        cfg,
        {
            "inputs": json.dumps(inputs),
            "style_table": _style_table_json(model),
            "stream_window": json.dumps(window.to_dict()),
        },
    )
    _finish(out, props, {name: {0: "batch"} for name in [*inputs, *outputs]})
    return out


def export_onnx(
    source: PMMTalk | str | Path,
    out_dir: str | Path,
    window: StreamWindow = DEFAULT_WINDOW,
    on_step: Callable[[str], None] | None = None,
) -> ExportedModel:
    """Export a model, or a checkpoint directory, to ``out_dir`` (created if needed).

    Writes ``face_encoder.onnx``, ``speech_to_frames.onnx`` and ``stream_window.onnx`` (for
    ``window``). ``on_step`` is called with each file name before that file is exported (each
    takes from seconds to minutes), so callers can show progress.
    """
    model = load_checkpoint(source).model if isinstance(source, str | Path) else source
    model = model.cpu().eval()
    exported = ExportedModel.in_directory(out_dir)
    exported.directory.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[Path, Callable[[PMMTalk, Path], Path]]] = [
        (exported.face_encoder, export_face_encoder),
        (exported.speech_to_frames, export_speech_to_frames),
        (exported.stream_window, lambda m, p: export_stream_window(m, p, window)),
    ]
    for path, export in steps:
        if on_step is not None:
            on_step(path.name)
        export(model, path)
    return exported


@dataclass(frozen=True)
class ParityResult:
    """ONNX Runtime against PyTorch eager on one random input.

    ``graph`` is the file checked; ``batch`` its batch size (always 1 for speech-to-frames);
    ``samples`` the audio length of each item at 16 kHz and ``frames`` the frames it gave.
    """

    graph: str
    batch: int
    samples: int
    frames: int
    max_abs_error: float

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= PARITY_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus ``input`` and ``passed`` for readers of manifest.json."""
        return {
            "graph": self.graph,
            "input": self.input,
            "batch": self.batch,
            "samples": self.samples,
            "frames": self.frames,
            "max_abs_error": self.max_abs_error,
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ParityResult:
        """Inverse of `to_dict` (the derived keys are ignored)."""
        return cls(
            graph=str(fields["graph"]),
            batch=int(fields["batch"]),
            samples=int(fields["samples"]),
            frames=int(fields["frames"]),
            max_abs_error=float(fields["max_abs_error"]),
        )

    @property
    def input(self) -> str:
        """The input in words, for tables: "1 clip of 400 samples", "3 windows of 32000"."""
        if self.graph == STREAM_WINDOW_FILE:
            noun = "window" if self.batch == 1 else "windows"
        else:
            noun = "clip" if self.batch == 1 else "clips"
        return f"{self.batch} {noun} of {self.samples} samples"


def check_parity(
    model: PMMTalk,
    exported: ExportedModel,
    face: np.ndarray | None = None,
    clip_samples: tuple[int, ...] = PARITY_CLIP_SAMPLES,
    seed: int = 0,
    window_batches: tuple[int, ...] = PARITY_WINDOW_BATCHES,
) -> list[ParityResult]:
    """Run the exported graphs under onnxruntime (CPU) and ``model`` on the same inputs.

    ``face`` is an RGB photo (H, W, 3) uint8, prepared by `pmmtalk.face.reference_face`; None
    uses the bundled default face. Every identity goes through ``face_encoder.onnx``, so that
    graph is checked by both others.

    speech_to_frames: each clip is fresh Gaussian noise (std 0.3) of the given length in samples
    at 16 kHz; the style is the mean of the table stored in the ONNX metadata (the
    unseen-speaker choice), and PyTorch gets ``style=None``.

    stream_window: per batch size B, B windows of noise, each with its own face (the photo, the
    photo mirrored, then random-pixel faces), style (table rows, then their mean) and frame
    offset (the first is ``-left_frames``, a window starting before its stream, and the only one
    marked ``fresh_start``; the others get random carried features), against
    `models.streaming.window_step`, on both outputs.

    Returns the largest absolute difference of the (unclipped) 32 coefficients per input.
    """
    import onnxruntime as ort

    from pmmtalk.face import reference_face

    model = model.cpu().eval()
    cfg = model.cfg
    photo = reference_face(face, cfg.wav2lip.img_size)[None]  # (1, 3, S, S) float32
    providers = ["CPUExecutionProvider"]
    face_session = ort.InferenceSession(str(exported.face_encoder), providers=providers)
    speech_session = ort.InferenceSession(str(exported.speech_to_frames), providers=providers)
    names = identity_names(cfg)

    def encode(faces: np.ndarray) -> list[np.ndarray]:
        """(B, 3, S, S) -> identity pyramid with batch B, one face-encoder run per face."""
        runs = [face_session.run(None, {"face": faces[i : i + 1]}) for i in range(len(faces))]
        return [np.concatenate(level, axis=0) for level in zip(*runs, strict=True)]

    identity = encode(photo)
    table = read_style_table(exported.speech_to_frames)  # (num_styles, style_dim)
    style = table.mean(axis=0, keepdims=True)
    generator = torch.Generator().manual_seed(seed)
    results = []
    for count in clip_samples:
        wave = 0.3 * torch.randn(1, count, generator=generator)  # (1, N)
        with torch.no_grad():
            expected = model(wave, torch.from_numpy(photo), style=None).blendshapes.numpy()
        (got,) = speech_session.run(
            ["blendshapes"],
            {"wave": wave.numpy(), "style": style, **dict(zip(names, identity, strict=True))},
        )
        if got.shape != expected.shape:
            raise RuntimeError(
                f"ONNX gave {got.shape[1]} frames for {count} samples, PyTorch {expected.shape[1]}"
            )
        results.append(_result(SPEECH_TO_FRAMES_FILE, 1, count, got, expected))

    if window_batches:
        window = read_stream_window(exported.stream_window)
        window_session = ort.InferenceSession(str(exported.stream_window), providers=providers)
        styles = np.concatenate([table, style])  # (num_styles + 1, style_dim)
        for batch in window_batches:
            faces = np.concatenate(
                [
                    photo,
                    photo[..., ::-1],
                    torch.rand(batch, *photo.shape[1:], generator=generator).numpy(),
                ]
            )[:batch].astype(np.float32)  # (B, 3, S, S)
            waves = 0.3 * torch.randn(batch, window.window_samples, generator=generator)
            chosen = styles[np.arange(batch) % len(styles)]  # (B, style_dim)
            # Before the stream, mid-stream, and hours in (the positional encoding wraps).
            offsets = np.array([-window.left_frames, 45, 1_000_003], dtype=np.int64)
            offsets = offsets[np.arange(batch) % len(offsets)]  # (B,)
            # The first window of each batch starts its stream; the others carry features.
            carry = torch.randn(
                batch, window.carry_frames, cfg.image.hidden_size, generator=generator
            )
            fresh = (np.arange(batch) == 0).astype(np.float32)  # (B,)
            with torch.no_grad():
                expected, expected_carry = (
                    t.numpy()
                    for t in window_step(
                        model,
                        window,
                        waves,
                        model.encode_face(torch.from_numpy(faces)),
                        torch.from_numpy(chosen),
                        torch.from_numpy(offsets),
                        carry,
                        torch.from_numpy(fresh),
                    )
                )
            feeds = {
                "wave": waves.numpy(),
                "style": chosen,
                "frame_offset": offsets,
                "carry": carry.numpy(),
                "fresh_start": fresh,
            }
            feeds.update(zip(names, encode(faces), strict=True))
            got, got_carry = window_session.run(["blendshapes", "carry_out"], feeds)
            if got.shape != expected.shape or got_carry.shape != expected_carry.shape:
                raise RuntimeError(
                    f"stream window: ONNX gave {got.shape} and {got_carry.shape}, PyTorch "
                    f"{expected.shape} and {expected_carry.shape}"
                )
            # Both outputs count: a carry that drifted would move every later window.
            carry_error = float(np.abs(got_carry - expected_carry).max())
            results.append(
                _result(
                    STREAM_WINDOW_FILE,
                    batch,
                    window.window_samples,
                    got,
                    expected,
                    other_error=carry_error,
                )
            )
    return results


def _result(
    graph: str,
    batch: int,
    samples: int,
    got: np.ndarray,
    expected: np.ndarray,
    other_error: float = 0.0,
) -> ParityResult:
    """``other_error``: the largest difference of the graph's other outputs, if any."""
    error = max(float(np.abs(got - expected).max()), other_error)
    frames = int(got.shape[1])
    logger.info(
        "parity %s, %d x %d samples (%d frames): max abs error %.3g",
        graph,
        batch,
        samples,
        frames,
        error,
    )
    return ParityResult(graph, batch, samples, frames, error)
