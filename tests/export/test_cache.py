"""The export cache: keys, hits without re-exporting, repair of a damaged entry, atomic installs."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from export.backends.base import BackendUnavailableError
from export.cache import (
    CACHE_DIR_ENV,
    MANIFEST_FILE,
    ExportParityError,
    cache_root,
    checkpoint_digest,
    ensure_exported,
    export_dir_for,
    file_sha256,
    read_manifest,
    verify_export,
)
from export.graphs import STREAM_WINDOW_FILE
from export.onnx import ExportedModel, ParityResult
from models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, save_checkpoint
from models.pmmtalk import PMMTalk
from models.streaming import StreamWindow


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    # A real export, shared with the other tests/export files through one session cache.
    cache_dir = tmp_path_factory.getbasetemp() / "export-cache"
    return ensure_exported(checkpoint, cache_dir=cache_dir, progress=False)


def copying_exporter(source: ExportedModel, calls: list[Path], delay_s: float = 0.0) -> Any:
    """A stand-in for `export_onnx` that copies an earlier export's files (and counts calls)."""

    def export(model: PMMTalk, out_dir: Path, *args: Any, **kwargs: Any) -> ExportedModel:
        calls.append(Path(out_dir))
        time.sleep(delay_s)
        for path in (source.face_encoder, source.speech_to_frames, source.stream_window):
            shutil.copyfile(path, Path(out_dir) / path.name)
        return ExportedModel.in_directory(out_dir)

    return export


def passing_parity(*args: Any, **kwargs: Any) -> list[ParityResult]:
    return [ParityResult(STREAM_WINDOW_FILE, 1, 32_000, 60, 1e-7)]


def test_digest_follows_the_bytes_not_the_folder(tiny_model: PMMTalk, tmp_path: Path) -> None:
    first = save_checkpoint(tiny_model, tmp_path / "a")
    digest = checkpoint_digest(first)
    assert len(digest) == 64
    second = Path(shutil.copytree(first, tmp_path / "b"))
    assert checkpoint_digest(second) == digest

    changed = PMMTalk(tiny_model.cfg)
    changed.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        changed.decoder.style_table.weight[0, 0] += 1e-3
    retrained = checkpoint_digest(save_checkpoint(changed, tmp_path / "c"))
    assert retrained != digest

    document = json.loads((second / CONFIG_FILE).read_text())
    document["metadata"] = {"note": "another recipe"}
    (second / CONFIG_FILE).write_text(json.dumps(document))
    assert checkpoint_digest(second) not in (digest, retrained)

    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        checkpoint_digest(tmp_path / "nope")
    (first / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} is missing"):
        checkpoint_digest(first)


def test_cache_root_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "pmmtalk"

    digest = "0123456789abcdef" * 4
    default = export_dir_for(digest, cache_dir=tmp_path)
    assert default == tmp_path / "exports" / "0123456789abcdef-ctx1s-hop0.4s-la0.4s"
    other = export_dir_for(digest, StreamWindow(left_context_s=1.5, hop_s=0.2), cache_dir=tmp_path)
    assert other.name == "0123456789abcdef-ctx1.5s-hop0.2s-la0.4s"


def test_an_export_is_cached_with_its_manifest(
    checkpoint: Path, exported: ExportedModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    digest = checkpoint_digest(checkpoint)
    root = tmp_path_factory.getbasetemp() / "export-cache"
    assert exported.directory == export_dir_for(digest, cache_dir=root)
    manifest = read_manifest(exported.directory)
    assert manifest["checkpoint_digest"] == digest
    assert manifest["window"] == StreamWindow().to_dict()
    assert manifest["parity"]["passed"] is True
    assert len(manifest["parity"]["results"]) == 5  # three clips, two window batches
    for graph in ("face_encoder", "speech_to_frames", "stream_window"):
        path: Path = getattr(exported, graph)
        assert manifest["files"][graph]["sha256"] == file_sha256(path)
    assert verify_export(exported.directory, digest, StreamWindow()) is None
    assert verify_export(exported.directory, "f" * 64) == "exported from another checkpoint"
    other = StreamWindow(hop_s=0.3)
    assert verify_export(exported.directory, digest, other) == "exported for another stream window"


def test_the_second_call_is_a_cache_hit(
    checkpoint: Path,
    exported: ExportedModel,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached export was exported again")

    monkeypatch.setattr("export.onnx.export_onnx", refuse)
    monkeypatch.setattr("models.checkpoint.load_checkpoint", refuse)
    files = [*exported.directory.iterdir()]
    before = {path: path.stat().st_mtime_ns for path in files}
    again = ensure_exported(
        checkpoint, cache_dir=tmp_path_factory.getbasetemp() / "export-cache", progress=False
    )
    assert again == exported
    assert {path: path.stat().st_mtime_ns for path in files} == before


def test_a_corrupt_cached_file_is_exported_again(
    checkpoint: Path,
    exported: ExportedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = export_dir_for(checkpoint_digest(checkpoint), cache_dir=tmp_path)
    shutil.copytree(exported.directory, entry)
    damaged = entry / STREAM_WINDOW_FILE
    damaged.write_bytes(damaged.read_bytes()[:1000])  # a truncated copy, say
    calls: list[Path] = []
    monkeypatch.setattr("export.onnx.export_onnx", copying_exporter(exported, calls))
    monkeypatch.setattr("export.onnx.check_parity", passing_parity)
    with caplog.at_level(logging.WARNING, logger="export.cache"):
        repaired = ensure_exported(checkpoint, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1
    assert repaired.directory == entry
    assert "unusable" in caplog.text and STREAM_WINDOW_FILE in caplog.text
    assert file_sha256(repaired.stream_window) == file_sha256(exported.stream_window)
    assert verify_export(entry) is None
    # No staging or retired folders are left beside the entry.
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name, f"{entry.name}.lock"]

    (entry / MANIFEST_FILE).unlink()
    ensure_exported(checkpoint, cache_dir=tmp_path, progress=False)
    assert len(calls) == 2 and verify_export(entry) is None


def test_a_failed_parity_check_caches_nothing(
    checkpoint: Path, exported: ExportedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> list[ParityResult]:
        return [ParityResult(STREAM_WINDOW_FILE, 3, 32_000, 60, 0.5)]

    monkeypatch.setattr("export.onnx.export_onnx", copying_exporter(exported, []))
    monkeypatch.setattr("export.onnx.check_parity", failing)
    with pytest.raises(ExportParityError, match=r"differs from PyTorch by 5\.00e-01") as caught:
        ensure_exported(checkpoint, cache_dir=tmp_path, progress=False)
    assert caught.value.results[0].max_abs_error == 0.5
    assert [p.suffix for p in (tmp_path / "exports").iterdir()] == [".lock"]


def test_racing_callers_export_once(
    checkpoint: Path, exported: ExportedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr("export.onnx.export_onnx", copying_exporter(exported, calls, delay_s=0.5))
    monkeypatch.setattr("export.onnx.check_parity", passing_parity)
    results: list[ExportedModel] = []

    def call() -> None:
        results.append(ensure_exported(checkpoint, cache_dir=tmp_path, progress=False))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The lock made the later callers wait, then find the first one's finished entry.
    assert len(calls) == 1
    assert len(results) == 3 and len({r.directory for r in results}) == 1
    assert verify_export(results[0].directory, checkpoint_digest(checkpoint)) is None


def test_a_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        ensure_exported(tmp_path / "nope", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_cache_miss_without_pytorch_says_what_to_do(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A serving install (the Docker images) has no PyTorch to export with.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "export.cache.importlib.util.find_spec",
        lambda name, *args: None if name == "torch" else real_find_spec(name, *args),
    )
    with pytest.raises(BackendUnavailableError, match=r"needs PyTorch.*pmmtalk export onnx"):
        ensure_exported(checkpoint, cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.rglob("*.lock"))  # refused before touching the cache
