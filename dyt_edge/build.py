"""``dyt-edge build``: an export -> a deployment artifact for one target and precision.

``build_artifact(artifact, target, precision=..., calib=..., ...)`` resolves the export (the
most recent one under ``dyt-edge-out/`` when none is given), runs the target's builder into a
staging directory and swaps it in (:func:`dyt_edge.artifacts.staged_directory`): a failed or
interrupted build leaves nothing behind. The result is a full artifact directory, by default
``<export dir>/<target>-<precision>/``, whose manifest is the export's, with ``format``,
``files`` for its own files, ``created`` and a ``build`` section::

    build:
      target, precision, parent (the export directory, relative to this one),
      source_model {file, sha256}   # the ONNX every build starts from, checked against the export
      source_ir                     # "export model.xml" or "converted from model.onnx"
      weights                       # f32 | f16 | int8
      inference_precision           # the INFERENCE_PRECISION_HINT runtimes apply (f32/bf16/f16)
      calibration {data, name, split, size, images, skipped, seed, labels, preprocessing,
                   ignored_scope {nodes, by_reason, ...}, quantization {...},
                   accuracy_control {...} | null}          # int8 only
      check {...}                   # int8: agreement with the float IR on the calibration images
      tools {dyt_edge, openvino, nncf}, created, timings, notes

Builders are looked up in :data:`BUILDERS` (target -> "module:Class"), so a target plugs in by
subclassing :class:`Builder` and adding one line (TensorRT: :mod:`dyt_edge.tensorrt_build`, which
also uses the :meth:`Builder.dirname` / :meth:`Builder.preflight` / :meth:`Builder.plan` hooks
and the target-only options of :data:`TARGET_FLAGS`). Heavy libraries are imported by the
builders, never here.
"""

from __future__ import annotations

import copy
import importlib
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Union

from . import artifacts
from ._version import __version__
from .artifacts import Artifact, ArtifactError, file_sha256
from .errors import DytEdgeError, UsageError

PathLike = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[str], None]]

DEFAULT_CALIB_SIZE = 300
DEFAULT_MAX_DROP = 1.0
"""Accuracy control: the default largest top-1 drop, in percentage points."""
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

BUILDERS: dict[str, str] = {
    "openvino": "dyt_edge.build:OpenVinoBuilder",
    "tensorrt": "dyt_edge.tensorrt_build:TensorRTBuilder",
}
"""target -> "module:Class" of its :class:`Builder`."""
TARGETS = tuple(BUILDERS)
TARGET_FLAGS = {"tensorrt": {"gpu": "--gpu", "batch": "--batch", "workspace": "--workspace",
                             "timing_cache": "--timing-cache", "dry_run": "--dry-run",
                             "onnx_only": "--onnx-only"}}
"""Options only one target takes (attribute -> flag): refused by name for the others."""


class BuildError(DytEdgeError):
    """A build that cannot be done (target not available, conversion failed, ...)."""


# -- options ------------------------------------------------------------------------------------

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
    # TensorRT only (see dyt_edge.tensorrt_build):
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
        """Normalised options; :class:`UsageError` for anything the command cannot accept."""
        from dataclasses import replace

        from .config import closest

        target = str(self.target).strip().lower()
        if target not in BUILDERS:
            raise UsageError(f"unknown target '{self.target}'",
                             f"{closest(target, TARGETS)}choose one of: {', '.join(TARGETS)}")
        precision = _canonical_precision(self.precision) if self.precision else None
        precision = precision or "fp32"
        if self.calib_size is not None and int(self.calib_size) <= 0:
            raise UsageError(f"--calib-size must be positive, got {self.calib_size}")
        if self.max_drop is not None and not (0.0 < float(self.max_drop) <= 100.0):
            raise UsageError(f"--max-drop must be in (0, 100] percentage points, got "
                             f"{self.max_drop:g}", "e.g. --max-drop 1 allows a 1-point drop")
        for target_only, flags in TARGET_FLAGS.items():
            if target == target_only:
                continue
            for attr, flag in flags.items():
                value = getattr(self, attr)
                if value is not None and value is not False:
                    raise UsageError(f"{flag} applies to --target {target_only} only",
                                     f"drop {flag}, or build with --target {target_only}")
        if self.onnx_only and self.dry_run:
            raise UsageError("--onnx-only and --dry-run do not go together",
                             "--dry-run writes nothing; --onnx-only writes the converted ONNX")
        if self.max_drop is not None and not self.accuracy_control:
            raise UsageError("--max-drop needs --accuracy-control",
                             "add --accuracy-control, or drop --max-drop")
        if precision != "int8":
            given = [flag for flag, v in (("--calib", self.calib),
                                          ("--calib-size", self.calib_size),
                                          ("--accuracy-control", self.accuracy_control or None))
                     if v is not None]
            if given:
                raise UsageError(f"{given[0]} applies to --precision int8 only",
                                 f"add --precision int8, or drop {given[0]}")
        max_drop = self.max_drop
        if self.accuracy_control and max_drop is None:
            max_drop = DEFAULT_MAX_DROP
        return replace(self, target=target, precision=precision,
                       calib_size=int(self.calib_size or DEFAULT_CALIB_SIZE),
                       max_drop=float(max_drop) if max_drop is not None else None)


def _canonical_precision(value: str) -> str:
    from .config import closest

    aliases = {"f32": "fp32", "float32": "fp32", "fp32": "fp32", "f16": "fp16",
               "float16": "fp16", "half": "fp16", "fp16": "fp16", "bf16": "bf16",
               "bfloat16": "bf16", "int8": "int8", "i8": "int8"}
    key = str(value).strip().lower()
    if key not in aliases:
        raise UsageError(f"unknown precision '{value}'",
                         f"{closest(key, PRECISIONS)}choose one of: {', '.join(PRECISIONS)}")
    return aliases[key]


# -- builders -----------------------------------------------------------------------------------

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
    def manifest(self) -> dict[str, Any]:
        return self.source.manifest

    @property
    def dispatcher_names(self) -> Optional[list[str]]:
        names = (self.manifest.get("dispatch") or {}).get("dispatchers")
        return list(names) if names else None

    @property
    def static_batch(self) -> Optional[int]:
        b = self.manifest.get("batch", "dynamic")
        return None if b in (None, "dynamic") else int(b)

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


def get_builder(target: str) -> Builder:
    module, cls = BUILDERS[target].split(":")
    return getattr(importlib.import_module(module), cls)()


# -- OpenVINO -----------------------------------------------------------------------------------

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
_CHECK_BATCH = 64


class OpenVinoBuilder(Builder):
    """OpenVINO IR at fp32 / bf16 / fp16 (weights f32, f32, f16) or NNCF INT8.

    The float IR is the export's ``model.xml`` when it has one with f32 weights, otherwise it is
    converted from ``model.onnx`` exactly as the exporter does (placeholder gate biases, since
    OpenVINO's converter drops ``x + 0``, then the real ones put back). fp16 keeps the gate
    weights f32 (the DyT contract: the gate path is fp32). Runtimes apply the
    ``INFERENCE_PRECISION_HINT`` recorded as ``build.inference_precision``.
    """

    target = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")

    def build(self, ctx: BuildContext, staging: Path) -> BuildOutput:
        import tempfile

        from .exporters.openvino_ir import import_openvino

        ov = import_openvino()
        precision = ctx.options.precision
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="dyt-edge-build-") as tmp:
            with ctx.stage("float IR"):
                float_model, source_ir = self._float_model(ctx, Path(tmp), ov)
            record: dict[str, Any] = {"source_ir": source_ir,
                                      "inference_precision": _HINTS[precision]}
            xml = staging / "model.xml"
            if precision == "int8":
                record.update(self._int8(ctx, float_model, xml, ov, notes))
            else:
                with ctx.stage("write"):
                    self._mark(float_model, ctx, precision)
                    if precision == "fp16":
                        record["weights"] = "f16"
                        record["fp16_weights"] = self._save_fp16(float_model, xml, ctx, ov,
                                                                 Path(tmp))
                    else:
                        record["weights"] = "f32"
                        ov.save_model(float_model, str(xml), compress_to_fp16=False)
                with ctx.stage("check"):
                    record["check"] = self._smoke(ctx, xml, ov)
        record["tools"] = {"dyt_edge": __version__, "openvino": ov.get_version().split("-")[0]}
        if precision == "int8":
            import nncf

            record["tools"]["nncf"] = nncf.__version__
        sections = {"openvino": {"compress_to_fp16": precision == "fp16",
                                 "inference_precision": _HINTS[precision],
                                 "weights": record["weights"]}}
        return BuildOutput(files={"openvino": "model.xml", "openvino_weights": "model.bin"},
                           format="openvino", record=record, sections=sections, notes=notes)

    # -- the float IR -------------------------------------------------------------------------
    def _float_model(self, ctx: BuildContext, tmp: Path, ov) -> tuple[Any, str]:
        core = ov.Core()
        files = ctx.manifest.get("files") or {}
        info = files.get("openvino")
        exported_f32 = not (ctx.manifest.get("openvino") or {}).get("compress_to_fp16", False)
        if info and exported_f32:
            xml = ctx.source.path / info["path"]
            if xml.is_file() and (not info.get("sha256") or file_sha256(xml) == info["sha256"]):
                return core.read_model(str(xml)), f"export {info['path']}"
        return core.read_model(str(self._convert(ctx, tmp))), f"converted from {ctx.onnx_path.name}"

    def _convert(self, ctx: BuildContext, tmp: Path) -> Path:
        """ONNX -> IR as the exporter does it (see :mod:`dyt_edge.exporters.openvino_ir`)."""
        import onnx

        from .exporters.graph_report import analyze
        from .exporters.openvino_ir import convert
        from .exporters.pipeline import _initializer, _with_placeholder_biases

        ctx.say(f"converting {ctx.onnx_path.name} to OpenVINO IR")
        proto = onnx.load(str(ctx.onnx_path))
        names = ctx.dispatcher_names
        report = analyze(proto, names)
        biases = {d.name: _initializer(proto, d.gate_bias)
                  for d in report.dispatchers if d.gate_bias}
        metadata = {p.key: p.value for p in proto.metadata_props}
        xml = tmp / "float.xml"
        convert(proto.SerializeToString(), xml, dispatcher_names=names or [],
                gate_biases=biases, placeholder_bytes=_with_placeholder_biases(proto, report),
                metadata=metadata, compress_to_fp16=False)
        return xml

    def _mark(self, model, ctx: BuildContext, precision: str) -> None:
        from .exporters.openvino_ir import RT_INFO_SECTION

        for key, value in (("build.target", "openvino"), ("build.precision", precision),
                           ("build.inference_precision", _HINTS[precision]),
                           ("build.source_model.sha256", ctx.onnx_sha256)):
            model.set_rt_info(str(value), [RT_INFO_SECTION, f"dyt_edge.{key}"])

    # -- fp16 ---------------------------------------------------------------------------------
    def _save_fp16(self, model, xml: Path, ctx: BuildContext, ov, tmp: Path) -> dict[str, int]:
        """Every MatMul / Convolution weight outside the float scope stored as f16 (a Constant
        f16 -> Convert f32 pair, what ``compress_to_fp16`` writes); the gates, LayerNorm and
        biases keep f32. (OpenVINO's own ``compress_to_fp16`` keeps most weights of these
        graphs in f32 by its heuristics, so the compression is done here, explicitly.)"""
        from .calibration.scope import openvino_float_scope

        scope = openvino_float_scope(model, ctx.dispatcher_names)
        counts = _compress_weights_f16(model, set(scope.reasons), ov)
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return counts

    # -- int8 ---------------------------------------------------------------------------------
    def _int8(self, ctx: BuildContext, float_model, xml: Path, ov, notes: list[str]
              ) -> dict[str, Any]:
        from .calibration.openvino_int8 import QuantizeSettings, quantize

        calib = ctx.calibration
        opts = ctx.options
        settings = QuantizeSettings(subset_size=len(calib), max_drop=opts.max_drop)
        with ctx.stage("quantize"):
            result = quantize(float_model, calib, dispatcher_names=ctx.dispatcher_names,
                              settings=settings, batch=ctx.static_batch, progress=ctx.progress)
        notes.extend(result.notes)
        with ctx.stage("write"):
            self._mark(result.model, ctx, "int8")
            ov.save_model(result.model, str(xml), compress_to_fp16=False)
        with ctx.stage("check"):
            check = self._agreement(ctx, float_model, xml, ov)
        calibration = {**calib.record(), "size": calib.requested, "images": len(calib),
                       "ignored_scope": result.scope.summary(),
                       "quantization": {**settings.to_dict(),
                                        "fake_quantize_nodes": result.quantizers,
                                        "restored_after_smooth_quant": result.restored,
                                        "seconds": round(result.seconds, 2)},
                       "accuracy_control": result.accuracy_control}
        calibration.pop("requested", None)
        return {"weights": "int8", "calibration": calibration, "check": check}

    def _agreement(self, ctx: BuildContext, float_model, xml: Path, ov) -> dict[str, Any]:
        """The saved INT8 IR against the float IR on the calibration images, both compiled at
        f32: top-1 agreement and per-dispatcher gate-decision agreement."""
        import numpy as np

        from .calibration.openvino_int8 import compile_f32, outputs_by_name

        ctx.say("checking INT8 against the float IR")
        core = ov.Core()
        ref = compile_f32(float_model, core)
        got = compile_f32(core.read_model(str(xml)), core)
        images = ctx.calibration.images
        batch = ctx.static_batch or _CHECK_BATCH
        n = len(images) if ctx.static_batch is None else (len(images) // batch) * batch
        if n == 0:
            return {"images": 0, "note": "fewer calibration images than the static batch"}
        agree = 0
        mask_same = None
        mask_total = 0
        for start in range(0, n, batch):
            x = np.ascontiguousarray(images[start:start + batch])
            a, b = outputs_by_name(ref(x)), outputs_by_name(got(x))
            agree += int((a["logits"].argmax(1) == b["logits"].argmax(1)).sum())
            if "masks" in a and "masks" in b:
                same = (a["masks"].astype(bool) == b["masks"].astype(bool)).sum(axis=(0, 2))
                mask_same = same if mask_same is None else mask_same + same
                mask_total += a["masks"].shape[0] * a["masks"].shape[2]
        out: dict[str, Any] = {"images": n, "reference": "float IR, f32",
                               "top1_agreement": round(agree / n, 5)}
        if mask_same is not None and mask_total:
            per = [round(float(v) / mask_total, 5) for v in mask_same]
            out["mask_agreement"] = dict(zip(ctx.dispatcher_names or
                                             [f"dispatcher.{i}" for i in range(len(per))], per))
            out["mask_agreement_mean"] = round(sum(per) / len(per), 5)
        return out

    def _smoke(self, ctx: BuildContext, xml: Path, ov) -> dict[str, Any]:
        """The saved IR compiles (f32) and runs on a few generated images."""
        import numpy as np

        from .calibration.openvino_int8 import compile_f32, outputs_by_name

        size = int(ctx.manifest["model"]["img_size"])
        n = ctx.static_batch or 2
        x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
        out = outputs_by_name(compile_f32(ov.Core().read_model(str(xml)))(x))
        logits = np.asarray(out["logits"])
        if logits.shape[0] != n or not np.isfinite(logits).all():
            raise BuildError(f"the built IR gives logits of shape {list(logits.shape)}"
                             + ("" if np.isfinite(logits).all() else " with non-finite values"),
                             "re-run with --debug, and report it")
        return {"images": n, "runs": True, "reference": None}


def _compress_weights_f16(model, keep: set[str], ov) -> dict[str, int]:
    """Replace the f32 weight Constant of every MatMul / Convolution not named in ``keep`` by
    Constant(f16) -> Convert(f32). Returns counts of compressed and kept weights."""
    import numpy as np
    import openvino.opset13 as ops

    compressed = kept = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        port = 1
        src = op.input_value(port).get_node()
        if src.get_type_name() != "Constant" or src.get_output_element_type(0) != ov.Type.f32:
            continue
        if op.get_friendly_name() in keep:
            kept += 1
            continue
        data = src.get_data()
        if not np.all(np.isfinite(data.astype(np.float16))):
            kept += 1  # out of fp16 range: leave it f32
            continue
        c16 = ov.op.Constant(np.ascontiguousarray(data, dtype=np.float16))
        c16.set_friendly_name(src.get_friendly_name() + "_compressed")
        conv = ops.convert(c16, ov.Type.f32)
        conv.set_friendly_name(src.get_friendly_name())
        conv.get_rt_info()["decompression"] = ""
        op.input(port).replace_source_output(conv.output(0))
        compressed += 1
    model.validate_nodes_and_infer_types()
    return {"compressed": compressed, "kept_f32": kept}


# -- the orchestration --------------------------------------------------------------------------

@dataclass
class BuildResult:
    path: Path
    """The built artifact's directory."""
    manifest: dict[str, Any]
    source: Artifact
    picked: bool
    """True when the export was chosen automatically (the most recent one)."""
    timings: dict[str, float]
    notes: list[str]

    @property
    def artifact(self) -> Artifact:
        return Artifact(self.path, self.manifest)

    @property
    def build(self) -> dict[str, Any]:
        return self.manifest["build"]


def resolve_export(artifact: Union[Artifact, PathLike, None],
                   root: PathLike = artifacts.DEFAULT_ROOT) -> tuple[Artifact, bool]:
    """The export to build from: ``artifact`` (an :class:`Artifact` or a path), or the most
    recent export under ``root`` (built artifacts and bench baselines are not exports)."""
    if isinstance(artifact, Artifact):
        art, picked = artifact, False
    elif artifact is not None:
        art, picked = artifacts.load_artifact(artifact), False
    else:
        found = [a for a in artifacts.find_artifacts(root, "onnx")
                 if not a.manifest.get("build") and not a.manifest.get("baseline")]
        if not found:
            raise ArtifactError(f"no export found under {root}/",
                                "run `dyt-edge export CKPT` first, or pass the export directory")
        art, picked = found[0], True
    build = art.manifest.get("build")
    if build:
        parent = (art.path / build["parent"]).resolve() if build.get("parent") else None
        raise ArtifactError(f"{art.path} is already a built artifact ({build.get('target')} "
                            f"{build.get('precision')}); build from the export",
                            f"pass {parent}" if parent else "pass the export directory")
    return art, picked


def _start(artifact: Union[Artifact, PathLike, None], opts: BuildOptions, progress: Progress,
           root: PathLike) -> tuple[Builder, BuildContext, bool]:
    """The builder, and its context with the export resolved, its ONNX checked and the output
    directory decided."""
    builder = get_builder(opts.target)
    builder.check(opts)
    art, picked = resolve_export(artifact, root)
    if picked and progress:
        progress(f"using the most recent export: {art.summary()}")
    if opts.output is not None:
        _check_target(Path(opts.output), art)
    onnx_path = art.file("onnx")
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} is missing from the export", "re-export the model")
    sha = file_sha256(onnx_path)
    want = ((art.manifest.get("files") or {}).get("onnx") or {}).get("sha256")
    if want and sha != want:
        raise ArtifactError(f"{onnx_path} changed since it was exported (sha256 {sha[:12]}..., "
                            f"the manifest records {want[:12]}...)", "re-export the model")
    ctx = BuildContext(source=art, options=opts, onnx_path=onnx_path, onnx_sha256=sha,
                       progress=progress)
    target_dir = Path(opts.output) if opts.output is not None else \
        art.path / builder.dirname(ctx)
    _check_target(target_dir, art)
    ctx.output_dir = target_dir
    return builder, ctx, picked


def plan_build(artifact: Union[Artifact, PathLike, None], target: str, *,
               progress: Progress = None, root: PathLike = artifacts.DEFAULT_ROOT,
               **options: Any) -> Any:
    """What ``build_artifact`` would do (``--dry-run``): the builder's plan; nothing is
    written. ``options`` are :class:`BuildOptions` fields."""
    opts = BuildOptions(target=target, **{**options, "dry_run": True}).checked()
    builder, ctx, _ = _start(artifact, opts, progress, root)
    return builder.plan(ctx)


def build_artifact(artifact: Union[Artifact, PathLike, None], target: str, *,
                   precision: Optional[str] = None, calib: Optional[str] = None,
                   calib_size: Optional[int] = None, calib_seed: int = 0,
                   accuracy_control: bool = False, max_drop: Optional[float] = None,
                   output: Optional[PathLike] = None, progress: Progress = None,
                   root: PathLike = artifacts.DEFAULT_ROOT, **target_options: Any
                   ) -> BuildResult:
    """Build ``artifact`` (an export; None: the most recent one) for ``target``.
    ``target_options``: the target-only :class:`BuildOptions` fields (TensorRT: ``gpu``,
    ``batch``, ``workspace``, ``timing_cache``, ``onnx_only``)."""
    opts = BuildOptions(target=target, precision=precision, calib=calib, calib_size=calib_size,
                        calib_seed=calib_seed, accuracy_control=accuracy_control,
                        max_drop=max_drop, output=output, **target_options).checked()
    if opts.dry_run:
        raise UsageError("build_artifact does not dry-run", "call plan_build")
    builder, ctx, picked = _start(artifact, opts, progress, root)
    art, target_dir = ctx.source, ctx.output_dir
    builder.preflight(ctx)
    if opts.precision in builder.needs_calibration:
        from .calibration.data import load_calibration
        from .data import default_data

        spec = default_data(art.manifest, opts.calib, purpose="INT8 calibration",
                            flag="--calib")
        with ctx.stage("calibration data"):
            ctx.calibration = load_calibration(spec, art.manifest, opts.calib_size,
                                               seed=opts.calib_seed,
                                               require_labels=opts.accuracy_control)
    try:
        with artifacts.staged_directory(target_dir) as staging:
            out = builder.build(ctx, staging)
            ctx.timings["total"] = round(sum(ctx.timings.values()), 3)
            manifest = _manifest(art, opts, out, staging, target_dir, ctx.onnx_sha256, ctx)
            artifacts.write_manifest(staging, manifest)
    except OSError as exc:
        raise ArtifactError(f"cannot write the build to {target_dir}: {exc.strerror or exc}",
                            "check free space and permissions; nothing was written") from exc
    return BuildResult(path=target_dir, manifest=manifest, source=art, picked=picked,
                       timings=dict(ctx.timings), notes=list(out.notes))


def _check_target(target_dir: Path, art: Artifact) -> None:
    t, src = target_dir.resolve(), art.path.resolve()
    if t == src or src.is_relative_to(t):
        raise UsageError(f"-o {target_dir} would replace the export it is built from",
                         f"pass a new directory, e.g. -o {art.path / 'openvino-int8'}")
    artifacts.check_output_dir(target_dir)


def _manifest(art: Artifact, opts: BuildOptions, out: BuildOutput, staging: Path,
              target_dir: Path, sha: str, ctx: BuildContext) -> dict[str, Any]:
    m = copy.deepcopy(art.manifest)
    files = {}
    for kind, name in out.files.items():
        p = staging / name
        files[kind] = {"path": name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
    created = artifacts.utc_now()
    parent = os.path.relpath(art.path.resolve(), target_dir.resolve())
    build = {"target": opts.target, "precision": opts.precision, "parent": parent,
             "source_model": {"file": ctx.onnx_path.name, "sha256": sha},
             **out.record, "created": created, "timings": dict(ctx.timings),
             "notes": list(out.notes)}
    m.update(schema=artifacts.SCHEMA_VERSION, dyt_edge_version=__version__, created=created,
             format=out.format, files=files, output={"mode": "directory"})
    m.update(out.sections)
    m["build"] = build
    return m


