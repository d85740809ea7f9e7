"""TensorRT: the slot for engines (issue #5 builds and runs them).

Today this runtime does two honest things: without TensorRT it raises
:class:`RuntimeUnavailable` with the install command, and with TensorRT it refuses with
:class:`RuntimeSetupError` because no engine exists yet (the TensorRT build makes them). It never
pretends to run anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import RunOutput, Runtime, RuntimeSetupError, RuntimeUnavailable


class TensorRTRuntime(Runtime):
    target = "tensorrt"
    kind = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    install = ('pip install "dyt-edge[tensorrt]" (T4 and newer GPUs; for V100: '
               'pip install "dyt-edge[tensorrt-v100]"); it needs an NVIDIA GPU with CUDA')

    @classmethod
    def import_backend(cls) -> Any:
        try:
            import tensorrt
        except (ImportError, OSError) as exc:  # OSError: bindings without libnvinfer
            raise RuntimeUnavailable("TensorRT is not installed", cls.install) from exc
        return tensorrt

    def check_artifact(self) -> None:
        files = self.artifact.manifest.get("files", {})
        if "tensorrt" not in files:
            raise RuntimeSetupError(
                f"artifact {self.artifact.path} has no TensorRT engine",
                f"build one with `dyt-edge build --target tensorrt {self.artifact.path}` "
                "(the TensorRT build, issue #5)")

    def _load(self) -> None:
        raise RuntimeSetupError(
            "running TensorRT engines is not implemented yet",
            "engines come with the TensorRT build (issue #5); use --target onnxruntime or "
            "openvino meanwhile")

    def run(self, images: np.ndarray) -> RunOutput:  # pragma: no cover - _load always refuses
        raise RuntimeSetupError("running TensorRT engines is not implemented yet")

    def _describe(self) -> dict[str, Any]:  # pragma: no cover - _load always refuses
        return {"backend": f"TensorRT {getattr(self.backend, '__version__', '?')}"}
