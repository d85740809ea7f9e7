"""``dyt-edge build --target tensorrt``: a TensorRT engine for one GPU, at fp32, fp16 or int8.

The builder (:class:`TensorRTBuilder`) implements :mod:`dyt_edge.exporters.builder`. What it does:

1. **Plan** (:meth:`TensorRTBuilder.plan`, all of ``--dry-run``): the target GPU (``--gpu auto``
   detects it; a named GPU must be the one present, engines are not portable), the installed
   TensorRT and the guards between them (:mod:`dyt_edge.runtimes.tensorrt.install`: V100 needs
   ``tensorrt-cu12`` <= 10.4, INT8 on V100 warns, ...), the ONNX's TensorRT compatibility
   (:mod:`dyt_edge.exporters.graph_report`), the batch profile, workspace, timing cache, the
   conversion of the graph, the dispatch advice and the equivalent ``trtexec`` line per
   TensorRT major (:mod:`.plan`). Without a GPU or TensorRT a real
   build stops here, after printing the plan, with one error line naming what is missing
   (:class:`TensorRTBuildBlocked`).
2. **Graph with explicit precisions**: fp32 is the export's ``model.onnx``; fp16 and int8 are
   converted on the CPU by :mod:`dyt_edge.calibration.onnx_fp16` (FP16 with the dispatch
   path and LayerNorm in fp32) and :mod:`dyt_edge.calibration.onnx_qdq` (symmetric int8 Q/DQ,
   zero points 0, calibrated on ``--calib``)
   and compared with the export on ONNX Runtime. The graph TensorRT parses is kept in the
   artifact as ``model.onnx`` (so ``--target onnxruntime`` validates it on a CPU).
3. **Engine**: a strongly typed network parsed from that graph, one profile for the batch,
   the workspace limit and the timing cache (:mod:`.engine`), saved
   as ``model.engine`` with its metadata in ``engine.json`` and in the manifest (``tensorrt``
   section and ``build``).

``--onnx-only`` stops after step 2 and needs neither a GPU nor TensorRT (``--gpu NAME``
names the target; ``auto`` without a GPU is an error): the artifact holds ``model.onnx`` and the
manifest, whose ``build`` has ``onnx_only: true``, ``engine: null``, the conversion report, the
parity check and the trtexec line(s) for building the engine on the target GPU; ``format`` is
``onnx``, so ``dyt-edge validate DIR --target onnxruntime`` checks it on the CPU.

The artifact (default ``<export>/tensorrt-<gpu>-<precision>/``)::

    model.engine   the serialized engine (a plain TensorRT plan: trtexec --loadEngine reads it)
    model.onnx     the graph TensorRT parsed (fp32: the export's; fp16 / int8: converted)
    engine.json    the engine record: format, schema, engine {file, bytes, sha256},
                   tensorrt {version, major, package, cuda_major}, gpu {name, profile,
                   compute_capability, sm, architecture, memory_mib, driver}, precision,
                   strongly_typed, profile {input, min, opt, max, static}, dispatch,
                   source_model {file, sha256}, onnx {file, sha256}, workspace_mib,
                   timing_cache, io [{name, mode, dtype, shape}]
    dyt_edge.json  the manifest: ``tensorrt`` = the engine record; ``build`` = target,
                   precision, parent, source_model, gpu, tensorrt, engine, graph {conversion,
                   source, report, precision_problems}, batch, workspace_gib, timing_cache
                   {path, loaded_bytes, saved_bytes} | null, weights, trtexec {major: line},
                   check (fp16 / int8: the converted graph vs the export on ONNX Runtime),
                   calibration (int8), tools, created, timings, notes
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Optional

from ..._version import __version__
from ...errors import UsageError
from ...runtimes.tensorrt import engine_file, gpus, install
from ..builder import Builder, BuildContext, BuildOptions, BuildOutput
from . import plan as tplan

_CHECK_IMAGES = 16
"""Generated images for the fp16 graph's ONNX Runtime comparison (int8 uses its calibration
images)."""


class TensorRTBuildBlocked(gpus.TensorRTSetupError):
    """A build that cannot happen on this machine; :attr:`plan` is what it would have done
    (printed before the error)."""

    def __init__(self, message: str, hint: Optional[str] = None,
                 plan: Optional[tplan.TensorRTPlan] = None) -> None:
        super().__init__(message, hint)
        self.plan = plan


class TensorRTBuilder(Builder):
    target = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    own_flags = {"gpu": "--gpu", "batch": "--batch", "workspace": "--workspace",
                 "timing_cache": "--timing-cache", "dry_run": "--dry-run",
                 "onnx_only": "--onnx-only"}

    # -- options ------------------------------------------------------------------------------
    def check(self, options: BuildOptions) -> None:
        if options.precision == "bf16":
            raise UsageError("--target tensorrt builds fp32, fp16 or int8, not bf16",
                             "choose --precision fp16 (every supported GPU has FP16 tensor "
                             "cores), or build bf16 for the CPU with --target openvino")
        super().check(options)  # --accuracy-control: refused as an OpenVINO own flag
        if options.gpu is not None and options.gpu.strip().lower() != gpus.AUTO:
            gpus.gpu_profile(options.gpu)
        tplan.parse_batch(options.batch)
        tplan.check_workspace(options.workspace)
        if options.timing_cache is not None:
            p = Path(options.timing_cache)
            if p.exists() and not p.is_file():
                raise UsageError(f"--timing-cache {p} exists and is not a file",
                                 "pass a file path (created when missing)")

    # -- the plan -----------------------------------------------------------------------------
    def _target(self, ctx: BuildContext) -> dict[str, Any]:
        """The GPU side, resolved once per build: detected GPU, target profile, problems."""
        if "target" not in ctx.extra:
            opts = ctx.options
            detected = gpus.select_gpu(gpus.detect_gpus())
            profile, problems, warnings = install.resolve_target_gpu(
                opts.gpu, detected, dry_run=opts.dry_run or opts.onnx_only)
            if opts.onnx_only:  # a named GPU need not be here: no engine is built
                warnings = [re.sub(r"\(dry run: [^)]*\)$", "(--onnx-only: only the ONNX is "
                                   "written here)", w) for w in warnings]
            ctx.extra["target"] = {"detected": detected, "profile": profile,
                                   "problems": problems, "warnings": warnings}
        return ctx.extra["target"]

    def dirname(self, ctx: BuildContext) -> str:
        profile = self._target(ctx)["profile"]
        gpu = f"{profile.key}-" if profile is not None else ""
        return f"tensorrt-{gpu}{ctx.options.precision}"

    def plan(self, ctx: BuildContext) -> tplan.TensorRTPlan:
        import onnx

        from ..graph_report import analyze

        opts = ctx.options
        target = self._target(ctx)
        profile = target["profile"]
        problems = list(target["problems"])
        warnings = list(target["warnings"])
        trt = install.find_tensorrt()
        if profile is not None:
            compat = install.check_compatibility(profile, trt, opts.precision)
            problems += compat.problems
            warnings += compat.warnings
        elif trt is None:
            problems.append(install.Problem("TensorRT is not installed",
                                         'install it on the GPU machine: pip install '
                                         '"tensorrt-cu12>=10.0" (V100: "tensorrt-cu12>=10.0,'
                                         '<10.5")', "tensorrt"))
        info = ctx.source.info
        input_name = (info.inputs[0] if info.inputs else {}).get("name", "images")
        size = info.img_size
        chans = int(info.model.get("in_chans", 3))
        batch = tplan.parse_batch(opts.batch, ctx.static_batch)
        workspace = tplan.check_workspace(opts.workspace)
        detected = target["detected"]
        if detected is not None and detected.memory_mib and \
                tplan.workspace_mib(workspace) > detected.memory_mib:
            warnings.append(f"--workspace {workspace:g} GiB is more than {detected.name}'s "
                            f"{detected.memory_mib} MiB")
        report = analyze(onnx.load(str(ctx.onnx_path), load_external_data=False),
                         ctx.dispatcher_names).to_dict()
        blocking = [c for c in report.get("tensorrt", []) if not c["ok"]]
        if blocking and len(blocking) == len(report.get("tensorrt", [])):
            warnings.append("the ONNX parser checks report issues for every TensorRT version "
                            "(see the table): the build is likely to fail")
        calibration = None
        if opts.precision == "int8":
            from ...data import default_data, is_demo_model

            spec = default_data(opts.calib, demo=is_demo_model(info), purpose="INT8 calibration",
                                flag="--calib")
            calibration = (f"{spec}: up to {opts.calib_size} images, preprocessed per the "
                           "manifest")
        return tplan.TensorRTPlan(
            export=str(ctx.source.path), source_onnx=str(ctx.onnx_path),
            source_sha256=ctx.onnx_sha256, output=str(ctx.output_dir),
            precision=opts.precision, conversion=_CONVERSIONS[opts.precision],
            gpu=profile, detected=detected, tensorrt=trt, input_name=input_name,
            chw=(chans, size, size), batch=batch, workspace_gib=workspace,
            timing_cache=str(opts.timing_cache) if opts.timing_cache is not None else None,
            dispatch=info.dispatch, graph_report=report,
            calibration=calibration, problems=problems, warnings=warnings,
            dry_run=opts.dry_run)

    def preflight(self, ctx: BuildContext) -> None:
        plan = self.plan(ctx)
        ctx.extra["plan"] = plan
        if ctx.options.onnx_only:
            self._preflight_onnx_only(plan)
            return
        if plan.problems:
            message = "cannot build a TensorRT engine here: " + "; ".join(
                p.message for p in plan.problems)
            fixes = list(dict.fromkeys(p.fix for p in plan.problems))
            raise TensorRTBuildBlocked(message, "; ".join(fixes) + "; nothing was written "
                                       "(--dry-run shows the plan; --onnx-only writes the "
                                       "converted ONNX for checking on ONNX Runtime)",
                                       plan=plan)

    @staticmethod
    def _preflight_onnx_only(plan: tplan.TensorRTPlan) -> None:
        """``--onnx-only`` needs a target GPU (the artifact is named and planned for it) but no
        GPU or TensorRT here: what only the engine build needs becomes a note."""
        if plan.gpu is None:
            raise TensorRTBuildBlocked(
                "no NVIDIA GPU found (--gpu auto): --onnx-only needs to know which GPU the "
                "engine is for", "name it with --gpu, one of: "
                f"{', '.join(k for k in gpus.GPU_CHOICES if k != gpus.AUTO)} (e.g. --gpu t4 "
                "--onnx-only); nothing was written")
        blocking = [p for p in plan.problems if p.kind == "gpu"]
        if blocking:  # the GPU itself cannot run TensorRT 10 / 11
            raise TensorRTBuildBlocked("; ".join(p.message for p in blocking),
                                       "; ".join(dict.fromkeys(p.fix for p in blocking))
                                       + "; nothing was written")
        plan.warnings.extend(f"for the engine build: {p.message} ({p.fix})"
                             for p in plan.problems if p.kind == "version")
        plan.problems = []  # TensorRT missing here: expected, the engine is built elsewhere

    # -- the build ----------------------------------------------------------------------------
    def build(self, ctx: BuildContext, staging: Path) -> BuildOutput:
        from ...artifacts import atomic_write_bytes
        from .engine import build_engine

        plan: tplan.TensorRTPlan = ctx.extra["plan"]
        if ctx.options.onnx_only:
            return self._build_onnx_only(ctx, staging, plan)
        trt = _import_tensorrt()
        onnx_out = staging / engine_file.ONNX_FILE
        with ctx.stage("graph"):
            graph = self._write_graph(ctx, onnx_out)
        cache_in, cache_path = None, None
        if plan.timing_cache is not None:
            cache_path = Path(plan.timing_cache)
            cache_in = cache_path.read_bytes() if cache_path.is_file() else None
        shapes = {} if plan.batch.static else {plan.input_name: plan.batch.shapes(plan.chw)}
        with ctx.stage("engine"):
            ctx.say(f"building the TensorRT engine for {plan.gpu.name} (minutes)")
            built = build_engine(trt, onnx_out, input_shapes=shapes,
                                 workspace_bytes=tplan.workspace_mib(plan.workspace_gib) << 20,
                                 timing_cache=cache_in)
        engine_path = staging / engine_file.ENGINE_FILE
        atomic_write_bytes(engine_path, built.engine)
        cache_record = None
        if cache_path is not None:
            if built.timing_cache:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(cache_path, built.timing_cache)
            cache_record = {"path": str(cache_path), "loaded_bytes": len(cache_in or b""),
                            "saved_bytes": len(built.timing_cache or b"")}
        from ...artifacts import file_sha256

        # fp32: model.onnx is the export's file copied byte for byte, already hashed (ctx)
        onnx_sha256 = ctx.onnx_sha256 if plan.precision == "fp32" else file_sha256(onnx_out)
        meta = tplan.engine_metadata(
            trt=plan.tensorrt, gpu=plan.detected, profile=plan.gpu, precision=plan.precision,
            batch=plan.batch, input_name=plan.input_name, chw=plan.chw,
            dispatch=plan.dispatch.to_dict(),
            source_model={"file": ctx.onnx_path.name, "sha256": ctx.onnx_sha256},
            onnx={"file": engine_file.ONNX_FILE, "sha256": onnx_sha256},
            engine={"file": engine_file.ENGINE_FILE, "bytes": len(built.engine),
                    "sha256": file_sha256(engine_path)},
            workspace_gib=plan.workspace_gib, io=built.io,
            timing_cache=str(cache_path) if cache_path else None)
        from ...reports import to_json

        atomic_write_bytes(staging / engine_file.METADATA_FILE, to_json(meta).encode())
        warnings = [m for m in built.log if m.startswith("warning")]
        notes = list(plan.warnings)
        if warnings:
            notes.append(f"TensorRT logged {len(warnings)} warning(s) while building, the "
                         f"first: {warnings[0][len('warning: '):][:300]}")
        record = {
            "gpu": {"profile": plan.gpu.key, **(plan.detected.to_dict())},
            "tensorrt": meta["tensorrt"],
            "engine": meta,
            "graph": graph,
            "batch": plan.batch.to_dict(),
            "workspace_gib": plan.workspace_gib,
            "timing_cache": cache_record,
            "weights": {"fp32": "f32", "fp16": "f16", "int8": "int8"}[plan.precision],
            "trtexec": {str(m): tplan.shell(c) for m, c in plan.commands().items()},
            "check": graph.pop("check", None),
            "tools": {"dyt_edge": __version__, "tensorrt": plan.tensorrt.version},
        }
        if "calibration" in graph:
            record["calibration"] = graph.pop("calibration")
        return BuildOutput(files={"tensorrt": engine_file.ENGINE_FILE,
                                  "onnx": engine_file.ONNX_FILE,
                                  "tensorrt_metadata": engine_file.METADATA_FILE},
                           format="tensorrt", record=record, sections={"tensorrt": meta},
                           notes=notes)

    def _build_onnx_only(self, ctx: BuildContext, staging: Path, plan: tplan.TensorRTPlan
                         ) -> BuildOutput:
        """``--onnx-only``: the graph TensorRT would parse, converted and checked against the
        export on ONNX Runtime, and the manifest; no TensorRT, no engine."""
        import onnx

        from ...runtimes.backends import import_onnxruntime

        with ctx.stage("graph"):
            graph = self._write_graph(ctx, staging / engine_file.ONNX_FILE)
        commands = {str(m): tplan.shell(c) for m, c in plan.commands().items()}
        notes = list(plan.warnings)
        notes.append(f"no engine (--onnx-only): build it on a {plan.gpu.name} with the trtexec "
                     f"command recorded under build.trtexec, or with `dyt-edge build "
                     f"{ctx.source.path} --target tensorrt --gpu {plan.gpu.key} --precision "
                     f"{plan.precision}` there")
        record = {
            "onnx_only": True,
            "gpu": {"profile": plan.gpu.key, **plan.gpu.to_dict()},
            "detected_gpu": plan.detected.to_dict() if plan.detected else None,
            "tensorrt": plan.tensorrt.to_dict() if plan.tensorrt else None,
            "engine": None,
            "graph": graph,
            "batch": plan.batch.to_dict(),
            "workspace_gib": plan.workspace_gib,
            "timing_cache": {"path": plan.timing_cache} if plan.timing_cache else None,
            "weights": {"fp32": "f32", "fp16": "f16", "int8": "int8"}[plan.precision],
            "trtexec": commands,
            "check": graph.pop("check", None),
            "tools": {"dyt_edge": __version__, "onnx": onnx.__version__,
                      "onnxruntime": import_onnxruntime().__version__},
        }
        if "calibration" in graph:
            record["calibration"] = graph.pop("calibration")
        return BuildOutput(files={"onnx": engine_file.ONNX_FILE}, format="onnx", record=record,
                           notes=notes)

    def _write_graph(self, ctx: BuildContext, out: Path) -> dict[str, Any]:
        """The ONNX TensorRT parses, written to ``out``, and what was done to it."""
        precision = ctx.options.precision
        if precision == "fp32":
            copy_onnx(ctx.onnx_path, out)
            return {"conversion": "none", "source": f"export {ctx.onnx_path.name} (fp32)"}
        import numpy as np
        import onnx

        from ...calibration.onnx_fp16 import to_fp16
        from ...calibration.onnx_graph import write_model
        from ...calibration.onnx_precision import check_precisions, parity, summary
        from ...calibration.onnx_qdq import to_qdq_int8

        source = onnx.load(str(ctx.onnx_path))
        names = ctx.dispatcher_names
        labels = None
        if precision == "fp16":
            ctx.say("converting the graph to FP16 (dispatch path and LayerNorm stay fp32)")
            converted, report = to_fp16(source, dispatcher_names=names)
            size = ctx.source.info.img_size
            n = ctx.static_batch or _CHECK_IMAGES
            images = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(
                np.float32)
            images_note = f"{n} generated images"
        else:
            calib = ctx.calibration
            ctx.say(f"quantizing: int8 Q/DQ calibrated on {len(calib)} images")
            converted, report = to_qdq_int8(source, calib.images, per_channel=True,
                                            dispatcher_names=names)
            images, labels = calib.images, calib.labels
            images_note = f"{len(calib)} calibration images"
        problems = check_precisions(converted, dispatcher_names=names)
        write_model(converted, out)
        ctx.say("comparing the converted graph with the export on ONNX Runtime")
        check = parity(source, converted, images, dispatcher_names=names, labels=labels,
                       batch=ctx.static_batch)
        graph: dict[str, Any] = {
            "conversion": summary(report), "source": f"converted from export "
            f"{ctx.onnx_path.name}", "report": report, "precision_problems": problems,
            "check": {"reference": f"export {ctx.onnx_path.name} on ONNX Runtime (CPU)",
                      **check, "data": images_note}}
        if precision == "int8":
            graph["calibration"] = {**ctx.calibration.record(), "images": len(ctx.calibration)}
        return graph


_CONVERSIONS = {
    "fp32": "none: TensorRT parses the export's fp32 ONNX",
    "fp16": "ONNX converted to FP16 on the CPU (calibration/onnx_fp16.to_fp16): the "
            "dispatch path (gate MatMul, bias, sigmoid, compare, TopK, indices) and LayerNorm "
            "stay fp32, explicit Casts between; checked on ONNX Runtime",
    "int8": "explicit int8 QuantizeLinear/DequantizeLinear on MatMul/Gemm/Conv inputs and "
            "weights (calibration/onnx_qdq.to_qdq_int8: symmetric, zero points 0, "
            "per-channel weights); dispatch path, LayerNorm, Softmax, GELU and residual adds "
            "stay float; checked on ONNX Runtime",
}


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # the preflight saw it importable: a broken install
        raise gpus.TensorRTSetupError(f"TensorRT cannot be imported ({exc})",
                                      'reinstall it: pip install "tensorrt-cu12>=10.0"') from exc
    return tensorrt


def copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX file with its external-data files (a > 2 GB export), if any."""
    import onnx

    shutil.copyfile(src, dst)
    proto = onnx.load(str(src), load_external_data=False)
    locations = set()
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    locations.add(e.value)
    for loc in locations:
        shutil.copyfile(src.parent / loc, dst.parent / loc)


__all__ = ["TensorRTBuildBlocked", "TensorRTBuilder", "copy_onnx"]
