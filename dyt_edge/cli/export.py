"""``dyt-edge export``: a checkpoint -> a validated ONNX graph (or OpenVINO IR) that really skips
tokens, with its manifest and graph report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (AdapterLayerNorm, AdapterScale, CheckpointArg, ClassNamesFile, ImgSize,
                      JsonOut, NumHeads, Preproc, check_json_out, emit_json, human_console,
                      json_stdout_guard, model_overrides, size_text)

EXPORT_PANEL = "Export"
_FORMATS = "onnx | openvino"
_MODES = "pack | topk | capacity | mask | complete"


def export(
    checkpoint: CheckpointArg,
    format_: Annotated[Optional[str], typer.Option(
        "--format", "-f", show_default=False,
        help=f"Artifact format: {_FORMATS}. \\[default: onnx]",
        rich_help_panel=EXPORT_PANEL)] = None,
    dispatch: Annotated[Optional[str], typer.Option(
        "--dispatch", show_default=False,
        help=f"How token skipping runs in the graph: {_MODES}. pack: the batch's active "
        "tokens packed into one matrix (NonZero / GatherND / ScatterND), a batch costs its mean "
        "activation; topk: TopK / GatherND / ScatterND per image with K = the batch's largest "
        "active count (a batch costs its busiest image); capacity: static K per layer (needs "
        "--capacity); mask: dense exact reference; complete: every token (the baseline). "
        "\\[default: pack]", rich_help_panel=EXPORT_PANEL)] = None,
    capacity: Annotated[Optional[float], typer.Option(
        "--capacity", help="capacity mode: fraction of patch tokens each dispatcher keeps, "
        "in (0, 1].", rich_help_panel=EXPORT_PANEL)] = None,
    opset: Annotated[Optional[int], typer.Option(
        "--opset", show_default=False,
        help="ONNX opset, 18-20 (what TensorRT 10.x and OpenVINO both parse). \\[default: 18]",
        rich_help_panel=EXPORT_PANEL)] = None,
    batch: Annotated[Optional[str], typer.Option(
        "--batch", show_default=False,
        help="'dynamic' (one file for every batch size) or a static batch N. "
        "\\[default: dynamic]", rich_help_panel=EXPORT_PANEL)] = None,
    simplify: Annotated[Optional[bool], typer.Option(
        "--simplify/--no-simplify", show_default=False,
        help="Simplify with onnxsim (onnxslim as fallback), outputs re-checked. "
        "\\[default: simplify]", rich_help_panel=EXPORT_PANEL)] = None,
    validate: Annotated[Optional[bool], typer.Option(
        "--validate/--no-validate", show_default=False,
        help="Run the exported graph against the PyTorch model (batch 1, a large mixed batch, "
        "no / all tokens active) and fail on a mismatch. \\[default: validate]",
        rich_help_panel=EXPORT_PANEL)] = None,
    atol: Annotated[Optional[float], typer.Option(
        "--atol", show_default=False, help="Floor of the validation tolerance on the logits "
        "(fp32); the tolerance is 4 x PyTorch fp32's own error against the model in float64 "
        "when that is larger. \\[default: 1e-4]", rich_help_panel=EXPORT_PANEL)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", show_default=False,
        help="Where to write: a directory (the artifact, replaced as a whole), or a model file "
        "name in one, e.g. out/model.onnx (out/model.xml for --format openvino: model.bin and "
        "model.onnx go beside it): then only the artifact's own files in out/ are written or "
        "replaced, the rest of out/ is left alone. \\[default: dyt-edge-out/<checkpoint "
        "stem>/]", rich_help_panel=EXPORT_PANEL)] = None,
    json_out: JsonOut = None,
    adapter_scale: AdapterScale = None,
    adapter_layernorm: AdapterLayerNorm = None,
    num_heads: NumHeads = None,
    img_size: ImgSize = None,
    preprocessing: Preproc = None,
    class_names: ClassNamesFile = None,
) -> None:
    """Export a checkpoint to ONNX (or OpenVINO IR) whose token dispatch really skips work.

    The graph computes each gate in fp32, finds the batch's active tokens (NonZero), gathers
    them into one [M, C] matrix (GatherND), runs the MLP on it and scatters the results back
    (ScatterND), so a batch costs its mean activation at any batch size. One file serves every
    batch size. The export is validated against the PyTorch model in ONNX Runtime (and
    OpenVINO), judged by the model's own fp32 rounding, and a manifest (dyt_edge.json) with the
    graph report is written beside it.
    """
    from dyt_edge.config import DEFAULT_DISPATCH
    from dyt_edge.exporters import formats
    from dyt_edge.exporters.pipeline import ExportOptions

    fmt = formats.get_format(format_ or "onnx")
    formats.check_options(fmt, {"dispatch": dispatch, "capacity": capacity, "opset": opset,
                                "batch": batch, "simplify": simplify, "validate": validate,
                                "atol": atol})
    options = ExportOptions(
        format=fmt.name, dispatch=dispatch or DEFAULT_DISPATCH, capacity=capacity, opset=opset,
        batch=formats.parse_batch(batch), simplify=True if simplify is None else simplify,
        validate=True if validate is None else validate,
        atol=1e-4 if atol is None else atol).checked()
    overrides = model_overrides(adapter_scale, adapter_layernorm, num_heads, img_size,
                                preprocessing)
    _check_checkpoint_path(checkpoint)
    json_out = check_json_out(json_out, "export.json")

    from rich.console import Console

    from dyt_edge.exporters.errors import ValidationError
    from dyt_edge.exporters.pipeline import export_checkpoint

    err = Console(stderr=True)
    console = human_console(json_out)
    with json_stdout_guard(json_out):
        try:
            with err.status("exporting") as status:
                result = export_checkpoint(
                    checkpoint, output, options, overrides=overrides, class_names=class_names,
                    progress=lambda stage: status.update(f"{stage}..."))
        except ValidationError as exc:
            if exc.result is not None:
                render_validation(exc.result, console)
            raise
        render(result, console)
    emit_json(json_out, result.manifest)


def _check_checkpoint_path(path: Path) -> None:
    from dyt_edge.errors import CheckpointError

    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", "check the path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file",
                              "pass the .pth/.pt/.safetensors file")


def render(result: Any, console: Any = None) -> None:
    from rich.table import Table

    from dyt_edge.artifacts import MANIFEST_NAME
    from dyt_edge.exporters.graph_report import dispatch_summary
    from dyt_edge.exporters.graph_report import render as render_report

    if console is None:
        from rich.console import Console

        console = Console()
    info = result.artifact.info
    batch = "dynamic batch" if info.batch is None else f"static batch {info.batch}"
    d = info.dispatch
    disp = d.mode + (f" {d.capacity:g}" if d.capacity else "")
    console.print(f"[bold green]exported[/] {result.path}/  ({info.format}, {info.variant}, "
                  f"dispatch {disp}, opset {info.opset}, {batch})")
    files = Table(show_header=False, box=None, pad_edge=False)
    files.add_column()
    files.add_column(justify="right")
    for entry in info.files.values():
        files.add_row(f"  {entry.path}", size_text(entry.bytes))
    manifest = result.path / MANIFEST_NAME
    files.add_row(f"  {MANIFEST_NAME}", size_text(manifest.stat().st_size) if manifest.exists()
                  else "")
    console.print(files)
    report = info.section("graph_report")
    console.print(f"[bold]dispatch ops[/]: {dispatch_summary(report)}; gate path "
                  f"fp32: {'yes' if report['gate_fp32'] else 'NO'}")
    render_report(report, console)
    console.print(f"[bold]simplify[/]: {result.simplify.summary()}")
    if result.validation is not None:
        render_validation(result.validation, console)
    else:
        console.print("[bold]validation[/]: [yellow]not run (--no-validate)[/]")
    if result.openvino_validation is not None:
        render_validation(result.openvino_validation, console)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print("[bold]timings[/]: " + ", ".join(f"{k} {v:.1f} s"
                                                  for k, v in result.timings.items()))


def render_validation(v: Any, console) -> None:
    from rich.table import Table

    table = Table(title=f"Validation on {v.runtime} vs {v.reference}, atol {v.atol:.2g} "
                  f"({v.tolerance_source})", title_justify="left")
    for col in ("case", "images", "max diff", "vs mask", "vs float64", "PyTorch vs float64",
                "gate decisions", "tokens active", "status"):
        table.add_column(col, justify="left" if col in ("case", "status") else "right")
    for c in v.cases:
        if c.skipped:
            table.add_row(c.name, str(c.batch), "-", "-", "-", "-", "-", "-",
                          f"skipped: {c.skipped}")
            continue
        per_image = c.decisions // max(c.batch, 1)
        active = (f"{min(c.active_per_image) / per_image:.0%}-"
                  f"{max(c.active_per_image) / per_image:.0%}"
                  if c.active_per_image and per_image else "-")
        decisions = f"{c.decisions - c.mask_mismatches}/{c.decisions} equal"
        if c.near_ties:
            decisions += f" ({c.near_ties} tie)"
        if c.overflow_images:
            active += f", {c.overflow_images} overflow"
        table.add_row(c.name, str(c.batch), _sci(c.max_diff), _sci(c.max_diff_vs_mask),
                      _sci(c.max_diff_vs_float64), _sci(c.reference_error), decisions,
                      active, "[green]ok[/]" if c.passed else "[red]FAILED[/]")
    console.print(table)
    style = "green" if v.passed else "red"
    console.print(f"[bold]validation[/]: [{style}]{v.summary()}[/]")
    for f in v.failures:
        console.print(f"  [red]-[/] {f}")
    for n in v.notes:
        console.print(f"  [yellow]note:[/] {n}")


def _sci(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2e}"
