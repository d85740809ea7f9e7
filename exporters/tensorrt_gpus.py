"""GPU profiles, GPU detection, the installed TensorRT, and the guards between them.

Torch-free and TensorRT-free: everything here is plain Python (TensorRT is imported only by
:func:`find_tensorrt`, to read its version, and a failed import is reported, not raised), so the
guards are tested on machines without a GPU.

Facts (from the TensorRT 10.x / 11.x release notes and support matrices, as of TensorRT 10.15 and
11.x; the README's TensorRT section says the same):

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
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from dyt_edge.errors import DytEdgeError, UsageError

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
    from dyt_edge.config import closest

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
        from dyt_edge.runtimes.cuda_driver import driver_module

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


def _visible_index(device: Optional[str]) -> int:
    if device in (None, "", "cuda"):
        return 0
    m = re.fullmatch(r"(?:cuda:)?(\d+)", str(device).strip().lower())
    if not m:
        raise UsageError(f"unknown device '{device}'", "use cuda or cuda:N")
    return int(m.group(1))


def select_gpu(detected: Sequence[DetectedGpu], device: Optional[str] = None
               ) -> Optional[DetectedGpu]:
    """The GPU ``device`` (``cuda:N``; default the first) among ``detected``."""
    index = _visible_index(device)
    if not detected:
        return None
    if index >= len(detected):
        raise TensorRTSetupError(f"device cuda:{index} does not exist ({len(detected)} GPU(s) "
                                 "found)", "pick one of: " + ", ".join(
                                     f"cuda:{g.index} {g.name}" for g in detected))
    return detected[index]


# -- the installed TensorRT -----------------------------------------------------------------------

@dataclass(frozen=True)
class TensorRTInstall:
    version: str
    """``10.4.0`` (from the module when it imports, else from the package metadata)."""
    package: Optional[str] = None
    """The pip distribution (``tensorrt-cu12``, ``tensorrt-cu13-bindings``, ...)."""
    cuda_major: Optional[int] = None
    importable: bool = True
    import_error: Optional[str] = None
    packages: tuple[str, ...] = ()
    """Every TensorRT distribution found (two CUDA variants at once is a broken install)."""

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)

    @property
    def major(self) -> int:
        return self.version_tuple[0]

    def describe(self) -> str:
        pkg = f" ({self.package})" if self.package else ""
        return f"TensorRT {self.version}{pkg}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_version(text: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", str(text).split("+")[0])[:3]
    out = tuple(int(n) for n in nums)
    return out + (0,) * (3 - len(out)) if out else (0, 0, 0)


_DISTRIBUTIONS = ("tensorrt-cu13-bindings", "tensorrt-cu12-bindings", "tensorrt-cu13",
                  "tensorrt-cu12", "tensorrt-bindings", "tensorrt")


def _distributions() -> list[tuple[str, str]]:
    from importlib import metadata

    found = []
    for name in _DISTRIBUTIONS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - broken metadata
            continue
    return found


def _cuda_major(name: Optional[str]) -> Optional[int]:
    m = re.search(r"cu(\d+)", name or "")
    return int(m.group(1)) if m else None


def find_tensorrt(import_module: bool = True) -> Optional[TensorRTInstall]:
    """The installed TensorRT, or None. Reads the pip metadata (no import needed), then, with
    ``import_module``, imports ``tensorrt`` for the version in effect; a failed import (the
    bindings without ``libnvinfer``) is recorded as ``importable=False``."""
    dists = _distributions()
    with_cuda = [d for d in dists if _cuda_major(d[0]) is not None]
    main = with_cuda[0] if with_cuda else (dists[0] if dists else None)
    version = main[1] if main else None
    importable, error = (True, None)
    if import_module:
        try:
            import tensorrt

            version = str(getattr(tensorrt, "__version__", version or "0"))
        except (ImportError, OSError) as exc:
            if main is None:
                return None
            importable, error = False, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        except Exception as exc:  # noqa: BLE001 - anything else a broken install raises
            if main is None:
                return None
            importable, error = False, f"{type(exc).__name__}: {exc}"[:300]
    elif main is None:
        return None
    majors = {_cuda_major(n) for n, _ in with_cuda}
    return TensorRTInstall(version=str(version), package=main[0] if main else None,
                           cuda_major=_cuda_major(main[0]) if main else None,
                           importable=importable, import_error=error,
                           packages=tuple(f"{n}=={v}" for n, v in dists)
                           if len(majors) > 1 or not importable else ())


# -- the guards ---------------------------------------------------------------------------------

@dataclass
class Problem:
    """A reason the build cannot go on here, with what fixes it."""

    message: str
    fix: str
    kind: str = "environment"
    """``gpu`` (no / wrong GPU), ``tensorrt`` (missing / unusable), ``version`` (a TensorRT or
    Python the GPU cannot use)."""

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})"


@dataclass
class Compatibility:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [asdict(p) for p in self.problems],
                "warnings": list(self.warnings)}


def _reinstall(gpu: GpuProfile, trt: Optional[TensorRTInstall]) -> str:
    remove = []
    if trt is not None:
        remove = sorted({p.split("==")[0] for p in trt.packages} | (
            {trt.package} if trt.package else set()))
        if trt.package and trt.package.startswith("tensorrt-cu"):
            base = trt.package.replace("-bindings", "")
            remove = sorted(set(remove) | {base, f"{base}-bindings", f"{base}-libs"})
    cmd = gpu.install_command()
    return f"pip uninstall -y {' '.join(remove)} && {cmd}" if remove else cmd


def check_compatibility(gpu: GpuProfile, trt: Optional[TensorRTInstall], precision: str, *,
                        python: Sequence[int] = tuple(sys.version_info[:2])) -> Compatibility:
    """Whether ``trt`` (None: not installed) can build ``precision`` engines for ``gpu`` under
    this ``python``. Problems carry the exact command that fixes them."""
    c = Compatibility()
    py = tuple(int(v) for v in python[:2])
    py_note = ""
    if gpu.python_max is not None and py > gpu.python_max:
        py_note = (f"; {gpu.package.split('>=')[0]} {gpu.trt_max[0]}.{gpu.trt_max[1]} has "
                   f"wheels up to Python {gpu.python_max[0]}.{gpu.python_max[1]}, this is "
                   f"Python {py[0]}.{py[1]}: use a Python {gpu.python_max[0]}."
                   f"{gpu.python_max[1]} environment")
    if precision == "int8" and not gpu.int8_tensor_cores:
        c.warnings.append(f"INT8 on {gpu.name} ({gpu.sm}, {gpu.architecture}): it has no INT8 "
                          "tensor cores, so INT8 brings little over FP16 there (consider "
                          "--precision fp16)")
    if precision == "fp16" and not gpu.fp16_tensor_cores:
        c.warnings.append(f"FP16 on {gpu.name} ({gpu.sm}): no FP16 tensor cores")
    if gpu.compute_capability < (7, 0):
        c.problems.append(Problem(
            f"{gpu.name} ({gpu.sm}) is not supported by TensorRT 10 or 11",
            "use a Volta (sm_70, TensorRT <= 10.4) or newer GPU", "gpu"))
        return c
    if trt is None:
        c.problems.append(Problem("TensorRT is not installed",
                                  f"install it: {gpu.install_command()}{py_note}", "tensorrt"))
        return c
    if trt.packages and len({_cuda_major(p) for p in trt.packages
                             if _cuda_major(p) is not None}) > 1:
        c.problems.append(Problem(
            f"two CUDA variants of TensorRT are installed ({', '.join(trt.packages)})",
            f"keep one: {_reinstall(gpu, trt)}", "tensorrt"))
    version = trt.version_tuple
    if gpu.trt_max is not None and version[:2] > gpu.trt_max:
        c.problems.append(Problem(
            f"{trt.describe()} cannot build for {gpu.name} ({gpu.sm}, {gpu.architecture}): "
            f"{gpu.architecture} support was removed in TensorRT "
            f"{gpu.trt_max[0]}.{gpu.trt_max[1] + 1}",
            f"install the last TensorRT that supports it: {_reinstall(gpu, trt)}{py_note}",
            "version"))
    elif trt.cuda_major is not None and trt.cuda_major not in gpu.cuda_majors:
        c.problems.append(Problem(
            f"{trt.describe()} is built for CUDA {trt.cuda_major}, which cannot run on "
            f"{gpu.name} ({gpu.sm}): CUDA {trt.cuda_major} dropped {gpu.architecture}",
            f"install the CUDA {gpu.cuda_majors[-1]} variant: {_reinstall(gpu, trt)}{py_note}",
            "version"))
    if version[0] < SUPPORTED_MAJORS[0]:
        c.problems.append(Problem(
            f"{trt.describe()} is older than TensorRT {SUPPORTED_MAJORS[0]}.0 (this build path "
            "needs strongly typed networks and the name-based I/O API)",
            f"upgrade: {_reinstall(gpu, trt)}{py_note}", "version"))
    elif version[0] > SUPPORTED_MAJORS[-1]:
        c.warnings.append(f"{trt.describe()} is newer than the majors this build path was "
                          f"written for ({', '.join(map(str, SUPPORTED_MAJORS))}); it may work")
    if not trt.importable:
        c.problems.append(Problem(
            f"{trt.describe()} is installed but cannot be imported ({trt.import_error})",
            "the pip bindings need the TensorRT libraries (tensorrt-cuXX-libs, fetched from "
            f"NVIDIA's index at install time) and an NVIDIA driver: {_reinstall(gpu, trt)}",
            "tensorrt"))
    return c


def resolve_target_gpu(requested: Optional[str], detected: Optional[DetectedGpu], *,
                       dry_run: bool) -> tuple[Optional[GpuProfile], list[Problem], list[str]]:
    """The GPU to build for: ``(profile or None, problems, warnings)``.

    ``auto`` (the default) takes the detected GPU; without one it is a problem (in a dry run
    too: nothing to plan for). A named GPU must be the one present (engines are not portable);
    in a dry run a mismatch or a missing GPU is only a warning, and the plan is for the named
    one.
    """
    problems: list[Problem] = []
    warnings: list[str] = []
    req = (requested or AUTO).strip().lower()
    if req == AUTO:
        if detected is None:
            problems.append(Problem(
                "no NVIDIA GPU found (--gpu auto)",
                "run on the machine with the target GPU (engines are built on their GPU), or "
                "plan for one without it: --gpu t4 --dry-run", "gpu"))
            return None, problems, warnings
        return detected.profile, problems, warnings
    profile = gpu_profile(req)
    if detected is None:
        msg = (f"no NVIDIA GPU found; a TensorRT engine for {profile.name} must be built on a "
               f"{profile.name}")
        if dry_run:
            warnings.append(msg + " (dry run: planning for it anyway)")
        else:
            problems.append(Problem(msg, f"run this on the {profile.name} machine, or add "
                                    "--dry-run to see the plan and the trtexec command", "gpu"))
        return profile, problems, warnings
    present = detected.profile
    if present.key != profile.key:
        msg = (f"--gpu {profile.key} ({profile.name}, {profile.sm}) but this machine has "
               f"{detected.name} ({present.sm}): TensorRT engines only run on the GPU they were "
               "built on")
        if dry_run:
            warnings.append(msg + f" (dry run: planning for {profile.name})")
        else:
            problems.append(Problem(msg, f"build on the {profile.name} machine, use --gpu auto "
                                    f"(or --gpu {present.key}) for this one, or add --dry-run",
                                    "gpu"))
    return profile, problems, warnings


def require(problems: Sequence[Problem]) -> None:
    """Raise :class:`TensorRTSetupError` for the problems (all in one line), if any."""
    if not problems:
        return
    message = "; ".join(p.message for p in problems)
    fixes = list(dict.fromkeys(p.fix for p in problems))
    raise TensorRTSetupError(message, "; ".join(fixes))


__all__ = ["AUTO", "GPUS", "GPU_CHOICES", "SUPPORTED_MAJORS", "Compatibility", "DetectedGpu",
           "GpuProfile", "Problem", "TensorRTInstall", "TensorRTSetupError", "architecture",
           "check_compatibility", "detect_gpus", "find_tensorrt", "generic_profile",
           "gpu_profile", "parse_nvidia_smi", "parse_version", "profile_for", "require",
           "resolve_target_gpu", "select_gpu"]
