"""ONNX Runtime backend: spec from metadata, bad files, providers, settings, torch-free import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.backends.base import BackendUnavailableError, Identity
from export.backends.onnx_backend import OnnxBackend, OrtSettings, physical_cores
from export.backends.spec import (
    EXPORT_FILES,
    SPEECH_TO_FRAMES_FILE,
    STREAM_WINDOW_FILE,
    ExportedFileError,
)
from export.backends.torch_backend import TorchBackend
from models.streaming import StreamWindow

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def export_copy(export_dir: Path, tmp_path: Path) -> Path:
    """A copy of the export that a test may damage."""
    return Path(shutil.copytree(export_dir, tmp_path / "export"))


def test_spec_comes_from_the_metadata(
    onnx_backend: OnnxBackend, torch_backend: TorchBackend
) -> None:
    spec = onnx_backend.spec
    assert spec.config == torch_backend.spec.config
    assert spec.window == StreamWindow()
    np.testing.assert_array_equal(spec.style_table, torch_backend.spec.style_table)
    assert spec.name == f"tiny:{onnx_backend.directory.name}"
    assert onnx_backend.device == "CPUExecutionProvider"


def test_label_names_the_model(export_dir: Path) -> None:
    backend = OnnxBackend(export_dir, ["CPUExecutionProvider"], label="my-checkpoint")
    assert backend.spec.name == "tiny:my-checkpoint"


@pytest.mark.parametrize("missing", EXPORT_FILES)
def test_a_missing_file_is_named(export_copy: Path, missing: str) -> None:
    (export_copy / missing).unlink()
    with pytest.raises(ExportedFileError, match=f"lacks {missing}.*pmmtalk export onnx"):
        OnnxBackend(export_copy)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExportedFileError, match="export directory not found"):
        OnnxBackend(tmp_path / "nowhere")


def test_a_corrupt_file_is_named(export_copy: Path) -> None:
    path = export_copy / SPEECH_TO_FRAMES_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ExportedFileError, match=f"cannot load .*{SPEECH_TO_FRAMES_FILE}"):
        OnnxBackend(export_copy)


def test_a_file_without_the_metadata_is_refused(export_copy: Path) -> None:
    path = export_copy / STREAM_WINDOW_FILE
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    with pytest.raises(ExportedFileError, match="no 'stream_window' metadata"):
        OnnxBackend(export_copy)


def test_a_provider_this_build_lacks_is_unavailable(export_dir: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="has no NoSuchExecutionProvider"):
        OnnxBackend(export_dir, ["NoSuchExecutionProvider", "CPUExecutionProvider"])


def test_bad_inputs_name_the_argument(
    onnx_backend: OnnxBackend, identities: list[Identity]
) -> None:
    style = onnx_backend.spec.mean_style
    with pytest.raises(ValueError, match="non-empty mono clip"):
        onnx_backend.speech_to_frames(np.zeros((2, 100), np.float32), identities[0], style)
    with pytest.raises(ValueError, match="style must be a"):
        onnx_backend.speech_to_frames(np.zeros(100, np.float32), identities[0], style[:3])
    with pytest.raises(ValueError, match="identity must be the face encoder's"):
        onnx_backend.speech_to_frames(np.zeros(100, np.float32), identities[0][:2], style)
    with pytest.raises(ValueError, match=r"face must be \(3, 48, 48\)"):
        onnx_backend.encode_face(np.zeros((3, 64, 64), np.float32))
    window = np.zeros((1, onnx_backend.spec.window.window_samples - 1), np.float32)
    with pytest.raises(ValueError, match="waves must be"):
        onnx_backend.stream_windows(window, identities[:1], style[None], np.zeros(1, np.int64))


def test_optimized_model_cache_is_written_then_used(
    export_dir: Path, tmp_path: Path, identities: list[Identity]
) -> None:
    settings = OrtSettings(optimized_model_dir=tmp_path / "optimized")
    wave = 0.3 * np.random.default_rng(0).standard_normal(8_000).astype(np.float32)
    first = OnnxBackend(export_dir, ["CPUExecutionProvider"], settings=settings)
    written = sorted(path.name for path in (tmp_path / "optimized").iterdir())
    assert len(written) == 3 and all(name.endswith("-cpu.all.onnx") for name in written)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "optimized").iterdir()}
    second = OnnxBackend(export_dir, ["CPUExecutionProvider"], settings=settings)
    # Loaded, not rewritten: the files are untouched and the results the same.
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "optimized").iterdir()} == stamps
    style = first.spec.mean_style
    np.testing.assert_allclose(
        second.speech_to_frames(wave, identities[0], style),
        first.speech_to_frames(wave, identities[0], style),
        atol=1e-6,
    )


def test_cpu_calls_run_side_by_side_with_the_window_graph_on_one_thread_each(
    export_dir: Path, identities: list[Identity]
) -> None:
    cores = physical_cores()
    default = OnnxBackend(export_dir, ["CPUExecutionProvider"])
    assert default.concurrent_calls == cores
    window_threads = default._window.get_session_options().intra_op_num_threads
    assert window_threads == 1
    assert default._speech.get_session_options().intra_op_num_threads == cores
    serial = OnnxBackend(
        export_dir, ["CPUExecutionProvider"], settings=OrtSettings(concurrent_calls=1)
    )
    assert serial.concurrent_calls == 1
    assert serial._window.get_session_options().intra_op_num_threads == cores
    # Calls from two threads at once give what one call at a time gives.
    rng = np.random.default_rng(1)
    window = default.spec.window
    waves = [0.3 * rng.standard_normal((2, window.window_samples)).astype(np.float32)] * 2
    style = np.stack([default.spec.mean_style] * 2)
    offsets = np.array([0, 12], dtype=np.int64)
    expected = serial.stream_windows(waves[0], identities[:2], style, offsets)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(default.stream_windows, wave, identities[:2], style, offsets)
            for wave in waves
        ]
        for future in futures:
            np.testing.assert_allclose(future.result().frames, expected.frames, atol=1e-5)
            np.testing.assert_allclose(future.result().carries, expected.carries, atol=1e-5)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="intra_op_threads"):
        OrtSettings(intra_op_threads=0)
    with pytest.raises(ValueError, match="graph_optimization"):
        OrtSettings(graph_optimization="most")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrent_calls"):
        OrtSettings(concurrent_calls=0)
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_importing_the_runtime_path_does_not_import_torch() -> None:
    """A server running exported files must not need PyTorch installed."""
    probe = "import sys, {}; print('torch' in sys.modules)"
    modules = (
        "export.backends.onnx_backend, export.backends.select, export.backends.tensorrt_backend"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe.format(modules + ", pmmtalk.animate")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "False"
