"""``dyt-edge build``: an export -> a deployment artifact for a target and precision (OpenVINO
IR f32 / bf16 / fp16, or NNCF INT8 with the dispatch path kept in float; TensorRT engines at
fp32 / fp16 / int8 for one GPU). The library is :mod:`dyt_edge.build` (TensorRT:
:mod:`dyt_edge.exporters.tensorrt.builder`)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Mapping, Optional

import typer

from .options import JsonOut, check_json_out, emit_json, human_console, size_text

if TYPE_CHECKING:  # pragma: no cover
    from ..manifest import Manifest

INT8_PANEL = "INT8 calibration"
TRT_PANEL = "TensorRT (--target tensorrt)"


def build(
    artifact: Annotated[Optional[Path], typer.Argument(
        help="Export directory (or a model file in it). Default: the most recent export "
        "under dyt-edge-out/.", show_default=False)] = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", show_default=False,
        help="openvino | tensorrt. Required.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", "-p", show_default=False,
        help="fp32 | fp16 | bf16 | int8. fp16 also stores the weights as fp16 (gates stay "
        "fp32); int8 quantizes (OpenVINO: NNCF; TensorRT: explicit Q/DQ), keeping the "
        "dispatch path, LayerNorm, Softmax and GELU in float. TensorRT: fp32 | fp16 | int8. "
        "\\[default: fp32]")] = None,
    calib: Annotated[Optional[str], typer.Option(
        "--calib", show_default=False, rich_help_panel=INT8_PANEL,
        help="Calibration images: an ImageFolder directory, an .npz (images[, labels]) or "
        "'digits'. Required for int8, except for the digits demo model (default: its training "
        "split). Preprocessed per the export's manifest.")] = None,
    calib_size: Annotated[Optional[int], typer.Option(
        "--calib-size", show_default=False, rich_help_panel=INT8_PANEL,
        help="Calibration images to use (a deterministic subset). \\[default: 300]")] = None,
    accuracy_control: Annotated[bool, typer.Option(
        "--accuracy-control", rich_help_panel=INT8_PANEL,
        help="NNCF accuracy-controlled quantization: layers go back to float until the top-1 "
        "accuracy on the (labelled) calibration images drops by at most --max-drop.")] = False,
    max_drop: Annotated[Optional[float], typer.Option(
        "--max-drop", show_default=False, rich_help_panel=INT8_PANEL,
        help="With --accuracy-control: the largest allowed top-1 drop, in percentage points, "
        "in (0, 100]. \\[default: 1]")] = None,
    smooth_quant: Annotated[Optional[str], typer.Option(
        "--smooth-quant", show_default=False, rich_help_panel=INT8_PANEL,
        help="OpenVINO: NNCF SmoothQuant, auto | on | off. auto quantizes without it (faster: "
        "it puts a scale in front of every MatMul) and again with it when the INT8 model "
        "agrees with the float one on under 99% of the calibration images' top-1. "
        "\\[default: auto]")] = None,
    float_attention: Annotated[Optional[bool], typer.Option(
        "--float-attention/--quantize-attention", show_default=False,
        rich_help_panel=INT8_PANEL,
        help="OpenVINO: keep the attention core (softmax(q k^T) v) float, or quantize its "
        "inputs. \\[default: float when --float-parts is below fp32, else quantized]")] = None,
    float_parts: Annotated[Optional[str], typer.Option(
        "--float-parts", show_default=False, rich_help_panel=INT8_PANEL,
        help="OpenVINO: precision of what INT8 leaves float (LayerNorm, Softmax, GELU, residual "
        "adds; the gates stay f32 whatever it is), auto | fp32 | bf16 | fp16, recorded in the "
        "artifact (runtimes fall back to fp32 on a CPU without it). auto: bf16 where this "
        "machine's CPU has it, else fp32. \\[default: auto]")] = None,
    gpu: Annotated[Optional[str], typer.Option(
        "--gpu", show_default=False, rich_help_panel=TRT_PANEL,
        help="auto | t4 | v100 | a10 | a2 | a30 | a100 | l4 | l40s | h100 | h200. The GPU the "
        "engine is for; it must be the one present (engines are not portable), except with "
        "--dry-run. \\[default: auto (detect)]")] = None,
    batch: Annotated[Optional[str], typer.Option(
        "--batch", show_default=False, rich_help_panel=TRT_PANEL,
        help="Batch optimization profile MIN:OPT:MAX (one number N: N:N:N); kernels are tuned "
        "for OPT. \\[default: 1:8:32]")] = None,
    workspace: Annotated[Optional[float], typer.Option(
        "--workspace", show_default=False, rich_help_panel=TRT_PANEL,
        help="Builder workspace limit in GiB. \\[default: 4]")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(
        "--timing-cache", show_default=False, rich_help_panel=TRT_PANEL,
        help="Timing cache file: loaded when it exists, saved after the build (faster "
        "rebuilds on the same GPU and TensorRT).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", rich_help_panel=TRT_PANEL,
        help="Print the plan and build nothing: the ONNX's TensorRT compatibility, GPU and "
        "TensorRT checks, profile, workspace, conversions, dispatch advice and the "
        "equivalent trtexec command. Works without a GPU or TensorRT.")] = False,
    onnx_only: Annotated[bool, typer.Option(
        "--onnx-only", rich_help_panel=TRT_PANEL,
        help="Stop before TensorRT: write the artifact with the converted graph (fp16: FP16, "
        "int8: calibrated Q/DQ) as model.onnx, its ONNX Runtime parity with the export and the "
        "trtexec command, but no engine. Works without a GPU or TensorRT (name the GPU with "
        "--gpu); check it with dyt-edge validate DIR --target onnxruntime.")] = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", show_default=False,
        help="Artifact directory to write (replaced as a whole). \\[default: <export "
        "dir>/<target>-<precision>/; TensorRT: <export dir>/tensorrt-<gpu>-<precision>/]")
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Build a deployment artifact from an export: OpenVINO IR at fp32 / bf16 / fp16, or INT8.

    INT8 runs NNCF post-training quantization (transformer model type, symmetric quantizers)
    calibrated on --calib, with every dispatcher's gate (MatMul, Sigmoid, compare), the
    TopK / gather / scatter dispatch and its index arithmetic, LayerNorm, Softmax, GELU and the
    residual adds left in float. Afterwards the INT8 model is compared with the float one on
    the calibration images (top-1 and gate-decision agreement). The result is a full artifact
    directory with its own manifest; validate and bench it like any other.

    TensorRT (--target tensorrt): an engine for one GPU (build it on that GPU), from a strongly
    typed network parsed from an ONNX with explicit precisions (fp32: the export's; fp16 / int8:
    converted on the CPU and kept as model.onnx, so ONNX Runtime can validate it). --dry-run
    prints the plan and the equivalent trtexec command without a GPU or TensorRT; --onnx-only
    writes the converted model.onnx (no engine) without them, to validate on ONNX Runtime.
    """
    from dyt_edge.exporters.builder import BuildOptions
    from dyt_edge.exporters.registry import check_options, get_builder
    from dyt_edge.errors import UsageError

    if target is None:
        raise UsageError("--target is required", "e.g. --target openvino")
    trt_options = dict(gpu=gpu, batch=batch, workspace=workspace, timing_cache=timing_cache,
                       dry_run=dry_run, onnx_only=onnx_only)
    ov_options = dict(smooth_quant=smooth_quant, float_attention=float_attention,
                      float_parts=float_parts)
    opts = BuildOptions(target=target, precision=precision, calib=calib, calib_size=calib_size,
                        accuracy_control=accuracy_control, max_drop=max_drop,
                        output=output, **trt_options, **ov_options)
    opts = check_options(opts)
    get_builder(opts.target).check(opts)
    json_out = check_json_out(json_out, "build.json")

    from rich.console import Console

    from dyt_edge.build import build_artifact, plan_build

    err = Console(stderr=True)
    kwargs: dict[str, Any] = dict(precision=opts.precision, calib=calib, calib_size=calib_size,
                                  accuracy_control=accuracy_control, max_drop=max_drop,
                                  output=output)
    if opts.target == "openvino":
        kwargs.update(smooth_quant=opts.smooth_quant, float_attention=float_attention,
                      float_parts=opts.float_parts)
    if opts.target == "tensorrt":
        kwargs.update(gpu=gpu, batch=batch, workspace=workspace, timing_cache=timing_cache)
        if onnx_only:
            kwargs["onnx_only"] = True
    if dry_run:
        with contextlib.redirect_stdout(sys.stderr):
            plan = plan_build(artifact, opts.target, progress=err.print, **kwargs)
        _print_plan(plan, json_out)
        return

    # Progress goes to stderr: a transient spinner (nothing is left behind, so a bad input
    # still ends in exactly one line), then NNCF's own progress bars while it quantizes (NNCF
    # draws them on stdout: redirected to stderr too, so --json - output stays clean).
    blocked = failure = None
    with contextlib.redirect_stdout(sys.stderr), err.status("building") as status:
        stopped = []

        def progress(stage: str) -> None:
            if stage.startswith("using the most recent export"):
                err.print(stage)
            elif stage.startswith("quantizing"):
                status.stop()
                stopped.append(True)
                err.print(f"{stage}...")
            else:
                status.update(f"{stage}...")
                if stopped:
                    status.start()
                    stopped.clear()

        try:
            result = build_artifact(artifact, opts.target, progress=progress, **kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised below
            blocked = getattr(error, "plan", None)
            if blocked is None:
                raise
            failure = error
    if blocked is not None:
        _print_plan(blocked, json_out)  # what it would have done, then the one-line error
        raise failure
    render(result, human_console(json_out))
    emit_json(json_out, {"path": str(result.path), "source": str(result.source.path),
                         "picked": result.picked, "build": result.build})


def _print_plan(plan: Any, json_out: Optional[Path]) -> None:
    """The plan's tables (stdout, or stderr with ``--json -``), then its JSON per ``--json``."""
    from dyt_edge.exporters.tensorrt.plan import render as render_plan

    render_plan(plan, human_console(json_out, soft_wrap=True))
    emit_json(json_out, plan.to_dict())


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}%"


def render(result: Any, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    info = result.artifact.info
    b = info.build.record
    if info.build.target == "tensorrt":
        render_tensorrt(result, console)
        return
    size = sum(f.bytes for f in info.files.values())
    console.print(f"[bold green]built[/] {result.path}/  ({b['target']} {b['precision']}, "
                  f"from {result.source.path})")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("target", f"{b['target']} (OpenVINO {b['tools'].get('openvino', '?')}"
                  + (f", NNCF {b['tools']['nncf']}" if "nncf" in b["tools"] else "") + ")"
                  if b["target"] == "openvino" else b["target"])
    gates = (f"; gates f32 in the IR ({len(b['f32_gates'])} as Multiply + ReduceSum)"
             if b.get("f32_gates") else "")
    table.add_row("precision", f"{b['precision']} (weights {b.get('weights', '?')}, runtimes "
                  f"set INFERENCE_PRECISION_HINT={b.get('inference_precision', '?')}"
                  + (f": float parts {b['float_parts']}" if b.get("float_parts") else "")
                  + f"{gates})")
    table.add_row("model", f"{', '.join(f.path for f in info.files.values())} "
                  f"({size_text(size)}); float IR: {b.get('source_ir', '?')}")
    table.add_row("source", f"{b['source_model']['file']} sha256 "
                  f"{b['source_model']['sha256'][:12]}...")
    cal = b.get("calibration")
    if cal:
        skipped = f", {cal['skipped']} unreadable skipped" if cal.get("skipped") else ""
        split = f" ({cal['split']} split)" if cal.get("split") else ""
        table.add_row("calibration", f"{cal['name']}{split}: {cal['images']} images "
                      f"(asked {cal['size']}, seed {cal['seed']}{skipped})")
        scope = cal["ignored_scope"]
        reasons = ", ".join(f"{k} {v}" for k, v in scope["by_reason"].items())
        table.add_row("kept float", f"{scope['nodes']} nodes: {reasons}")
        q = cal["quantization"]
        sq = "on" if q.get("smooth_quant") else "off"
        if q.get("smooth_quant_mode") == "auto":
            sq += " (auto)"
        table.add_row("quantizers", f"{q['fake_quantize_nodes']} FakeQuantize (symmetric, "
                      f"transformer preset); SmoothQuant {sq}; attention core "
                      f"{'float' if q.get('float_attention') else 'int8'}")
        ac = cal.get("accuracy_control")
        if ac:
            ok = "[green]within[/]" if ac["within_max_drop"] else "[red]ABOVE[/]"
            table.add_row("accuracy control", f"top-1 on {ac['images']} images: float "
                          f"{ac['float']:.2f}%, int8 {ac['int8']:.2f}%, drop {ac['drop']:.2f} "
                          f"points ({ok} max {ac['max_drop']:g})")
    check = b.get("check") or {}
    if "top1_agreement" in check:
        agree = check["top1_agreement"]
        style = "green" if agree >= 0.98 else "yellow"
        table.add_row("check", f"INT8 vs float IR on {check['images']} calibration images: "
                      f"top-1 agreement [{style}]{_pct(agree)}[/]"
                      + (f", gate decisions {_pct(check['mask_agreement_mean'])} unchanged"
                         if "mask_agreement_mean" in check else ""))
        if check.get("mask_agreement"):
            table.add_row("", "per dispatcher: " + ", ".join(
                f"{k} {_pct(v)}" for k, v in check["mask_agreement"].items()))
    elif check.get("runs"):
        table.add_row("check", f"compiles and runs (f32, {check['images']} generated images)")
    table.add_row("time", ", ".join(f"{k} {v:.1f} s" for k, v in b.get("timings", {}).items()))
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if "top1_agreement" in check and check["top1_agreement"] < 0.98:
        console.print("[yellow]warning:[/] the INT8 model disagrees with the float one on more "
                      "than 2% of the calibration images; try --accuracy-control")
    from dyt_edge.data import is_demo_model

    data = "" if is_demo_model(info) else " --data DATA"
    console.print(f"next: dyt-edge validate {result.path} --target {b['target']}{data}")
    console.print(f"      dyt-edge bench {result.path} --target {b['target']}{data}")


def _check_row(b: Mapping[str, Any]) -> Optional[str]:
    """The converted graph's ONNX Runtime parity with the export, in one line."""
    check = b.get("check") or {}
    if not check:
        return None
    agree = check.get("top1_agreement_pct")
    diff = check.get("max_abs_diff")
    flips = check.get("flip_pct")
    return (f"{b['precision']} graph vs the export on ONNX Runtime, {check.get('data')}: top-1 "
            f"agreement {'-' if agree is None else f'{agree:.1f}%'}, max logit diff "
            f"{'-' if diff is None else f'{diff:.3g}'}, gate decisions flipped "
            f"{'-' if flips is None else f'{flips:.2f}%'}")


def _calibration_and_check_rows(table: Any, b: Mapping[str, Any]) -> None:
    """TensorRT builds (engine or --onnx-only): calibration data and the ONNX Runtime check."""
    cal = b.get("calibration")
    if cal:
        split = f" ({cal['split']} split)" if cal.get("split") else ""
        table.add_row("calibration", f"{cal['name']}{split}: {cal['images']} images "
                      f"(seed {cal['seed']})")
    row = _check_row(b)
    if row:
        table.add_row("check", row)


def _files_and_time_rows(table: Any, info: "Manifest", b: Mapping[str, Any]) -> None:
    size = sum(f.bytes for f in info.files.values())
    table.add_row("files", f"{', '.join(f.path for f in info.files.values())} "
                  f"({size_text(size)})")
    table.add_row("time", ", ".join(f"{k} {v:.1f} s" for k, v in b.get("timings", {}).items()))


def render_onnx_only(result: Any, console) -> None:
    """``--onnx-only``: the converted graph, its parity, and how to get the engine."""
    from rich.markup import escape
    from rich.table import Table

    info = result.artifact.info
    b = info.build.record
    g = b["gpu"]
    console.print(f"[bold green]wrote[/] {result.path}/  (tensorrt {b['precision']} graph for "
                  f"{g['name']}, ONNX only: no engine; from {result.source.path})")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("graph", escape(f"{b['graph']['source']}; {b['graph']['conversion']}"))
    problems = b["graph"].get("precision_problems")
    if problems:
        table.add_row("precisions", f"[yellow]{len(problems)} problem(s)[/]: "
                      + escape("; ".join(map(str, problems[:3]))))
    _calibration_and_check_rows(table, b)
    _files_and_time_rows(table, info, b)
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    from dyt_edge.data import is_demo_model

    data = "" if is_demo_model(info) else " --data DATA"
    console.print(f"next: dyt-edge validate {result.path} --target onnxruntime{data}",
                  soft_wrap=True)
    console.print(f"engine, on a {g['name']}:")
    for major, line in b.get("trtexec", {}).items():
        console.print(f"  TensorRT {major}.x: {escape(line)}", soft_wrap=True)
    console.print(f"  or: dyt-edge build {result.source.path} --target tensorrt --gpu "
                  f"{g['profile']} --precision {b['precision']}", soft_wrap=True)


def render_tensorrt(result: Any, console) -> None:
    from rich.table import Table

    info = result.artifact.info
    b = info.build.record
    if b.get("engine") is None:
        render_onnx_only(result, console)
        return
    e = b["engine"]
    console.print(f"[bold green]built[/] {result.path}/  (tensorrt {b['precision']} for "
                  f"{e['gpu']['name']}, from {result.source.path})")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("engine", f"{e['engine']['file']} ({size_text(e['engine']['bytes'])}), TensorRT "
                  f"{e['tensorrt']['version']} ({e['tensorrt'].get('package') or '?'}), "
                  f"strongly typed")
    table.add_row("GPU", f"{e['gpu']['name']} (compute capability "
                  f"{e['gpu']['compute_capability']}, {e['gpu']['architecture']}): the engine "
                  "runs on this GPU model and TensorRT version only")
    p = e["profile"]
    dims = {k: "x".join(str(d) for d in p[k]) for k in ("min", "opt", "max")}
    table.add_row("profile", f"static batch {p['min'][0]}" if p.get("static") else
                  f"{p['input']}: min {dims['min']}, opt {dims['opt']}, max {dims['max']}")
    table.add_row("graph", f"{b['graph']['source']}; {b['graph']['conversion']}")
    _calibration_and_check_rows(table, b)
    tc = b.get("timing_cache")
    if tc:
        table.add_row("timing cache", f"{tc['path']} (loaded {tc['loaded_bytes']} B, saved "
                      f"{tc['saved_bytes']} B)")
    _files_and_time_rows(table, info, b)
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    from dyt_edge.data import is_demo_model

    data = "" if is_demo_model(info) else " --data DATA"
    console.print(f"next: dyt-edge validate {result.path} --target tensorrt{data}")
    console.print(f"      dyt-edge bench {result.path} --target tensorrt{data}")
    console.print(f"      dyt-edge validate {result.path} --target onnxruntime{data}  (the "
                  f"{b['precision']} graph, on the CPU)")
