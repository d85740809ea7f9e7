"""The Triton Python-backend model of a ``--backend python`` repository.

Triton's Python backend imports ``<model>/1/model.py`` in its stub process and calls the
``TritonPythonModel`` it finds there; dyt-edge's ``model.py`` re-exports this class, so the
serving logic ships (and is tested) with dyt-edge rather than being copied into every
repository.

* ``initialize`` opens the artifact copied to ``1/artifact/`` with the dyt-edge runtime named
  by the config's ``runtime`` parameter, at the artifact's own precision (the runtime's
  default: what it was built and validated at; OpenVINO never falls back to a device default).
  Instances on the CPU share its cores: each gets ``cores // count`` threads. A GPU instance
  runs on the device Triton assigns it.
* ``execute`` receives every request the dynamic batcher merged, runs them as one batch (a
  ``pack`` graph then costs the batch's mean activation) and splits the outputs back, one
  response per request. A request that fails gets its own error response.

This module is imported by the stub, where ``triton_python_backend_utils`` exists; it imports
that module only inside the methods, so the rest of dyt-edge can import this one anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np


def _parameter(config: dict[str, Any], key: str) -> Optional[str]:
    value = (config.get("parameters") or {}).get(key) or {}
    return value.get("string_value") or None


def threads_per_instance(instances: int, cores: Optional[int] = None) -> int:
    """CPU threads for each of ``instances`` model instances sharing this process's cores."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, instances))


class TritonPythonModel:
    """Triton's Python-backend model interface, over a dyt-edge runtime."""

    def initialize(self, args: dict[str, str]) -> None:
        from dyt_edge.runtimes import RuntimeOptions, open_runtime

        config = json.loads(args["model_config"])
        self.config = config
        self.batched = int(config.get("max_batch_size") or 0) > 0
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        target = _parameter(config, "runtime") or "openvino"
        folder = _parameter(config, "artifact") or "artifact"
        artifact = Path(args["model_repository"]) / args["model_version"] / folder
        device = None
        threads = None
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{int(args.get('model_instance_device_id') or 0)}"
        else:
            count = sum(int(g.get("count") or 1) for g in config.get("instance_group") or [])
            threads = threads_per_instance(count or 1)
        self.runtime = open_runtime(target, artifact, RuntimeOptions(
            device=device, threads=threads, hint="latency"))

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        arrays, good = [], []
        responses: list[Any] = [None] * len(requests)
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            if tensor is None:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"the request has no input '{self.input_name}'"))
                continue
            arrays.append(np.ascontiguousarray(tensor.as_numpy(), dtype=np.float32))
            good.append(i)
        if not good:
            return responses
        try:
            if self.batched:
                merged = self.runtime.run(np.concatenate(arrays))
                ends = np.cumsum([len(a) for a in arrays])
                starts = ends - np.array([len(a) for a in arrays])
                outputs = [self._tensors(merged, s, e) for s, e in zip(starts, ends)]
            else:  # a static batch: each request is one whole model input
                outputs = []
                for a in arrays:
                    out = self.runtime.run(a)
                    outputs.append(self._tensors(out, 0, len(a)))
        except Exception as exc:  # noqa: BLE001 - the client gets the reason, the server lives
            message = f"dyt-edge {type(exc).__name__}: {exc}"
            for i in good:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
            return responses
        for i, tensors in zip(good, outputs):
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, value) for name, value in tensors.items()])
        return responses

    def _tensors(self, out: Any, start: int, end: int) -> dict[str, np.ndarray]:
        values = {"logits": np.ascontiguousarray(out.logits[start:end], dtype=np.float32)}
        if out.masks is not None:
            values["masks"] = np.ascontiguousarray(out.masks[start:end], dtype=np.bool_)
        missing = [n for n in self.output_names if n not in values]
        if missing:
            raise RuntimeError(f"the runtime returned no {', '.join(missing)}")
        return {n: values[n] for n in self.output_names}

    def finalize(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()


__all__ = ["TritonPythonModel", "threads_per_instance"]
