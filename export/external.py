"""ONNX files past protobuf's 2 GB limit: the weights go to a side file (ONNX external data).

An ONNX file is one protobuf message, and protobuf cannot serialise a message of 2 GiB or more.
The paper preset's 692 M parameters are 2.8 GB in float32, so its graphs keep their weights in
``<graph>.onnx.data`` beside the graph, which then holds only the structure and references into
that file (offsets and lengths). ONNX Runtime, TensorRT's parser (``parse_from_file``) and Triton
read such a pair when both files sit in the same folder. The lite preset's graphs (16 MB) stay
single files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import onnx
from onnx import TensorProto

if TYPE_CHECKING:  # serving reads exported graphs without PyTorch; only exporting needs it
    from torch import nn

EXTERNAL_DATA_ABOVE_BYTES: Final = 1_500_000_000
"""Weights above this many bytes are written as external data. Protobuf's hard limit is 2 GiB
for the whole file; the margin covers the graph itself and the stand-ins' extra constants."""

DATA_SUFFIX: Final = ".data"


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a module's parameters and buffers as stored (float32: 4 per value)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def needs_external_data(model: nn.Module) -> bool:
    """Whether ``model``'s graphs must keep their weights in a side file."""
    return weight_bytes(model) > EXTERNAL_DATA_ABOVE_BYTES


def data_file(graph: Path) -> Path:
    """``speech_to_frames.onnx`` -> ``speech_to_frames.onnx.data``, the side file it writes."""
    return graph.with_name(graph.name + DATA_SUFFIX)


def external_files(graph: str | Path) -> list[str]:
    """The files, relative to ``graph``'s folder, that hold its external weights (none for a
    single-file graph). Reads only the graph's own file."""
    model = onnx.load(str(graph), load_external_data=False)
    locations = {
        entry.value
        for init in model.graph.initializer
        if init.data_location == TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    return sorted(locations)


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers held inside ``model`` (external ones count 0)."""
    return sum(
        len(init.raw_data) if init.HasField("raw_data") else init.ByteSize()
        for init in model.graph.initializer
    )


def too_big_for_one_file(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s inline initializers exceed `EXTERNAL_DATA_ABOVE_BYTES`."""
    return tensor_bytes(model) > EXTERNAL_DATA_ABOVE_BYTES


def save_graph(model: onnx.ModelProto, path: str | Path, *, external: bool | None = None) -> None:
    """Save ``model`` to ``path``; with ``external`` (None: `too_big_for_one_file`) every
    initializer of 1 kB or more goes to `data_file` (replaced if present), the rest stays
    inline."""
    target = Path(path)
    if external is None:
        external = too_big_for_one_file(model)
    if not external:
        onnx.save(model, str(target))
        return
    data_file(target).unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file(target).name,
        size_threshold=1024,
    )
