"""What a server is asked to serve, derived once from an artifact's manifest.

:func:`served_model` reads the artifact and answers every question the repository writers
(:mod:`.triton`, :mod:`.ovms`, :mod:`.kserve`) ask: the model file and its kind, the input and
output tensors (names, element types, dims without the batch dimension), the batch the model
takes (a static batch, or a dynamic one up to a maximum: a TensorRT engine's optimization
profile bounds it), the precision it was built at, its dispatch mode and class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..artifacts import Artifact
from ..errors import ArtifactError

DTYPES = {"float": "FP32", "float32": "FP32", "half": "FP16", "float16": "FP16",
          "bfloat16": "BF16", "bool": "BOOL", "int8": "INT8", "uint8": "UINT8",
          "int32": "INT32", "int64": "INT64"}
"""Element type names in manifests (ONNX's and TensorRT's spelling) -> the KServe-v2 / Triton
data type names (``TYPE_`` + this in a Triton ``config.pbtxt``)."""

RUNTIME_OF_FORMAT = {"openvino": "openvino", "tensorrt": "tensorrt", "onnx": "onnxruntime"}
"""Which dyt-edge runtime runs an artifact of each format (the Python backend's choice)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    """KServe-v2 data type: ``FP32``, ``BOOL``, ..."""
    dims: tuple[int, ...]
    """Without the batch dimension (with it when the model has a static batch: then the server
    does no batching and a request is the model's whole input)."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.dtype, "dims": list(self.dims)}


@dataclass(frozen=True)
class ServedModel:
    artifact: Artifact
    format: str
    """``onnx``, ``openvino`` or ``tensorrt``: the model file a native backend serves."""
    model_file: Path
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    static_batch: Optional[int]
    """The model's only batch size, or None for a dynamic batch."""
    profile_max: Optional[int]
    """The largest batch a TensorRT engine's optimization profile admits (None otherwise)."""
    precision: str
    dispatch: str
    class_names: Optional[tuple[str, ...]]
    tensorrt_version: Optional[str] = None

    @property
    def runtime(self) -> str:
        """The dyt-edge runtime that runs this artifact (for the Python backend)."""
        return RUNTIME_OF_FORMAT[self.format]

    @property
    def openvino_precision(self) -> str:
        """OpenVINO's ``INFERENCE_PRECISION_HINT`` for this artifact: the one its build (or
        export) recorded and was validated at; by precision where none is recorded (an int8 IR
        runs its float remainder at f32)."""
        info = self.artifact.info
        recorded = ((info.build.record.get("inference_precision") if info.build else None)
                    or info.section("openvino").get("inference_precision"))
        if isinstance(recorded, str) and recorded:
            return recorded
        return {"bf16": "bf16", "fp16": "f16"}.get(self.precision, "f32")


def _dtype(raw: Any, where: str) -> str:
    name = str(raw).lower().replace("tensorproto.", "")
    if name not in DTYPES:
        raise ArtifactError(f"{where} has element type '{raw}', which dyt-edge cannot declare "
                            "to a server", "report it with the artifact")
    return DTYPES[name]


def _tensor(entry: Mapping[str, Any], batched: bool, where: str) -> Tensor:
    shape = list(entry.get("shape") or [])
    if not shape:
        raise ArtifactError(f"{where} records tensor '{entry.get('name')}' without a shape",
                            "re-export the model with this dyt-edge")
    dims = shape[1:] if batched else shape
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ArtifactError(f"{where} records tensor '{entry.get('name')}' with shape {shape}: "
                            "only the batch dimension may be dynamic",
                            "re-export the model with this dyt-edge")
    return Tensor(str(entry["name"]), _dtype(entry.get("dtype"), where), tuple(dims))


def served_model(artifact: Artifact) -> ServedModel:
    """Everything a repository writer needs to know about ``artifact``; one-line
    :class:`ArtifactError` when the manifest lacks it."""
    info = artifact.info
    where = f"the manifest of {artifact.path}"
    fmt = info.format if info.format in RUNTIME_OF_FORMAT else None
    if fmt is None:
        raise ArtifactError(f"artifact {artifact.path} has format '{info.format}', which "
                            "dyt-edge does not serve", "package an export or a build")
    model_file = artifact.file(fmt)
    profile_max = None
    trt_version = None
    static = info.batch
    if fmt == "tensorrt":
        engine = info.section("tensorrt")
        batch = (info.build.record.get("batch") if info.build else None) or {}
        if batch.get("static"):
            static = int(batch.get("max") or static or 1)
        elif batch.get("max"):
            profile_max = int(batch["max"])
            if int(batch.get("min") or 1) > 1:
                raise ArtifactError(
                    f"the engine's batch profile starts at {batch['min']}, so a server could "
                    "not run a single request", "rebuild it with --batch 1:OPT:MAX")
        io = [e for e in engine.get("io") or [] if isinstance(e, Mapping)]
        inputs = [e for e in io if e.get("mode") == "input"]
        outputs = [e for e in io if e.get("mode") == "output"]
        trt_version = str((engine.get("tensorrt") or {}).get("version") or "") or None
    else:
        inputs, outputs = list(info.inputs), list(info.outputs)
    if len(inputs) != 1 or not outputs:
        raise ArtifactError(f"{where} records {len(inputs)} inputs and {len(outputs)} "
                            "outputs; dyt-edge serves models with one image input",
                            "re-export the model with this dyt-edge")
    batched = static is None
    return ServedModel(
        artifact=artifact, format=fmt, model_file=model_file,
        inputs=(_tensor(inputs[0], batched, where),),
        outputs=tuple(_tensor(o, batched, where) for o in outputs),
        static_batch=static, profile_max=profile_max,
        precision=info.built_precision or "fp32", dispatch=info.dispatch.mode,
        class_names=info.class_names, tensorrt_version=trt_version)


__all__ = ["DTYPES", "RUNTIME_OF_FORMAT", "ServedModel", "Tensor", "served_model"]
