"""What this machine can do for dyt-edge (``dyt-edge checks``): the versions of dyt-edge and of
every library it uses, the CPU and the instruction-set features that decide inference speed,
OpenVINO's devices and the precisions they run, the NVIDIA GPUs and whether TensorRT can build
for them, and whether the serve extra works.

Each probe is cheap (package metadata rather than imports where a version is all that is
needed) and guarded: a probe that raises is reported as that section's ``error`` and the others
still run. :func:`run_checks` returns the JSON report (``docs/reports.md``).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from ._version import __version__
from .reports import report_header

if TYPE_CHECKING:  # pragma: no cover
    from .runtimes.tensorrt.gpus import DetectedGpu

KIND = "checks"
SCHEMA_VERSION = 1
"""Version of the ``dyt-edge checks --json`` report."""


@dataclass(frozen=True)
class Library:
    name: str
    """What the table calls it (the pip name)."""
    module: str
    """The import name (looked up, not imported)."""
    distributions: tuple[str, ...]
    """pip distributions that provide it, the usual one first."""
    used_for: str


LIBRARIES: tuple[Library, ...] = (
    Library("torch", "torch", ("torch",), "models, training, the PyTorch reference"),
    Library("torchvision", "torchvision", ("torchvision",), "image preprocessing"),
    Library("timm", "timm", ("timm",), "ViT architectures and weights"),
    Library("onnx", "onnx", ("onnx",), "ONNX export and graph checks"),
    Library("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu",
                                           "onnxruntime-openvino"), "--target onnxruntime"),
    Library("onnxsim", "onnxsim", ("onnxsim",), "export --simplify"),
    Library("onnxslim", "onnxslim", ("onnxslim",), "export --simplify (fallback)"),
    Library("openvino", "openvino", ("openvino",), "--format / --target openvino"),
    Library("nncf", "nncf", ("nncf",), "OpenVINO INT8 builds"),
    Library("tensorrt", "tensorrt", (), "--target tensorrt"),
    Library("cuda-bindings", "cuda", ("cuda-bindings", "cuda-python"),
            "CUDA for TensorRT, GPU detection"),
    Library("tritonclient", "tritonclient", ("tritonclient",), "serving: Triton clients"),
    Library("nvidia-pytriton", "pytriton", ("nvidia-pytriton",), "serving: Triton server"),
)

CPU_FEATURES: dict[str, str] = {
    "avx2": "256-bit SIMD: the baseline of ONNX Runtime's and OpenVINO's fast fp32 kernels",
    "avx512f": "512-bit SIMD for fp32",
    "avx512_vnni": "int8 dot products (AVX-512): what makes INT8 fast",
    "avx_vnni": "int8 dot products on 256-bit registers",
    "avx512_bf16": "bf16 dot products",
    "amx_tile": "AMX matrix tiles",
    "amx_bf16": "AMX bf16 matrix multiplies",
    "amx_int8": "AMX int8 matrix multiplies",
}
"""The ``/proc/cpuinfo`` flags that matter for inference speed, and what each brings."""


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _guarded(probe: Callable[[], dict[str, Any]], **fallback: Any) -> dict[str, Any]:
    """``probe()``, or ``fallback`` with ``error`` set when it raises."""
    try:
        return {**probe(), "error": None}
    except Exception as exc:  # noqa: BLE001 - one failing probe is a row, not a crash
        return {**fallback, "error": _error(exc)}


# -- versions -------------------------------------------------------------------------------------

def library_info(lib: Library) -> dict[str, Any]:
    """Where ``lib`` comes from and its version, from the pip metadata (nothing is imported);
    ``installed`` False when neither a distribution nor the module is found."""
    from importlib import metadata, util

    out: dict[str, Any] = {"name": lib.name, "module": lib.module, "used_for": lib.used_for,
                           "installed": False, "version": None, "distribution": None}
    if lib.name == "tensorrt":
        from .runtimes.tensorrt import install

        trt = install.find_tensorrt(import_module=False)
        if trt is not None:
            out.update(installed=True, version=trt.version, distribution=trt.package)
        return out
    for dist in lib.distributions:
        try:
            out.update(installed=True, version=metadata.version(dist), distribution=dist)
            return out
        except metadata.PackageNotFoundError:
            continue
    try:
        found = util.find_spec(lib.module) is not None
    except (ImportError, ValueError):
        found = False
    out["installed"] = found  # importable without pip metadata: version unknown
    return out


def libraries() -> list[dict[str, Any]]:
    rows = []
    for lib in LIBRARIES:
        row = _guarded(lambda lib=lib: library_info(lib), name=lib.name, module=lib.module,
                       used_for=lib.used_for, installed=False, version=None,
                       distribution=None)
        rows.append(row)
    return rows


# -- CPU ------------------------------------------------------------------------------------------

def parse_cpuinfo(text: str) -> dict[str, Any]:
    """``/proc/cpuinfo`` text -> ``{"model": name or None, "flags": sorted flags}`` (the first
    processor's; ``Features`` on ARM)."""
    model: Optional[str] = None
    flags: Optional[list[str]] = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "hardware"):
            model = value.strip() or None
        elif flags is None and key in ("flags", "features"):
            flags = sorted(set(value.split()))
    return {"model": model, "flags": flags or []}


def cpu_features(flags: Any) -> dict[str, bool]:
    """Each of :data:`CPU_FEATURES` -> whether ``flags`` has it."""
    have = set(flags)
    return {name: name in have for name in CPU_FEATURES}


def cpu_info(cpuinfo_text: Optional[str] = None) -> dict[str, Any]:
    """The CPU's model, core counts and :data:`CPU_FEATURES` (read from ``/proc/cpuinfo``
    unless ``cpuinfo_text`` is given)."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo_text = f.read()
        except OSError:
            cpuinfo_text = ""
    parsed = parse_cpuinfo(cpuinfo_text)
    try:
        usable: Optional[int] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"model": parsed["model"] or platform.processor() or platform.machine() or None,
            "machine": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable,
            "features": cpu_features(parsed["flags"]), "flags_read": bool(parsed["flags"])}


# -- OpenVINO -------------------------------------------------------------------------------------

def openvino_devices() -> dict[str, Any]:
    """OpenVINO's devices (imported the project's way, telemetry off): per device its full
    name, ``OPTIMIZATION_CAPABILITIES`` and the dyt-edge precisions those allow; a device whose
    properties cannot be read carries its own ``error``."""
    from .runtimes.backends import import_openvino
    from .runtimes.base import RuntimeUnavailable
    from .runtimes.openvino_runtime import CAPABILITY

    try:
        ov = import_openvino()
    except RuntimeUnavailable:
        return {"installed": False, "version": None, "devices": []}
    core = ov.Core()
    devices = []
    for name in core.available_devices:
        def probe(name: str = str(name)) -> dict[str, Any]:
            caps = [str(c) for c in core.get_property(name, "OPTIMIZATION_CAPABILITIES")]
            return {"name": name,
                    "full_name": str(core.get_property(name, "FULL_DEVICE_NAME")).strip(),
                    "capabilities": caps,
                    "precisions": [p for p, cap in CAPABILITY.items() if cap in caps]}

        devices.append(_guarded(probe, name=str(name), full_name=None, capabilities=[],
                                precisions=[]))
    version = getattr(ov, "__version__", None) or ov.get_version()
    return {"installed": True, "version": str(version), "devices": devices}


# -- GPUs and TensorRT ----------------------------------------------------------------------------

def gpu_rows(detected: Sequence["DetectedGpu"]) -> list[dict[str, Any]]:
    """The detected GPUs, each with the profile dyt-edge builds for."""
    rows = []
    for gpu in detected:
        profile = gpu.profile
        rows.append({**gpu.to_dict(), "architecture": profile.architecture,
                     "profile_name": profile.name, "tensorrt_versions": profile.tensorrt,
                     "fp16_tensor_cores": profile.fp16_tensor_cores,
                     "int8_tensor_cores": profile.int8_tensor_cores})
    return rows


def tensorrt_status(detected: Sequence["DetectedGpu"]) -> dict[str, Any]:
    """Whether TensorRT can build engines here: installed, importable and able to build for
    the first detected GPU (:func:`~dyt_edge.runtimes.tensorrt.install.check_compatibility`);
    each of ``problems`` carries the command that fixes it."""
    from .runtimes.tensorrt import install

    trt = install.find_tensorrt()
    out: dict[str, Any] = {"installed": trt is not None,
                           "version": None if trt is None else trt.version,
                           "package": None if trt is None else trt.package,
                           "importable": None if trt is None else trt.importable,
                           "usable": False, "gpu": None, "problems": [], "warnings": []}
    if not detected:
        out["problems"] = [{"message": "no NVIDIA GPU found", "kind": "gpu",
                            "fix": "TensorRT engines are built on their GPU: run there, "
                                   'with pip install "dyt-edge[tensorrt]"'}]
        return out
    profile = detected[0].profile
    compat = install.check_compatibility(profile, trt, "fp32").to_dict()
    out.update(usable=compat["ok"], gpu=profile.key, problems=compat["problems"],
               warnings=compat["warnings"])
    return out


# -- serving --------------------------------------------------------------------------------------

def serve_status() -> dict[str, Any]:
    """Whether the serve extra works here (:func:`dyt_edge.serving.tritonserver.availability`)."""
    try:
        from .serving.tritonserver import availability
    except ImportError as exc:
        return {"ok": False, "detail": f"the serving package cannot be imported ({_error(exc)})"}
    ok, detail = availability()
    return {"ok": bool(ok), "detail": str(detail)}


# -- all of it ------------------------------------------------------------------------------------

def run_checks(cpuinfo_text: Optional[str] = None) -> dict[str, Any]:
    """Every probe, guarded: the ``dyt-edge checks`` report (``schema`` ``dyt-edge.checks``)."""
    from .artifacts import utc_now

    from .runtimes.tensorrt import gpus

    detected: list[Any] = []

    def gpu_probe() -> dict[str, Any]:
        detected.extend(gpus.detect_gpus())
        return {"devices": gpu_rows(detected)}

    report = {
        "dyt_edge": {"version": __version__},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "libraries": libraries(),
        "cpu": _guarded(lambda: cpu_info(cpuinfo_text), model=None, cores=os.cpu_count(),
                        usable_cores=None, features={}),
        "openvino": _guarded(openvino_devices, installed=None, version=None, devices=[]),
        "gpus": _guarded(gpu_probe, devices=[]),
        "tensorrt": _guarded(lambda: tensorrt_status(detected),
                             installed=None, usable=False, problems=[], warnings=[]),
        "serve": _guarded(serve_status, ok=False, detail=None),
    }
    return {**report_header(KIND, SCHEMA_VERSION, utc_now()), **report}


__all__ = ["CPU_FEATURES", "KIND", "LIBRARIES", "SCHEMA_VERSION", "Library", "cpu_features",
           "cpu_info", "gpu_rows", "libraries", "library_info", "openvino_devices", "parse_cpuinfo",
           "run_checks", "serve_status", "tensorrt_status"]
