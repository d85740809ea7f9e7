"""What the tests of the TensorRT graph conversions share: reading conftest's ``onnx_exports``
and the element type of every tensor of a graph."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def load(exports: dict[str, Path], mode: str) -> onnx.ModelProto:
    """The ``model.onnx`` of the ``mode`` export."""
    return onnx.load(str(exports[mode] / "model.onnx"))


def dispatcher_names(exports: dict[str, Path], mode: str) -> list[str]:
    """The dispatchers the ``mode`` export's manifest names."""
    manifest = json.loads((exports[mode] / "dyt_edge.json").read_text())
    return manifest["dispatch"]["dispatchers"]


def types_of(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type (graph I/O, inferred values, initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types
