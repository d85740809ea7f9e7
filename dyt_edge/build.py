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
      inference_precision           # the INFERENCE_PRECISION_HINT runtimes apply (f32/bf16/f16;
                                    # int8: of the float parts, also as float_parts)
      f32_gates                     # dispatchers whose gate the IR stores as Multiply + ReduceSum
      calibration {data, name, split, size, images, skipped, seed, labels, preprocessing,
                   ignored_scope {nodes, by_reason, ...}, quantization {...},
                   accuracy_control {...} | null}          # int8 only
      check {...}                   # int8: agreement with the float IR on the calibration images
      tools {dyt_edge, openvino, nncf}, created, timings, notes

Builders are looked up in :data:`dyt_edge.exporters.registry.BUILDERS`; the contract between
this command and a builder is :mod:`dyt_edge.exporters.builder`. Heavy libraries are imported
by the builders, never here.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from . import artifacts
from .manifest import header
from .progress import Progress
from .artifacts import Artifact, ArtifactError, file_sha256
from .errors import UsageError
from .exporters.builder import (DEFAULT_CALIB_SIZE, DEFAULT_MAX_DROP, Builder, BuildContext,
                                BuildError, BuildOptions, BuildOutput, PathLike)
from .exporters.registry import BUILDERS, TARGETS, check_options, get_builder

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
    def build(self) -> Mapping[str, Any]:
        """The manifest's ``build`` record (target, precision, parent, the builder's own)."""
        return self.artifact.info.build.record


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
                 if not a.info.is_build]  # find_artifacts leaves baselines out
        if not found:
            raise ArtifactError(f"no export found under {root}/",
                                "run `dyt-edge export CKPT` first, or pass the export directory")
        art, picked = found[0], True
    build = art.info.build
    if build:
        parent = art.parent_export
        raise ArtifactError(f"{art.path} is already a built artifact ({build.target} "
                            f"{build.precision}); build from the export",
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
    want = art.info.files["onnx"].sha256 if "onnx" in art.info.files else None
    if want and sha != want:
        raise ArtifactError(f"{onnx_path} changed since it was exported (sha256 {sha[:12]}..., "
                            f"the manifest records {want[:12]}...)", "re-export the model")
    ctx = BuildContext(source=art, options=opts, onnx_path=onnx_path, onnx_sha256=sha,
                       progress=progress)
    if opts.output is not None:
        target_dir = Path(opts.output)  # checked above, before any work
    else:
        target_dir = art.path / builder.dirname(ctx)
        _check_target(target_dir, art)
    ctx.output_dir = target_dir
    return builder, ctx, picked


def plan_build(artifact: Union[Artifact, PathLike, None], target: str, *,
               progress: Progress = None, root: PathLike = artifacts.DEFAULT_ROOT,
               **options: Any) -> Any:
    """What ``build_artifact`` would do (``--dry-run``): the builder's plan; nothing is
    written. ``options`` are :class:`BuildOptions` fields."""
    opts = check_options(BuildOptions(target=target, **{**options, "dry_run": True}))
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
                        max_drop=max_drop, output=output, **target_options)
    opts = check_options(opts)
    if opts.dry_run:
        raise UsageError("build_artifact does not dry-run", "call plan_build")
    builder, ctx, picked = _start(artifact, opts, progress, root)
    art, target_dir = ctx.source, ctx.output_dir
    builder.preflight(ctx)
    if opts.precision in builder.needs_calibration:
        from .calibration.data import load_calibration
        from .data import default_data, is_demo_model

        info = art.info
        spec = default_data(opts.calib, demo=is_demo_model(info), purpose="INT8 calibration",
                            flag="--calib")
        with ctx.stage("calibration data"):
            ctx.calibration = load_calibration(spec, info, opts.calib_size,
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
    head = header(created)  # the export's header (any schema version) is replaced
    m = {**head, **{k: v for k, v in copy.deepcopy(art.manifest).items()
                    if k not in head}}
    m.update(format=out.format, files=files, output={"mode": "directory"})
    m.update(out.sections)
    m["build"] = build
    return m


__all__ = ["BUILDERS", "DEFAULT_CALIB_SIZE", "DEFAULT_MAX_DROP", "TARGETS", "BuildContext",
           "BuildError", "BuildOptions", "BuildOutput", "BuildResult", "Builder",
           "build_artifact", "check_options", "get_builder", "plan_build", "resolve_export"]
