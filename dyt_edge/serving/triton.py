"""A Triton Inference Server model directory for one artifact.

Layout (Triton's model repository convention)::

    <name>/config.pbtxt    the model configuration (text-format ModelConfig)
    <name>/labels.txt      class names, one per line in logit order (when the artifact has them)
    <name>/1/...           version 1: the model file(s)

Backends:

* ``python`` (the default): ``1/model.py`` imports :mod:`dyt_edge.serving.triton_python`, which
  runs the artifact through dyt-edge's own runtime: its manifest and the files that runtime
  reads (:data:`RUNTIME_FILES`) are copied (or hard-linked) to ``1/artifact/``. It serves every
  artifact kind with the precision and dispatch masks ``dyt-edge validate`` checked, and it is
  the one backend the Triton of the ``serve`` extra has. The server's Python must have
  dyt-edge (and the artifact's backend) installed.
* ``native``: the artifact's model file on Triton's own backend, for NVIDIA's Triton
  containers: ONNX Runtime (``backend: "onnxruntime"``) for an ONNX model, ``tensorrt_plan``
  for an engine (``default_model_filename: "model.engine"``: Triton looks for
  ``model.plan``; the engine loads only in a Triton built with the TensorRT version recorded
  in the header comment). An OpenVINO IR is refused: Triton's OpenVINO backend cannot set the
  inference precision (see :data:`OPENVINO_REFUSAL`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .._version import __version__
from ..artifacts import MANIFEST_NAME, atomic_write_bytes
from ..errors import UsageError
from .pbtxt import Enum, Map, to_text
from .spec import ServedModel

BACKENDS = ("python", "native")
DEFAULT_MAX_BATCH = 8
"""``max_batch_size`` of a dynamic-batch model when neither ``--max-batch`` nor a TensorRT
profile says otherwise."""
DEFAULT_QUEUE_DELAY_US = 1000
"""How long the dynamic batcher may hold a request to merge it with others (microseconds):
short next to one inference of a ViT (milliseconds at least)."""
LABELS_FILE = "labels.txt"
ARTIFACT_DIR = "artifact"
"""Where a Python-backend model keeps its copy of the artifact, inside the version folder."""
ENGINE_FILE = "model.engine"

OPENVINO_REFUSAL = (
    "Triton's OpenVINO backend cannot serve a DyT IR faithfully: it accepts no inference "
    "precision setting, so on a CPU with bf16 it runs bf16 and flips gate decisions the f32 "
    "build made, and with a max_batch_size it fixes the batch (smaller requests fail unless "
    "padded, and padding images enter the dispatch)")
OPENVINO_ALTERNATIVES = ("use --backend python (the IR through dyt-edge's OpenVINO runtime, at "
                         "its recorded precision), --for ovms (OpenVINO Model Server, which "
                         "takes the precision), or package the export's model.onnx")

MODEL_PY = '''"""Triton Python-backend model written by dyt-edge {version}.

Runs the artifact in ./{artifact} through dyt-edge's own runtime ({runtime}); the logic is in
dyt_edge.serving.triton_python, so the server's Python needs dyt-edge installed.
"""

from dyt_edge.serving.triton_python import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class TritonPlan:
    """The decisions behind one ``config.pbtxt``."""

    backend: str
    """``python``, ``onnxruntime`` or ``tensorrt``."""
    max_batch_size: int
    """0: the model has a static batch and the server does not batch."""
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US

    @property
    def dynamic_batching(self) -> bool:
        return self.max_batch_size > 0


def max_batch_size(spec: ServedModel, requested: Optional[int]) -> int:
    """The ``max_batch_size`` to declare: 0 for a static batch, else ``requested`` (checked
    against a TensorRT profile) or the profile's maximum or :data:`DEFAULT_MAX_BATCH`."""
    if requested is not None and requested <= 0:
        raise UsageError(f"--max-batch must be a positive integer, got {requested}")
    if spec.static_batch is not None:
        if requested is not None:
            raise UsageError(f"--max-batch {requested}: the artifact has a static batch of "
                             f"{spec.static_batch}, so the server cannot batch requests",
                             "re-export without --batch for a dynamic batch")
        return 0
    if spec.profile_max is not None:
        if requested is not None and requested > spec.profile_max:
            raise UsageError(f"--max-batch {requested} is larger than the engine's batch "
                             f"profile allows ({spec.profile_max})",
                             f"pass --max-batch {spec.profile_max} or less, or rebuild with "
                             f"--batch 1:OPT:{requested}")
        return requested or spec.profile_max
    return requested or DEFAULT_MAX_BATCH


def native_backend(spec: ServedModel) -> str:
    if spec.format == "tensorrt":
        return "tensorrt"
    if "onnx" in spec.artifact.kinds:
        return "onnxruntime"
    raise UsageError(f"{OPENVINO_REFUSAL}; the artifact holds only an OpenVINO IR",
                     OPENVINO_ALTERNATIVES)


def config(spec: ServedModel, plan: TritonPlan, name: str) -> dict[str, Any]:
    """The model configuration as plain values (:func:`.pbtxt.to_text` writes it)."""
    labels = LABELS_FILE if spec.class_names else None
    outputs = []
    for t in spec.outputs:
        entry: dict[str, Any] = {"name": t.name, "data_type": Enum(f"TYPE_{t.dtype}"),
                                 "dims": list(t.dims)}
        if labels and t.name == "logits":
            entry["label_filename"] = labels
        outputs.append(entry)
    gpu = spec.format == "tensorrt"
    fields: dict[str, Any] = {"name": name}
    if plan.backend == "tensorrt":
        fields["platform"] = "tensorrt_plan"
        fields["default_model_filename"] = ENGINE_FILE
    else:
        fields["backend"] = plan.backend
        if plan.backend == "onnxruntime" and spec.artifact.file("onnx").name != "model.onnx":
            fields["default_model_filename"] = spec.artifact.file("onnx").name
    fields["max_batch_size"] = plan.max_batch_size
    fields["input"] = [{"name": t.name, "data_type": Enum(f"TYPE_{t.dtype}"),
                        "dims": list(t.dims)} for t in spec.inputs]
    fields["output"] = outputs
    if plan.dynamic_batching:
        fields["dynamic_batching"] = {
            "preferred_batch_size": list(plan.preferred_batch_sizes) or None,
            "max_queue_delay_microseconds": plan.queue_delay_us}
    fields["instance_group"] = [{"kind": Enum("KIND_GPU" if gpu else "KIND_CPU"),
                                 "count": plan.instances}]
    if plan.backend == "python":
        fields["parameters"] = Map({"runtime": {"string_value": spec.runtime},
                                    "artifact": {"string_value": ARTIFACT_DIR}})
    return fields


def header(spec: ServedModel, plan: TritonPlan) -> str:
    lines = [f"Written by dyt-edge {__version__} (`dyt-edge package --for triton`) from",
             f"{spec.artifact.path} ({spec.format}, {spec.precision}, dispatch "
             f"{spec.dispatch}).",
             "Inputs are preprocessed images (the artifact's preprocessing: see "
             "dyt_edge_package.json)."]
    if plan.backend == "tensorrt":
        lines.append(f"The engine was built with TensorRT {spec.tensorrt_version or '?'}: it "
                     "loads only in a Triton built with that TensorRT version.")
    if plan.backend == "python":
        lines.append(f"Python backend: dyt-edge's {spec.runtime} runtime runs ./1/"
                     f"{ARTIFACT_DIR}; the server's Python needs dyt-edge installed.")
    return "\n".join(lines)


def place(src: Path, dst: Path) -> None:
    """``src`` at ``dst``: a hard link where the file system allows (artifacts are replaced by
    rename, never edited in place, so a link cannot change under the repository), else a
    copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


RUNTIME_FILES = {"openvino": ("openvino", "openvino_weights"),
                 "onnxruntime": ("onnx", "onnx_weights"),
                 "tensorrt": ("tensorrt", "tensorrt_metadata")}
"""The manifest file kinds each runtime reads: all a Python-backend model needs of the
artifact (an OpenVINO export's model.onnx stays behind, halving the repository)."""


def artifact_files(spec: ServedModel) -> list[Path]:
    """The artifact files the runtime reads (its manifest last), relative to its directory."""
    files = spec.artifact.info.files
    wanted = sorted({Path(files[k].path) for k in RUNTIME_FILES[spec.runtime] if k in files})
    return [*wanted, Path(MANIFEST_NAME)]


def write_model(spec: ServedModel, plan: TritonPlan, name: str, model_dir: Path) -> None:
    """Write the model directory ``model_dir`` (which must be new and empty)."""
    version = model_dir / "1"
    version.mkdir(parents=True)
    if plan.backend == "python":
        for rel in artifact_files(spec):
            place(spec.artifact.path / rel, version / ARTIFACT_DIR / rel)
        text = MODEL_PY.format(version=__version__, artifact=ARTIFACT_DIR, runtime=spec.runtime)
        atomic_write_bytes(version / "model.py", text.encode())
    elif plan.backend == "onnxruntime":
        onnx_file = spec.artifact.file("onnx")
        place(onnx_file, version / onnx_file.name)
        weights = spec.artifact.info.files.get("onnx_weights")
        if weights is not None:
            place(spec.artifact.path / weights.path, version / weights.path)
    else:
        place(spec.artifact.file("tensorrt"), version / ENGINE_FILE)
    if spec.class_names:
        atomic_write_bytes(model_dir / LABELS_FILE,
                           "".join(f"{n}\n" for n in spec.class_names).encode())
    text = to_text(config(spec, plan, name), header(spec, plan))
    atomic_write_bytes(model_dir / "config.pbtxt", text.encode())


__all__ = ["ARTIFACT_DIR", "BACKENDS", "DEFAULT_MAX_BATCH", "DEFAULT_QUEUE_DELAY_US",
           "LABELS_FILE", "OPENVINO_ALTERNATIVES", "OPENVINO_REFUSAL", "TritonPlan", "config",
           "max_batch_size", "native_backend", "write_model"]
