"""What an export directory says about its model, read from the ONNX files' metadata.

The backends that run exported files (ONNX Runtime, TensorRT) never load a checkpoint, so the
model config, style table and stream window come from the ``metadata_props`` that
`export.onnx` writes: ``pmmtalk_config`` and ``style_table`` in ``speech_to_frames.onnx``,
``stream_window`` (`StreamWindow.to_dict` as JSON) in ``stream_window.onnx``. Nothing here
imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from export.backends.base import BackendUnavailableError, ModelSpec
from export.graphs import (  # noqa: F401  (re-exported for the backends)
    EXPORT_FILES,
    FACE_ENCODER_FILE,
    SPEECH_TO_FRAMES_FILE,
    STREAM_WINDOW_FILE,
)
from models.config import PMMTalkConfig
from models.streaming import StreamWindow

REEXPORT_HINT = "re-export with `pmmtalk export onnx --checkpoint DIR -o OUT`"


class ExportedFileError(BackendUnavailableError):
    """An exported model file is missing, corrupt, or lacks the metadata `export.onnx` writes."""


def export_paths(export_dir: str | Path) -> dict[str, Path]:
    """The three graph files of an export directory, by file name, after checking they exist."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise ExportedFileError(f"export directory not found: {folder}; {REEXPORT_HINT}")
    paths = {name: folder / name for name in EXPORT_FILES}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise ExportedFileError(f"{folder} lacks {', '.join(missing)}; {REEXPORT_HINT}")
    return paths


def _field(props: Mapping[str, str], key: str, source: Path) -> str:
    if key not in props:
        raise ExportedFileError(
            f"{source} has no {key!r} metadata, so it was not written by this release's "
            f"exporter; {REEXPORT_HINT}"
        )
    return props[key]


def model_spec(
    speech_props: Mapping[str, str],
    window_props: Mapping[str, str],
    export_dir: Path,
    label: str | None = None,
) -> ModelSpec:
    """Build the spec from the metadata of ``speech_to_frames.onnx`` and ``stream_window.onnx``.

    Its name is ``<preset>:<label>``; ``label`` names the model's source (a checkpoint folder's
    name, say) and defaults to the export directory's name.
    """
    speech_path = export_dir / SPEECH_TO_FRAMES_FILE
    window_path = export_dir / STREAM_WINDOW_FILE
    try:
        config = PMMTalkConfig.from_json(_field(speech_props, "pmmtalk_config", speech_path))
        table = np.asarray(
            json.loads(_field(speech_props, "style_table", speech_path)), dtype=np.float32
        )
        lengths = json.loads(_field(window_props, "stream_window", window_path))
        window = StreamWindow(
            left_context_s=float(lengths["left_context_s"]),
            hop_s=float(lengths["hop_s"]),
            lookahead_s=float(lengths["lookahead_s"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ExportedFileError):
            raise
        raise ExportedFileError(
            f"the metadata in {export_dir} does not parse ({exc}); {REEXPORT_HINT}"
        ) from exc
    if table.shape != (config.decoder.num_styles, config.decoder.style_dim):
        raise ExportedFileError(
            f"{speech_path}: style table is {table.shape}, the config says "
            f"({config.decoder.num_styles}, {config.decoder.style_dim}); {REEXPORT_HINT}"
        )
    name = f"{config.preset}:{label if label is not None else export_dir.name}"
    return ModelSpec(config=config, window=window, style_table=table, name=name)


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of one ONNX file (parsed with the ``onnx`` package)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError and others for a bad file
        raise ExportedFileError(
            f"{path} is corrupt or not an ONNX file ({exc}); {REEXPORT_HINT}"
        ) from exc
    return {prop.key: prop.value for prop in proto.metadata_props}


def read_export_spec(export_dir: str | Path, label: str | None = None) -> ModelSpec:
    """The spec of an export directory without opening a runtime session (used by TensorRT)."""
    paths = export_paths(export_dir)
    return model_spec(
        read_onnx_metadata(paths[SPEECH_TO_FRAMES_FILE]),
        read_onnx_metadata(paths[STREAM_WINDOW_FILE]),
        Path(export_dir),
        label,
    )
