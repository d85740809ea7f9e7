"""Exporters (installed as ``dyt_edge.exporters``): PyTorch -> ONNX whose token dispatch really
skips work, and the builders that turn an export into a deployment artifact per target.

Modules (heavy ones import torch / onnx / openvino inside functions):

``pipeline``      :func:`export_checkpoint` / :func:`export_model`: the whole export
``torch_onnx``    model -> ONNX (dynamo exporter) and the graph tidy-up
``graph_report``  what a graph contains: dispatchers, op census, fp32 gates, TensorRT checks
``simplify``      onnxsim / onnxslim with outputs re-checked
``validation``    the exported graph against PyTorch, Optimum-style
``reference``     the PyTorch side of that validation (fp32 and float64, forced gates)
``formats``       the table of export formats and option checks (torch-free)
``errors``        export and export-validation errors
``builder``       the builder contract (options, context, output, :class:`Builder`)
``registry``      target -> builder, and the target-dependent option checks
``openvino/``     ONNX -> IR (``ir``) and the OpenVINO builder (``builder``)
``tensorrt/``     the TensorRT builder (``builder``), its plan (``plan``) and TensorRT calls
                  (``engine``)

Importing this package switches ONNX Runtime's and OpenVINO's telemetry off
(:mod:`dyt_edge.runtimes.backends`).
"""

from __future__ import annotations

import importlib
from typing import Any

from ..runtimes.backends import disable_telemetry

# Before anything below imports onnx tools that may pull onnxruntime or openvino in.
disable_telemetry()

_LAZY = {
    "ExportOptions": "dyt_edge.exporters.pipeline",
    "ExportResult": "dyt_edge.exporters.pipeline",
    "export_checkpoint": "dyt_edge.exporters.pipeline",
    "export_model": "dyt_edge.exporters.pipeline",
    "ExportError": "dyt_edge.exporters.errors",
    "ValidationError": "dyt_edge.exporters.errors",
    "FORMATS": "dyt_edge.exporters.formats",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dyt_edge.exporters' has no attribute {name!r}")
