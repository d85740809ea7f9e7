"""The runtime interface: load an artifact, describe it, run a batch.

Every backend (PyTorch reference, ONNX Runtime, OpenVINO CPU, TensorRT) is a :class:`Runtime`.
``validate``, ``bench`` and ``demo`` only ever talk to this interface, so a new backend plugs in
by subclassing :class:`Runtime` and adding one line to :data:`REGISTRY` (in ``__init__``).

Contract
--------
* ``Runtime(artifact, options)`` loads and compiles; errors are :class:`RuntimeUnavailable`
  (backend not installed: the message carries the install command) or
  :class:`RuntimeSetupError` (this artifact / precision / device cannot run here).
* ``run(images)`` takes ``[B, 3, H, W]`` float32 images, already preprocessed per the
  artifact's manifest, any ``B >= 1`` the artifact accepts, and returns :class:`RunOutput`:
  logits ``[B, classes]`` float32 and, where the artifact exposes them, the dispatch masks
  ``[B, L, N]`` bool (``L`` dispatchers, ``N`` patch tokens).
* ``describe()`` says what actually runs: backend and version, device, the precision *in
  effect* (read back from the backend, never assumed), hint, streams, the model file.
* ``close()`` releases the backend's resources; runtimes are context managers.

Precisions are named as in :mod:`dyt_edge.precisions` (``fp32`` / ``fp16`` / ``bf16`` /
``int8``, aliases accepted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import numpy as np

from ..artifacts import Artifact
from ..errors import DytEdgeError, UsageError
from ..precisions import ALIASES, canonical_precision

HINTS = ("latency", "throughput")


class RuntimeUnavailable(DytEdgeError):
    """The backend is not installed (or cannot be imported) on this machine."""


class RuntimeSetupError(DytEdgeError):
    """The backend is present but cannot run this artifact as asked (wrong kind of artifact,
    a precision the device cannot do, ...)."""


def float_parts_extra(target: str, float_parts: Optional[str]) -> dict[str, Any]:
    """``--float-parts`` of ``validate`` / ``bench`` as :attr:`RuntimeOptions.extra`: the
    precision an OpenVINO INT8 artifact runs its float parts at, instead of its build's."""
    if float_parts is None:
        return {}
    if target != "openvino":
        raise UsageError("--float-parts applies to --target openvino only (INT8 artifacts)",
                         "drop --float-parts")
    key = str(float_parts).strip().lower()
    precision = ALIASES.get(key, key)
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--float-parts must be fp32, bf16 or fp16, got '{float_parts}'",
                         "e.g. --float-parts bf16")
    return {"inference_precision": precision}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run. ``None`` means the runtime's (documented) default."""

    precision: Optional[str] = None
    """``fp32`` / ``fp16`` / ``bf16`` / ``int8``; default: what the artifact was built for
    (``fp32`` for a plain export). Never a backend's silent default (OpenVINO picks bf16 on
    CPUs that have it: we always set the hint)."""
    hint: str = "latency"
    """``latency`` (one stream, all cores on one request) or ``throughput`` (several streams)."""
    streams: Optional[int] = None
    """Parallel inference streams (OpenVINO ``NUM_STREAMS``); default: the hint's."""
    threads: Optional[int] = None
    """Intra-op threads; default: every core the process may use."""
    device: Optional[str] = None
    """Backend device string (``CPU`` for OpenVINO, ``cuda:0`` ...); default: the backend's."""
    dispatch: Optional[str] = None
    """PyTorch reference only: dispatch mode to run (default: the artifact's)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific settings, passed through (documented per backend)."""

    def checked(self) -> "RuntimeOptions":
        from dataclasses import replace

        if self.hint not in HINTS:
            from ..config import closest

            raise UsageError(f"unknown performance hint '{self.hint}'",
                             f"{closest(self.hint, HINTS)}choose one of: {', '.join(HINTS)}")
        for name in ("streams", "threads"):
            v = getattr(self, name)
            if v is not None and int(v) <= 0:
                raise UsageError(f"{name} must be positive, got {v}")
        prec = canonical_precision(self.precision) if self.precision is not None else None
        return replace(self, precision=prec)


@dataclass
class RunOutput:
    logits: np.ndarray
    """[B, classes] float32 (float64 from the PyTorch reference at ``fp64``)."""
    masks: Optional[np.ndarray] = None
    """[B, L, N] bool: which patch tokens each dispatcher let through (None when the artifact
    does not expose them)."""


class Runtime(ABC):
    """One backend running one artifact. Subclasses set the class attributes and implement
    :meth:`_load`, :meth:`run` and :meth:`_describe`."""

    target: ClassVar[str]
    """Name used on the command line (``--target``)."""
    kind: ClassVar[Optional[str]]
    """Model file kind it runs from the artifact (``onnx``, ``openvino``, ``tensorrt``), or
    None for the PyTorch reference (which rebuilds the model from the recorded checkpoint)."""
    precisions: ClassVar[tuple[str, ...]]
    """Precisions it can run (subject to the device: see :meth:`check_precision`)."""
    install: ClassVar[str]
    """The command that installs the backend."""

    def __init__(self, artifact: Artifact, options: Optional[RuntimeOptions] = None) -> None:
        self.artifact = artifact
        self.info = artifact.info
        """The typed manifest (:class:`dyt_edge.manifest.Manifest`)."""
        self.options = (options or RuntimeOptions()).checked()
        # In the order a user can act on: the flags, the backend being installed, the artifact
        # being one this target runs, then the precision.
        self.backend = type(self).import_backend()
        self.check_artifact()
        self.precision = self.resolve_precision(self.options.precision)
        self._load()

    # -- to implement ---------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def import_backend(cls) -> Any:
        """Import and return the backend module, or raise :class:`RuntimeUnavailable` with
        :attr:`install`."""

    @abstractmethod
    def _load(self) -> None:
        """Load / compile the model at :attr:`precision`."""

    @abstractmethod
    def run(self, images: np.ndarray) -> RunOutput:
        """Logits (and masks where available) for a preprocessed float32 batch."""

    @abstractmethod
    def _describe(self) -> dict[str, Any]:
        """Backend-specific facts (version, device, precision in effect, ...)."""

    # -- shared ---------------------------------------------------------------------------------
    def check_artifact(self) -> None:
        """Refuse (:class:`RuntimeSetupError`) an artifact this target cannot run: by default,
        one whose manifest lists no model file of :attr:`kind`. Subclasses add what they know
        (which command makes the right artifact)."""
        if self.kind is None:
            return
        files = self.info.files
        if self.kind not in files:
            holds = ", ".join(k for k in files
                              if not k.endswith(("_weights", "_metadata"))) or "nothing"
            raise RuntimeSetupError(
                f"artifact {self.artifact.path} has no {self.kind} model, which --target "
                f"{self.target} runs (it holds: {holds})",
                "pass an artifact made for this target, or choose --target to match the artifact")

    def model_file(self, kind: Optional[str] = None) -> Path:
        """The artifact's model file of ``kind`` (default :attr:`kind`), which must exist."""
        kind = kind or self.kind
        entry = self.info.files.get(kind)
        if entry is None:
            raise RuntimeSetupError(f"artifact {self.artifact.path} has no {kind} model")
        path = self.artifact.path / entry.path
        if not path.is_file():
            raise RuntimeSetupError(f"artifact {self.artifact.path} is incomplete: {path.name} "
                                    "is missing", "re-create it (export or build again)")
        return path

    def resolve_precision(self, requested: Optional[str]) -> str:
        """The precision to run: the request, else the artifact's built precision, else fp32;
        refused (:class:`RuntimeSetupError`) when this runtime or artifact cannot do it."""
        built = self.info.built_precision
        precision = requested or built or "fp32"
        if precision not in self.precisions:
            raise RuntimeSetupError(
                f"{self.target} cannot run precision {precision}",
                f"choose one of: {', '.join(self.precisions)}")
        if precision == "int8" and built != "int8":
            raise RuntimeSetupError(
                f"{self.artifact.path} is not an INT8 model",
                f"build one first: dyt-edge build --target {self.target} {self.artifact.path} "
                "--precision int8 --calib DATA")
        if built == "int8" and precision != "int8":
            raise RuntimeSetupError(f"{self.artifact.path} is an INT8 model; it runs as int8",
                                    "drop --precision, or pass the float artifact")
        return precision

    def describe(self) -> dict[str, Any]:
        return {"target": self.target, "precision": self.precision,
                "hint": self.options.hint, "artifact": str(self.artifact.path),
                **self._describe()}

    @property
    def input_size(self) -> int:
        return self.info.img_size

    @property
    def static_batch(self) -> Optional[int]:
        """The one batch size a static-batch artifact accepts (None: any)."""
        return self.info.batch

    def check_batch(self, images: np.ndarray) -> np.ndarray:
        """``images`` as contiguous float32 [B, 3, H, W], with a clear error on a shape the
        artifact cannot take."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        s = self.input_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (s, s):
            raise RuntimeSetupError(f"images of shape {tuple(x.shape)} do not fit this model",
                                    f"it takes [B, 3, {s}, {s}] (preprocess per the manifest)")
        if x.shape[0] < 1:
            raise UsageError("batch size must be at least 1")
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            raise RuntimeSetupError(f"this artifact was exported with a static batch of "
                                    f"{self.static_batch}; got {x.shape[0]} images",
                                    "re-export with --batch dynamic")
        return x

    # -- timing hooks (bench) --------------------------------------------------------------------
    def prepare(self, images: np.ndarray) -> Callable[[], Any]:
        """A function that runs one inference on ``images`` with as little per-call overhead as
        the backend allows (inputs bound once, outputs not converted): what ``bench`` times for
        latency. Default: ``run``. Backends override it (OpenVINO: a bound infer request)."""
        x = self.check_batch(images)
        return lambda: self.run(x)

    def throughput(self, images: np.ndarray, duration_s: float) -> tuple[int, float]:
        """Keep the backend busy for about ``duration_s`` seconds with inferences on ``images``
        and return ``(inferences completed, wall seconds)``. Default: sequential calls of
        :meth:`prepare`'s function; backends with parallel requests (OpenVINO streams) override
        it to keep every stream busy (benchmark_app's throughput mode)."""
        import time

        call = self.prepare(images)
        n, t0 = 0, time.perf_counter()
        while True:
            call()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= duration_s:
                return n, elapsed

    def close(self) -> None:
        """Release the backend's resources."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target} {self.precision} {self.artifact.path}>"


# -- helpers for backends -------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def file_facts(*paths: Path) -> dict[str, Any]:
    """``model_file`` (the first path) and ``model_bytes`` (all of them together), for
    :meth:`Runtime.describe`."""
    size = sum(p.stat().st_size for p in paths if p.is_file())
    return {"model_file": str(paths[0]), "model_bytes": size,
            "model_mb": round(size / 1e6, 3)}


def as_masks(value: Any) -> np.ndarray:
    """A backend's masks output (bool, uint8 or float 0/1) as a bool array."""
    arr = np.asarray(value)
    return arr if arr.dtype == np.bool_ else arr != 0
