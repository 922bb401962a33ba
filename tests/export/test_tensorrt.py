"""TensorRT engines: the fp32 precision rule, the mixed-precision ONNX rewrite, the optimization
profiles, the build flow (against a stand-in TensorRT module), and the clear error where TensorRT
or a GPU is missing. The real build and parity run in the ``gpu`` test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from export.graphs import GRAPH_NAMES
from export.tensorrt import (
    FP16_PARITY_TOLERANCE,
    EngineBuildError,
    TensorRTUnavailableError,
    axis_ranges,
    build_engines,
    fp32_nodes,
    keeps_fp32,
    load_tensorrt,
    optimization_profile,
    read_engine_set,
    to_mixed_precision,
)
from pmmtalk.cli import app

TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _init(name: str, values: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def speech_like_model() -> onnx.ModelProto:
    """A small graph with the structures the precision rule is about.

    wave (1, N) -> STFT -> magnitude (ReduceL2) -> mel (MatMul) -> Clip -> Log -> scale (Mul)
    -> projection (MatMul, Add) + sin(offset * freq) -> LayerNormalization -> Softmax, masked by
    Where with a -1e9 fill -> output projection (MatMul) -> out (1, frames, 8).
    """
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Unsqueeze", ["wave", "axis2"], ["signal"], name="frame"),
        helper.make_node("STFT", ["signal", "step", "window", "length"], ["spec"], name="stft"),
        helper.make_node("ReduceL2", ["spec", "last"], ["mag"], name="magnitude", keepdims=0),
        helper.make_node("MatMul", ["mag", "mel"], ["mel_energy"], name="mel"),
        helper.make_node("Clip", ["mel_energy", "floor"], ["clipped"], name="clamp"),
        helper.make_node("Log", ["clipped"], ["log_mel"], name="log"),
        helper.make_node("Mul", ["log_mel", "twenty"], ["db"], name="to_db"),
        helper.make_node("MatMul", ["db", "w1"], ["h1"], name="project"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="bias"),
        helper.make_node("Cast", ["offset"], ["offset_f"], name="offset_float", to=FLOAT),
        helper.make_node("Mul", ["offset_f", "freq"], ["phase"], name="phase"),
        helper.make_node("Sin", ["phase"], ["pos"], name="sin"),
        helper.make_node("Add", ["h2", "pos"], ["h3"], name="add_pos"),
        helper.make_node(
            "LayerNormalization", ["h3", "ln_scale", "ln_bias"], ["normed"], name="norm", axis=-1
        ),
        helper.make_node("Greater", ["normed", "zero"], ["keep"], name="mask"),
        helper.make_node("Where", ["keep", "normed", "fill"], ["masked"], name="where"),
        helper.make_node("Softmax", ["masked"], ["attn"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "w2"], ["out"], name="output"),
    ]
    initializers = [
        _init("axis2", [2], np.int64),
        _init("step", 4, np.int64),
        _init("window", np.hanning(16)),
        _init("length", 16, np.int64),
        _init("last", [-1], np.int64),
        _init("mel", rng.random((9, 4))),
        _init("floor", 1e-5),
        _init("twenty", 20.0),
        _init("w1", 0.05 * rng.standard_normal((4, 8))),
        _init("b1", rng.standard_normal(8)),
        _init("freq", np.linspace(0.01, 1.0, 8)),
        _init("ln_scale", np.ones(8)),
        _init("ln_bias", np.zeros(8)),
        _init("zero", 0.0),
        _init("fill", -1e9),
        _init("w2", rng.standard_normal((8, 8))),
    ]
    graph = helper.make_graph(
        nodes,
        "speech_like",
        [
            helper.make_tensor_value_info("wave", FLOAT, [1, "samples"]),
            helper.make_tensor_value_info("offset", INT64, [1]),
        ],
        [helper.make_tensor_value_info("out", FLOAT, [1, "frames", 8])],
        initializers,
    )
    # IR version 9: what ONNX Runtime 1.20 (the floor in pyproject) reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _float_names(model: onnx.ModelProto) -> set[str]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    values = [*graph.input, *graph.value_info, *graph.output]
    names = {v.name for v in values if v.type.tensor_type.elem_type == FLOAT}
    return names | {i.name for i in graph.initializer if i.data_type == FLOAT}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input)}
    return types | {i.name: i.data_type for i in graph.initializer}


def test_precision_rule_over_op_types() -> None:
    for op_type in (
        "LayerNormalization",
        "Softmax",
        "ReduceMean",
        "ReduceL2",
        "STFT",
        "Sin",
        "Log",
    ):
        assert keeps_fp32(op_type), op_type
    for op_type in ("MatMul", "Conv", "Gemm", "Relu", "Add", "Transpose", "Where"):
        assert not keeps_fp32(op_type), op_type


def test_spectral_chain_and_phases_stay_fp32() -> None:
    model = speech_like_model()
    nodes = list(model.graph.node)
    kept = {nodes[i].name for i in fp32_nodes(nodes, _float_names(model))}
    # The whole spectral chain up to the log, and the audio framing before the STFT.
    assert {"frame", "stft", "magnitude", "mel", "clamp", "log"} <= kept
    # The phase of the positional encoding, back to where the index becomes a float.
    assert {"offset_float", "phase", "sin"} <= kept
    assert {"norm", "softmax"} <= kept
    # After the log the range is small: the dB scale and the projections run in fp16.
    assert not kept & {"to_db", "project", "bias", "add_pos", "where", "output"}


def test_named_front_end_nodes_stay_fp32() -> None:
    model = speech_like_model()
    nodes = list(model.graph.node)
    # The exported front end is a convolution and a MatMul, ops fp16 would otherwise take.
    kept = {nodes[i].name for i in fp32_nodes(nodes, _float_names(model), {"project"})}
    assert "project" in kept
    assert "output" not in kept


def test_walking_back_stops_at_heavy_ops() -> None:
    model = speech_like_model()
    nodes = list(model.graph.node)
    # Feed the sine from the projection instead of the offset: the Add before it stays fp32,
    # the MatMul that carries the compute does not.
    sin = next(n for n in nodes if n.name == "sin")
    sin.input[0] = "h2"
    kept = {nodes[i].name for i in fp32_nodes(nodes, _float_names(model))}
    assert "bias" in kept and "project" not in kept


def test_mixed_precision_graph_is_valid_typed_and_close() -> None:
    model = speech_like_model()
    mixed, report = to_mixed_precision(model)
    onnx.checker.check_model(mixed, full_check=True)
    types = _types(mixed)
    consumers = {n.name: n for n in mixed.graph.node}
    # Compute-heavy nodes read fp16; the rule's nodes read fp32.
    for name in ("project", "output"):
        assert types[consumers[name].input[0]] == TensorProto.FLOAT16, name
    for name in ("stft", "mel", "log", "norm", "softmax", "sin"):
        assert types[consumers[name].input[0]] == FLOAT, name
    # The interface is unchanged: float32 / int64 in, float32 out, same names.
    assert [(v.name, v.type.tensor_type.elem_type) for v in mixed.graph.input] == [
        ("wave", FLOAT),
        ("offset", INT64),
    ]
    assert [(v.name, v.type.tensor_type.elem_type) for v in mixed.graph.output] == [("out", FLOAT)]
    assert report.fp16_nodes > 0 and report.casts > 0
    assert report.kept_op_types["LayerNormalization"] == 1 and report.kept_op_types["STFT"] == 1
    # The -1e9 mask fill is stored as fp16's most negative finite value, not -inf.
    fills = [i for i in mixed.graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert fills and all(np.isfinite(numpy_helper.to_array(i)).all() for i in fills)

    feeds = {
        "wave": np.random.default_rng(1).standard_normal((1, 400)).astype(np.float32),
        "offset": np.array([1_200], dtype=np.int64),
    }
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ORT warns that it runs some fp16 nodes through fp32 here
    runs = [
        ort.InferenceSession(
            m.SerializeToString(), options, providers=["CPUExecutionProvider"]
        ).run(None, feeds)[0]
        for m in (model, mixed)
    ]
    assert runs[0].shape == runs[1].shape == (1, 97, 8)  # (400 - 16) // 4 + 1 frames
    assert np.abs(runs[0] - runs[1]).max() <= FP16_PARITY_TOLERANCE


def test_graphs_with_subgraphs_are_refused() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y", FLOAT, [1])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("z", FLOAT, [1])],
    )
    with pytest.raises(ValueError, match=r"subgraph.*fp16=False"):
        to_mixed_precision(helper.make_model(graph))


def test_optimization_profiles_follow_the_named_axes() -> None:
    ranges = axis_ranges(sample_rate_hz=16_000, max_seconds=60.0, max_batch=16)
    speech = optimization_profile({"wave": (1, "samples"), "style": (1, 64)}, ranges)
    assert speech["wave"].min == (1, 1)
    assert speech["wave"].opt == (1, 160_000)
    assert speech["wave"].max == (1, 960_000)
    assert speech["style"].min == speech["style"].max == (1, 64)
    stream = optimization_profile({"wave": ("batch", 32_000), "frame_offset": ("batch",)}, ranges)
    assert (stream["wave"].min, stream["wave"].opt, stream["wave"].max) == (
        (1, 32_000),
        (4, 32_000),
        (16, 32_000),
    )
    assert stream["frame_offset"].max == (16,)
    # Short limits clip the opt shapes to the max.
    small = axis_ranges(sample_rate_hz=16_000, max_seconds=2.0, max_batch=2)
    assert small == {"samples": (1, 32_000, 32_000), "batch": (1, 2, 2)}
    with pytest.raises(ValueError, match=r"dynamic \('time'\) and has no range"):
        optimization_profile({"wave": (1, "time")}, ranges)
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        axis_ranges(sample_rate_hz=16_000, max_seconds=60.0, max_batch=0)
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        axis_ranges(sample_rate_hz=16_000, max_seconds=0.0, max_batch=4)


def write_export(folder: Path) -> Path:
    """Three graphs with the export contract's signatures and small dims (see export.onnx).

    The bodies are placeholders: nothing here runs them, the builder only reads the signatures.
    """
    folder.mkdir(parents=True, exist_ok=True)
    identity = [("identity_0", [4, 8, 8]), ("identity_1", [8, 1, 1])]
    signatures: dict[str, tuple[list[tuple[Any, ...]], list[Any]]] = {
        "face_encoder": ([("face", FLOAT, [1, 3, 8, 8])], [1]),
        "speech_to_frames": (
            [("wave", FLOAT, [1, "samples"]), ("style", FLOAT, [1, 4])]
            + [(n, FLOAT, [1, *s]) for n, s in identity],
            [1, "frames", 32],
        ),
        "stream_window": (
            [
                ("wave", FLOAT, ["batch", 3_200]),
                ("style", FLOAT, ["batch", 4]),
                ("frame_offset", INT64, ["batch"]),
            ]
            + [(n, FLOAT, ["batch", *s]) for n, s in identity],
            ["batch", 6, 32],
        ),
    }
    for name, (inputs, out_shape) in signatures.items():
        outputs = (
            [helper.make_tensor_value_info(n, FLOAT, [1, *s]) for n, s in identity]
            if name == "face_encoder"
            else [helper.make_tensor_value_info("blendshapes", FLOAT, out_shape)]
        )
        nodes = [helper.make_node("Relu", [inputs[0][0]], [o.name]) for o in outputs]
        graph = helper.make_graph(
            nodes, name, [helper.make_tensor_value_info(*i) for i in inputs], outputs
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.metadata_props.add(key="sample_rate_hz", value="16000")
        onnx.save(model, str(folder / f"{name}.onnx"))
    return folder


class FakeTensorRT(ModuleType):
    """The slice of the TensorRT 10/11 builder API that `build_engines` uses, recording calls."""

    def __init__(self, version: str = "10.16.1.11", parser_error: str | None = None) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.builds: list[dict[str, Any]] = []
        fake = self

        class Config:
            def __init__(self) -> None:
                self.cleared: set[str] = set()
                self.profiles: list[dict[str, tuple[tuple[int, ...], ...]]] = []
                self.cache: bytes | None = None

            def clear_flag(self, flag: str) -> None:
                self.cleared.add(flag)

            def create_timing_cache(self, data: bytes) -> Any:
                return SimpleNamespace(data=data, serialize=lambda: data + b"+")

            def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
                self.cache = cache.data
                return True

            def add_optimization_profile(self, profile: Any) -> int:
                self.profiles.append(profile.shapes)
                return len(self.profiles) - 1

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

            def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
                self.shapes[name] = tuple(tuple(s) for s in shapes)

        class Parser:
            def __init__(self, network: Any, logger: Any) -> None:
                self.network, self.num_errors = network, int(parser_error is not None)

            def parse_from_file(self, path: str) -> bool:
                self.network.source = Path(path)
                return parser_error is None

            def get_error(self, index: int) -> str:
                return str(parser_error)

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> Any:
                return SimpleNamespace(flags=flags, source=None)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Any, config: Config) -> bytes:
                fake.builds.append(
                    {
                        "source": network.source,
                        "flags": network.flags,
                        "profiles": config.profiles,
                        "tf32_off": "TF32" in config.cleared,
                        "cache": config.cache,
                    }
                )
                return b"plan of " + network.source.name.encode()

        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.Builder = Builder
        self.OnnxParser = Parser
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        self.BuilderFlag = SimpleNamespace(TF32="TF32")


def fake_cuda(devices: int = 1, error: int = 0) -> ModuleType:
    cudart = ModuleType("cuda.bindings.runtime")
    cudart.cudaError_t = SimpleNamespace(cudaSuccess=0)  # type: ignore[attr-defined]
    cudart.cudaGetDeviceCount = lambda: (error, devices)  # type: ignore[attr-defined]
    cudart.cudaGetErrorString = lambda e: (0, b"CUDA driver version is insufficient")  # type: ignore[attr-defined]
    props = SimpleNamespace(name=b"Fake GPU 80GB", major=9, minor=0)
    cudart.cudaGetDeviceProperties = lambda index: (0, props)  # type: ignore[attr-defined]
    return cudart


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cuda())
    return fake


def test_build_writes_plans_profiles_and_reuses_them(
    fake_tensorrt: FakeTensorRT, tmp_path: Path
) -> None:
    export_dir = write_export(tmp_path / "export")
    engines = build_engines(export_dir, check_parity=False)
    folder = export_dir / "tensorrt"
    assert engines.directory == folder and engines.gpu == "Fake GPU 80GB"
    for name in GRAPH_NAMES:  # the paths the TensorRT backend loads
        assert (folder / f"{name}.plan").read_bytes() == f"plan of {name}.fp16.onnx".encode()
    builds = {b["source"].name: b for b in fake_tensorrt.builds}
    assert all(b["flags"] == 1 << 1 and b["tf32_off"] for b in builds.values())  # strongly typed
    assert builds["face_encoder.fp16.onnx"]["profiles"] == []  # fixed shapes need none
    (speech,) = builds["speech_to_frames.fp16.onnx"]["profiles"]
    assert speech["wave"] == ((1, 1), (1, 160_000), (1, 960_000))
    (stream,) = builds["stream_window.fp16.onnx"]["profiles"]
    assert stream["frame_offset"] == ((1,), (4,), (16,))
    assert stream["identity_0"] == ((1, 4, 8, 8), (4, 4, 8, 8), (16, 4, 8, 8))
    mixed = onnx.load(str(folder / "stream_window.fp16.onnx"))
    assert any(n.op_type == "Cast" for n in mixed.graph.node)
    assert (folder / "timing.cache").read_bytes() == b"+"

    recorded = read_engine_set(folder)
    assert recorded.engines == engines.engines and recorded.precision == "fp16-mixed"

    again = build_engines(export_dir, check_parity=False)
    assert again.reused and len(fake_tensorrt.builds) == 3  # nothing rebuilt

    rebuilt = build_engines(export_dir, check_parity=False, max_batch=8)
    assert not rebuilt.reused and len(fake_tensorrt.builds) == 6
    # The rebuild started from the timing cache the first build wrote.
    assert {b["cache"] for b in fake_tensorrt.builds[3:]} == {b"+"}


def test_fp32_engines_are_built_from_the_exported_graphs(
    fake_tensorrt: FakeTensorRT, tmp_path: Path
) -> None:
    export_dir = write_export(tmp_path / "export")
    engines = build_engines(export_dir, tmp_path / "plans", fp16=False, check_parity=False)
    assert engines.precision == "fp32"
    assert {b["source"] for b in fake_tensorrt.builds} == {
        export_dir / f"{name}.onnx" for name in GRAPH_NAMES
    }


def test_parser_errors_are_passed_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    error = "In node 12 (importSTFT): UNSUPPORTED_NODE"
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(parser_error=error))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cuda())
    with pytest.raises(EngineBuildError, match=r"could not parse .*importSTFT.*newer TensorRT"):
        build_engines(write_export(tmp_path / "export"), check_parity=False)


def test_missing_gpu_cuda_python_or_old_tensorrt_is_explained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cuda(devices=0, error=35))
    with pytest.raises(
        TensorRTUnavailableError, match=r"no CUDA GPU is usable here .*insufficient"
    ):
        load_tensorrt()
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)  # None: import fails
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    with pytest.raises(TensorRTUnavailableError, match="cuda-python is not installed"):
        load_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version="8.6.1"))
    with pytest.raises(TensorRTUnavailableError, match=r"TensorRT 8\.6\.1 is too old"):
        load_tensorrt()


@pytest.mark.skipif(TENSORRT_INSTALLED, reason="TensorRT is installed here")
def test_without_tensorrt_the_build_and_cli_say_what_to_install(tmp_path: Path) -> None:
    export_dir = write_export(tmp_path / "export")
    with pytest.raises(TensorRTUnavailableError, match=r"pip install 'pmmtalk-server\[gpu\]'"):
        build_engines(export_dir)
    assert not (export_dir / "tensorrt").exists()
    result = CliRunner().invoke(app, ["export", "tensorrt", "--export-dir", str(export_dir)])
    assert result.exit_code == 2
    assert "TensorRT's Python package is not installed" in result.output
    assert "pip install 'pmmtalk-server[gpu]'" in result.output


def test_missing_export_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export directory not found"):
        build_engines(tmp_path / "nowhere")
    export_dir = write_export(tmp_path / "export")
    (export_dir / "stream_window.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks stream_window\.onnx"):
        build_engines(export_dir)


@pytest.mark.gpu
def test_engines_match_onnx_runtime_on_a_gpu(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Real engines of the tiny model, fp16 and fp32, within tolerance of ONNX Runtime; a second
    build reuses them."""
    try:
        load_tensorrt()
    except TensorRTUnavailableError as exc:
        pytest.skip(str(exc))
    from export.cache import ensure_exported
    from models.checkpoint import save_checkpoint

    tiny_model = request.getfixturevalue("tiny_model")  # only once a GPU is known to be here
    checkpoint = save_checkpoint(tiny_model, tmp_path / "checkpoint")
    exported = ensure_exported(checkpoint, cache_dir=tmp_path / "cache", progress=False)
    for fp16 in (True, False):
        engines = build_engines(exported.directory, tmp_path / f"plans-{fp16}", fp16=fp16)
        assert [r.graph for r in engines.parity].count("stream_window") == 2
        failed = [r for r in engines.parity if not r.passed]
        assert not failed, failed
    again = build_engines(exported.directory, tmp_path / "plans-False", fp16=False)
    assert again.reused and again.parity == engines.parity
