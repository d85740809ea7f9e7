"""The export pipeline: checkpoint -> validated ONNX (-> OpenVINO IR) in an artifact directory.

Stages (each timed): load, export, graph, simplify, validate, write, openvino, validate
(openvino). Nothing reaches the output until every stage has passed: the artifact is built in a
staging directory, then swapped in as a whole (``-o DIR``:
:func:`dyt_edge.artifacts.staged_directory`) or, for ``-o DIR/NAME.onnx`` (``NAME.xml`` for
OpenVINO), its files renamed into DIR one by one, the manifest last, leaving everything else in
DIR alone (:func:`dyt_edge.output_files.staged_files`). The file names come from the format's
table (:data:`formats.FORMATS`) and the -o name; the manifest's ``files`` records them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dyt_edge import artifacts, output_files
from dyt_edge._version import __version__
from dyt_edge.config import DEFAULT_DISPATCH, check_choice
from dyt_edge.errors import ConfigError, UsageError
from dyt_edge.progress import Progress

from . import formats
from .errors import ExportError
from .validation import DEFAULT_ATOL, LARGE_BATCH

DISPATCH_MODES = ("pack", "topk", "capacity", "mask", "complete")
"""As :data:`dyt_edge.config.DISPATCH_MODES`, the default first."""
# Dispatch ops every dispatcher must show in the graph, per mode (``pack`` packs attention
# sub-blocks with NonZero too, padding only their core per image).
EXPECTED_OPS = {
    "topk": ({"TopK", "GatherND", "ScatterND"},),
    "capacity": ({"TopK", "GatherND", "ScatterND"},),
    "pack": ({"NonZero", "ScatterND"},),
    "mask": (set(),),
    "complete": (set(),),
}
_TWO_GB = 2 * 1024 ** 3 - 64 * 1024 ** 2


@dataclass
class ExportOptions:
    """What to export; :meth:`checked` validates and normalises (torch-free, cheap)."""

    format: str = "onnx"
    dispatch: str = DEFAULT_DISPATCH
    capacity: Optional[float] = None
    opset: Optional[int] = None
    batch: Optional[int] = None
    """None: dynamic batch axis; an int: a static batch."""
    simplify: bool = True
    validate: bool = True
    atol: float = DEFAULT_ATOL
    large_batch: int = LARGE_BATCH
    """Images in the large validation batch."""

    def checked(self) -> "ExportOptions":
        formats.get_format(self.format)
        try:
            check_choice("dispatch mode", self.dispatch, DISPATCH_MODES)
        except ConfigError as exc:  # a flag, not a model config: a usage error (exit 2)
            raise UsageError(exc.message, exc.hint) from None
        capacity = formats.check_capacity(self.dispatch, self.capacity)
        opset = formats.check_opset(self.opset)
        if self.batch is not None and self.batch <= 0:
            raise UsageError(f"--batch must be positive, got {self.batch}")
        if not self.atol > 0:
            raise UsageError(f"--atol must be positive, got {self.atol}")
        if self.large_batch <= 0:
            raise UsageError(f"the validation batch must be positive, got {self.large_batch}")
        return ExportOptions(self.format, self.dispatch, capacity, opset, self.batch,
                             self.simplify, self.validate, self.atol, self.large_batch)


@dataclass
class ExportResult:
    path: Path
    """The artifact directory."""
    manifest: dict[str, Any]
    files: dict[str, Path]
    timings: dict[str, float]
    report: Any
    validation: Any = None
    openvino_validation: Any = None
    simplify: Any = None
    notes: list[str] = field(default_factory=list)
    cpu_timings: dict[str, float] = field(default_factory=dict)

    @property
    def artifact(self) -> artifacts.Artifact:
        """The exported artifact (its typed manifest: ``.artifact.info``)."""
        return artifacts.Artifact(self.path, self.manifest)




class _Clock:
    """Wall time per stage (``timings``) and CPU time of this process, all threads
    (``cpu_timings``: on a busy machine, the share of the work that was ours)."""

    def __init__(self, progress: Progress) -> None:
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}
        self.progress = progress

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                if clock.progress:
                    clock.progress(name)
                self.t0 = time.perf_counter()
                self.c0 = time.process_time()

            def __exit__(self, *exc):
                clock.timings[name] = round(clock.timings.get(name, 0.0)
                                            + time.perf_counter() - self.t0, 3)
                clock.cpu_timings[name] = round(clock.cpu_timings.get(name, 0.0)
                                                + time.process_time() - self.c0, 3)
                return False

        return _Stage()


def export_checkpoint(checkpoint, output=None, options: Optional[ExportOptions] = None, *,
                      overrides: Optional[dict[str, Any]] = None,
                      class_names: Any = None,
                      progress: Progress = None) -> ExportResult:
    """Export a checkpoint file (published layout or dyt-edge .safetensors).

    ``output`` defaults to ``dyt-edge-out/<checkpoint stem>/``; ``overrides`` are
    :class:`DyTConfig` fields for what the checkpoint does not say (``adapter_scale``, ...);
    ``class_names`` (a text file, one name per line, or a list) win over the names the
    checkpoint records (see :func:`dyt_edge.checkpoint.read_checkpoint`).
    """
    opts = (options or ExportOptions()).checked()
    target = output_target(Path(output) if output is not None
                           else artifacts.default_output_dir(checkpoint), opts)
    clock = _Clock(progress)
    with clock.stage("load"):
        from dyt_edge.checkpoint import read_checkpoint, training_record
        from dyt_edge.model import build_model

        loaded = read_checkpoint(checkpoint, class_names=class_names, **(overrides or {}))
        model = build_model(loaded.config, init_weights=False)
        model.load_state_dict(loaded.state_dict, strict=True)
        model.float().eval()
    source = {"path": str(Path(loaded.path).resolve()), "sha256": loaded.sha256,
              "format": loaded.format, "layout": loaded.layout,
              "provenance": dict(loaded.provenance),
              "training": training_record(loaded.metadata)}
    return export_model(model, target, opts, source=source, class_names=loaded.class_names,
                        class_names_source=loaded.class_names_source, _clock=clock)


def export_model(model, output, options: Optional[ExportOptions] = None, *,
                 source: Optional[dict[str, Any]] = None, progress: Progress = None,
                 class_names: Optional[list[str]] = None,
                 class_names_source: Optional[str] = None,
                 _clock: Optional[_Clock] = None) -> ExportResult:
    """Export an in-memory DyT model (its dispatch mode is restored afterwards).

    ``output``: an artifact directory, a model file path inside one (``out/model.onnx``), or an
    :class:`~dyt_edge.output_files.OutputTarget`. ``class_names`` (one per class, in logit
    order) go into the manifest and the model's metadata, with ``class_names_source``."""
    opts = (options or ExportOptions()).checked()
    if class_names is not None:
        from dyt_edge.class_names import checked_names

        class_names = checked_names(class_names, model.config.num_classes, "the class names")
        class_names_source = class_names_source or "given"
    classes = {"names": class_names, "source": class_names_source if class_names else None}
    target = (output if isinstance(output, output_files.OutputTarget)
              else output_target(Path(output), opts))
    clock = _clock or _Clock(progress)
    fmt = formats.get_format(opts.format)
    with model.dispatching(opts.dispatch, opts.capacity):
        return _export(model, target, opts, fmt, source or {"path": None, "sha256": None,
                                                              "format": "in-memory"}, clock,
                       classes=classes)


def output_target(output: Path, opts: ExportOptions) -> "output_files.OutputTarget":
    """Where ``-o`` sends the export, checked before any work is done: a directory (replaced as
    a whole) or a model file name inside one (only the artifact's own files written)."""
    fmt = formats.get_format(opts.format)
    target = formats.output_target(fmt, output)
    if target.is_file:
        output_files.check_output_files(target.directory,
                                     list(target.file_names(fmt.files).values()), target.stem)
    else:
        artifacts.check_output_dir(target.directory, fmt.primary)
    return target


def _staged(target: "output_files.OutputTarget", names: dict[str, str]):
    if target.is_file:
        return output_files.staged_files(target.directory, list(names.values()), target.stem)
    return artifacts.staged_directory(target.directory)


def expected_dispatch_problems(report, mode: str) -> list[str]:
    """Dispatchers whose ops do not match what ``mode`` must produce (empty when fine)."""
    problems = []
    allowed = EXPECTED_OPS[mode]
    for d in report.dispatchers:
        ops = {op for op, n in d.ops.items() if n}
        if not any(need <= ops and (need or not ops & {"TopK", "NonZero"}) for need in allowed):
            want = " or ".join("+".join(sorted(a)) or "no dispatch ops" for a in allowed)
            problems.append(f"{d.name} uses {'+'.join(sorted(ops)) or 'no dispatch ops'}, "
                            f"expected {want}")
    return problems


def _export(model, target: "output_files.OutputTarget", opts: ExportOptions, fmt, source,
            clock: _Clock, *, classes: Optional[dict[str, Any]] = None) -> ExportResult:
    from .graph_report import analyze
    from .simplify import SimplifyResult, simplify
    from .torch_onnx import export_onnx, tidy_graph
    from ..runtimes.ort_runtime import OrtModel
    from .reference import TorchReference
    from .validation import Case, RoundingScale, generated_images, make_cases, validate

    cfg = model.config
    names = cfg.dispatcher_names
    notes: list[str] = []

    with clock.stage("export"):
        proto, export_notes = export_onnx(model, opset=opts.opset, batch=opts.batch)
        notes.extend(export_notes)
    with clock.stage("graph"):
        tidy_graph(proto, names, opts.batch)
        report = analyze(proto, names)
        _check_graph(report, names, opts.dispatch)

    external = proto.ByteSize() > _TWO_GB
    # fp32 is judged by the model's own rounding: PyTorch fp32 against the model in float64 on
    # the validation cases (or, without validation, on the images simplification checks).
    reference = TorchReference(model)
    cases = make_cases(cfg, static_batch=opts.batch, large_batch=opts.large_batch)
    check = generated_images(opts.batch or 2, cfg.in_chans, cfg.img_size, seed=7)
    with clock.stage("rounding"):
        rounding = (reference.rounding(cases) if opts.validate
                    else reference.rounding([Case("simplify check", check)])
                    if opts.simplify and not external else RoundingScale(0.0, None, 0))
    sim = SimplifyResult(requested=opts.simplify)
    runner = None
    if opts.simplify and external:
        notes.append("simplification skipped: the model is over 2 GB")
    elif opts.simplify:
        with clock.stage("simplify"):
            proto, sim, runner = simplify(proto, names, check,
                                          atol=rounding.tolerance(opts.atol))
            report = analyze(proto, names)
            _check_graph(report, names, opts.dispatch)
        if sim.tool is None:
            notes.append(f"simplification: {sim.summary()}")

    meta = _metadata(cfg, opts, source, report, classes)
    with clock.stage("serialize"):
        if runner is None and not external:
            runner = OrtModel(proto)
        onnx_bytes = runner.serialized if runner is not None else b""

    validation = None
    if opts.validate:
        with clock.stage("validate"):
            if external:
                raise ExportError("models over 2 GB cannot be validated in memory yet",
                                  "pass --no-validate")
            validation = validate(runner, model,
                                  gate_biases=[d.gate_bias for d in report.dispatchers],
                                  atol=opts.atol, cases=cases, reference=reference,
                                  rounding=rounding)
            validation.notes.append(
                "the forced-gate cases override the gate biases with "
                "SessionOptions.add_initializer, which needs graph optimisations off")
        if runner is not None:
            runner.close()
        validation.raise_if_failed()
    elif runner is not None:
        runner.close()
    meta["dyt_edge.validation"] = validation.summary() if validation else "not run (--no-validate)"

    ov_validation = None
    files: dict[str, Path] = {}
    file_names = target.file_names(fmt.files)  # (`names` are the dispatchers)
    if target.is_file:
        notes.extend(output_files.check_output_files(
            target.directory, list(file_names.values()), target.stem))
    try:
        with _staged(target, file_names) as staging:
            with clock.stage("write"):
                onnx_path = staging / file_names["onnx"]
                if external:
                    _save_external(proto, onnx_path, meta)
                    files["onnx_weights"] = staging / (onnx_path.name + ".data")
                    notes.append(f"the model is over 2 GB: weights written to "
                                 f"{onnx_path.name}.data")
                else:
                    artifacts.atomic_write_bytes(onnx_path, [onnx_bytes, _metadata_tail(meta)])
                files["onnx"] = onnx_path
            if fmt.name == "openvino":
                from .openvino.ir import OpenVinoRunner, convert_exported

                with clock.stage("openvino"):
                    xml = staging / file_names["openvino"]
                    notes.extend(convert_exported(proto, report, xml, metadata=meta,
                                                  onnx_bytes=onnx_bytes, external=external))
                    files["openvino"] = xml
                    files["openvino_weights"] = staging / file_names["openvino_weights"]
                if opts.validate:
                    with clock.stage("validate (openvino)"):
                        ov_runner = OpenVinoRunner(xml, names)
                        ov_validation = validate(ov_runner, model,
                                                 gate_biases=ov_runner.overridable(),
                                                 atol=opts.atol, cases=cases,
                                                 reference=reference, rounding=rounding)
                        ov_validation.notes.append(
                            f"compiled with INFERENCE_PRECISION_HINT={ov_runner.precision()}")
                        ov_runner.close()
                    ov_validation.raise_if_failed()
            with clock.stage("manifest"):
                manifest = _manifest(cfg, opts, fmt, source, report, validation, ov_validation,
                                     sim, files, staging, notes, clock.timings,
                                     output=target.record(), classes=classes)
                artifacts.write_manifest(staging, manifest)
    except OSError as exc:
        raise artifacts.ArtifactError(
            f"cannot write the artifact to {target.directory}: {exc.strerror or exc}",
            "check free space and permissions; nothing was written") from exc
    final = {k: target.directory / p.name for k, p in files.items()}
    return ExportResult(path=target.directory, manifest=manifest, files=final,
                        timings=clock.timings, report=report, validation=validation,
                        openvino_validation=ov_validation, simplify=sim, notes=notes,
                        cpu_timings=clock.cpu_timings)


def _check_graph(report, names: list[str], mode: str) -> None:
    if len(report.dispatchers) != len(names):
        raise ExportError(f"found {len(report.dispatchers)} dispatchers in the exported graph, "
                          f"expected {len(names)}", "re-run with --debug and report it")
    problems = expected_dispatch_problems(report, mode)
    if problems:
        raise ExportError(f"the exported graph does not dispatch as '{mode}' should: "
                          f"{problems[0]}", "re-run with --debug and report it")
    if not report.gate_fp32:
        bad = next(d for d in report.dispatchers if not d.gate_fp32)
        raise ExportError(f"the gate path of {bad.name} is not fp32 in the graph",
                          "re-run with --debug and report it")


def _metadata(cfg, opts: ExportOptions, source, report,
              classes: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """ONNX metadata_props / OpenVINO rt_info: flat string key/values (``dyt_edge.class_names``,
    a JSON list, only when the class names are known)."""
    inp = report.inputs[0] if report.inputs else {}
    meta = {
        "dyt_edge.version": __version__,
        "dyt_edge.source.path": str(source.get("path")),
        "dyt_edge.source.sha256": str(source.get("sha256")),
        "dyt_edge.config": json.dumps(cfg.to_dict(), sort_keys=True),
        "dyt_edge.variant": cfg.variant,
        "dyt_edge.adapter": cfg.adapter_kind,
        "dyt_edge.dispatch": opts.dispatch,
        "dyt_edge.capacity": "" if opts.capacity is None else f"{opts.capacity:g}",
        "dyt_edge.opset": str(opts.opset),
        "dyt_edge.batch": "dynamic" if opts.batch is None else str(opts.batch),
        "dyt_edge.preprocessing": json.dumps(cfg.preprocessing.to_dict(), sort_keys=True),
        "dyt_edge.input": json.dumps(inp),
        "dyt_edge.outputs": json.dumps(report.outputs),
        "dyt_edge.dispatchers": json.dumps(cfg.dispatcher_names),
    }
    names = (classes or {}).get("names")
    if names:
        meta["dyt_edge.class_names"] = json.dumps(list(names))
    return meta


def _metadata_tail(meta: dict[str, str]) -> bytes:
    """``metadata_props`` as a serialised ModelProto fragment. Protobuf parsing merges
    concatenated messages (repeated fields append), so appending this to the serialised model
    adds the entries without serialising the weights a second time."""
    import onnx

    frag = onnx.ModelProto()
    for k, v in meta.items():
        entry = frag.metadata_props.add()
        entry.key, entry.value = k, v
    return frag.SerializeToString()


def _save_external(proto, path: Path, meta: dict[str, str]) -> None:
    import onnx

    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data")


def _manifest(cfg, opts, fmt, source, report, validation, ov_validation, sim, files, staging,
              notes, timings, *, output: Optional[dict[str, Any]] = None,
              classes: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    file_info = {}
    for kind, path in files.items():
        p = staging / path.name
        file_info[kind] = {"path": path.name, "bytes": p.stat().st_size,
                           "sha256": artifacts.file_sha256(p)}
    slots = None
    if opts.dispatch == "capacity":
        slots = [cfg.capacity_slots(opts.capacity)] * cfg.num_dispatchers
    return artifacts.new_manifest(
        format=fmt.name,
        files=file_info,
        output=output or {"mode": "directory"},
        source=source,
        model=cfg.to_dict(),
        class_names=list((classes or {}).get("names") or []) or None,
        class_names_source=(classes or {}).get("source"),
        variant=cfg.variant,
        adapter=cfg.adapter_kind,
        dispatch={"mode": opts.dispatch, "capacity": opts.capacity, "capacity_slots": slots,
                  "dispatchers": cfg.dispatcher_names},
        opset=opts.opset,
        batch="dynamic" if opts.batch is None else opts.batch,
        preprocessing=cfg.preprocessing.to_dict(),
        inputs=report.inputs,
        outputs=report.outputs,
        simplify=sim.to_dict(),
        validation=validation.to_dict() if validation else None,
        openvino=({"compress_to_fp16": False, "inference_precision": "f32",
                   "validation": ov_validation.to_dict() if ov_validation else None}
                  if fmt.name == "openvino" else None),
        graph_report=report.to_dict(),
        timings=dict(timings),
        notes=list(notes),
    )
