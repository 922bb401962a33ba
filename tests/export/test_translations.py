"""The exporter's GELU translation computes GELU, and ONNX Runtime fuses the exact one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.translations import CUSTOM_TRANSLATIONS


class Block(nn.Module):
    """A linear layer and a GELU: the pattern of every feed-forward block."""

    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 16)
        self.act = nn.GELU(approximate=approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


def export(module: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        module.eval(),
        (torch.randn(2, 5, 8),),
        str(path),
        input_names=["x"],
        dynamo=True,
        custom_translation_table=CUSTOM_TRANSLATIONS,
        opset_version=18,
        verbose=False,
    )
    return path


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_translation_matches_torch(approximate: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    block = Block(approximate)
    path = export(block, tmp_path / "block.onnx")
    x = 3 * torch.randn(2, 5, 8)  # the export's shape; 3x spreads it over both tails
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = block(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_onnx_runtime_fuses_the_exact_gelu(tmp_path: Path) -> None:
    path = export(Block("none"), tmp_path / "block.onnx")
    exported_ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Erf" in exported_ops  # standard ops in the file, readable by any runtime
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    optimized_ops = {node.op_type for node in optimized.graph.node}
    assert "Erf" not in optimized_ops
    assert optimized_ops & {"Gelu", "BiasGelu"}
