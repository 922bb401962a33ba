"""fp16 and int8 variants of the two speech graphs, and what each costs in accuracy.

For ``speech_to_frames.onnx`` and ``stream_window.onnx`` of an export directory:

- ``fp16``: weights and activations in float16 (onnxruntime's float16 converter), inputs and
  outputs still float32 (``keep_io_types``), for GPUs. The log-mel front end stays float32:
  its DFT magnitudes reach several hundred and their squares overflow float16 (65,504), and the
  log then amplifies the rounding of quiet bins.
- ``int8``: dynamic quantization (onnxruntime.quantization.quantize_dynamic): int8 weights of
  MatMul and Gemm, activations quantized per call; for CPUs, half the file size. The front
  end's mel product is left float32 (8 bits would drown the quiet mel bins); its DFT is a Conv,
  which is not quantized.

Variant files sit beside the originals (``speech_to_frames.fp16.onnx``, ...) and are listed in
the export's manifest.json with their report. A report gives the largest absolute difference
from the float32 graph on random inputs (clips of noise for speech-to-frames, a batch of windows
for the stream graph), and, given a corpus, the ALE (`models.metrics`) of float32 and of the
variant on its held-out test split, through speech-to-frames, as ``pmmtalk eval`` scores it
(mean style, bundled default face, output clipped to [0, 1]).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

import numpy as np
import onnx

from export.cache import (
    MANIFEST_FILE,
    exclusive_lock,
    file_entry,
    read_manifest,
    update_manifest,
)
from export.external import save_graph, too_big_for_one_file
from export.graphs import front_end_nodes
from export.onnx import (
    ExportedModel,
    identity_names,
    read_metadata,
    read_stream_window,
    read_style_table,
)

logger = logging.getLogger(__name__)

VariantKind = Literal["fp16", "int8"]
VARIANT_KINDS: Final[tuple[VariantKind, ...]] = ("fp16", "int8")
VARIANT_GRAPHS: Final = ("speech_to_frames", "stream_window")
"""The `ExportedModel` fields whose graphs get variants (the face encoder runs once per face)."""
ERROR_CLIP_SAMPLES: Final = (16_000, 112_000)
"""Random clips (1 s and 7 s at 16 kHz) the speech-to-frames error is measured on."""
ERROR_WINDOW_BATCH: Final = 3
HELD_OUT_CORPUS_SIZE: Final = 240
"""Utterances of the corpus generated when none is given; its test split holds 24 of them."""
HELD_OUT_CORPUS_SEED: Final = 4_004
INT8_OP_TYPES: Final = ("MatMul", "Gemm")

Progress = Callable[[str], None]


def parse_variants(text: str) -> tuple[VariantKind, ...]:
    """``"fp16,int8"`` -> ("fp16", "int8"); ValueError naming an unknown kind."""
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in VARIANT_KINDS]
    if unknown or not kinds:
        raise ValueError(
            f"unknown variant {', '.join(unknown) or repr(text)}; choose from "
            f"{', '.join(VARIANT_KINDS)} (comma-separated)"
        )
    return tuple(dict.fromkeys(cast(VariantKind, kind) for kind in kinds))


def variant_path(graph: Path, kind: VariantKind) -> Path:
    """``speech_to_frames.onnx`` -> ``speech_to_frames.fp16.onnx`` in the same folder."""
    return graph.with_name(f"{graph.stem}.{kind}{graph.suffix}")


def convert_fp16(source: str | Path, target: str | Path) -> list[str]:
    """Write the float16 variant of ``source`` to ``target``; returns the nodes kept float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    kept = front_end_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=kept)
    _repair_fp16_casts(converted.graph)
    onnx.checker.check_model(converted)
    save_graph(converted, target)
    return kept


def _repair_fp16_casts(graph: onnx.GraphProto) -> None:
    """Fix two habits of the float16 converter around the float32 nodes it keeps.

    It inserts one Cast per kept consumer of a tensor, all with the same name and output, which
    ONNX Runtime refuses ("two nodes with same node name"); identical copies are dropped. And a
    kept node fed from a float32 tensor that other nodes read in float16 gets it through
    float32 -> float16 -> float32 Casts, which would round the wave to float16 before the
    front end; such a pair is bypassed so the node reads the float32 original. Casts of a
    float32 initializer or graph input to float32 (no-ops it also adds) are dropped.
    """
    seen: set[bytes] = set()
    unique = []
    for node in graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            unique.append(node)
    producer = {output: node for node in unique for output in node.output}

    def cast_to(node: onnx.NodeProto | None) -> int | None:
        if node is None or node.op_type != "Cast":
            return None
        return next((int(a.i) for a in node.attribute if a.name == "to"), None)

    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    floats |= {
        value.name
        for value in graph.input
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    replaced: dict[str, str] = {}
    for node in unique:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        source = producer.get(node.input[0])
        if source is not None and cast_to(source) == onnx.TensorProto.FLOAT16:
            replaced[node.output[0]] = source.input[0]
        elif node.input[0] in floats:
            replaced[node.output[0]] = node.input[0]
    removable = set(replaced) - {value.name for value in graph.output}
    kept = [node for node in unique if not set(node.output) & removable]
    for node in kept:
        for index, name in enumerate(node.input):
            while name in replaced:
                name = replaced[name]
            node.input[index] = name
    del graph.node[:]
    graph.node.extend(_topological(kept, graph))


def _topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after the producers of its inputs.

    The converter appends its Casts at the end; ONNX (and TensorRT's parser) want producers
    first. Stable: nodes already in order keep their relative order.
    """
    ready = {value.name for value in graph.input} | {t.name for t in graph.initializer}
    ready.add("")  # an omitted optional input
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            names = ", ".join(node.name for node in waiting[:3])
            raise ValueError(f"the float16 graph has a cycle or a missing input at {names}")
        pending = waiting
    return ordered


def quantize_int8(source: str | Path, target: str | Path) -> list[str]:
    """Write the dynamically quantized int8 variant of ``source`` to ``target``.

    Only MatMul and Gemm weights are quantized, one scale per tensor; the nodes of the front end
    are excluded (returned). On the default checkpoint (docs/export.md) per-channel scales gave
    3x the error, and quantizing Conv as well gave no better accuracy at twice the CPU time
    (ONNX Runtime's ConvInteger is slower than its float convolution).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    kept = front_end_nodes(model)
    # quantize_dynamic re-infers shapes on the graph it rewrites, and the exporter's recorded
    # intermediate shapes then clash ("Inferred shape and existing shape differ"): drop them.
    del model.graph.value_info[:]
    advice = _DropMessage("pre-processing before quantization")
    root = logging.getLogger()
    # The quantizer advises its optional pre-processing (shape inference and fusions) on the
    # root logger at every call; the variant is measured as made (docs/export.md), so the
    # advice is only noise in the command's output.
    root.addFilter(advice)
    try:
        quantize_dynamic(
            model,
            str(target),
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=False,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept,
            use_external_data_format=too_big_for_one_file(model),
        )
    finally:
        root.removeFilter(advice)
    return kept


class _DropMessage(logging.Filter):
    """Drops log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


CONVERTERS: Final[dict[VariantKind, Callable[[str | Path, str | Path], list[str]]]] = {
    "fp16": convert_fp16,
    "int8": quantize_int8,
}


@dataclass(frozen=True)
class VariantReport:
    """One variant of one graph against its float32 original.

    ``max_abs_error``: largest absolute coefficient difference on random inputs (unclipped).
    ``ale_fp32`` / ``ale_variant``: ALE in coefficient units on ``clips`` held-out corpus clips
    (None without a corpus, and for the stream graph); ``rtf_*``: compute seconds per second
    of audio over those clips on this machine's CPU.
    """

    kind: str
    graph: str
    file: str
    bytes: int
    fp32_bytes: int
    max_abs_error: float
    fp32_nodes: int
    clips: int = 0
    ale_fp32: float | None = None
    ale_variant: float | None = None
    rtf_fp32: float | None = None
    rtf_variant: float | None = None

    @property
    def ale_change(self) -> float | None:
        """ALE of the variant minus ALE of float32 (positive: the variant is worse)."""
        if self.ale_fp32 is None or self.ale_variant is None:
            return None
        return self.ale_variant - self.ale_fp32


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Errors only: float16 graphs on the CPU provider log a warning per node it cannot
    # constant-fold in float16, which says nothing about the variant's accuracy.
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _reference_identity(exported: ExportedModel) -> dict[str, np.ndarray]:
    """The bundled default face through the float32 face encoder, by input name."""
    from models.config import PMMTalkConfig
    from pmmtalk.face import reference_face

    cfg = PMMTalkConfig.from_json(read_metadata(exported.face_encoder)["pmmtalk_config"])
    face = reference_face(None, cfg.wav2lip.img_size)[None]  # (1, 3, S, S)
    outputs = _session(exported.face_encoder).run(None, {"face": face})
    return dict(zip(identity_names(cfg), outputs, strict=True))


def _speech_error(
    fp32: Any, variant: Any, identity: dict[str, np.ndarray], style: np.ndarray, seed: int
) -> float:
    rng = np.random.default_rng(seed)
    worst = 0.0
    for samples in ERROR_CLIP_SAMPLES:
        wave = (0.3 * rng.standard_normal((1, samples))).astype(np.float32)  # (1, N)
        feeds = {"wave": wave, "style": style[None], **identity}
        (expected,) = fp32.run(["blendshapes"], feeds)
        (got,) = variant.run(["blendshapes"], feeds)
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def _window_error(
    path: Path,
    fp32: Any,
    variant: Any,
    identity: dict[str, np.ndarray],
    table: np.ndarray,
    seed: int,
) -> float:
    window = read_stream_window(path)
    carry_dim = next(int(i.shape[2]) for i in fp32.get_inputs() if i.name == "carry")
    rng = np.random.default_rng(seed)
    batch = ERROR_WINDOW_BATCH
    feeds = {
        "wave": (0.3 * rng.standard_normal((batch, window.window_samples))).astype(np.float32),
        "style": table[np.arange(batch) % len(table)],
        "frame_offset": np.array([-window.left_frames, 45, 1_000_003][:batch], dtype=np.int64),
        # The first window starts its stream; the others carry (random) features.
        "carry": rng.standard_normal((batch, window.carry_frames, carry_dim)).astype(np.float32),
        "fresh_start": (np.arange(batch) == 0).astype(np.float32),
        **{name: np.repeat(value, batch, axis=0) for name, value in identity.items()},
    }
    outputs = ["blendshapes", "carry_out"]
    expected = fp32.run(outputs, feeds)
    got = variant.run(outputs, feeds)
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))


@dataclass(frozen=True)
class _CorpusScore:
    clips: int
    ale: dict[str, float]  # by model: "fp32" or a variant kind
    rtf: dict[str, float]


def _score_corpus(
    sessions: dict[str, Any],
    identity: dict[str, np.ndarray],
    style: np.ndarray,
    corpus_dir: Path,
    max_clips: int | None,
    say: Progress,
) -> _CorpusScore:
    """ALE of each speech-to-frames session over the corpus's test split."""
    from models.data.corpus import CorpusDataset
    from models.metrics import MetricAccumulator

    dataset = CorpusDataset(corpus_dir, "test")
    count = len(dataset) if max_clips is None else min(max_clips, len(dataset))
    say(f"scoring fp32 and {', '.join(k for k in sessions if k != 'fp32')} on {count} clips")
    metrics = {name: MetricAccumulator() for name in sessions}
    seconds = dict.fromkeys(sessions, 0.0)
    audio_s = 0.0
    for index in range(count):
        clip = dataset[index]
        feeds = {"wave": clip.wave[None], "style": style[None], **identity}
        audio_s += clip.duration_s
        for name, session in sessions.items():
            started = time.perf_counter()
            (frames,) = session.run(["blendshapes"], feeds)
            seconds[name] += time.perf_counter() - started
            metrics[name].update(np.clip(frames[0], 0.0, 1.0), clip.targets)
    return _CorpusScore(
        clips=count,
        ale={name: m.compute()["ale"] for name, m in metrics.items()},
        rtf={name: s / audio_s for name, s in seconds.items()},
    )


def make_variants(
    exported: ExportedModel,
    kinds: Sequence[VariantKind] = VARIANT_KINDS,
    corpus_dir: Path | None = None,
    *,
    max_clips: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[VariantReport]:
    """Write the ``kinds`` variants of both speech graphs beside them and report each.

    ``corpus_dir``: a corpus directory (`models.corpus.manifest`) whose test split the ALE is
    measured on, at most ``max_clips`` clips; None reports the random-input error only. The
    reports are also recorded under ``variants`` in the export's manifest.json, where there is
    one. Raises ValueError for an unknown kind or a graph not written by `export.onnx`.
    """
    say = progress if progress is not None else logger.info
    for kind in kinds:
        if kind not in VARIANT_KINDS:
            raise ValueError(f"unknown variant {kind!r}; choose from {', '.join(VARIANT_KINDS)}")
    written: dict[tuple[VariantKind, str], tuple[Path, int]] = {}
    for kind in kinds:
        for graph in VARIANT_GRAPHS:
            source: Path = getattr(exported, graph)
            target = variant_path(source, kind)
            say(f"writing {target.name}")
            staging = target.with_name(f".{target.name}.{os.getpid()}")
            kept = CONVERTERS[kind](source, staging)
            os.replace(staging, target)  # a server reading the old file never sees half a file
            written[kind, graph] = (target, len(kept))

    say("measuring each variant against float32 on random inputs")
    identity = _reference_identity(exported)
    table = read_style_table(exported.speech_to_frames)  # (num_styles, style_dim)
    style = table.mean(axis=0)  # (style_dim,) the unseen-speaker style
    fp32 = {graph: _session(getattr(exported, graph)) for graph in VARIANT_GRAPHS}
    variants = {key: _session(path) for key, (path, _) in written.items()}
    errors = {}
    for (kind, graph), session in variants.items():
        if graph == "speech_to_frames":
            errors[kind, graph] = _speech_error(fp32[graph], session, identity, style, seed)
        else:
            errors[kind, graph] = _window_error(
                exported.stream_window, fp32[graph], session, identity, table, seed
            )

    score = None
    if corpus_dir is not None:
        speech = {"fp32": fp32["speech_to_frames"]}
        speech.update({kind: variants[kind, "speech_to_frames"] for kind in kinds})
        score = _score_corpus(speech, identity, style, Path(corpus_dir), max_clips, say)

    reports = []
    for (kind, graph), (path, fp32_nodes) in written.items():
        scored = score if graph == "speech_to_frames" else None
        reports.append(
            VariantReport(
                kind=kind,
                graph=getattr(exported, graph).name,
                file=path.name,
                bytes=path.stat().st_size,
                fp32_bytes=getattr(exported, graph).stat().st_size,
                max_abs_error=errors[kind, graph],
                fp32_nodes=fp32_nodes,
                clips=scored.clips if scored else 0,
                ale_fp32=scored.ale["fp32"] if scored else None,
                ale_variant=scored.ale[kind] if scored else None,
                rtf_fp32=scored.rtf["fp32"] if scored else None,
                rtf_variant=scored.rtf[kind] if scored else None,
            )
        )
    _record(exported.directory, reports, corpus_dir)
    return reports


def _record(directory: Path, reports: list[VariantReport], corpus_dir: Path | None) -> None:
    """Add the reports to the manifest's ``variants`` (kept per kind; other kinds stay)."""
    if not (directory / MANIFEST_FILE).is_file():
        return
    variants = dict(read_manifest(directory).get("variants", {}))
    for kind in dict.fromkeys(r.kind for r in reports):
        mine = [r for r in reports if r.kind == kind]
        variants[kind] = {
            "files": {r.graph: file_entry(directory / r.file) for r in mine},
            "corpus": None if corpus_dir is None else str(corpus_dir),
            "reports": [asdict(r) | {"ale_change": r.ale_change} for r in mine],
        }
    update_manifest(directory, "variants", variants)


def held_out_corpus(root: Path, *, progress: bool = True) -> Path:
    """A small held-out corpus under ``root``/corpora, generated on first use (about 15 s).

    `models.corpus.generate.generate_corpus` with `HELD_OUT_CORPUS_SIZE` utterances and a fixed
    seed; its test split (24 utterances of voices and sentences no training used) is what the
    variants are scored on. Raises `models.corpus.espeak.EngineUnavailableError` naming the apt
    package when a TTS engine is missing.
    """
    from models.corpus.generate import generate_corpus
    from models.corpus.manifest import INFO_NAME

    folder = root / "corpora" / f"heldout-{HELD_OUT_CORPUS_SIZE}-seed{HELD_OUT_CORPUS_SEED}"
    if (folder / INFO_NAME).is_file():  # written last, once every utterance is on disk
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.with_name(f"{folder.name}.lock")):
        if not (folder / INFO_NAME).is_file():
            generate_corpus(
                folder,
                HELD_OUT_CORPUS_SIZE,
                HELD_OUT_CORPUS_SEED,
                workers=max(1, min(2, os.cpu_count() or 1)),
                progress=progress,
            )
    return folder
