"""The complete-model baseline: what every DyT speedup is measured against.

``baseline_artifact(art, target)`` returns an artifact of the *same* checkpoint with
dispatch ``complete`` (every token through every block: the cost of the plain ViT plus its
adapters), made the way ``art`` was made, so that ``bench`` can time both on the same runtime
at the same precision:

* a plain export -> an export of the checkpoint recorded in ``art``'s manifest
  (``source.path``, its SHA-256 checked against ``source.sha256``) with dispatch ``complete``
  and the same opset, batch axis, simplification, validation and model config (overrides such as
  ``--adapter-scale`` included); format ``openvino`` when the target is OpenVINO or ``art``'s
  export holds OpenVINO IR, else ``onnx`` (a cached ``openvino`` export, which holds the ONNX
  too, serves every target: benching an OpenVINO export on ONNX Runtime first does not make
  the complete model twice). Cached at ``<export dir>/baseline/``;
* a built artifact (its manifest has ``build``) -> the same build (target, precision, and for
  INT8 the recorded calibration data, size and seed) applied to that baseline export, cached at
  ``<export dir>/baseline/<target>-<precision>/``.

A cache entry is reused while its manifest's ``baseline`` record matches (checkpoint SHA-256,
export options, build settings and the SHA-256 of the model it was built from), and re-created
otherwise. Every directory is written atomically (``export_checkpoint`` and the build stage it
and swap it in; the baseline record is then added to its manifest, also atomically), so an
interrupted run leaves the previous baseline or none; a directory without the record is not
trusted and is re-created. The record also keeps baselines out of "the most recent export"
searches (:func:`dyt_edge.artifacts.find_artifacts`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .artifacts import Artifact, ArtifactError, file_sha256, load_artifact, write_manifest
from .errors import DytEdgeError
from .manifest import Build
from .progress import Progress

BASELINE_DIR = "baseline"
BASELINE_KEY = "baseline"
"""Manifest key marking (and describing) a baseline artifact."""
RECORD_VERSION = 1


class BaselineError(DytEdgeError):
    """The complete baseline cannot be made (no checkpoint, a changed checkpoint, ...)."""


NO_BASELINE_HINT = "pass --no-baseline to benchmark without the complete model"


def export_dir_of(art: Artifact) -> Path:
    """The export directory ``art`` belongs to: itself, or the parent a build records."""
    build = art.info.build
    if not build:
        return art.path
    parent = art.parent_export
    if parent is None:
        raise BaselineError(f"the build {art.path} does not record the export it came from",
                            NO_BASELINE_HINT)
    return parent


def baseline_artifact(art: Artifact, target: str, *, calib_data: Optional[str] = None,
                      calib_size: Optional[int] = None, calib_seed: Optional[int] = None,
                      log: Progress = None, export_progress: Progress = None) -> Artifact:
    """The complete model matching ``art`` for ``target`` (see the module docstring).

    A build is repeated at its recorded target and precision. ``calib_*`` override the
    recorded INT8 calibration settings (default: the ones in ``art``'s manifest). ``log``
    receives one line per decision ("baseline: ...").
    ``export_progress`` receives the export and build stages as they start. An artifact that
    is itself ``complete`` is its own baseline.
    """
    say = log or (lambda _msg: None)
    info = art.info
    if info.dispatch.mode == "complete":
        say(f"baseline: {art.path} already runs the complete model; it is its own baseline")
        return art
    build = info.build
    export_dir = export_dir_of(art)
    parent = art if not build else _load_parent(export_dir, art)
    fmt = "openvino" if target == "openvino" or (build and build.target == "openvino") \
        or "openvino" in parent.kinds else "onnx"
    exported = _baseline_export(parent, export_dir / BASELINE_DIR, fmt, say, export_progress)
    if not build:
        return exported
    return _baseline_build(art, exported, build, calib_data, calib_size, calib_seed, say,
                           export_progress)


# -- the export ---------------------------------------------------------------------------------

def _load_parent(export_dir: Path, art: Artifact) -> Artifact:
    try:
        return load_artifact(export_dir)
    except ArtifactError as exc:
        raise BaselineError(f"the export {art.path} was built from is gone ({exc.message})",
                            NO_BASELINE_HINT) from None


def _checkpoint(parent: Artifact) -> Path:
    source = parent.info.source
    path, want = source.path, source.sha256
    if not path:
        raise BaselineError(f"{parent.path} records no checkpoint (it was exported from an "
                            "in-memory model), so the complete baseline cannot be exported",
                            NO_BASELINE_HINT)
    p = Path(path)
    if not p.is_file():
        raise BaselineError(f"the complete baseline is exported from the checkpoint {p}, which "
                            "is missing", f"put it back at that path, or {NO_BASELINE_HINT}")
    got = file_sha256(p)
    if want and got != want:
        raise BaselineError(f"the checkpoint {p} changed since {parent.path} was exported "
                            f"(sha256 {got[:12]}..., the manifest records {str(want)[:12]}...)",
                            f"re-export the artifact from it, or {NO_BASELINE_HINT}")
    return p


def _export_record(parent: Artifact) -> dict[str, Any]:
    info = parent.info
    return {
        "version": RECORD_VERSION,
        "of": str(parent.path.resolve()),
        "checkpoint_sha256": info.source.sha256,
        "model": info.model,
        "opset": info.opset,
        "batch": "dynamic" if info.batch is None else info.batch,
        "simplify": bool(info.section("simplify").get("requested", True)),
        "validate": bool(info.section("validation")),
    }


def _cached(directory: Path, record: dict[str, Any], keys: tuple[str, ...],
            kinds: Optional[tuple[str, ...]]) -> Optional[Artifact]:
    """The artifact at ``directory`` when its baseline record matches ``record`` on ``keys``
    and its model files of ``kinds`` (None: every file it lists) exist; None otherwise."""
    try:
        cached = load_artifact(directory)
        info = cached.info
    except ArtifactError:
        return None
    have = info.section(BASELINE_KEY)
    if any(have.get(k) != record.get(k) for k in keys):
        return None
    for kind in (tuple(info.files) if kinds is None else kinds):
        entry = info.files.get(kind)
        if entry is None or not (cached.path / entry.path).is_file():
            return None
    return cached


_EXPORT_KEYS = ("version", "checkpoint_sha256", "model", "opset", "batch", "simplify",
                "validate")


def _baseline_export(parent: Artifact, out: Path, fmt: str, say: Callable[[str], None],
                     export_progress: Optional[Callable[[str], None]]) -> Artifact:
    record = _export_record(parent)
    kinds = ("onnx", "openvino") if fmt == "openvino" else ("onnx",)
    cached = _cached(out, record, _EXPORT_KEYS, kinds)
    if cached is not None:
        say(f"baseline: using the cached complete model at {out}")
        return cached
    checkpoint = _checkpoint(parent)
    say(f"baseline: exporting the complete model from {checkpoint} "
        f"({fmt}, cached at {out}/)")
    from .exporters.pipeline import ExportOptions, export_checkpoint

    info = parent.info
    options = ExportOptions(format=fmt, dispatch="complete", opset=info.opset, batch=info.batch,
                            simplify=record["simplify"], validate=record["validate"])
    result = export_checkpoint(checkpoint, out, options, overrides=_overrides(info.model),
                               progress=export_progress)
    if _model_record(result.artifact.info.model) != _model_record(info.model):
        raise BaselineError(f"the complete model exported from {checkpoint} differs from the "
                            f"one in {parent.path} (model config)",
                            f"re-export the artifact, or {NO_BASELINE_HINT}")
    manifest = _plain(result.manifest)
    manifest[BASELINE_KEY] = {**record, "format": fmt}
    write_manifest(out, manifest)
    return Artifact(out, manifest)


def _overrides(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded model config as checkpoint-loader overrides (so a value that came from
    ``--adapter-scale`` at export time is used again)."""
    model = dict(recorded)
    if model.get("adapter_scale_learnable"):
        model.pop("adapter_scale", None)  # learned: the weights hold it
    return model


# -- the build ----------------------------------------------------------------------------------

def _calibration(build: Build, data: Optional[str], size: Optional[int],
                 seed: Optional[int]) -> dict[str, Any]:
    """The INT8 calibration settings to repeat: the recorded data, size (as requested), seed
    and accuracy-control bound, unless overridden."""
    calib = build.record.get("calibration") or {}
    control = calib.get("accuracy_control") or {}
    out = {"data": data if data is not None else calib.get("data"),
           "size": size if size is not None else calib.get("size"),
           "seed": seed if seed is not None else calib.get("seed", 0),
           "max_drop": control.get("max_drop")}
    if build.target == "openvino":
        # the settings the DyT build resolved (builds before these flags: SmoothQuant on,
        # attention quantized, float parts fp32)
        q = calib.get("quantization") or {}
        out.update(smooth_quant="on" if q.get("smooth_quant", True) else "off",
                   float_attention=bool(q.get("float_attention", False)),
                   float_parts=build.record.get("float_parts") or "fp32")
    return out


def _baseline_build(art: Artifact, exported: Artifact, build: Build,
                    calib_data: Optional[str], calib_size: Optional[int],
                    calib_seed: Optional[int], say: Callable[[str], None],
                    progress: Optional[Callable[[str], None]]) -> Artifact:
    # The same build as the DyT artifact's (the runtime then applies the same precision to
    # both).
    target, prec = build.target, build.precision
    out = exported.path / f"{target}-{prec}"
    onnx = exported.info.files.get("onnx")
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "of": str(art.path.resolve()),
        "target": target,
        "precision": prec,
        "source_model": onnx.sha256 if onnx is not None else None,
    }
    if target == "tensorrt":
        # the same GPU, batch profile and workspace as the DyT engine (timed the same way)
        engine = build.record
        batch = engine.get("batch") or {}
        record["tensorrt"] = {
            "gpu": (engine.get("gpu") or {}).get("profile"),
            "batch": None if batch.get("static") or not batch else
            f"{batch['min']}:{batch['opt']}:{batch['max']}",
            "workspace": engine.get("workspace_gib"),
            "version": (engine.get("tensorrt") or {}).get("version")}
    if prec == "int8":
        record["calibration"] = _calibration(build, calib_data, calib_size, calib_seed)
        if not record["calibration"]["data"]:
            raise BaselineError(f"the INT8 build {art.path} records no calibration data, so "
                                "its complete baseline cannot be calibrated the same way",
                                NO_BASELINE_HINT)
    keys = ("version", "target", "precision", "source_model", "calibration", "tensorrt")
    cached = _cached(out, record, keys, None)
    if cached is not None:
        say(f"baseline: using the cached complete {target} {prec} build at {out}")
        return cached
    what = f"{target} {prec}"
    if prec == "int8":
        c = record["calibration"]
        what += f", calibrated on {c['data']} ({c['size']} images, seed {c['seed']})"
    say(f"baseline: building the complete model ({what}, cached at {out}/)")
    built = _run_build(exported, target, prec, record.get("calibration"), out, progress,
                       record.get("tensorrt"))
    manifest = _plain(built.manifest)
    manifest[BASELINE_KEY] = record
    write_manifest(built.path, manifest)
    return Artifact(built.path, manifest)


def _run_build(exported: Artifact, target: str, precision: str,
               calibration: Optional[dict[str, Any]], out: Path,
               progress: Optional[Callable[[str], None]],
               tensorrt: Optional[dict[str, Any]] = None) -> Artifact:
    """:func:`dyt_edge.build.build_artifact` applied to the baseline export."""
    from .build import build_artifact

    kwargs: dict[str, Any] = {"precision": precision, "output": out, "progress": progress}
    if tensorrt:
        kwargs.update(gpu=tensorrt.get("gpu"), batch=tensorrt.get("batch"),
                      workspace=tensorrt.get("workspace"))
    if calibration:
        kwargs.update(calib=calibration["data"], calib_size=calibration["size"],
                      calib_seed=int(calibration["seed"] or 0))
        if calibration.get("max_drop") is not None:
            kwargs.update(accuracy_control=True, max_drop=calibration["max_drop"])
        kwargs.update({k: calibration[k] for k in ("smooth_quant", "float_attention",
                                                   "float_parts") if k in calibration})
    return build_artifact(exported, target, **kwargs).artifact


def _model_record(model: Any) -> Any:
    """A manifest's ``model`` record as this version writes it, so that a record written by an
    earlier version (one without keys added since, such as the preprocessing's
    ``resize_mode``) compares equal to the same model exported now."""
    from .config import DyTConfig
    from .errors import ConfigError

    try:
        return _plain(DyTConfig.from_dict(model).to_dict())
    except (ConfigError, TypeError, ValueError):
        return _plain(model)


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ...)."""
    import json

    from .reports import json_default

    return json.loads(json.dumps(value, default=json_default))


