"""TensorRT engines for the exported graphs, built with the TensorRT Python API (10 or 11).

`build_engines` turns an ONNX export directory (``face_encoder.onnx``, ``speech_to_frames.onnx``,
``stream_window.onnx``; see `export.onnx`) into serialized engines
``<export dir>/tensorrt/<graph>.plan``, which the native TensorRT backend loads, and
``engines.json`` beside them: TensorRT version, GPU, precision, the shape profile of every
input, build times and the parity of each engine against ONNX Runtime on the CPU.

Precision. TensorRT 10.12 deprecated and TensorRT 11 removed "weak typing" (``BuilderFlag.FP16``
with per-layer precision constraints). The mixed fp16 engines are therefore typed in the ONNX
graph itself: `to_mixed_precision` rewrites each graph so that every node the precision rule
allows computes in fp16, with Cast nodes at the borders, and the engine is built from a strongly
typed network, where TensorRT runs every tensor in exactly the type the graph gives it. The same
code builds on TensorRT 10 and 11, and the rule is a pure function of the graph that tests check
without a GPU. Inputs and outputs stay float32 (and int64), so callers never see fp16.

The precision rule (`fp32_nodes`) keeps these nodes in fp32:

0. the speech graphs' log-mel front end (`export.graphs.front_end_nodes`: a DFT done as
   matrix products, magnitudes, the mel product and the log), for the reasons of rule 2;
1. ops whose result fp16 cannot hold (`FP32_OP_TYPES`): normalisations and every Reduce* (sums
   and variances over a whole axis overflow fp16's 65504 or lose the small variance), Softmax
   and LogSoftmax (``exp`` overflows above 11), the range-sensitive Pow, Sqrt, Reciprocal, Exp and
   Log, the spectral STFT and DFT, and the periodic Sin and Cos;
2. the spectral chain: every node downstream of an STFT or DFT up to and including the first Log
   on each path. The magnitude spectrum of full-scale speech reaches about 10^5 and its square
   10^10, so the magnitude, the mel filterbank product and the clamp all stay fp32 until the
   log compresses the range;
3. the arguments of spectral and periodic ops: their float ancestors, followed back through
   element-wise and data-movement nodes but not across a MatMul, Gemm, Conv, ConvTranspose or
   Einsum. These are the audio samples being framed and the positional-encoding phases
   (frame index x frequency); fp16's spacing is 0.5 at 1,000 and 8 at 10,000, so a phase computed
   in fp16 would make sin and cos noise.

Everything else that ONNX allows in fp16 (convolutions, matrix products, activations, the
attention arithmetic) runs in fp16; index arithmetic (Range, Shape, Cast) is never touched.

Run ``python -m export.tensorrt --export-dir DIR`` on a machine with an NVIDIA GPU to build the
engines and print the build time and parity; see docs/export.md for what to install.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.external import save_graph
from export.graphs import front_end_nodes, graph_files

logger = logging.getLogger(__name__)

"""The ONNX graphs of an export (``<name>.onnx``) and the engines built from them."""
ENGINE_DIR_NAME: Final = "tensorrt"
PLAN_SUFFIX: Final = ".plan"
ENGINES_JSON: Final = "engines.json"
TIMING_CACHE_FILE: Final = "timing.cache"
FORMAT_NAME: Final = "pmmtalk-tensorrt"
FORMAT_VERSION: Final = 1

OPT_SECONDS: Final = 10.0
"""The clip length TensorRT tunes ``speech_to_frames`` for (its profile's opt shape)."""
OPT_BATCH: Final = 4
"""The number of concurrent streams TensorRT tunes ``stream_window`` for."""
FP16_PARITY_TOLERANCE: Final = 2e-2
"""Largest absolute difference of a coefficient (range [0, 1]) between a mixed fp16 engine and
ONNX Runtime fp32 on the CPU that still passes: 2 % of the full range, below what a viewer
notices on a face. fp16 keeps 11 significant bits, about 5e-4 relative per operation; the
errors of some hundred layers add up to around 1e-3 .. 1e-2."""
FP32_PARITY_TOLERANCE: Final = 1e-3
"""The same for fp32 engines (TF32 off): only the summation order of the kernels differs."""
PARITY_CLIP_SECONDS: Final[tuple[float, ...]] = (0.025, 1.0, 7.0)
"""Clip lengths the speech engine is compared on: under one frame, 1 s and 7 s."""
PARITY_BATCHES: Final[tuple[int, ...]] = (1, 3)
"""Batch sizes the streaming engine is compared on (one session, and several at once)."""

INSTALL_HINT: Final = (
    "On a machine with an NVIDIA GPU and its driver, install the GPU extra: "
    "pip install 'pmmtalk-server[gpu]' (TensorRT >= 10 and cuda-python); see docs/export.md"
)


class TensorRTUnavailableError(RuntimeError):
    """TensorRT cannot run here: its Python package, cuda-python or a CUDA GPU is missing. The
    message says which, and how to install it."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse a graph or build its engine; the message carries its errors."""


# --- The precision rule ----------------------------------------------------------------------

NORMALIZATION_OP_TYPES: Final = frozenset(
    {
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "RMSNormalization",
        "LpNormalization",
        "MeanVarianceNormalization",
    }
)
REDUCE_OP_TYPES: Final = frozenset(
    {
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
    }
)
SOFTMAX_OP_TYPES: Final = frozenset({"Softmax", "LogSoftmax"})
RANGE_OP_TYPES: Final = frozenset({"Pow", "Sqrt", "Reciprocal", "Exp", "Log"})
SPECTRAL_OP_TYPES: Final = frozenset({"STFT", "DFT"})
PERIODIC_OP_TYPES: Final = frozenset({"Sin", "Cos"})
FP32_OP_TYPES: Final = (
    NORMALIZATION_OP_TYPES
    | REDUCE_OP_TYPES
    | SOFTMAX_OP_TYPES
    | RANGE_OP_TYPES
    | SPECTRAL_OP_TYPES
    | PERIODIC_OP_TYPES
)
"""Op types that always compute in fp32 (rule 1 of the module docstring)."""
LOG_OP_TYPES: Final = frozenset({"Log"})
"""Where the spectral chain (rule 2) ends: the log has compressed the range."""
HEAVY_OP_TYPES: Final = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"})
"""Where rule 3 stops walking back: these carry the compute fp16 is for."""
UNCONVERTED_OP_TYPES: Final = frozenset(
    {
        "Cast",
        "CastLike",
        "Constant",
        "ConstantOfShape",
        "EyeLike",
        "Range",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Shape",
        "Size",
    }
)
"""Ops left exactly as exported: their output type comes from an attribute, or they are index
arithmetic."""
TYPE_AGNOSTIC_OP_TYPES: Final = frozenset({"Shape", "Size"})
"""Ops that read an fp16 tensor as it is (they look at its shape only)."""

_FP16_MAX: Final = float(np.finfo(np.float16).max)


def keeps_fp32(op_type: str) -> bool:
    """Whether an ONNX op type always computes in fp32 under the precision rule (rule 1)."""
    return op_type in FP32_OP_TYPES


def fp32_nodes(
    nodes: Sequence[onnx.NodeProto],
    float_tensors: Set[str],
    front_end: Set[str] = frozenset(),
) -> set[int]:
    """Indices of the nodes the precision rule keeps in fp32 (rules 0-3 of the module docstring).

    ``nodes`` is a graph's node list in topological order; ``float_tensors`` names its float32
    tensors (other tensors, such as int64 shapes, do not carry precision between nodes);
    ``front_end`` names the log-mel front-end nodes (rule 0).
    """
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    keep = {i for i, node in enumerate(nodes) if keeps_fp32(node.op_type) or node.name in front_end}

    # Rule 2: from each spectral op forwards, until a Log has compressed the range.
    pending = [i for i, node in enumerate(nodes) if node.op_type in SPECTRAL_OP_TYPES]
    seen = set(pending)
    while pending:
        i = pending.pop()
        keep.add(i)
        if nodes[i].op_type in LOG_OP_TYPES:
            continue
        for name in nodes[i].output:
            for j in consumers.get(name, []) if name in float_tensors else []:
                if j not in seen:
                    seen.add(j)
                    pending.append(j)

    # Rule 3: from each spectral or periodic op backwards, up to the compute-heavy ops.
    pending = [
        i
        for i, node in enumerate(nodes)
        if node.op_type in SPECTRAL_OP_TYPES or node.op_type in PERIODIC_OP_TYPES
    ]
    seen = set(pending)
    while pending:
        i = pending.pop()
        for name in nodes[i].input:
            source = producer.get(name)
            if source is None or source in seen or name not in float_tensors:
                continue
            seen.add(source)
            if nodes[source].op_type not in HEAVY_OP_TYPES:
                keep.add(source)
                pending.append(source)
    return keep


@dataclass(frozen=True)
class MixedPrecisionReport:
    """What `to_mixed_precision` did to one graph."""

    fp16_nodes: int  # nodes that now compute in fp16
    fp32_nodes: int  # float nodes the rule kept in fp32
    casts: int  # Cast nodes inserted at fp16/fp32 borders
    kept_op_types: dict[str, int] = field(default_factory=dict)  # fp32 nodes per op type


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors of the main graph (after ONNX shape inference)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types: dict[str, int] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
                elif attr.name in ("value_float", "value_floats"):
                    types[node.output[0]] = TensorProto.FLOAT
    return {name for name, kind in types.items() if kind == TensorProto.FLOAT}


def _formal_type(params: Sequence[Any], index: int) -> str:
    """The type string of the index-th actual argument (the last formal one may be variadic)."""
    return str(params[min(index, len(params) - 1)].type_str)


def _fp16_type_param(
    node: onnx.NodeProto, schema: onnx.defs.OpSchema, float_tensors: Set[str]
) -> str | None:
    """The type parameter ("T") that binds the node's float outputs, if it can compute in fp16.

    A node qualifies when all its float outputs share one type parameter that ONNX allows as
    float16 and every input bound to that parameter is float32 (so retyping them is exact).
    """
    if node.domain not in ("", "ai.onnx") or node.op_type in UNCONVERTED_OP_TYPES:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: str | None = None
    for index, name in enumerate(node.output):
        if not name or name not in float_tensors:
            continue
        param = _formal_type(schema.outputs, index)
        if "tensor(float16)" not in allowed.get(param, set()) or bound not in (None, param):
            return None
        bound = param
    if bound is None:
        return None
    inputs = [
        name
        for index, name in enumerate(node.input)
        if name and _formal_type(schema.inputs, index) == bound
    ]
    if not inputs or any(name not in float_tensors for name in inputs):
        return None
    return bound


def to_mixed_precision(model: onnx.ModelProto) -> tuple[onnx.ModelProto, MixedPrecisionReport]:
    """A copy of ``model`` whose nodes compute in fp16 except where `fp32_nodes` says fp32.

    Graph inputs and outputs keep their types (Cast nodes convert at the borders); float32
    initializers read only in fp16 are stored in fp16 (clipped to +-65504, so a large negative
    mask value stays finite). Only the main graph is rewritten: a graph with control-flow
    subgraphs is refused.
    """
    graph = model.graph
    for node in graph.node:
        if any(
            attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for attr in node.attribute
        ):
            raise ValueError(
                f"{node.op_type} node {node.name!r} has a subgraph; the mixed-precision rewrite "
                "handles straight-line graphs only: build with fp16=False"
            )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ValueError("the model imports no default ONNX opset; it is not an exported graph")
    float_tensors = _float_tensors(model)
    nodes = list(graph.node)
    try:
        front_end = set(front_end_nodes(model))
    except ValueError:  # the face encoder has no audio front end
        front_end = set()
    keep = fp32_nodes(nodes, float_tensors, front_end)

    schemas: dict[int, onnx.defs.OpSchema] = {}
    params: dict[int, str] = {}
    for i, node in enumerate(nodes):
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
            continue
        schemas[i] = onnx.defs.get_schema(node.op_type, opset, "")
        param = None if i in keep else _fp16_type_param(node, schemas[i], float_tensors)
        if param is not None:
            params[i] = param
    half = {
        name
        for i, param in params.items()
        for index, name in enumerate(nodes[i].output)
        if name and _formal_type(schemas[i].outputs, index) == param
    }

    out = onnx.ModelProto()
    out.CopyFrom(model)
    new_graph = out.graph
    taken = {name for node in nodes for name in (*node.input, *node.output)}
    taken |= {init.name for init in graph.initializer} | {i.name for i in graph.input}

    def fresh(base: str) -> str:
        name, count = base, 1
        while name in taken:
            name, count = f"{base}_{count}", count + 1
        taken.add(name)
        return name

    # An output computed in fp16 is renamed; a final Cast gives the float32 tensor its name back.
    renamed = {name: fresh(f"{name}__fp16") for name in half & {o.name for o in graph.output}}
    initializers = {init.name: init for init in graph.initializer}
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []
    inserted = len(renamed)  # Cast nodes added, counting the final ones for renamed outputs

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            init = initializers.get(name)
            if to == TensorProto.FLOAT16 and init is not None:
                values = np.clip(numpy_helper.to_array(init), -_FP16_MAX, _FP16_MAX)
                converted = numpy_helper.from_array(
                    values.astype(np.float16), fresh(f"{name}__fp16")
                )
                new_graph.initializer.append(converted)
                casts[key] = converted.name
            else:
                suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
                target = fresh(f"{name}__{suffix}")
                new_nodes.append(helper.make_node("Cast", [name], [target], name=target, to=to))
                casts[key] = target
                nonlocal inserted
                inserted += 1
        return casts[key]

    for i, original in enumerate(nodes):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        param = params.get(i)
        for index, name in enumerate(original.input):
            if not name:
                continue
            source = renamed.get(name, name)
            if param is not None and _formal_type(schemas[i].inputs, index) == param:
                node.input[index] = source if name in half else cast(name, TensorProto.FLOAT16)
            elif name in half and original.op_type not in TYPE_AGNOSTIC_OP_TYPES:
                node.input[index] = cast(source, TensorProto.FLOAT)
            else:
                node.input[index] = source
        for index, name in enumerate(original.output):
            node.output[index] = renamed.get(name, name)
        new_nodes.append(node)
    new_nodes.extend(
        helper.make_node("Cast", [tmp], [name], name=fresh(f"{name}__cast"), to=TensorProto.FLOAT)
        for name, tmp in renamed.items()
    )
    del new_graph.node[:]
    new_graph.node.extend(new_nodes)
    for info in new_graph.value_info:
        if info.name in half:
            info.type.tensor_type.elem_type = TensorProto.FLOAT16
            info.name = renamed.get(info.name, info.name)

    # A weight now read only through its fp16 copy need not ship twice.
    used = {name for node in new_nodes for name in node.input}
    replaced = {name for name, to in casts if to == TensorProto.FLOAT16} - used
    for init in [i for i in new_graph.initializer if i.name in replaced]:
        new_graph.initializer.remove(init)

    kept: dict[str, int] = {}
    float_nodes = 0
    for i, node in enumerate(nodes):
        touches_float = any(n in float_tensors for n in (*node.input, *node.output))
        if i in params or not touches_float or node.op_type in UNCONVERTED_OP_TYPES:
            continue
        float_nodes += 1
        kept[node.op_type] = kept.get(node.op_type, 0) + 1
    report = MixedPrecisionReport(
        fp16_nodes=len(params),
        fp32_nodes=float_nodes,
        casts=inserted,
        kept_op_types=dict(sorted(kept.items())),
    )
    return out, report


# --- Optimization profiles -------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeRange:
    """The min, opt (tuned for) and max shape of one input in a TensorRT optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def onnx_input_shapes(path: str | Path) -> dict[str, tuple[int | str, ...]]:
    """Each graph input's shape: an int per fixed axis, the axis name (``samples``, ``batch``)
    per dynamic one."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    shapes: dict[str, tuple[int | str, ...]] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        )
    return shapes


def axis_ranges(
    *, sample_rate_hz: int, max_seconds: float, max_batch: int
) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each named dynamic axis of the exported graphs.

    ``samples`` (the clip length of ``speech_to_frames``): 1 .. `OPT_SECONDS` .. ``max_seconds``
    of audio; ``batch`` (windows per ``stream_window`` call): 1 .. `OPT_BATCH` .. ``max_batch``.
    """
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    max_samples = max(1, round(max_seconds * sample_rate_hz))
    opt_samples = min(round(OPT_SECONDS * sample_rate_hz), max_samples)
    return {
        "samples": (1, opt_samples, max_samples),
        "batch": (1, min(OPT_BATCH, max_batch), max_batch),
    }


def optimization_profile(
    inputs: Mapping[str, tuple[int | str, ...]], ranges: Mapping[str, tuple[int, int, int]]
) -> dict[str, ShapeRange]:
    """The profile of one graph: fixed axes as they are, named axes from ``ranges``.

    Raises ValueError for a dynamic axis ``ranges`` does not name: TensorRT needs bounds for it.
    """
    profile: dict[str, ShapeRange] = {}
    for name, dims in inputs.items():
        bounds: list[tuple[int, int, int]] = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int):
                bounds.append((dim, dim, dim))
            elif dim in ranges:
                bounds.append(ranges[dim])
            else:
                raise ValueError(
                    f"input {name!r} axis {axis} is dynamic ({dim!r}) and has no range; "
                    f"known axes: {sorted(ranges)}. Re-export the model with this release"
                )
        profile[name] = ShapeRange(
            min=tuple(b[0] for b in bounds),
            opt=tuple(b[1] for b in bounds),
            max=tuple(b[2] for b in bounds),
        )
    return profile


# --- TensorRT and CUDA -------------------------------------------------------------------------


def _cuda_runtime() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise TensorRTUnavailableError(
        "cuda-python is not installed (it moves data to and from the GPU for TensorRT). "
        + INSTALL_HINT
    )


def _cuda_check(cudart: Any, result: Any) -> Any:
    """Unpack a cuda-python call's (error, value...) tuple; raise RuntimeError on an error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(error)
        raise RuntimeError(f"CUDA error {int(error)}: {text.decode(errors='replace')}")
    return values[0] if len(values) == 1 else None


@dataclass(frozen=True)
class TensorRTRuntime:
    """The loaded ``tensorrt`` and cuda-python runtime modules, and the GPU they will use."""

    trt: Any
    cudart: Any
    version: str
    gpu: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"


def load_tensorrt() -> TensorRTRuntime:
    """Import TensorRT and cuda-python and find GPU 0.

    Raises:
        TensorRTUnavailableError: a package or the GPU is missing; the message says which and
            how to install.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT's Python package is not installed here (import tensorrt: {exc}). "
            + INSTALL_HINT
        ) from exc
    version = str(getattr(trt, "__version__", "0"))
    if int(version.split(".")[0]) < 10:
        raise TensorRTUnavailableError(
            f"TensorRT {version} is too old; 10 or newer is needed. " + INSTALL_HINT
        )
    cudart = _cuda_runtime()
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count < 1:
        reason = "CUDA sees no device"
        if error != cudart.cudaError_t.cudaSuccess:
            reason = cudart.cudaGetErrorString(error)[1].decode(errors="replace")
        raise TensorRTUnavailableError(
            f"no CUDA GPU is usable here ({reason}); TensorRT builds and runs engines on an "
            f"NVIDIA GPU. {INSTALL_HINT}"
        )
    props = _cuda_check(cudart, cudart.cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
    return TensorRTRuntime(
        trt=trt,
        cudart=cudart,
        version=version,
        gpu=str(name).strip("\x00 "),
        compute_capability=f"{props.major}.{props.minor}",
    )


# --- Building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineInfo:
    """One serialized engine and how it was built."""

    name: str  # the graph: face_encoder, speech_to_frames or stream_window
    plan: Path  # <engine dir>/<name>.plan
    onnx_sha256: str  # of the float32 ONNX file it was built from
    profile: dict[str, ShapeRange]  # per input; min == max for fixed shapes
    build_s: float  # wall time of parsing and building, seconds
    fp16_nodes: int  # ONNX nodes computing in fp16 (0 for an fp32 engine)
    fp32_nodes: int  # float ONNX nodes kept in fp32


@dataclass(frozen=True)
class ParityResult:
    """A TensorRT engine against ONNX Runtime (fp32, CPU) on one random input."""

    graph: str
    case: str  # what was fed, e.g. "7.0 s clip" or "batch 3"
    max_abs_error: float  # over every output element
    tolerance: float
    engine_ms: float  # median TensorRT time of the call, copies to and from the GPU included

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "case": self.case,
            "max_abs_error": self.max_abs_error,
            "tolerance": self.tolerance,
            "engine_ms": self.engine_ms,
        }


@dataclass(frozen=True)
class EngineSet:
    """The engines of one export directory, as written to ``engines.json``."""

    directory: Path  # where the .plan files are
    engines: dict[str, EngineInfo]
    tensorrt_version: str
    gpu: str
    compute_capability: str
    precision: str  # "fp16-mixed" or "fp32"
    max_batch: int
    max_seconds: float
    timing_cache: Path
    parity: tuple[ParityResult, ...] = ()
    reused: bool = False  # True when engines.json matched and nothing was rebuilt


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (read here so this module needs no PyTorch)."""
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def _timing_cache(rt: TensorRTRuntime, builder: Any, path: Path) -> Any:
    """A timing cache holding what ``path`` stored, or an empty one if it is absent or unusable."""
    config = builder.create_builder_config()
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is None:
        if data:
            logger.warning("timing cache %s is unreadable; starting an empty one", path)
        cache = config.create_timing_cache(b"")
    return cache


def _build_plan(
    rt: TensorRTRuntime,
    builder: Any,
    onnx_path: Path,
    profile: Mapping[str, ShapeRange],
    cache: Any,
    trt_logger: Any,
) -> bytes:
    """Parse one ONNX file into a strongly typed network and build its serialized engine."""
    trt = rt.trt
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 11 types every network strongly, flag or not
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = (
            " This TensorRT cannot import ONNX STFT: use a newer TensorRT 10 or 11."
            if "STFT" in errors
            else ""
        )
        raise EngineBuildError(
            f"TensorRT {rt.version} could not parse {onnx_path.name}: {errors}.{hint}"
        )
    config = builder.create_builder_config()
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:  # fp32 layers (the spectral chain, normalisations) stay true fp32
        config.clear_flag(tf32)
    if not config.set_timing_cache(cache, False):
        logger.warning("TensorRT refused the timing cache for %s; timing from scratch", onnx_path)
    if any(shape.min != shape.max for shape in profile.values()):
        shapes = builder.create_optimization_profile()
        for name, shape in profile.items():
            shapes.set_shape(name, shape.min, shape.opt, shape.max)
        config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"TensorRT {rt.version} could not build an engine from {onnx_path.name}; "
            "its messages above say why"
        )
    return bytes(plan)


def build_engines(
    export_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    fp16: bool = True,
    max_batch: int = 16,
    max_seconds: float = 60.0,
    timing_cache: str | Path | None = None,
    check_parity: bool = True,
    force: bool = False,
) -> EngineSet:
    """Build a TensorRT engine for each graph of an ONNX export directory.

    Args:
        export_dir: holds ``face_encoder.onnx``, ``speech_to_frames.onnx`` and
            ``stream_window.onnx``.
        out_dir: where ``<graph>.plan`` and ``engines.json`` go; ``<export_dir>/tensorrt`` (where
            the TensorRT backend looks) when None.
        fp16: mixed fp16 engines under the precision rule (module docstring); float32 if False.
        max_batch: most windows one ``stream_window`` call takes (profile: 1 .. 4 .. max_batch).
        max_seconds: longest clip ``speech_to_frames`` takes (profile: 1 sample .. 10 s ..
            max_seconds).
        timing_cache: file TensorRT's kernel timings are read from and written back to, so a
            rebuild skips most tuning; ``<out_dir>/timing.cache`` when None.
        check_parity: run every engine against ONNX Runtime on the CPU (`engine_parity`).
        force: rebuild even when ``engines.json`` shows engines for the same ONNX files, settings,
            TensorRT version and GPU.

    Raises:
        FileNotFoundError: a graph file is missing. ValueError: a bad argument or an unknown
        dynamic axis. TensorRTUnavailableError: no TensorRT, cuda-python or GPU here.
        EngineBuildError: TensorRT failed to parse or build.
    """
    sources = graph_files(export_dir)
    sample_rate_hz = int(_metadata(sources["speech_to_frames"]).get("sample_rate_hz", "16000"))
    ranges = axis_ranges(
        sample_rate_hz=sample_rate_hz, max_seconds=max_seconds, max_batch=max_batch
    )
    profiles = {
        name: optimization_profile(onnx_input_shapes(path), ranges)
        for name, path in sources.items()
    }
    out = Path(out_dir) if out_dir is not None else Path(export_dir) / ENGINE_DIR_NAME
    cache_path = Path(timing_cache) if timing_cache is not None else out / TIMING_CACHE_FILE
    rt = load_tensorrt()
    precision = "fp16-mixed" if fp16 else "fp32"
    digests = {name: _sha256(path) for name, path in sources.items()}
    if not force:
        previous = _reusable(out, rt, digests, precision, max_batch, max_seconds)
        if previous is not None:
            logger.info("engines in %s match; reusing them", out)
            return previous

    out.mkdir(parents=True, exist_ok=True)
    # Until every engine is rebuilt, no engines.json vouches for a half-replaced set.
    (out / ENGINES_JSON).unlink(missing_ok=True)
    trt_logger = rt.trt.Logger(rt.trt.Logger.WARNING)
    builder = rt.trt.Builder(trt_logger)
    cache = _timing_cache(rt, builder, cache_path)
    engines: dict[str, EngineInfo] = {}
    for name, source in sources.items():
        started = time.perf_counter()
        fp16_nodes = fp32_nodes = 0
        if fp16:
            mixed, report = to_mixed_precision(onnx.load(str(source)))
            source = out / f"{name}.fp16.onnx"  # kept: the exact graph the engine was built from
            save_graph(mixed, source)
            fp16_nodes, fp32_nodes = report.fp16_nodes, report.fp32_nodes
        plan = out / f"{name}{PLAN_SUFFIX}"
        plan.write_bytes(_build_plan(rt, builder, source, profiles[name], cache, trt_logger))
        engines[name] = EngineInfo(
            name=name,
            plan=plan,
            onnx_sha256=digests[name],
            profile=profiles[name],
            build_s=time.perf_counter() - started,
            fp16_nodes=fp16_nodes,
            fp32_nodes=fp32_nodes,
        )
        logger.info("built %s in %.1f s", plan, engines[name].build_s)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(cache.serialize()))
    built = EngineSet(
        directory=out,
        engines=engines,
        tensorrt_version=rt.version,
        gpu=rt.gpu,
        compute_capability=rt.compute_capability,
        precision=precision,
        max_batch=max_batch,
        max_seconds=max_seconds,
        timing_cache=cache_path,
    )
    if check_parity:
        built = replace(built, parity=tuple(engine_parity(built, export_dir, rt)))
    _write_engines_json(built)
    return built


def _write_engines_json(engines: EngineSet) -> Path:
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "tensorrt_version": engines.tensorrt_version,
        "gpu": engines.gpu,
        "compute_capability": engines.compute_capability,
        "precision": engines.precision,
        "max_batch": engines.max_batch,
        "max_seconds": engines.max_seconds,
        "timing_cache": str(engines.timing_cache),
        "engines": {
            name: {
                "plan": info.plan.name,
                "onnx_sha256": info.onnx_sha256,
                "profile": {k: v.to_dict() for k, v in info.profile.items()},
                "build_s": info.build_s,
                "fp16_nodes": info.fp16_nodes,
                "fp32_nodes": info.fp32_nodes,
            }
            for name, info in engines.engines.items()
        },
        "parity": [result.to_dict() for result in engines.parity],
    }
    path = engines.directory / ENGINES_JSON
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def read_engine_set(directory: str | Path) -> EngineSet:
    """The `EngineSet` an ``engines.json`` describes (the TensorRT backend reads it this way).

    Raises:
        FileNotFoundError: no ``engines.json`` or a plan file it names is missing.
        ValueError: the file is not an engines.json of this format.
    """
    folder = Path(directory)
    path = folder / ENGINES_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; build the engines with `pmmtalk export tensorrt`"
        )
    try:
        document = json.loads(path.read_text())
        if document.get("format") != FORMAT_NAME or document.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a {FORMAT_NAME} v{FORMAT_VERSION} file")
        engines = {
            name: EngineInfo(
                name=name,
                plan=folder / entry["plan"],
                onnx_sha256=entry["onnx_sha256"],
                profile={
                    k: ShapeRange(tuple(v["min"]), tuple(v["opt"]), tuple(v["max"]))
                    for k, v in entry["profile"].items()
                },
                build_s=float(entry["build_s"]),
                fp16_nodes=int(entry["fp16_nodes"]),
                fp32_nodes=int(entry["fp32_nodes"]),
            )
            for name, entry in document["engines"].items()
        }
        parity = tuple(ParityResult(**result) for result in document["parity"])
        engine_set = EngineSet(
            directory=folder,
            engines=engines,
            tensorrt_version=document["tensorrt_version"],
            gpu=document["gpu"],
            compute_capability=document["compute_capability"],
            precision=document["precision"],
            max_batch=int(document["max_batch"]),
            max_seconds=float(document["max_seconds"]),
            timing_cache=Path(document["timing_cache"]),
            parity=parity,
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); rebuild with --force") from exc
    missing = [info.plan.name for info in engines.values() if not info.plan.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; rebuild with --force")
    return engine_set


def _reusable(
    out: Path,
    rt: TensorRTRuntime,
    digests: Mapping[str, str],
    precision: str,
    max_batch: int,
    max_seconds: float,
) -> EngineSet | None:
    """The engines already in ``out`` if they were built from the same inputs, else None."""
    try:
        previous = read_engine_set(out)
    except (FileNotFoundError, ValueError):
        return None
    same = (
        previous.tensorrt_version == rt.version
        and previous.gpu == rt.gpu
        and previous.precision == precision
        and previous.max_batch == max_batch
        and previous.max_seconds == max_seconds
        and {name: info.onnx_sha256 for name, info in previous.engines.items()} == dict(digests)
    )
    return replace(previous, reused=True) if same else None


# --- Running and parity ------------------------------------------------------------------------


class EngineRunner:
    """Runs one serialized engine on numpy arrays (a minimal runner for `engine_parity`).

    Every call allocates its device buffers and copies through them synchronously: simple and
    adequate for checks, not the serving path (the TensorRT backend keeps buffers and streams).
    """

    def __init__(self, rt: TensorRTRuntime, plan: bytes) -> None:
        trt = rt.trt
        self._rt = rt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineBuildError(
                f"TensorRT {rt.version} could not load the engine on {rt.gpu}; engines run only "
                "on the GPU model and TensorRT version that built them: rebuild with --force"
            )
        self._context = self._engine.create_execution_context()
        self._stream = _cuda_check(rt.cudart, rt.cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by name (numpy, cast to the engine's types) -> outputs by name."""
        trt, cudart = self._rt.trt, self._rt.cudart
        host: dict[str, np.ndarray] = {}
        device: list[int] = []
        try:
            for name in self.inputs:
                dtype = trt.nptype(self._engine.get_tensor_dtype(name))
                array = np.ascontiguousarray(feeds[name], dtype=dtype)
                if not self._context.set_input_shape(name, array.shape):
                    raise ValueError(
                        f"{name} of shape {array.shape} is outside the engine's profile; "
                        "rebuild with larger --max-seconds / --max-batch"
                    )
                pointer = _cuda_check(cudart, cudart.cudaMalloc(max(array.nbytes, 1)))
                device.append(pointer)
                _cuda_check(
                    cudart,
                    cudart.cudaMemcpyAsync(
                        pointer,
                        array.ctypes.data,
                        array.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                        self._stream,
                    ),
                )
                self._context.set_tensor_address(name, pointer)
                host[name] = array  # alive until the copy is done
            outputs: dict[str, tuple[np.ndarray, int]] = {}
            for name in self.outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                array = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
                pointer = _cuda_check(cudart, cudart.cudaMalloc(max(array.nbytes, 1)))
                device.append(pointer)
                self._context.set_tensor_address(name, pointer)
                outputs[name] = (array, pointer)
            if not self._context.execute_async_v3(int(self._stream)):
                raise RuntimeError("TensorRT failed to run the engine; its messages above say why")
            for array, pointer in outputs.values():
                _cuda_check(
                    cudart,
                    cudart.cudaMemcpyAsync(
                        array.ctypes.data,
                        pointer,
                        array.nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                        self._stream,
                    ),
                )
            _cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream))
            return {name: array for name, (array, _) in outputs.items()}
        finally:
            for pointer in device:
                cudart.cudaFree(pointer)

    def close(self) -> None:
        """Release the stream, the execution context and the engine."""
        self._rt.cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine


def _timed(runner: EngineRunner, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], float]:
    """The runner's outputs and its median time over three calls after a warm-up, in ms."""
    outputs = runner.run(feeds)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        runner.run(feeds)
        times.append((time.perf_counter() - started) * 1e3)
    return outputs, float(np.median(times))


def _max_error(got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> float:
    worst = 0.0
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape:
            raise EngineBuildError(
                f"engine output {name!r} has shape {have.shape}, ONNX Runtime gave {want.shape}"
            )
        worst = max(worst, float(np.abs(have.astype(np.float64) - want).max(initial=0.0)))
    return worst


def engine_parity(
    engines: EngineSet, export_dir: str | Path, rt: TensorRTRuntime, seed: int = 0
) -> list[ParityResult]:
    """Run every engine and ONNX Runtime (CPU, fp32 ONNX) on the same fresh random inputs.

    face_encoder: the bundled default face. speech_to_frames: Gaussian noise (std 0.3) clips
    of `PARITY_CLIP_SECONDS` (those within ``max_seconds``) with the default face's identity and
    the mean style. stream_window: batches of `PARITY_BATCHES` windows (within ``max_batch``),
    each with its own face (the default one, then random images), a random style row and a random
    frame offset, negative ones included.
    """
    import onnxruntime as ort

    from pmmtalk.face import reference_face

    sources = graph_files(export_dir)
    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in sources.items()
    }
    props = _metadata(sources["speech_to_frames"])
    sample_rate_hz = int(props["sample_rate_hz"])
    face_size = int(json.loads(props["pmmtalk_config"])["wav2lip"]["img_size"])
    styles = np.asarray(json.loads(props["style_table"]), dtype=np.float32)  # (K, D)
    window_inputs = onnx_input_shapes(sources["stream_window"])
    window_samples = int(window_inputs["wave"][1])
    carry_shape = tuple(int(d) for d in window_inputs["carry"][1:])  # (C, D)
    tolerance = FP16_PARITY_TOLERANCE if engines.precision != "fp32" else FP32_PARITY_TOLERANCE
    rng = np.random.default_rng(seed)

    def identity(face: np.ndarray) -> dict[str, np.ndarray]:
        session = sessions["face_encoder"]
        arrays = session.run(None, {"face": face})
        return {out.name: arr for out, arr in zip(session.get_outputs(), arrays, strict=True)}

    def expected(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = sessions[name]
        arrays = session.run(None, dict(feeds))
        return {out.name: arr for out, arr in zip(session.get_outputs(), arrays, strict=True)}

    results: list[ParityResult] = []
    face = reference_face(None, face_size)[None]  # (1, 3, S, S)
    own = identity(face)
    runners = {
        name: EngineRunner(rt, info.plan.read_bytes()) for name, info in engines.engines.items()
    }
    try:
        got, ms = _timed(runners["face_encoder"], {"face": face})
        results.append(
            ParityResult("face_encoder", "default face", _max_error(got, own), tolerance, ms)
        )
        for seconds in (s for s in PARITY_CLIP_SECONDS if s <= engines.max_seconds):
            count = max(1, round(seconds * sample_rate_hz))
            feeds = {
                "wave": (0.3 * rng.standard_normal((1, count))).astype(np.float32),
                "style": styles.mean(axis=0, keepdims=True),
                **own,
            }
            got, ms = _timed(runners["speech_to_frames"], feeds)
            error = _max_error(got, expected("speech_to_frames", feeds))
            results.append(
                ParityResult("speech_to_frames", f"{seconds:g} s clip", error, tolerance, ms)
            )
        for batch in (b for b in PARITY_BATCHES if b <= engines.max_batch):
            faces = [face] + [
                rng.random((1, 3, face_size, face_size), dtype=np.float32) for _ in range(batch - 1)
            ]
            pyramids = [identity(f) for f in faces]
            feeds = {
                "wave": (0.3 * rng.standard_normal((batch, window_samples))).astype(np.float32),
                "style": styles[rng.integers(len(styles), size=batch)],
                "frame_offset": rng.integers(-60, 3_000, size=batch, dtype=np.int64),
                "carry": rng.standard_normal((batch, *carry_shape)).astype(np.float32),
                "fresh_start": (np.arange(batch) == 0).astype(np.float32),  # one stream starts
                **{k: np.concatenate([p[k] for p in pyramids]) for k in pyramids[0]},
            }
            got, ms = _timed(runners["stream_window"], feeds)
            error = _max_error(got, expected("stream_window", feeds))
            results.append(ParityResult("stream_window", f"batch {batch}", error, tolerance, ms))
    finally:
        for runner in runners.values():
            runner.close()
    for result in results:
        logger.info(
            "parity %s %s: max abs error %.3g", result.graph, result.case, result.max_abs_error
        )
    return results


def describe(engines: EngineSet) -> list[str]:
    """Lines for a person: where the engines are, their build times, and their parity."""
    state = "reused (same ONNX, settings, TensorRT and GPU)" if engines.reused else "built"
    lines = [
        f"{engines.directory}: {engines.precision} engines {state}, TensorRT "
        f"{engines.tensorrt_version} on {engines.gpu} (sm {engines.compute_capability})"
    ]
    for info in engines.engines.values():
        size_mb = info.plan.stat().st_size / 1e6 if info.plan.is_file() else 0.0
        lines.append(
            f"  {info.plan.name}: {size_mb:.1f} MB, built in {info.build_s:.1f} s "
            f"({info.fp16_nodes} fp16 / {info.fp32_nodes} fp32 ONNX nodes)"
        )
    for result in engines.parity:
        verdict = "ok" if result.passed else "TOO LARGE"
        lines.append(
            f"  parity {result.graph} {result.case}: max abs error {result.max_abs_error:.2e} "
            f"(tolerance {result.tolerance:.0e}, {verdict}); {result.engine_ms:.2f} ms per call"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.tensorrt``: build the engines, print build times and parity.

    Exit status 0 when every engine is within tolerance, 1 when one is not or TensorRT failed,
    2 when TensorRT, a GPU or an input file is missing.
    """
    parser = argparse.ArgumentParser(
        prog="python -m export.tensorrt",
        description="Build TensorRT engines from an ONNX export directory and check them "
        "against ONNX Runtime.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export-dir", type=Path, help="ONNX export directory to build from")
    source.add_argument(
        "--checkpoint", type=Path, help="checkpoint to export first (through the export cache)"
    )
    parser.add_argument("--out-dir", type=Path, help="engine directory (EXPORT_DIR/tensorrt)")
    parser.add_argument("--fp32", action="store_true", help="float32 engines instead of fp16")
    parser.add_argument("--max-batch", type=int, default=16, help="most windows per call")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="longest clip, seconds")
    parser.add_argument("--timing-cache", type=Path, help="timing cache file")
    parser.add_argument("--force", action="store_true", help="rebuild even if engines match")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        load_tensorrt()  # before an export that may take minutes
        export_dir = args.export_dir
        if export_dir is None:
            from export.cache import ensure_exported

            export_dir = ensure_exported(args.checkpoint).directory
        started = time.perf_counter()
        engines = build_engines(
            export_dir,
            args.out_dir,
            fp16=not args.fp32,
            max_batch=args.max_batch,
            max_seconds=args.max_seconds,
            timing_cache=args.timing_cache,
            force=args.force,
        )
    except (TensorRTUnavailableError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(describe(engines)))
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0 if all(result.passed for result in engines.parity) else 1


if __name__ == "__main__":
    sys.exit(main())
