"""ONNX translations the exporter uses instead of its defaults, so ONNX Runtime fuses them.

``torch.onnx.export(dynamo=True)`` writes GELU as ``x * (0.5 * (1 + erf(x / sqrt 2)))`` for
opset 18. ONNX Runtime's GELU fusion looks for ``(x * (1 + erf(x / sqrt 2))) * 0.5`` and misses
the exporter's order, so every GELU ran as five element-wise ops. `gelu` writes the same
function in the order the fusion matches: with it ONNX Runtime fuses all 18 GELUs of the lite
speech graphs (into Gelu, or BiasGelu after a MatMul), and the 10 s clip graph ran about 6 %
faster. The ops stay standard (Div, Erf, Add, Mul), so TensorRT and any other runtime read the
graph as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import onnx
import torch
from onnxscript import opset18 as op


def _constant(value: float, like: Any) -> Any:
    """A scalar constant of ``like``'s float type."""
    scalar = onnx.helper.make_tensor("value", onnx.TensorProto.FLOAT, [], [value])
    # onnxscript types Constant's output as a union of every tensor type, which its own
    # CastLike signature then refuses; the op itself takes any of them.
    return op.CastLike(op.Constant(value=scalar), like)  # type: ignore[type-var]


def gelu(x: Any, approximate: str = "none") -> Any:
    """aten.gelu: exact GELU as ``(x * (1 + erf(x / sqrt 2))) * 0.5``, the tanh form as
    ``(x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))) * 0.5``."""
    if approximate == "none":
        inner = op.Erf(op.Div(x, _constant(math.sqrt(2.0), x)))
    elif approximate == "tanh":
        cube = op.Mul(op.Mul(x, x), x)
        inner = op.Tanh(
            op.Mul(
                _constant(math.sqrt(2.0 / math.pi), x),
                op.Add(x, op.Mul(_constant(0.044715, x), cube)),
            )
        )
    else:
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return op.Mul(op.Mul(x, op.Add(inner, _constant(1.0, x))), _constant(0.5, x))


CUSTOM_TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.aten.gelu.default: gelu,
}
"""``custom_translation_table`` for `torch.onnx.export`."""
