"""Facts about exported graphs that every reader needs, without importing torch.

The file names of an export directory, and which nodes of a speech graph are its log-mel front
end (`export.onnx.DftLogMel`): reduced-precision variants (`export.quantize`, the TensorRT fp16
rewrite in `export.tensorrt`) keep those in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import onnx

from models.streaming import StreamWindow

OPSET_VERSION: Final = 18
DEFAULT_WINDOW: Final = StreamWindow()
"""The window ``stream_window.onnx`` is exported for unless told otherwise."""
PARITY_TOLERANCE: Final = 1e-4
"""Largest absolute difference of a coefficient between ONNX Runtime and PyTorch (fp32)."""

FACE_ENCODER_FILE: Final = "face_encoder.onnx"
SPEECH_TO_FRAMES_FILE: Final = "speech_to_frames.onnx"
STREAM_WINDOW_FILE: Final = "stream_window.onnx"
EXPORT_FILES: Final[tuple[str, ...]] = (
    FACE_ENCODER_FILE,
    SPEECH_TO_FRAMES_FILE,
    STREAM_WINDOW_FILE,
)
"""The three graphs every export directory holds."""
GRAPH_NAMES: Final[tuple[str, ...]] = tuple(name.removesuffix(".onnx") for name in EXPORT_FILES)
"""The same graphs by name (engine files and Triton models are named after them)."""

HIERARCHY_METADATA_KEY: Final = "pkg.torch.onnx.class_hierarchy"
"""Node metadata where the dynamo exporter lists the modules a node was traced in."""
FRONT_END_CLASS: Final = "export.onnx.DftLogMel"
"""The module the speech graphs' front end is traced in (export.onnx checks it matches)."""


def front_end_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes traced inside `DftLogMel` in a speech graph: the log-mel front end.

    Reduced-precision variants keep these float32: the DFT's outputs reach several hundred for
    full-scale speech (their squares overflow float16), and the log after the mel product
    turns the rounding of quiet bins into large errors. Found through the module hierarchy the
    dynamo exporter records on every node; raises ValueError for a graph without that record
    (not written by `export.onnx.export_speech_to_frames` or `export_stream_window`).
    """
    names = [
        node.name
        for node in model.graph.node
        if any(
            p.key == HIERARCHY_METADATA_KEY and FRONT_END_CLASS in p.value
            for p in node.metadata_props
        )
    ]
    if not names:
        raise ValueError(
            f"{model.graph.name or 'the graph'} has no nodes traced in {FRONT_END_CLASS}: it "
            "was not exported by this release's export.onnx; re-export it with "
            "`pmmtalk export onnx`"
        )
    return names


def graph_files(export_dir: str | Path) -> dict[str, Path]:
    """The ONNX file of each graph in `GRAPH_NAMES` in an export directory.

    Raises:
        FileNotFoundError: the directory or one of the files is missing.
    """
    folder = Path(export_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ONNX export directory not found: {folder}; create it with `pmmtalk export onnx`"
        )
    files = {name: folder / f"{name}.onnx" for name in GRAPH_NAMES}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}; re-export the checkpoint with this release "
            "(`pmmtalk export onnx`)"
        )
    return files


@dataclass(frozen=True)
class ExportedModel:
    """Paths of one export: the three graphs, all in ``directory``."""

    face_encoder: Path
    speech_to_frames: Path
    stream_window: Path
    directory: Path

    @classmethod
    def in_directory(cls, directory: str | Path) -> ExportedModel:
        """The standard file names in ``directory`` (whether or not they exist yet)."""
        folder = Path(directory)
        return cls(
            face_encoder=folder / FACE_ENCODER_FILE,
            speech_to_frames=folder / SPEECH_TO_FRAMES_FILE,
            stream_window=folder / STREAM_WINDOW_FILE,
            directory=folder,
        )
