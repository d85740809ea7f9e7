"""Runtimes (installed as ``dyt_edge.runtimes``): one interface, one class per backend.

``open_runtime(target, artifact, options)`` is the entry point; :mod:`.base` documents the
contract. Backends are imported lazily (only when a runtime of that target is opened), so the
package and the CLI work without the heavy ones (TensorRT) installed.

=============  =====================  ===========================================
target         model file             precisions
=============  =====================  ===========================================
``pytorch``    the recorded checkpoint  fp32, bf16 (CPU); + fp16 on CUDA -- the reference
``onnxruntime`` ``model.onnx``        fp32 (int8 for Q/DQ models)
``openvino``   ``model.xml``          fp32, bf16, fp16 (where the CPU has them), int8 (built)
``tensorrt``   ``model.engine``       the precision it was built at (fp32, fp16, int8)
=============  =====================  ===========================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Optional, Union

from .backends import disable_telemetry
from ..precisions import PRECISIONS, canonical_precision
from .base import (HINTS, RunOutput, Runtime, RuntimeOptions, RuntimeSetupError,
                   RuntimeUnavailable, float_parts_extra)

if TYPE_CHECKING:  # pragma: no cover
    from ..artifacts import Artifact

# Off before any backend (or a library that pulls one in) is imported.
disable_telemetry()

REGISTRY: dict[str, str] = {
    "pytorch": "dyt_edge.runtimes.torch_runtime:TorchRuntime",
    "onnxruntime": "dyt_edge.runtimes.ort_runtime:OrtRuntime",
    "openvino": "dyt_edge.runtimes.openvino_runtime:OpenVinoRuntime",
    "tensorrt": "dyt_edge.runtimes.tensorrt.runtime:TensorRTRuntime",
}
"""target -> "module:Class"."""
TARGETS = tuple(REGISTRY)


def runtime_class(target: str) -> type[Runtime]:
    from ..config import check_choice

    check_choice("target", target, TARGETS)
    module, cls = REGISTRY[target].split(":")
    return getattr(importlib.import_module(module), cls)


def open_runtime(target: str, artifact: Union["Artifact", str],
                 options: Optional[RuntimeOptions] = None) -> Runtime:
    """Load ``artifact`` (an :class:`~dyt_edge.artifacts.Artifact` or a path) on ``target``."""
    from ..artifacts import Artifact, load_artifact

    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    return runtime_class(target)(art, options)


__all__ = ["HINTS", "PRECISIONS", "REGISTRY", "TARGETS", "RunOutput", "Runtime",
           "RuntimeOptions", "RuntimeSetupError", "RuntimeUnavailable", "canonical_precision",
           "float_parts_extra", "open_runtime", "runtime_class"]
