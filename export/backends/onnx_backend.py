"""The ONNX Runtime backend: the three exported graphs, on the CPU, CUDA or TensorRT providers.

Serving an exported model needs no PyTorch: nothing this module imports needs torch (a test
imports it in a fresh interpreter and checks ``torch`` stays out of ``sys.modules``).

CPU session defaults (`OrtSettings`), chosen from timings of the bundled lite model on this
project's 2-core machine (docs/export.md, "Runtime backends", has the table):

- ``intra_op_threads`` = physical cores for the whole-clip and face graphs: threads inside an op
  are what scales on those (one long chain of convolutions and matmuls over a whole clip); 4
  threads on 2 cores was slower than 2.
- ``concurrent_calls`` = physical cores, each stream-window call on one thread: a window's ops
  are too small to share between threads (one call on 2 threads ran 26 windows/s, on 1 thread
  25.7), while two single-threaded calls at once ran 55 windows/s.
- ``inter_op_threads`` = 1, sequential execution: the graphs have almost no parallel branches,
  and ``parallel`` with 2 inter-op threads was slower.
- ``spin_wait`` off: a spinning pool holds the cores other threads need (see the field).
- ``ORT_ENABLE_ALL``: the fusion and layout passes (attention, GELU, layer norm, NCHWc convs);
  ``basic`` and ``extended`` were slower in every run.
- ``optimized_model_dir`` unset: the saved optimized graphs cut opening the lite model's three
  sessions by 0.15-0.3 s (of 0.4-0.75 s), too little to be worth files that are valid only on
  the machine type and onnxruntime version that wrote them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

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
from export.backends.spec import (
    FACE_ENCODER_FILE,
    REEXPORT_HINT,
    SPEECH_TO_FRAMES_FILE,
    STREAM_WINDOW_FILE,
    ExportedFileError,
    export_paths,
    model_spec,
)

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
PROVIDER_PREFERENCE: tuple[str, ...] = (CUDA_PROVIDER, CPU_PROVIDER)
"""Fastest first; `default_providers` keeps those this onnxruntime build has. The TensorRT
provider is opt-in (``providers=[TENSORRT_PROVIDER, ...]``): it builds its engines on the first
run of each new input shape, minutes per engine, which a default must not do behind a caller's
back."""

GraphOptimization = Literal["disable", "basic", "extended", "all"]
_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once), at least 1.

    Counts distinct (package, core) pairs in /proc/cpuinfo among the CPUs in this process's
    affinity mask; elsewhere, or if /proc/cpuinfo says nothing, the affinity mask's size.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    fallback = len(allowed) or os.cpu_count() or 1
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fallback
    cores: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        fields = dict(
            (key.strip(), value.strip())
            for key, sep, value in (line.partition(":") for line in block.splitlines())
            if sep
        )
        if "processor" not in fields or "core id" not in fields:
            continue
        if allowed and int(fields["processor"]) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or fallback


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime session settings (the server's ``backend.onnx`` section mirrors these)."""

    intra_op_threads: int | None = None
    """Threads one op may use; None = `physical_cores()`. The stream-window graph gets this
    divided by ``concurrent_calls`` (at least 1), since that many of its calls run at once."""
    concurrent_calls: int | None = None
    """Calls the backend takes at once from different threads (`Backend.concurrent_calls`);
    None = `physical_cores()` with the CPU provider alone, else 1 (a GPU provider serialises
    the work anyway)."""
    inter_op_threads: int = 1
    """Threads running independent ops at once (only used with ``parallel`` execution)."""
    graph_optimization: GraphOptimization = "all"
    """ONNX Runtime graph optimization level: disable, basic, extended or all."""
    parallel_execution: bool = False
    """Run independent branches at once; off because the graphs are one chain."""
    spin_wait: bool = False
    """Let idle intra-op threads spin between ops instead of sleeping. Off: spinning threads
    hold cores the server's event loop, audio decoding and other sessions need, and on a busy
    2-core machine a spinning pool ran the lite model 1.75x slower than a sleeping one. Alone
    on a quiet machine, spinning ran the 10 s clip graph 17 % faster (157 against 188 ms);
    with two threads running stream windows beside it, it cost those 5-13 % of their windows
    per second and did not speed the clip up."""
    optimized_model_dir: Path | None = None
    """Where to save each graph after optimization and load it from on later starts; None
    optimizes at every start. The saved file is tied to this onnxruntime version, provider and
    machine type, so its name carries the first two."""

    def __post_init__(self) -> None:
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1 or None, got {self.intra_op_threads}")
        if self.inter_op_threads < 1:
            raise ValueError(f"inter_op_threads must be >= 1, got {self.inter_op_threads}")
        if self.concurrent_calls is not None and self.concurrent_calls < 1:
            raise ValueError(f"concurrent_calls must be >= 1 or None, got {self.concurrent_calls}")
        if self.graph_optimization not in _OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization must be one of {sorted(_OPTIMIZATION_LEVELS)}, "
                f"got {self.graph_optimization!r}"
            )


def default_providers() -> list[str]:
    """The execution providers this onnxruntime build has, fastest first."""
    available = set(ort.get_available_providers())
    return [provider for provider in PROVIDER_PREFERENCE if provider in available]


def _check_providers(providers: Sequence[str]) -> list[str]:
    available = ort.get_available_providers()
    missing = [provider for provider in providers if provider not in available]
    if missing:
        hint = (
            " (install onnxruntime-gpu, with CUDA and cuDNN, for the GPU providers)"
            if CPU_PROVIDER not in missing
            else ""
        )
        raise BackendUnavailableError(
            f"onnxruntime {ort.__version__} has no {', '.join(missing)}; it has "
            f"{', '.join(available)}{hint}"
        )
    if not providers:
        raise ValueError("give at least one execution provider, e.g. CPUExecutionProvider")
    return list(providers)


def _provider_options(provider: str, export_dir: Path, device_id: int) -> dict[str, Any]:
    if provider == TENSORRT_PROVIDER:
        # fp32, so its output matches the other backends to 1e-4; fp16 with the sensitive layers
        # kept in fp32 is the native TensorRT backend's job. The engine cache keeps restarts from
        # rebuilding engines for minutes; beside the ONNX files, a new export gets fresh ones.
        return {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(export_dir / "ort-tensorrt-cache"),
            "trt_timing_cache_enable": True,
        }
    if provider == CUDA_PROVIDER:
        return {"device_id": device_id}
    return {}


class OnnxBackend:
    """`export.backends.base.Backend` over ``face_encoder.onnx``, ``speech_to_frames.onnx`` and
    ``stream_window.onnx`` in one export directory."""

    name: BackendName = "onnx"
    concurrent_calls: int

    def __init__(
        self,
        export_dir: str | Path,
        providers: Sequence[str] | None = None,
        *,
        settings: OrtSettings | None = None,
        device_id: int = 0,
        label: str | None = None,
    ) -> None:
        """Open the three graphs.

        ``providers``: ONNX Runtime execution providers in order of preference, e.g.
        ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; None = `default_providers()`.
        ``device_id``: the GPU the CUDA and TensorRT providers use. ``label``: the model's name
        after its preset in logs and answers (``lite:<label>``); default the directory's name.
        Raises `ExportedFileError` for a missing or corrupt file and
        `export.backends.base.BackendUnavailableError` for a provider this build lacks.
        """
        self.directory = Path(export_dir)
        self.settings = settings or OrtSettings()
        self._device_id = device_id
        chosen = _check_providers(providers if providers is not None else default_providers())
        self.concurrent_calls = self.settings.concurrent_calls or (
            physical_cores() if chosen == [CPU_PROVIDER] else 1
        )
        threads = self.settings.intra_op_threads or physical_cores()
        paths = export_paths(self.directory)
        self._face = self._session(paths[FACE_ENCODER_FILE], chosen, threads)
        self._speech = self._session(paths[SPEECH_TO_FRAMES_FILE], chosen, threads)
        window_threads = max(1, threads // self.concurrent_calls)
        self._window = self._session(paths[STREAM_WINDOW_FILE], chosen, window_threads)
        self.spec: ModelSpec = model_spec(
            self._speech.get_modelmeta().custom_metadata_map,
            self._window.get_modelmeta().custom_metadata_map,
            self.directory,
            label,
        )
        self._identity_names = [output.name for output in self._face.get_outputs()]
        self._check_graphs()
        self.device = ", ".join(self._speech.get_providers())
        logger.info(
            "onnx backend for %s on %s: %d concurrent call(s), stream windows on %d thread(s)",
            self.spec.name,
            self.device,
            self.concurrent_calls,
            window_threads,
        )

    def _session(self, path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = self.settings.inter_op_threads
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL
            if self.settings.parallel_execution
            else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[self.settings.graph_optimization]
        spin = "1" if self.settings.spin_wait else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        source = path
        cache = self.settings.optimized_model_dir
        if cache is not None:
            tag = f"{ort.__version__}-{providers[0].removesuffix('ExecutionProvider').lower()}"
            optimized = cache / f"{path.stem}.{tag}.{self.settings.graph_optimization}.onnx"
            if optimized.is_file() and optimized.stat().st_mtime >= path.stat().st_mtime:
                source = optimized
                # Already optimized: running the passes again would only cost start-up time.
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            else:
                cache.mkdir(parents=True, exist_ok=True)
                options.optimized_model_filepath = str(optimized)
        provider_list = [
            (p, _provider_options(p, self.directory, self._device_id)) for p in providers
        ]
        try:
            return ort.InferenceSession(str(source), options, providers=provider_list)
        except Exception as exc:  # onnxruntime raises its own InvalidProtobuf, Fail, ...
            raise ExportedFileError(
                f"onnxruntime cannot load {source}: {exc}; {REEXPORT_HINT}"
            ) from exc

    def _check_graphs(self) -> None:
        """Fail now, naming the file, if the graphs disagree with each other or the metadata."""
        window_path = self.directory / STREAM_WINDOW_FILE
        wave = next((i for i in self._window.get_inputs() if i.name == "wave"), None)
        if wave is None or wave.shape[-1] != self.spec.window.window_samples:
            raise ExportedFileError(
                f"{window_path}: its wave input is {None if wave is None else wave.shape}, its "
                f"metadata says windows of {self.spec.window.window_samples} samples; "
                f"{REEXPORT_HINT}"
            )
        for session, path in ((self._speech, SPEECH_TO_FRAMES_FILE), (self._window, window_path)):
            inputs = {i.name for i in session.get_inputs()}
            missing = [n for n in self._identity_names if n not in inputs]
            if missing:
                raise ExportedFileError(
                    f"{path} does not take the face encoder's outputs {missing}; the files come "
                    f"from different exports; {REEXPORT_HINT}"
                )

    def encode_face(self, face: np.ndarray) -> Identity:
        """face (3, S, S) float32 RGB in [0, 1] -> identity pyramid, each level batch 1."""
        outputs = self._face.run(self._identity_names, {"face": face_batch(self.spec, face)})
        return tuple(np.asarray(level, dtype=np.float32) for level in outputs)

    def speech_to_frames(
        self, wave: np.ndarray, identity: Identity, style: np.ndarray
    ) -> np.ndarray:
        """wave (N,) float32 at 16 kHz; style (style_dim,) -> (T, 32) float32 unclipped,
        T = ceil(N * 30 / 16000)."""
        levels = check_identity(identity, len(self._identity_names))
        feeds = {
            "wave": clip_batch(wave),
            "style": style_batch(self.spec, style),
            **dict(zip(self._identity_names, levels, strict=True)),
        }
        (frames,) = self._speech.run(["blendshapes"], feeds)  # (1, T, 32)
        return np.asarray(frames[0], dtype=np.float32)

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
            "wave": np.ascontiguousarray(waves, dtype=np.float32),
            "style": np.ascontiguousarray(styles, dtype=np.float32),
            "frame_offset": np.ascontiguousarray(frame_offsets, dtype=np.int64),
            "carry": carry,
            "fresh_start": fresh,
            **dict(zip(self._identity_names, levels, strict=True)),
        }
        frames, carry_out = self._window.run(["blendshapes", "carry_out"], feeds)
        return WindowOutput(
            np.asarray(frames, dtype=np.float32), np.asarray(carry_out, dtype=np.float32)
        )

    def close(self) -> None:
        """Drop the sessions (onnxruntime frees a session's memory when it is collected)."""
        del self._face, self._speech, self._window
