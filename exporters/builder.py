"""The builder contract: what ``dyt-edge build`` gives a target's builder and what it gets back.

A target is one :class:`Builder` subclass (OpenVINO: :mod:`.openvino.builder`, TensorRT:
:mod:`.tensorrt.builder`) and one line in :data:`dyt_edge.exporters.registry.BUILDERS`. The
command (:mod:`dyt_edge.build`) resolves the export, checks its ONNX, loads calibration data for
the precisions in :attr:`Builder.needs_calibration`, calls the hooks (:meth:`Builder.check`,
:meth:`~Builder.dirname`, :meth:`~Builder.preflight`, :meth:`~Builder.plan` for ``--dry-run``,
:meth:`~Builder.build` into a staging directory) and writes the manifest. The twin of this
module on the running side is :mod:`dyt_edge.runtimes.base`.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from ..artifacts import Artifact
from ..errors import DytEdgeError, UsageError
from ..precisions import ALIASES as PRECISION_ALIASES
from ..precisions import canonical_precision
from ..progress import Progress

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_CALIB_SIZE = 300
DEFAULT_MAX_DROP = 1.0
"""Accuracy control: the default largest top-1 drop, in percentage points."""
SMOOTH_QUANT_CHOICES = ("auto", "on", "off")
FLOAT_PARTS_CHOICES = ("auto", "fp32", "bf16", "fp16")


class BuildError(DytEdgeError):
    """A build that cannot be done (target not available, conversion failed, ...)."""


@dataclass
class BuildOptions:
    target: str
    precision: Optional[str] = None
    """Default: the builder's (fp32)."""
    calib: Optional[str] = None
    calib_size: Optional[int] = None
    calib_seed: int = 0
    accuracy_control: bool = False
    max_drop: Optional[float] = None
    output: Optional[PathLike] = None
    # OpenVINO INT8 only (see dyt_edge.exporters.openvino.builder):
    smooth_quant: Optional[str] = None
    """NNCF SmoothQuant: ``auto`` (default: off, and on again when the INT8 model's top-1
    agreement with the float one falls below 99% on the calibration images), ``on``, ``off``."""
    float_attention: Optional[bool] = None
    """Keep the attention core unquantized (default: when the float parts are below fp32)."""
    float_parts: Optional[str] = None
    """The precision of the parts INT8 leaves float: ``auto`` (default: bf16 where the build
    machine's CPU has it, else fp32), ``fp32``, ``bf16``, ``fp16``."""
    # TensorRT only (see dyt_edge.exporters.tensorrt.builder):
    gpu: Optional[str] = None
    """``auto`` (default) or a GPU profile name (``t4``, ``v100``, ...)."""
    batch: Optional[str] = None
    """The batch optimization profile, ``MIN:OPT:MAX`` (default 1:8:32)."""
    workspace: Optional[float] = None
    """Builder workspace limit, GiB (default 4)."""
    timing_cache: Optional[PathLike] = None
    dry_run: bool = False
    onnx_only: bool = False
    """Stop before TensorRT: write the converted ONNX (no engine), checkable on ONNX Runtime."""

    def checked(self) -> "BuildOptions":
        """Normalised options; :class:`UsageError` for anything the command cannot accept
        whatever the target (the target and its own flags are checked by
        :func:`dyt_edge.exporters.registry.check_options`)."""
        from dataclasses import replace

        precision = canonical_precision(self.precision) if self.precision else None
        precision = precision or "fp32"
        if self.calib_size is not None and int(self.calib_size) <= 0:
            raise UsageError(f"--calib-size must be positive, got {self.calib_size}")
        if self.max_drop is not None and not (0.0 < float(self.max_drop) <= 100.0):
            raise UsageError(f"--max-drop must be in (0, 100] percentage points, got "
                             f"{self.max_drop:g}", "e.g. --max-drop 1 allows a 1-point drop")
        if self.onnx_only and self.dry_run:
            raise UsageError("--onnx-only and --dry-run do not go together",
                             "--dry-run writes nothing; --onnx-only writes the converted ONNX")
        if self.max_drop is not None and not self.accuracy_control:
            raise UsageError("--max-drop needs --accuracy-control",
                             "add --accuracy-control, or drop --max-drop")
        if precision != "int8":
            given = [flag for flag, v in (("--calib", self.calib),
                                          ("--calib-size", self.calib_size),
                                          ("--accuracy-control", self.accuracy_control or None),
                                          ("--smooth-quant", self.smooth_quant),
                                          ("--float-attention / --quantize-attention",
                                           self.float_attention),
                                          ("--float-parts", self.float_parts))
                     if v is not None]
            if given:
                raise UsageError(f"{given[0]} applies to --precision int8 only",
                                 f"add --precision int8, or drop {given[0]}")
        max_drop = self.max_drop
        if self.accuracy_control and max_drop is None:
            max_drop = DEFAULT_MAX_DROP
        smooth_quant = self.smooth_quant
        if smooth_quant is not None:
            smooth_quant = str(smooth_quant).strip().lower()
            if smooth_quant not in SMOOTH_QUANT_CHOICES:
                raise UsageError(f"--smooth-quant must be one of "
                                 f"{', '.join(SMOOTH_QUANT_CHOICES)}, got '{self.smooth_quant}'",
                                 "e.g. --smooth-quant on")
        float_parts = self.float_parts
        if float_parts is not None:
            key = str(float_parts).strip().lower()
            float_parts = PRECISION_ALIASES.get(key, key)  # "auto" and unknowns as given
            if float_parts not in FLOAT_PARTS_CHOICES:
                raise UsageError(f"--float-parts must be one of "
                                 f"{', '.join(FLOAT_PARTS_CHOICES)}, got '{self.float_parts}'",
                                 "e.g. --float-parts bf16")
        return replace(self, precision=precision, smooth_quant=smooth_quant,
                       float_parts=float_parts,
                       calib_size=int(self.calib_size or DEFAULT_CALIB_SIZE),
                       max_drop=float(max_drop) if max_drop is not None else None)


@dataclass
class BuildContext:
    """What a builder gets: the export, the checked options and the calibration set."""

    source: Artifact
    options: BuildOptions
    onnx_path: Path
    onnx_sha256: str
    calibration: Any = None
    """A :class:`dyt_edge.calibration.data.CalibrationSet` for int8, else None."""
    progress: Progress = None
    timings: dict[str, float] = field(default_factory=dict)
    output_dir: Optional[Path] = None
    """Where the artifact goes (set before :meth:`Builder.preflight`)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Builder-specific state between its hooks (TensorRT: the plan)."""

    @property
    def dispatcher_names(self) -> Optional[list[str]]:
        return list(self.source.info.dispatch.dispatchers) or None

    @property
    def static_batch(self) -> Optional[int]:
        return self.source.info.batch

    def say(self, stage: str) -> None:
        if self.progress:
            self.progress(stage)

    def stage(self, name: str):
        ctx = self

        class _Stage:
            def __enter__(self):
                ctx.say(name)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                ctx.timings[name] = round(ctx.timings.get(name, 0.0)
                                          + time.perf_counter() - self.t0, 3)
                return False

        return _Stage()


@dataclass
class BuildOutput:
    """What a builder wrote into the staging directory."""

    files: dict[str, str]
    """kind -> file name inside the directory (``openvino``, ``openvino_weights``, ...)."""
    format: str
    record: dict[str, Any]
    """Builder-specific keys for the manifest's ``build`` section."""
    sections: dict[str, Any] = field(default_factory=dict)
    """Top-level manifest sections to set (``openvino``: compile facts)."""
    notes: list[str] = field(default_factory=list)


class Builder(ABC):
    """Makes one target's artifact. Subclasses set the class attributes and :meth:`build`."""

    target: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    needs_calibration: ClassVar[tuple[str, ...]] = ("int8",)
    own_flags: ClassVar[dict[str, str]] = {}
    """:class:`BuildOptions` fields only this target takes (attribute -> flag); the other
    targets refuse them by name."""

    def check(self, options: BuildOptions) -> None:
        """Refuse options this target cannot do (before any work)."""
        if options.precision not in self.precisions:
            raise UsageError(f"--target {self.target} cannot build precision "
                             f"{options.precision}",
                             f"choose one of: {', '.join(self.precisions)}")

    def dirname(self, ctx: BuildContext) -> str:
        """The artifact directory's name under the export (default ``<target>-<precision>``)."""
        return f"{self.target}-{ctx.options.precision}"

    def preflight(self, ctx: BuildContext) -> None:
        """Refuse, before the slow steps (calibration, conversion), what this machine cannot
        build. Default: nothing to check."""

    def plan(self, ctx: BuildContext) -> Any:
        """What a build would do, without doing it (``--dry-run``)."""
        raise UsageError(f"--dry-run is not available for --target {self.target}",
                         "drop --dry-run")

    @abstractmethod
    def build(self, ctx: BuildContext, staging: Path) -> BuildOutput:
        """Write the model file(s) into ``staging``."""
