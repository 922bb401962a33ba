"""Triton model repository: every config.pbtxt parses into Triton's ModelConfig and matches the
ONNX graph it serves; bad arguments and inputs give clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from typer.testing import CliRunner

from export.graphs import GRAPH_NAMES
from export.triton import write_triton_repository
from pmmtalk.cli import app

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="Triton's ModelConfig message comes with tritonclient[grpc] (a dev dependency)",
)

WINDOW_SAMPLES = 3_200
WINDOW_FRAMES = 6
STYLE_DIM = 4
IDENTITY_SHAPES = ((4, 8, 8), (8, 1, 1))  # identity_0, identity_1 without the batch axis
METADATA = {
    "fps": "30",
    "sample_rate_hz": "16000",
    "blendshape_names": json.dumps([f"shape{i}" for i in range(32)]),
    # Quotes, backslashes, newlines and non-ASCII must survive the text format.
    "stream_window": json.dumps({"window_samples": WINDOW_SAMPLES, "note": 'a "b" \\ c\né'}),
}


def _graph(
    path: Path, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> None:
    """An ONNX file with the given signature; the body only has to be valid, Triton never runs it
    in these tests."""
    nodes = [helper.make_node("Identity", [inputs[0].name], [out.name]) for out in outputs]
    model = helper.make_model(
        helper.make_graph(nodes, path.stem, inputs, outputs),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    for key, value in METADATA.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tensor(
    name: str, shape: list[int | str], kind: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, shape)


def write_export(folder: Path) -> Path:
    """Three graphs with the signatures of the export contract (see export.onnx), small dims."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = [f"identity_{i}" for i in range(len(IDENTITY_SHAPES))]
    _graph(
        folder / "face_encoder.onnx",
        [_tensor("face", [1, 3, 8, 8])],
        [_tensor(n, [1, *s]) for n, s in zip(identity, IDENTITY_SHAPES, strict=True)],
    )
    _graph(
        folder / "speech_to_frames.onnx",
        [
            _tensor("wave", [1, "samples"]),
            _tensor("style", [1, STYLE_DIM]),
            *(_tensor(n, [1, *s]) for n, s in zip(identity, IDENTITY_SHAPES, strict=True)),
        ],
        [_tensor("blendshapes", [1, "frames", 32])],
    )
    _graph(
        folder / "stream_window.onnx",
        [
            _tensor("wave", ["batch", WINDOW_SAMPLES]),
            _tensor("style", ["batch", STYLE_DIM]),
            _tensor("frame_offset", ["batch"], TensorProto.INT64),
            *(_tensor(n, ["batch", *s]) for n, s in zip(identity, IDENTITY_SHAPES, strict=True)),
        ],
        [_tensor("blendshapes", ["batch", WINDOW_FRAMES, 32])],
    )
    return folder


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return write_export(tmp_path / "export")


def read_config(path: Path) -> Any:
    """The parsed ModelConfig message (tritonclient's generated class carries no type hints)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_dims(value: onnx.ValueInfoProto) -> list[int]:
    return [
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    ]


ONNX_TO_TRITON = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64"}


def test_every_config_matches_its_onnx_graph(export_dir: Path, tmp_path: Path) -> None:
    root = write_triton_repository(export_dir, tmp_path / "repo", max_batch=8)
    for name in GRAPH_NAMES:
        config = read_config(root / name / "config.pbtxt")
        model_file = root / name / "1" / "model.onnx"
        assert model_file.read_bytes() == (export_dir / f"{name}.onnx").read_bytes()
        graph = onnx.load(str(model_file)).graph
        batched = name == "stream_window"
        assert config.name == name
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == (8 if batched else 0)
        for declared, values in ((config.input, graph.input), (config.output, graph.output)):
            assert [t.name for t in declared] == [v.name for v in values]
            for tensor, value in zip(declared, values, strict=True):
                kind = model_config_pb2.DataType.Name(tensor.data_type)
                assert kind == ONNX_TO_TRITON[value.type.tensor_type.elem_type]
                dims = _onnx_dims(value)[1:] if batched else _onnx_dims(value)
                if tensor.HasField("reshape"):  # a (batch,) input travels as (batch, 1)
                    assert dims == [] and list(tensor.dims) == [1]
                    assert list(tensor.reshape.shape) == []
                else:
                    assert list(tensor.dims) == dims
        assert {k: v.string_value for k, v in config.parameters.items()} == METADATA
        assert [g.kind for g in config.instance_group] == [
            model_config_pb2.ModelInstanceGroup.KIND_CPU
        ]
        assert config.HasField("dynamic_batching") == batched


def test_streaming_model_batches_dynamically(export_dir: Path, tmp_path: Path) -> None:
    root = write_triton_repository(
        export_dir,
        tmp_path / "repo",
        max_batch=12,
        max_queue_delay_us=500,
        kind="gpu",
        instance_count=2,
    )
    config = read_config(root / "stream_window" / "config.pbtxt")
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8, 12]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.input[0].dims) == [WINDOW_SAMPLES]
    assert list(config.output[0].dims) == [WINDOW_FRAMES, 32]
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    speech = read_config(root / "speech_to_frames" / "config.pbtxt")
    assert list(speech.input[0].dims) == [1, -1]  # the dynamic sample axis
    assert list(speech.output[0].dims) == [1, -1, 32]


def test_rewriting_replaces_only_its_own_models(export_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "other_model" / "1").mkdir(parents=True)
    (root / "other_model" / "config.pbtxt").write_text('name: "other_model"\n')
    stale = root / "stream_window" / "2" / "model.onnx"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write_triton_repository(export_dir, root)
    assert (root / "other_model" / "config.pbtxt").is_file()
    assert not stale.exists()
    assert (root / "stream_window" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kind": "tpu"}, "kind must be one of cpu, gpu"),
        ({"max_batch": 0}, "max_batch must be at least 1"),
        ({"instance_count": 0}, "instance_count must be at least 1"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be 0 or more"),
    ],
)
def test_bad_arguments_are_named(
    export_dir: Path, tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_triton_repository(export_dir, tmp_path / "repo", **arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "repo").exists()


def test_missing_or_corrupt_graphs_are_reported(export_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export directory not found"):
        write_triton_repository(tmp_path / "nowhere", tmp_path / "repo")
    (export_dir / "stream_window.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks stream_window\.onnx"):
        write_triton_repository(export_dir, tmp_path / "repo")
    (export_dir / "stream_window.onnx").write_bytes(b"\x00 not a protobuf \xff")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        write_triton_repository(export_dir, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_cli_writes_the_repository_and_prints_its_tree(export_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    repo = tmp_path / "repo"
    result = runner.invoke(
        app,
        [
            "export",
            "triton",
            "--export-dir",
            str(export_dir),
            "-o",
            str(repo),
            "--kind",
            "gpu",
            "--max-batch",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stream_window/config.pbtxt" in result.output
    assert read_config(repo / "stream_window" / "config.pbtxt").max_batch_size == 4

    bad_kind = runner.invoke(
        app, ["export", "triton", "--export-dir", str(export_dir), "-o", str(repo), "--kind", "tpu"]
    )
    assert bad_kind.exit_code == 2 and "choose cpu or gpu" in bad_kind.output
    both = runner.invoke(
        app,
        [
            "export",
            "triton",
            "--export-dir",
            str(export_dir),
            "--checkpoint",
            str(tmp_path),
            "-o",
            str(repo),
        ],
    )
    assert both.exit_code == 2 and "not both" in both.output
    missing = runner.invoke(
        app, ["export", "triton", "--export-dir", str(tmp_path / "nowhere"), "-o", str(repo)]
    )
    assert missing.exit_code == 2 and "export directory not found" in missing.output


@pytest.mark.slow
def test_configs_fit_a_real_export(tiny_model: Any, tmp_path: Path) -> None:
    """The declared dims, fed to ONNX Runtime as Triton would, run the real exported graphs."""
    import numpy as np
    import onnxruntime as ort

    from export.cache import ensure_exported
    from models.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tiny_model, tmp_path / "checkpoint")
    exported = ensure_exported(checkpoint, cache_dir=tmp_path / "cache", progress=False)
    root = write_triton_repository(exported.directory, tmp_path / "repo", max_batch=4)
    numpy_types = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}
    for name in GRAPH_NAMES:
        config = read_config(root / name / "config.pbtxt")
        batch = [3] if config.max_batch_size else []
        feeds = {}
        for tensor in config.input:
            dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            shape = batch + [16_000 if d == -1 else d for d in dims]  # 1 s where the axis is free
            kind = numpy_types[model_config_pb2.DataType.Name(tensor.data_type)]
            feeds[tensor.name] = np.zeros(shape, dtype=kind)
        session = ort.InferenceSession(
            str(root / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        outputs = session.run(None, feeds)
        for tensor, array in zip(config.output, outputs, strict=True):
            declared = batch + list(tensor.dims)
            assert len(declared) == array.ndim
            assert all(d in (-1, a) for d, a in zip(declared, array.shape, strict=True)), name
