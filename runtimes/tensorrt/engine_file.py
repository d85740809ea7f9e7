"""What a dyt-edge TensorRT engine carries beside it (``engine.json``), the checks before an
engine is loaded, and the TensorRT logger both sides use.

An engine only loads in the TensorRT version that built it and only runs on the GPU
architecture it was built for, so the record names both, and :func:`check_engine_metadata`
refuses (with the rebuild command) an engine this machine cannot run. The builder writes the
record (:func:`dyt_edge.exporters.tensorrt.plan.engine_metadata`); the runtime reads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

from ...reports import SCHEMA_PREFIX
from .gpus import DetectedGpu
from .install import parse_version

if TYPE_CHECKING:  # pragma: no cover
    from ...artifacts import Artifact

ENGINE_FILE = "model.engine"
ONNX_FILE = "model.onnx"
METADATA_FILE = "engine.json"
METADATA_KIND = "tensorrt-engine"
"""The record starts with the header of every dyt-edge JSON file
(:func:`dyt_edge.reports.report_header`): ``"schema": "dyt-edge.tensorrt-engine"``."""
METADATA_SCHEMA = 2
LEGACY_FORMAT = "dyt-edge tensorrt engine"
"""Version 1 records said ``"format": LEGACY_FORMAT, "schema": 1``; their keys are the same."""


def record_version(meta: Mapping[str, Any]) -> Optional[int]:
    """The schema version of an engine record (either header form), None when it is not one."""
    if meta.get("schema") == SCHEMA_PREFIX + METADATA_KIND:
        version = meta.get("schema_version")
        return version if isinstance(version, int) else None
    if meta.get("format") == LEGACY_FORMAT:
        version = meta.get("schema", 1)
        return version if isinstance(version, int) else None
    return None


def check_engine_metadata(meta: Mapping[str, Any], gpu: Optional[DetectedGpu],
                          trt_version: Optional[str], *, allow_gpu_model_mismatch: bool = False
                          ) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of running an engine with metadata ``meta`` on ``gpu`` under
    TensorRT ``trt_version``. A different TensorRT version or compute capability is always a
    problem (the engine cannot load, or loads and fails); a different GPU model of the same
    compute capability (A10 vs A2, A100 vs A30) is a problem too unless
    ``allow_gpu_model_mismatch`` (then a warning: TensorRT itself warns it may be slower or
    fail)."""
    problems: list[str] = []
    warnings: list[str] = []
    version = record_version(meta)
    if version is None:
        found = meta.get("schema", meta.get("format"))
        return [f"not a dyt-edge TensorRT engine record (schema {found!r})"], []
    if version > METADATA_SCHEMA:
        problems.append(f"engine record schema {version} is newer than this dyt-edge reads "
                        f"({METADATA_SCHEMA})")
    built_trt = str((meta.get("tensorrt") or {}).get("version", "?"))
    if trt_version is not None and parse_version(built_trt) != parse_version(trt_version):
        problems.append(f"the engine was built with TensorRT {built_trt}, this is TensorRT "
                        f"{trt_version} (an engine only loads in the TensorRT version that "
                        "built it)")
    built = meta.get("gpu") or {}
    built_name = built.get("name", "?")
    built_cc = str(built.get("compute_capability", "?"))
    if gpu is None:
        problems.append(f"no NVIDIA GPU found (the engine was built for {built_name}, "
                        f"compute capability {built_cc})")
    elif gpu.cc != built_cc:
        problems.append(f"the engine was built for {built_name} (compute capability "
                        f"{built_cc}), this GPU is {gpu.name} ({gpu.cc}): engines do not "
                        "move between GPU architectures")
    elif built.get("profile") and gpu.profile.key != built.get("profile"):
        msg = (f"the engine was built on {built_name}, this GPU is {gpu.name} (same compute "
               f"capability {gpu.cc})")
        if allow_gpu_model_mismatch:
            warnings.append(msg + ": it may run slower or fail (TensorRT's own warning)")
        else:
            problems.append(msg + ": engines are built for one GPU model")
    return problems, warnings


def rebuild_hint(artifact: "Artifact") -> str:
    """The command that rebuilds the engine of ``artifact`` here."""
    src = artifact.parent_export or "EXPORT"
    return (f"rebuild it here: dyt-edge build --target tensorrt {src} --gpu auto --precision "
            f"{artifact.info.built_precision or 'fp32'}")


def make_logger(trt: Any, sink: list[str]) -> Any:
    """A ``trt.ILogger`` that keeps warnings and errors in ``sink`` (and prints nothing)."""
    severity = trt.ILogger.Severity
    keep = {severity.INTERNAL_ERROR: "internal error", severity.ERROR: "error",
            severity.WARNING: "warning"}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:  # noqa: D401 - TensorRT's callback
            if level in keep:
                sink.append(f"{keep[level]}: {msg}")

    return _Logger()
