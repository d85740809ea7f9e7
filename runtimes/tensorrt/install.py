"""The installed TensorRT, and the guards between GPU, TensorRT version and precision.

Torch-free and TensorRT-free: TensorRT is imported only by :func:`find_tensorrt`, to read its
version, and a failed import is reported, not raised, so the guards are tested without a GPU.
The facts they encode are in ``docs/backends.md``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from .gpus import (AUTO, SUPPORTED_MAJORS, DetectedGpu, GpuProfile,
                   TensorRTSetupError, gpu_profile)

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


__all__ = ["Compatibility", "Problem", "TensorRTInstall", "check_compatibility", "find_tensorrt",
           "parse_version", "require", "resolve_target_gpu"]
