"""A Triton Inference Server model repository for the exported ONNX graphs.

`write_triton_repository` lays an export directory out the way Triton's ONNX Runtime backend
serves it::

    REPO/face_encoder/config.pbtxt      REPO/face_encoder/1/model.onnx
    REPO/speech_to_frames/config.pbtxt  REPO/speech_to_frames/1/model.onnx
    REPO/stream_window/config.pbtxt     REPO/stream_window/1/model.onnx

Names, data types and shapes come from the ONNX files, never from constants here. A graph whose
every input and output starts with the same named dynamic axis (``stream_window``: ``batch``) is
served with ``max_batch_size`` > 0 and dynamic batching, so Triton gathers the windows of many
streams into one call; its dims leave that axis out, and an input that is only the batch axis
(``frame_offset``, shape ``(batch,)``) is declared ``dims: [1]`` with ``reshape: { shape: [] }``,
so clients send it as ``(batch, 1)``. The other graphs (``face_encoder`` and the batch-1
``speech_to_frames``) get ``max_batch_size: 0`` and their full shapes, ``-1`` for a dynamic axis
(``samples``, ``frames``).

Each config's ``parameters`` carry the ONNX file's metadata unchanged (``pmmtalk_config``,
``blendshape_names``, ``fps``, ``sample_rate_hz``, ``stream_window``, ``style_table``...), so a
Triton client reads the model's contract from Triton's model-config endpoint.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import onnx
from onnx import TensorProto

from export.external import external_files
from export.graphs import graph_files

logger = logging.getLogger(__name__)

TritonKind = Literal["cpu", "gpu"]
KINDS: Final[tuple[TritonKind, ...]] = ("cpu", "gpu")
"""The graphs of an export directory (``<name>.onnx``); each becomes a Triton model."""
PLATFORM: Final = "onnxruntime_onnx"
MODEL_VERSION: Final = "1"
MODEL_FILE: Final = "model.onnx"
CONFIG_FILE: Final = "config.pbtxt"
DEFAULT_MAX_QUEUE_DELAY_US: Final = 2_000
"""How long Triton holds a stream window to batch it with others: 2 ms, 1 % of a 200 ms hop."""

_TRITON_TYPES: Final[dict[int, str]] = {
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.FLOAT16: "TYPE_FP16",
    TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.BOOL: "TYPE_BOOL",
    TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class TritonTensor:
    """One input or output as Triton declares it."""

    name: str
    data_type: str  # Triton's name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch axis when the model batches; -1 = any length
    reshape: tuple[int, ...] | None = None  # the shape the model sees, when it differs


@dataclass(frozen=True)
class TritonModel:
    """What one ``config.pbtxt`` declares about a graph."""

    name: str
    max_batch_size: int  # 0: the graph takes its batch axis (if any) as an ordinary dim
    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    parameters: dict[str, str]


def _shape(value: onnx.ValueInfoProto) -> list[int | str]:
    """An ONNX tensor's shape: ints for fixed axes, the axis name ("?" if none) for dynamic."""
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    ]


def _data_type(value: onnx.ValueInfoProto, path: Path) -> str:
    kind = value.type.tensor_type.elem_type
    if kind not in _TRITON_TYPES:
        raise ValueError(
            f"{path.name}: tensor {value.name!r} has ONNX type "
            f"{TensorProto.DataType.Name(kind)}, which Triton cannot serve"
        )
    return _TRITON_TYPES[kind]


def _batch_axis(values: Sequence[onnx.ValueInfoProto]) -> str | None:
    """The named dynamic axis every tensor starts with, if there is one."""
    firsts = {shape[0] if shape else None for shape in map(_shape, values)}
    if len(firsts) != 1:
        return None
    (first,) = firsts
    return first if isinstance(first, str) and first != "?" else None


def triton_model(onnx_path: str | Path, name: str, *, max_batch: int) -> TritonModel:
    """Describe one ONNX graph for Triton (see the module docstring for the batching rule)."""
    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a damaged file
        raise ValueError(f"{path} is not a readable ONNX file ({exc}); re-export it") from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    outputs = list(graph.output)
    batched = _batch_axis([*inputs, *outputs]) is not None

    def tensor(value: onnx.ValueInfoProto) -> TritonTensor:
        shape = _shape(value)
        dims = [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]
        if batched and not dims:
            # Triton needs at least one dim: a (batch,) tensor travels as (batch, 1).
            return TritonTensor(value.name, _data_type(value, path), (1,), reshape=())
        return TritonTensor(value.name, _data_type(value, path), tuple(dims))

    return TritonModel(
        name=name,
        max_batch_size=max_batch if batched else 0,
        inputs=tuple(tensor(value) for value in inputs),
        outputs=tuple(tensor(value) for value in outputs),
        parameters={prop.key: prop.value for prop in model.metadata_props},
    )


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; non-ASCII as octal UTF-8 bytes)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    parts = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in escapes:
            parts.append(escapes[char])
        elif 0x20 <= byte < 0x7F:
            parts.append(char)
        else:
            parts.append(f"\\{byte:03o}")
    return '"' + "".join(parts) + '"'


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _tensor_block(tensor: TritonTensor) -> list[str]:
    lines = [
        "  {",
        f"    name: {_quote(tensor.name)}",
        f"    data_type: {tensor.data_type}",
        f"    dims: {_dims(tensor.dims)}",
    ]
    if tensor.reshape is not None:
        lines.append(f"    reshape: {{ shape: {_dims(tensor.reshape)} }}")
    lines.append("  }")
    return lines


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch``, and ``max_batch`` itself."""
    sizes = {max_batch}
    size = 2
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def render_config(
    model: TritonModel,
    *,
    kind: TritonKind = "cpu",
    instance_count: int = 1,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig)."""
    lines = [
        f"name: {_quote(model.name)}",
        f"platform: {_quote(PLATFORM)}",
        f"max_batch_size: {model.max_batch_size}",
    ]
    for field, tensors in (("input", model.inputs), ("output", model.outputs)):
        blocks = [_tensor_block(tensor) for tensor in tensors]
        lines.append(f"{field} [")
        for index, block in enumerate(blocks):
            block[-1] += "," if index < len(blocks) - 1 else ""
            lines.extend(block)
        lines.append("]")
    if model.max_batch_size > 0:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: {_dims(preferred_batch_sizes(model.max_batch_size))}",
            f"  max_queue_delay_microseconds: {max_queue_delay_us}",
            "}",
        ]
    lines += [
        "instance_group [",
        "  {",
        f"    count: {instance_count}",
        f"    kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'}",
        "  }",
        "]",
    ]
    for key, value in model.parameters.items():
        lines += [
            "parameters {",
            f"  key: {_quote(key)}",
            f"  value: {{ string_value: {_quote(value)} }}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def write_triton_repository(
    export_dir: str | Path,
    out_dir: str | Path,
    *,
    max_batch: int = 16,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    instance_count: int = 1,
    kind: TritonKind = "cpu",
) -> Path:
    """Write a Triton model repository serving the graphs of an ONNX export directory.

    Args:
        export_dir: holds ``face_encoder.onnx``, ``speech_to_frames.onnx`` and
            ``stream_window.onnx`` (from `export.cache.ensure_exported`).
        out_dir: the repository root (created; the three model folders in it are replaced,
            anything else there is left alone).
        max_batch: ``max_batch_size`` of the batching model(s): most stream windows per call.
        max_queue_delay_us: how long dynamic batching may hold a request, microseconds.
        instance_count: model instances per device (Triton's ``instance_group.count``).
        kind: ``cpu`` (KIND_CPU) or ``gpu`` (KIND_GPU: ONNX Runtime's CUDA provider).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: a bad argument, or an ONNX file Triton cannot serve.
        FileNotFoundError: the export directory or one of its graphs is missing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if instance_count < 1:
        raise ValueError(f"instance_count must be at least 1, got {instance_count}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be 0 or more, got {max_queue_delay_us}")
    files = graph_files(export_dir)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; choose another --output")
    models = {name: triton_model(path, name, max_batch=max_batch) for name, path in files.items()}
    for name, model in models.items():
        folder = root / name
        if folder.exists():
            shutil.rmtree(folder)
        version = folder / MODEL_VERSION
        version.mkdir(parents=True)
        shutil.copyfile(files[name], version / MODEL_FILE)
        for location in external_files(files[name]):
            (version / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[name].parent / location, version / location)
        (folder / CONFIG_FILE).write_text(
            render_config(
                model,
                kind=kind,
                instance_count=instance_count,
                max_queue_delay_us=max_queue_delay_us,
            )
        )
        logger.info("wrote Triton model %s (max_batch_size %d)", folder, model.max_batch_size)
    return root


def repository_tree(root: str | Path) -> list[str]:
    """The repository's files, one line each with its size (what the CLI prints)."""
    base = Path(root)
    lines = [f"{base}/"]
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        lines.append(f"  {path.relative_to(base)} ({path.stat().st_size / 1e6:.2f} MB)")
    return lines
