"""Exporters (installed as ``dyt_edge.exporters``): PyTorch -> ONNX whose token dispatch really
skips work, ONNX -> OpenVINO IR; validation, graph report and simplification around them.

Modules (heavy ones import torch / onnx / openvino; import them where needed):

``formats``       the table of export formats and option checks (torch-free)
``pipeline``      :func:`export_checkpoint` / :func:`export_model`: the whole export
``torch_onnx``    model -> ONNX (dynamo exporter) and the graph tidy-up
``graph_report``  what a graph contains: dispatchers, op census, fp32 gates, TensorRT checks
``simplify``      onnxsim / onnxslim with outputs re-checked
``validation``    the exported graph against PyTorch, Optimum-style
``openvino_ir``   ONNX -> OpenVINO IR, the OpenVINO CPU runner
``tensorrt_gpus``   GPU profiles, GPU detection, the installed TensorRT and the guards between
                  them (torch- and TensorRT-free)
``tensorrt_plan``   TensorRT build plans: --batch profiles, trtexec lines, engine metadata and
                  its checks, which dispatch mode to deploy (torch- and TensorRT-free)
``tensorrt_engine`` the TensorRT calls of the build (strongly typed network, profile, workspace,
                  timing cache), kept thin
``telemetry``     ONNX Runtime's and OpenVINO's telemetry off (done on import of this package)
"""

from __future__ import annotations

import importlib
from typing import Any

from .telemetry import disable_telemetry

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
