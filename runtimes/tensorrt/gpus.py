"""GPU profiles (what each supported GPU can run) and GPU detection.

Torch-free and TensorRT-free (CUDA's driver API through :mod:`.cuda` where it is installed,
``nvidia-smi`` otherwise), so it is tested on machines without a GPU. The TensorRT versions
each GPU needs, and the guards between GPU, TensorRT and precision, are in :mod:`.install`.

The facts behind the profiles (TensorRT versions per GPU architecture, tensor cores) are
restated, with the versions checked, in ``docs/backends.md``:

* TensorRT 10.0 deprecated Volta (sm_70) and **10.5 removed it**: the last TensorRT that builds
  for a V100 is 10.4, as ``tensorrt-cu12`` (CUDA 13 dropped sm_70, so ``tensorrt-cu13`` never
  runs there), whose wheels stop at Python 3.12.
* TensorRT 11.x needs Turing (sm_75) or newer and ships ``tensorrt-cu12`` and ``tensorrt-cu13``
  wheels; it removed the weakly typed builder flags and the implicit INT8 calibrator, which is
  why the build path is a strongly typed network from an ONNX with explicit precisions.
* Engines are specific to the GPU architecture and the TensorRT version: build each engine on
  its target GPU (hardware-compatibility mode does nothing for V100 / T4).
* Volta has FP16 tensor cores but no INT8 tensor cores (INT8 brings little there); Turing and
  newer have both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from ...errors import DytEdgeError, UsageError

SUPPORTED_MAJORS = (10, 11)
"""TensorRT major versions this build path is written for (one code path: strongly typed)."""
AUTO = "auto"


class TensorRTSetupError(DytEdgeError):
    """The GPU / TensorRT / Python combination cannot build (or run) this engine."""


@dataclass(frozen=True)
class GpuProfile:
    key: str
    """What ``--gpu`` takes (``t4``, ``v100``, ...)."""
    name: str
    compute_capability: tuple[int, int]
    architecture: str
    memory: str
    """Memory per GPU, as sold (``16 GB``, ``40 / 80 GB``)."""
    fp16_tensor_cores: bool
    int8_tensor_cores: bool
    tensorrt: str
    """The TensorRT versions that build for it, in words."""
    trt_max: Optional[tuple[int, int]] = None
    """Newest TensorRT (major, minor) that supports it (None: every supported one)."""
    cuda_majors: tuple[int, ...] = (12, 13)
    """CUDA majors of the ``tensorrt-cuXX`` wheels that run on it."""
    python_max: Optional[tuple[int, int]] = None
    """Newest Python with wheels of the TensorRT it needs (None: no extra limit)."""
    patterns: tuple[str, ...] = ()
    """Regular expressions matching the names the driver reports."""
    notes: tuple[str, ...] = ()

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def majors(self) -> tuple[int, ...]:
        """The TensorRT majors (of :data:`SUPPORTED_MAJORS`) that build for it."""
        if self.trt_max is None:
            return SUPPORTED_MAJORS
        return tuple(m for m in SUPPORTED_MAJORS if m <= self.trt_max[0])

    @property
    def package(self) -> str:
        """The pip requirement that installs a TensorRT that builds for it."""
        if self.trt_max is not None:
            return f"tensorrt-cu12>=10.0,<{self.trt_max[0]}.{self.trt_max[1] + 1}"
        return "tensorrt-cu12>=10.0"

    @property
    def extra(self) -> str:
        """The dyt-edge extra that pins :attr:`package`."""
        return "tensorrt-v100" if self.trt_max is not None else "tensorrt"

    def install_command(self) -> str:
        notes = [f'or pip install "dyt-edge[{self.extra}]"']
        if self.python_max is not None:
            notes.append(f"Python {self.python_max[0]}.{self.python_max[1]} or older")
        return f'pip install "{self.package}" ({"; ".join(notes)})'


    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("patterns")
        d.update(compute_capability=self.cc, sm=self.sm, majors=list(self.majors),
                 package=self.package)
        return d


_TURING_PLUS = "10.x, 11.x (tensorrt-cu12 or tensorrt-cu13)"
GPUS: dict[str, GpuProfile] = {p.key: p for p in (
    GpuProfile("t4", "Tesla T4", (7, 5), "Turing", "16 GB", True, True, _TURING_PLUS,
               patterns=(r"\bT4\b",)),
    GpuProfile("v100", "Tesla V100", (7, 0), "Volta", "16 / 32 GB", True, False,
               "10.0 - 10.4 only (Volta removed in 10.5), tensorrt-cu12 only",
               trt_max=(10, 4), cuda_majors=(12,), python_max=(3, 12),
               patterns=(r"V100",),
               notes=("no INT8 tensor cores: INT8 brings little over FP16",)),
    GpuProfile("a10", "NVIDIA A10 / A10G", (8, 6), "Ampere", "24 GB", True, True, _TURING_PLUS,
               patterns=(r"\bA10G?\b",)),
    GpuProfile("a2", "NVIDIA A2", (8, 6), "Ampere", "16 GB", True, True, _TURING_PLUS,
               patterns=(r"\bA2\b",)),
    GpuProfile("a30", "NVIDIA A30", (8, 0), "Ampere", "24 GB", True, True, _TURING_PLUS,
               patterns=(r"\bA30\b",)),
    GpuProfile("a100", "NVIDIA A100", (8, 0), "Ampere", "40 / 80 GB", True, True, _TURING_PLUS,
               patterns=(r"\bA100\b",)),
    GpuProfile("l4", "NVIDIA L4", (8, 9), "Ada Lovelace", "24 GB", True, True, _TURING_PLUS,
               patterns=(r"\bL4\b",)),
    GpuProfile("l40s", "NVIDIA L40S", (8, 9), "Ada Lovelace", "48 GB", True, True,
               _TURING_PLUS, patterns=(r"\bL40S\b",)),
    GpuProfile("h100", "NVIDIA H100", (9, 0), "Hopper", "80 / 94 GB", True, True, _TURING_PLUS,
               patterns=(r"\bH100\b",)),
    GpuProfile("h200", "NVIDIA H200", (9, 0), "Hopper", "141 GB", True, True, _TURING_PLUS,
               patterns=(r"\bH200\b",)),
)}
GPU_CHOICES = (AUTO, *GPUS)

_ARCHITECTURES = {7: "Volta", 8: "Ampere", 9: "Hopper", 10: "Blackwell", 12: "Blackwell"}


def architecture(cc: tuple[int, int]) -> str:
    if cc == (7, 5):
        return "Turing"
    if cc == (8, 9):
        return "Ada Lovelace"
    if cc[0] < 7:
        return "pre-Volta"
    return _ARCHITECTURES.get(cc[0], f"sm_{cc[0]}{cc[1]}")


def gpu_profile(key: str) -> GpuProfile:
    """The profile ``--gpu`` names; :class:`UsageError` (with the choices) otherwise."""
    from ...config import closest

    k = str(key).strip().lower()
    if k not in GPUS:
        raise UsageError(f"unknown GPU '{key}'",
                         f"{closest(k, tuple(GPU_CHOICES))}choose one of: "
                         f"{', '.join(GPU_CHOICES)}")
    return GPUS[k]


def generic_profile(name: str, cc: tuple[int, int]) -> GpuProfile:
    """A profile for a GPU not in :data:`GPUS`, from its compute capability."""
    ok = cc >= (7, 5)
    volta = cc == (7, 0)
    return GpuProfile(
        key=f"sm_{cc[0]}{cc[1]}", name=name, compute_capability=cc,
        architecture=architecture(cc), memory="?", fp16_tensor_cores=cc >= (7, 0),
        int8_tensor_cores=cc >= (7, 2),
        tensorrt=(_TURING_PLUS if ok else "10.0 - 10.4 only, tensorrt-cu12 only" if volta
                  else "none of 10.x / 11.x"),
        trt_max=None if ok else (10, 4) if volta else (9, 0),
        cuda_majors=(12, 13) if ok else (12,), python_max=None if ok else (3, 12))


# -- detection ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectedGpu:
    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_mib: Optional[int] = None
    driver: Optional[str] = None
    source: str = "?"
    """How it was found: ``cuda`` (the CUDA driver API) or ``nvidia-smi``."""

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def profile(self) -> GpuProfile:
        return profile_for(self)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "compute_capability": self.cc,
                "memory_mib": self.memory_mib, "driver": self.driver, "source": self.source,
                "profile": self.profile.key}


def profile_for(gpu: DetectedGpu) -> GpuProfile:
    """The known profile whose name pattern matches and whose compute capability agrees, else
    a generic one."""
    for p in GPUS.values():
        if p.compute_capability == gpu.compute_capability and any(
                re.search(pat, gpu.name, re.IGNORECASE) for pat in p.patterns):
            return p
    return generic_profile(gpu.name, gpu.compute_capability)


def detect_gpus() -> list[DetectedGpu]:
    """The NVIDIA GPUs of this machine, CUDA's device order (``CUDA_VISIBLE_DEVICES``
    respected): the CUDA driver API through ``cuda-python`` when it works, else ``nvidia-smi``.
    An empty list when there is none (no driver, no GPU)."""
    gpus = _cuda_gpus()
    if gpus is None:
        gpus = _nvidia_smi_gpus()
    return gpus or []


def _cuda_gpus() -> Optional[list[DetectedGpu]]:
    try:
        from .cuda import driver_module

        drv = driver_module()
        if drv.cuInit(0)[0] != drv.CUresult.CUDA_SUCCESS:
            return None
        err, count = drv.cuDeviceGetCount()
        if err != drv.CUresult.CUDA_SUCCESS:
            return None
        err, version = drv.cuDriverGetVersion()
        driver = f"CUDA {version // 1000}.{(version % 1000) // 10}" if not err else None
        attr = drv.CUdevice_attribute
        found = []
        for i in range(int(count)):
            _, dev = drv.cuDeviceGet(i)
            _, raw = drv.cuDeviceGetName(256, dev)
            name = bytes(raw).split(b"\0", 1)[0].decode(errors="replace").strip()
            _, major = drv.cuDeviceGetAttribute(
                attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
            _, minor = drv.cuDeviceGetAttribute(
                attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
            _, total = drv.cuDeviceTotalMem(dev)
            found.append(DetectedGpu(i, name, (int(major), int(minor)),
                                     int(total) // (1 << 20), driver, "cuda"))
        return found
    except Exception:  # noqa: BLE001 - no cuda-python, no driver library, no device
        return None


def _nvidia_smi_gpus(timeout: float = 15.0) -> Optional[list[DetectedGpu]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    query = "index,name,compute_cap,memory.total,driver_version"
    try:
        proc = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return parse_nvidia_smi(proc.stdout)


def parse_nvidia_smi(text: str) -> list[DetectedGpu]:
    """Rows of ``nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version
    --format=csv,noheader,nounits``."""
    found = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            index = int(parts[0])
            major, minor = (int(x) for x in parts[2].split(".")[:2])
        except ValueError:
            continue
        try:
            memory = int(float(parts[3]))
        except ValueError:
            memory = None
        found.append(DetectedGpu(index, parts[1], (major, minor), memory, parts[4],
                                 "nvidia-smi"))
    return found


def visible_index(device: Optional[str]) -> int:
    if device in (None, "", "cuda"):
        return 0
    m = re.fullmatch(r"(?:cuda:)?(\d+)", str(device).strip().lower())
    if not m:
        raise UsageError(f"unknown device '{device}'", "use cuda or cuda:N")
    return int(m.group(1))


def select_gpu(detected: Sequence[DetectedGpu], device: Optional[str] = None
               ) -> Optional[DetectedGpu]:
    """The GPU ``device`` (``cuda:N``; default the first) among ``detected``."""
    index = visible_index(device)
    if not detected:
        return None
    if index >= len(detected):
        raise TensorRTSetupError(f"device cuda:{index} does not exist ({len(detected)} GPU(s) "
                                 "found)", "pick one of: " + ", ".join(
                                     f"cuda:{g.index} {g.name}" for g in detected))
    return detected[index]


__all__ = ["AUTO", "GPUS", "GPU_CHOICES", "SUPPORTED_MAJORS", "DetectedGpu", "GpuProfile",
           "TensorRTSetupError", "architecture", "detect_gpus", "generic_profile", "gpu_profile",
           "parse_nvidia_smi", "profile_for", "select_gpu", "visible_index"]
