"""Open a backend by name, or let ``auto`` pick the fastest one this machine can run.

``auto``: native TensorRT where the tensorrt package, an NVIDIA GPU and built engines are all
present; else PyTorch on the GPU; else ONNX Runtime on the CPU, which ran the lite model 2 to 8
times faster than PyTorch eager on 2 cores (docs/export.md, "Runtime backends", has the figures).

The ONNX and TensorRT backends run the files of an export directory: one given directly, or the
cached export of a checkpoint (`export.cache.ensure_exported`, which exports once per checkpoint
and window). Backend modules are imported only when chosen, so serving from ONNX Runtime never
imports torch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from export.backends.base import Backend, BackendName, BackendUnavailableError
from models.streaming import StreamWindow

if TYPE_CHECKING:
    from export.backends.onnx_backend import OrtSettings

logger = logging.getLogger(__name__)

BackendChoice = Literal["auto", "torch", "onnx", "tensorrt"]
BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)
DEVICE_HELP = "auto (a GPU when one is present), cpu, cuda or cuda:N"


class UnfaithfulExportError(BackendUnavailableError):
    """A checkpoint's ONNX export fails its parity check against PyTorch, so nothing exported
    from it can run; ``auto`` then runs PyTorch instead."""


def gpu_present() -> bool:
    """Whether an NVIDIA GPU with a loaded driver is visible, found without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def tensorrt_installed() -> bool:
    """Whether the tensorrt package can be imported (without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def _check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {device!r}; use {DEVICE_HELP}")


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index else 0


def torch_cuda_available() -> bool:
    """Whether PyTorch is installed and sees a CUDA GPU (imports torch if it is installed)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(device: str = "auto") -> tuple[BackendName, str, str]:
    """What ``auto`` runs on this machine: (backend, device, the reason in words).

    TensorRT is chosen when its package and a GPU are present; `open_backend` falls back when
    the export has no engines yet.
    """
    _check_device(device)
    if device == "cpu":
        return "onnx", "cpu", "device cpu: ONNX Runtime is the fastest CPU backend"
    if gpu_present():
        gpu = "cuda" if device == "auto" else device
        if tensorrt_installed():
            return "tensorrt", gpu, "an NVIDIA GPU and the tensorrt package are present"
        if torch_cuda_available():
            return "torch", gpu, "an NVIDIA GPU is present, the tensorrt package is not"
        return "onnx", device, "a GPU is present, but neither tensorrt nor CUDA PyTorch is"
    if device != "auto":
        raise BackendUnavailableError(
            f"device {device!r} asked for, but no NVIDIA GPU with a driver is visible here; "
            "use --device cpu"
        )
    return "onnx", "cpu", "no GPU: ONNX Runtime is the fastest CPU backend"


def _export_dir(
    checkpoint_dir: Path | None,
    export_dir: Path | None,
    window: StreamWindow,
    cache_dir: Path | None,
    progress: bool,
) -> Path:
    if export_dir is not None:
        return export_dir
    if checkpoint_dir is None:
        raise ValueError("give a checkpoint directory or an export directory to run")
    from export.cache import ExportParityError, ensure_exported

    try:
        exported = ensure_exported(
            checkpoint_dir, window=window, cache_dir=cache_dir, progress=progress
        )
    except ExportParityError as exc:
        raise UnfaithfulExportError(
            f"the ONNX export of {checkpoint_dir} does not reproduce PyTorch ({exc}); "
            "use --backend torch"
        ) from exc
    return exported.directory


def open_backend(
    name: str,
    checkpoint_dir: Path | None,
    *,
    device: str = "auto",
    cache_dir: Path | None = None,
    export_dir: Path | None = None,
    window: StreamWindow | None = None,
    ort_settings: OrtSettings | None = None,
    progress: bool = True,
) -> Backend:
    """Open backend ``name`` (auto, torch, onnx or tensorrt) on ``device`` (`DEVICE_HELP`).

    ``checkpoint_dir``: the model; torch loads it, onnx and tensorrt run its cached export
    (exported into ``cache_dir`` first if needed; None = ``$PMMTALK_CACHE_DIR`` or
    ``~/.cache/pmmtalk``). ``export_dir``: run these exported files instead, with no checkpoint
    and no PyTorch. ``window``: the stream window (default `StreamWindow()`). ``ort_settings``:
    ONNX Runtime session settings (default `OrtSettings()`). ``progress``: let a first export
    report its progress.

    Raises `BackendUnavailableError` for a backend, device or file this machine lacks,
    `models.checkpoint.CheckpointError` for a bad checkpoint, ValueError for a bad argument.
    """
    if name not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    _check_device(device)
    chosen_window = window or StreamWindow()
    backend = name
    if name == "auto":
        backend, device, reason = choose_backend(device)
        if backend == "torch" and checkpoint_dir is None:
            backend, device, reason = "onnx", "auto", "only an export directory was given"
        logger.info("backend auto -> %s on %s: %s", backend, device, reason)
    if backend == "torch":
        if checkpoint_dir is None:
            raise ValueError("the torch backend loads a checkpoint: give checkpoint_dir")
        from export.backends.torch_backend import TorchBackend

        return TorchBackend.from_checkpoint(checkpoint_dir, device=device, window=chosen_window)
    if backend == "tensorrt" and name != "auto":
        from export.backends.tensorrt_backend import require_tensorrt

        require_tensorrt()  # before a first export, which takes minutes, not after it
    try:
        folder = _export_dir(checkpoint_dir, export_dir, chosen_window, cache_dir, progress)
    except UnfaithfulExportError as exc:
        if name != "auto":
            raise
        logger.warning("backend auto: %s; using torch", exc)
        return open_backend("torch", checkpoint_dir, device=device, window=chosen_window)
    label = checkpoint_dir.name if checkpoint_dir is not None else None
    if backend == "tensorrt":
        from export.backends.tensorrt_backend import TensorRTBackend, engine_paths

        if name != "auto" or all(path.is_file() for path in engine_paths(folder).values()):
            return TensorRTBackend(folder, label=label)
        fallback = "torch" if checkpoint_dir is not None and torch_cuda_available() else "onnx"
        logger.warning(
            "backend auto: %s has no TensorRT engines yet (build them with `pmmtalk export "
            "tensorrt`); using %s meanwhile",
            folder,
            fallback,
        )
        if fallback == "torch":
            return open_backend("torch", checkpoint_dir, device=device, window=chosen_window)
        device = "auto"  # ONNX Runtime on the GPU if this build has CUDA, else the CPU
    from export.backends.onnx_backend import CPU_PROVIDER, CUDA_PROVIDER, OnnxBackend

    providers = {"auto": None, "cpu": [CPU_PROVIDER]}.get(device, [CUDA_PROVIDER, CPU_PROVIDER])
    return OnnxBackend(
        folder, providers, settings=ort_settings, device_id=_device_index(device), label=label
    )
