"""fp16 and int8 variants: files that load with float32 inputs, a float32 front end, finite
reported errors and ALE, a smaller int8 file, the manifest record, and the CLI's fallbacks."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
from typer.testing import CliRunner

import export.quantize as quantize
from export.cache import CACHE_DIR_ENV, ensure_exported, export_dir_for, read_manifest
from export.graphs import front_end_nodes
from export.onnx import ExportedModel
from export.quantize import (
    VariantReport,
    make_variants,
    parse_variants,
    variant_path,
)
from models.blendshapes import num_frames
from models.corpus.espeak import EngineUnavailableError
from models.corpus.manifest import (
    MANIFEST_NAME,
    PhoneSegment,
    Utterance,
    write_manifest,
    write_phone_table,
)
from pmmtalk.cli import app


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def shared_export(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    # A real export, shared with the other tests/export files through one session cache.
    cache_dir = tmp_path_factory.getbasetemp() / "export-cache"
    return ensure_exported(checkpoint, cache_dir=cache_dir, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two held-out test utterances: a vowel-like buzz and noise, with arbitrary targets."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = []
    for index, samples in enumerate((9_000, 21_000)):
        uid = f"test-{index}"
        for sub in ("wav", "targets", "phones"):
            (root / sub).mkdir(exist_ok=True)
        t = np.arange(samples) / 16_000
        wave = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))
        wave += 0.05 * rng.standard_normal(samples)
        sf.write(root / f"wav/{uid}.wav", np.clip(wave, -1, 1), 16_000, subtype="PCM_16")
        frames = num_frames(samples, 16_000)
        np.save(root / f"targets/{uid}.npy", rng.uniform(0, 0.3, (frames, 32)).astype(np.float32))
        write_phone_table(root / f"phones/{uid}.tsv", [PhoneSegment("AA", 0.0, samples / 16e3)])
        rows.append(
            Utterance(
                id=uid,
                split="test",
                language="en",
                engine="espeak-ng",
                voice="held-out",
                text="a",
                audio=f"wav/{uid}.wav",
                targets=f"targets/{uid}.npy",
                phones=f"phones/{uid}.tsv",
                num_samples=samples,
                num_frames=frames,
            )
        )
    write_manifest(root / MANIFEST_NAME, rows)
    return root


@pytest.fixture(scope="module")
def variants(
    shared_export: ExportedModel, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExportedModel, list[VariantReport]]:
    # A private copy: the variants and the manifest update stay out of the shared cache.
    folder = tmp_path_factory.mktemp("variants") / "export"
    shutil.copytree(shared_export.directory, folder)
    exported = ExportedModel.in_directory(folder)
    return exported, make_variants(exported, ("fp16", "int8"), corpus)


def test_parse_variants() -> None:
    assert parse_variants("fp16, int8,fp16") == ("fp16", "int8")
    assert parse_variants("int8") == ("int8",)
    for bad in ("fp8", "", "fp16,bf16"):
        with pytest.raises(ValueError, match="choose from fp16, int8"):
            parse_variants(bad)


def test_variants_report_finite_errors_and_ale(
    variants: tuple[ExportedModel, list[VariantReport]],
) -> None:
    exported, reports = variants
    assert [(r.kind, r.graph) for r in reports] == [
        ("fp16", "speech_to_frames.onnx"),
        ("fp16", "stream_window.onnx"),
        ("int8", "speech_to_frames.onnx"),
        ("int8", "stream_window.onnx"),
    ]
    for report in reports:
        assert (exported.directory / report.file).is_file()
        # Measured, and not zero: a "variant" equal to float32 would not have been converted.
        assert 0 < report.max_abs_error < math.inf, report
        assert report.fp32_nodes > 0
    by_key = {(r.kind, r.graph): r for r in reports}
    # Random weights make int8's error large here; fp16's stays small.
    assert by_key["fp16", "speech_to_frames.onnx"].max_abs_error < 0.01
    assert by_key["fp16", "stream_window.onnx"].max_abs_error < 0.01
    for kind in ("fp16", "int8"):
        scored = by_key[kind, "speech_to_frames.onnx"]
        assert scored.clips == 2
        assert scored.ale_fp32 is not None and scored.ale_change is not None
        assert 0 < scored.ale_fp32 < 1 and math.isfinite(scored.ale_change)
        assert scored.rtf_variant is not None and scored.rtf_variant > 0
        assert by_key[kind, "stream_window.onnx"].ale_change is None  # scored offline only
    for graph in ("speech_to_frames.onnx", "stream_window.onnx"):
        assert by_key["int8", graph].bytes < by_key["int8", graph].fp32_bytes
        assert by_key["fp16", graph].bytes < by_key["fp16", graph].fp32_bytes


def test_variants_keep_float32_io_and_a_float32_front_end(
    variants: tuple[ExportedModel, list[VariantReport]],
) -> None:
    exported, _ = variants
    front_end = set(front_end_nodes(onnx.load(str(exported.speech_to_frames))))
    for kind in ("fp16", "int8"):
        path = variant_path(exported.speech_to_frames, kind)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        types = {value.name: value.type for value in session.get_inputs()}
        assert types["wave"] == types["style"] == "tensor(float)"
        assert session.get_outputs()[0].type == "tensor(float)"
        model = onnx.load(str(path))
        nodes = {node.name: node for node in model.graph.node}
        # The DFT's and the mel filterbank's matrix products are still there, unquantized:
        # each multiplies by a float32 basis.
        kept = [nodes[name] for name in front_end if name in nodes]
        assert {node.op_type for node in kept} >= {"MatMul", "Log"}
        floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
        products = [node for node in kept if node.op_type == "MatMul"]
        assert len(products) == 5  # 2 inner DFT, 2 outer DFT, 1 mel
        assert all(set(node.input) & floats for node in products)
    int8 = onnx.load(str(variant_path(exported.stream_window, "int8")))
    assert "MatMulInteger" in {node.op_type for node in int8.graph.node}


def test_variants_are_recorded_in_the_manifest(
    variants: tuple[ExportedModel, list[VariantReport]], corpus: Path
) -> None:
    exported, reports = variants
    recorded = read_manifest(exported.directory)["variants"]
    assert set(recorded) == {"fp16", "int8"}
    assert recorded["int8"]["corpus"] == str(corpus)
    entry = recorded["fp16"]["files"]["stream_window.onnx"]
    assert entry["name"] == "stream_window.fp16.onnx"
    assert entry["bytes"] == (exported.directory / entry["name"]).stat().st_size
    ale = [r["ale_change"] for r in recorded["int8"]["reports"]]
    assert ale[0] == pytest.approx(reports[2].ale_change) and ale[1] is None


def test_a_graph_from_elsewhere_is_refused(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "foreign", [value], [out]))
    with pytest.raises(ValueError, match="re-export"):
        front_end_nodes(model)


def test_cli_reports_error_only_without_tts_engines(
    checkpoint: Path,
    shared_export: ExportedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A private cache holding a copy of the shared entry: a cache hit, with room for variants.
    entry = export_dir_for(shared_export.directory.name[:16], cache_dir=tmp_path)
    shutil.copytree(shared_export.directory, entry)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))

    def no_engines(*args: Any, **kwargs: Any) -> Path:
        raise EngineUnavailableError("espeak-ng is not installed; install the apt package")

    monkeypatch.setattr(quantize, "held_out_corpus", no_engines)
    result = CliRunner().invoke(
        app, ["export", "onnx", "--checkpoint", str(checkpoint), "--variants", "int8"]
    )
    assert result.exit_code == 0, result.output
    assert "espeak-ng is not installed" in result.output
    assert "reporting the variants' error only" in result.output
    rows = [line.split() for line in result.output.splitlines() if line.endswith(" n/a")]
    assert [row[0] for row in rows] == ["speech_to_frames.int8.onnx", "stream_window.int8.onnx"]
    assert all(row[3:5] == ["n/a", "n/a"] for row in rows)  # no ALE without a corpus
    assert (entry / "stream_window.int8.onnx").is_file()
