"""Graphs too big for one protobuf file keep their weights in a side file, end to end: export,
parity, the cache's integrity check, the variants and the Triton repository.

The paper preset (2.8 GB of weights) is too slow to export in a test; the tiny model is exported
with the threshold lowered to 0 bytes, which takes the same code path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

import export.external as external
from export.cache import GRAPHS, verify_export, write_export
from export.external import (
    DATA_SUFFIX,
    data_file,
    external_files,
    needs_external_data,
    save_graph,
    weight_bytes,
)
from export.graphs import ExportedModel
from export.quantize import convert_fp16, quantize_int8
from export.triton import write_triton_repository
from models.pmmtalk import PMMTalk

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def side_file_export(
    tiny_model: PMMTalk, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExportedModel, list[bool]]:
    patch = pytest.MonkeyPatch()
    patch.setattr(external, "EXTERNAL_DATA_ABOVE_BYTES", 0)
    try:
        exported, results = write_export(tiny_model, tmp_path_factory.mktemp("side-file"))
    finally:
        patch.undo()
    return exported, [r.passed for r in results]


def test_weights_go_to_a_side_file_and_parity_holds(
    side_file_export: tuple[ExportedModel, list[bool]],
) -> None:
    exported, passed = side_file_export
    assert passed and all(passed)
    for graph in GRAPHS:
        path: Path = getattr(exported, graph)
        side = data_file(path)
        assert external_files(path) == [side.name] == [path.name + DATA_SUFFIX]
        model = onnx.load(str(path), load_external_data=False)
        inline = [i for i in model.graph.initializer if i.data_location != TensorProto.EXTERNAL]
        assert len(inline) < len(model.graph.initializer)
        assert all(len(i.raw_data) <= 1024 for i in inline)  # the weights are in the side file
        assert model.metadata_props  # the metadata survived the rewrite of the graph alone


def test_the_cache_check_covers_the_side_files(
    side_file_export: tuple[ExportedModel, list[bool]], tmp_path: Path
) -> None:
    exported, _ = side_file_export
    assert verify_export(exported.directory) is None
    side = data_file(exported.speech_to_frames)
    original = side.read_bytes()
    try:
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0xFF
        side.write_bytes(bytes(damaged))
        assert verify_export(exported.directory) == (
            f"{side.name} does not match its recorded sha256 (altered or corrupt)"
        )
        side.unlink()
        assert verify_export(exported.directory) == f"{side.name} is missing"
    finally:
        side.write_bytes(original)
    assert verify_export(exported.directory) is None


def test_variants_of_a_side_file_graph_load_and_run(
    side_file_export: tuple[ExportedModel, list[bool]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported, _ = side_file_export
    monkeypatch.setattr(external, "EXTERNAL_DATA_ABOVE_BYTES", 0)
    face = ort.InferenceSession(str(exported.face_encoder), providers=CPU)
    image = np.random.default_rng(0).random(face.get_inputs()[0].shape, dtype=np.float32)
    identity = face.run(None, {face.get_inputs()[0].name: image})
    reference = ort.InferenceSession(str(exported.speech_to_frames), providers=CPU)
    names = [i.name for i in reference.get_inputs()]
    feeds = {
        names[0]: 0.3 * np.random.default_rng(1).standard_normal((1, 16_000)).astype(np.float32),
        names[1]: np.zeros(reference.get_inputs()[1].shape, np.float32),
        **dict(zip(names[2:], identity, strict=True)),
    }
    # The same graph as one file: its variants must compute exactly what the side-file ones do.
    single = tmp_path / "single" / "speech_to_frames.onnx"
    single.parent.mkdir()
    save_graph(onnx.load(str(exported.speech_to_frames)), single, external=False)
    for convert, kind in ((convert_fp16, "fp16"), (quantize_int8, "int8")):
        target = tmp_path / f"speech_to_frames.{kind}.onnx"
        convert(exported.speech_to_frames, target)
        assert data_file(target).is_file(), kind
        (got,) = ort.InferenceSession(str(target), providers=CPU).run(None, feeds)
        twin = single.with_name(target.name)
        convert(single, twin)
        (expected,) = ort.InferenceSession(str(twin), providers=CPU).run(None, feeds)
        assert got.shape == expected.shape == (1, 30, 32)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=kind)


def test_the_triton_repository_carries_the_side_files(
    side_file_export: tuple[ExportedModel, list[bool]], tmp_path: Path
) -> None:
    exported, _ = side_file_export
    root = write_triton_repository(exported.directory, tmp_path / "repo")
    for graph in GRAPHS:
        path: Path = getattr(exported, graph)
        copied = root / path.stem / "1" / data_file(path).name
        assert copied.read_bytes() == data_file(path).read_bytes()


def test_the_threshold_decides(tiny_model: PMMTalk, tmp_path: Path) -> None:
    """The tiny model's graphs are single files at the real threshold; a model's weight bytes
    count parameters and buffers; save_graph writes a side file only when asked or too big."""
    assert not needs_external_data(tiny_model)
    layer = torch.nn.Linear(10, 20)
    assert weight_bytes(layer) == (10 * 20 + 20) * 4
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1000])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1000])],
        [onnx.numpy_helper.from_array(np.arange(1000, dtype=np.float32), "w")],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9
    )
    save_graph(model, tmp_path / "small.onnx")
    assert not data_file(tmp_path / "small.onnx").exists()
    save_graph(model, tmp_path / "split.onnx", external=True)
    assert external_files(tmp_path / "split.onnx") == ["split.onnx.data"]
    session = ort.InferenceSession(str(tmp_path / "split.onnx"), providers=CPU)
    (y,) = session.run(None, {"x": np.ones(1000, np.float32)})
    np.testing.assert_array_equal(y, np.arange(1000, dtype=np.float32) + 1)
