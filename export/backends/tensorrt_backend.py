"""The native TensorRT backend: serialized engines run with the TensorRT 10 Python API.

The engines come from ``pmmtalk export tensorrt`` (`export.tensorrt.build_engines`) and live
beside the ONNX files they were built from, in ``<export dir>/tensorrt/``: one ``<graph>.plan``
per graph with the ONNX graphs' input and output names, and ``engines.json`` describing them.
The model spec is read from the ONNX metadata of the same export directory.

Device memory and copies go through cuda-python, as in the engine builder, so this backend needs
``tensorrt`` and ``cuda-python`` but not PyTorch. Both are imported when a backend is opened,
never at module import, so a machine without them can import this module and gets a
`BackendUnavailableError` naming what is missing.

Written against the TensorRT 10 API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``). The build machine has neither TensorRT nor a GPU, so only the unavailable
path is tested there; the ``gpu``-marked parity test in tests/export/backends runs it where both
exist.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.backends.base import (
    BackendName,
    BackendUnavailableError,
    Carry,
    Identity,
    ModelSpec,
    WindowOutput,
    carry_batch,
    check_window_batch,
)
from export.backends.inputs import (
    check_identity,
    clip_batch,
    face_batch,
    stack_identities,
    style_batch,
)
from export.backends.spec import ExportedFileError, read_export_spec
from export.graphs import GRAPH_NAMES
from export.tensorrt import (
    ENGINE_DIR_NAME,
    PLAN_SUFFIX,
    TensorRTRuntime,
    TensorRTUnavailableError,
    load_tensorrt,
    read_engine_set,
)

logger = logging.getLogger(__name__)

REBUILD_HINT = "rebuild them with `pmmtalk export tensorrt`"


def engine_paths(export_dir: str | Path) -> dict[str, Path]:
    """``<export dir>/tensorrt/<graph>.plan`` for each graph, without checking they exist."""
    folder = Path(export_dir) / ENGINE_DIR_NAME
    return {name: folder / f"{name}{PLAN_SUFFIX}" for name in GRAPH_NAMES}


def require_tensorrt() -> TensorRTRuntime:
    """TensorRT, cuda-python and GPU 0, or `BackendUnavailableError` saying which is missing."""
    try:
        return load_tensorrt()
    except TensorRTUnavailableError as exc:
        raise BackendUnavailableError(
            f"the TensorRT backend cannot run here: {exc}; or use --backend onnx"
        ) from exc


def _cuda(rt: TensorRTRuntime, result: Any) -> Any:
    """Unpack a cuda-python ``(error, value...)`` result, raising RuntimeError on an error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != rt.cudart.cudaError_t.cudaSuccess:
        _, text = rt.cudart.cudaGetErrorString(error)
        raise RuntimeError(f"CUDA error {int(error)}: {text.decode(errors='replace')}")
    return values[0] if values else None


class _Engine:
    """One engine with its execution context, CUDA stream and device buffers.

    Buffers are kept per tensor and grown on demand, so steady serving (the same window shape
    call after call, clips under the longest seen so far) allocates nothing.
    """

    def __init__(self, rt: TensorRTRuntime, runtime: Any, path: Path) -> None:
        self.path = path
        self._rt = rt
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ExportedFileError(
                f"TensorRT {rt.version} cannot load {path}: it is corrupt, or was built by another "
                f"TensorRT version or for another GPU than this {rt.gpu}; {REBUILD_HINT}"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        self._stream = _cuda(rt, rt.cudart.cudaStreamCreate())
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == rt.trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._dtypes = {n: np.dtype(rt.trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _cuda(self._rt, self._rt.cudart.cudaFree(pointer))
            pointer = _cuda(self._rt, self._rt.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if len(low) != len(shape) or any(
            not lo <= size <= hi for lo, size, hi in zip(low, shape, high, strict=True)
        ):
            raise ValueError(
                f"{self.path.name} takes {name} shapes from {tuple(low)} to {tuple(high)}, got "
                f"{shape}; rebuild the engines with a wider range (pmmtalk export tensorrt "
                "with a longer clip or larger batch limit) or use --backend onnx"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by name -> outputs by name as float32 (copies in, run, copies out)."""
        cudart = self._rt.cudart
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        staged = []  # host arrays must outlive their asynchronous copies
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            self._check_profile(name, array.shape)
            pointer = self._buffer(name, max(array.nbytes, 1))
            _cuda(
                self._rt,
                cudart.cudaMemcpyAsync(
                    pointer, array.ctypes.data, array.nbytes, to_device, self._stream
                ),
            )
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, pointer)
            staged.append(array)
        results: dict[str, tuple[np.ndarray, int]] = {}
        for name in self.outputs:
            array = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name])
            pointer = self._buffer(name, max(array.nbytes, 1))
            self.context.set_tensor_address(name, pointer)
            results[name] = (array, pointer)
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT failed to run {self.path}; its log above says why")
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for array, pointer in results.values():
            _cuda(
                self._rt,
                cudart.cudaMemcpyAsync(
                    array.ctypes.data, pointer, array.nbytes, to_host, self._stream
                ),
            )
        _cuda(self._rt, cudart.cudaStreamSynchronize(self._stream))
        return {name: array.astype(np.float32) for name, (array, _) in results.items()}

    def close(self) -> None:
        for pointer, _ in self._buffers.values():
            self._rt.cudart.cudaFree(pointer)
        self._buffers.clear()
        self._rt.cudart.cudaStreamDestroy(self._stream)
        del self.context, self.engine


class TensorRTBackend:
    """`export.backends.base.Backend` over the three TensorRT engines of an export directory."""

    name: BackendName = "tensorrt"
    concurrent_calls: int = 1  # one execution context (and stream) per engine

    def __init__(self, export_dir: str | Path, *, label: str | None = None) -> None:
        """Load the engines on GPU 0.

        ``label``: the model's name after its preset (``lite:<label>``); default the export
        directory's name. Raises `BackendUnavailableError` when tensorrt, cuda-python or a GPU is
        missing, and `ExportedFileError` when an engine or ONNX file is missing or unreadable.
        """
        rt = require_tensorrt()
        self.directory = Path(export_dir)
        self.spec: ModelSpec = read_export_spec(self.directory, label)
        try:
            engines = read_engine_set(self.directory / ENGINE_DIR_NAME)
        except (FileNotFoundError, ValueError) as exc:
            raise ExportedFileError(f"no usable TensorRT engines: {exc}") from exc
        if engines.gpu != rt.gpu or engines.tensorrt_version != rt.version:
            raise ExportedFileError(
                f"the engines in {engines.directory} were built with TensorRT "
                f"{engines.tensorrt_version} on {engines.gpu}; this is TensorRT {rt.version} on "
                f"{rt.gpu}; {REBUILD_HINT}"
            )
        self._logger = rt.trt.Logger(rt.trt.Logger.WARNING)
        runtime = rt.trt.Runtime(self._logger)
        plans = {name: info.plan for name, info in engines.engines.items()}
        self._face = _Engine(rt, runtime, plans["face_encoder"])
        self._speech = _Engine(rt, runtime, plans["speech_to_frames"])
        self._window = _Engine(rt, runtime, plans["stream_window"])
        # Engine I/O order is TensorRT's choice; the pyramid goes shallow to deep by name.
        self._identity_names = sorted(
            self._face.outputs, key=lambda name: int(name.rsplit("_", 1)[-1])
        )
        self.device = f"cuda:0 ({rt.gpu}), TensorRT {rt.version} {engines.precision}"
        logger.info("tensorrt backend for %s on %s", self.spec.name, self.device)

    def encode_face(self, face: np.ndarray) -> Identity:
        """face (3, S, S) float32 RGB in [0, 1] -> identity pyramid, each level batch 1."""
        outputs = self._face.run({"face": face_batch(self.spec, face)})
        return tuple(outputs[name] for name in self._identity_names)

    def speech_to_frames(
        self, wave: np.ndarray, identity: Identity, style: np.ndarray
    ) -> np.ndarray:
        """wave (N,) float32 at 16 kHz; style (style_dim,) -> (T, 32) float32 unclipped."""
        levels = check_identity(identity, len(self._identity_names))
        feeds = {
            "wave": clip_batch(wave),
            "style": style_batch(self.spec, style),
            **dict(zip(self._identity_names, levels, strict=True)),
        }
        return self._speech.run(feeds)["blendshapes"][0]  # (1, T, 32) -> (T, 32)

    def stream_windows(
        self,
        waves: np.ndarray,
        identities: Sequence[Identity],
        styles: np.ndarray,
        frame_offsets: np.ndarray,
        carries: Sequence[Carry | None] | None = None,
    ) -> WindowOutput:
        """As `export.backends.base.Backend.stream_windows`."""
        check_window_batch(self.spec, waves, identities, styles, frame_offsets, carries)
        levels = stack_identities(identities, len(self._identity_names))
        carry, fresh = carry_batch(self.spec, carries, len(waves))
        feeds = {
            "wave": waves,
            "style": styles,
            "frame_offset": frame_offsets,
            "carry": carry,
            "fresh_start": fresh,
            **dict(zip(self._identity_names, levels, strict=True)),
        }
        outputs = self._window.run(feeds)
        return WindowOutput(outputs["blendshapes"], outputs["carry_out"])  # (B, Tw, 32), (B, C, D)

    def close(self) -> None:
        """Free the device buffers, streams, execution contexts and engines."""
        for engine in (self._face, self._speech, self._window):
            engine.close()
