"""``dyt-edge build``: an export -> a deployment artifact for a target and precision (OpenVINO
IR f32 / bf16 / fp16, or NNCF INT8 with the dispatch path kept in float). The library is
:mod:`dyt_edge.build`."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import Json

INT8_PANEL = "INT8 calibration"


def build(
    artifact: Annotated[Optional[Path], typer.Argument(
        help="Export directory (or a model file in it). Default: the most recent export "
        "under dyt-edge-out/.", show_default=False)] = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", "-t", show_default=False,
        help="openvino | tensorrt (TensorRT engines: not yet, issue #5). Required.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", "-p", show_default=False,
        help="fp32 | fp16 | bf16 | int8. fp16 also stores the weights as fp16 (gates stay "
        "fp32); int8 quantizes with NNCF, keeping the dispatch path, LayerNorm, Softmax and "
        "GELU in float. \\[default: fp32]")] = None,
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
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", show_default=False,
        help="Artifact directory to write (replaced as a whole). \\[default: <export "
        "dir>/<target>-<precision>/]")] = None,
    as_json: Json = False,
) -> None:
    """Build a deployment artifact from an export: OpenVINO IR at fp32 / bf16 / fp16, or INT8.

    INT8 runs NNCF post-training quantization (transformer model type, symmetric quantizers)
    calibrated on --calib, with every dispatcher's gate (MatMul, Sigmoid, compare), the
    TopK / gather / scatter dispatch and its index arithmetic, LayerNorm, Softmax, GELU and the
    residual adds left in float. Afterwards the INT8 model is compared with the float one on
    the calibration images (top-1 and gate-decision agreement). The result is a full artifact
    directory with its own manifest; validate and bench it like any other.
    """
    from dyt_edge.build import BuildOptions, get_builder
    from dyt_edge.errors import UsageError

    if target is None:
        raise UsageError("--target is required", "e.g. --target openvino")
    opts = BuildOptions(target=target, precision=precision, calib=calib, calib_size=calib_size,
                        accuracy_control=accuracy_control, max_drop=max_drop,
                        output=output).checked()
    get_builder(opts.target).check(opts)

    from rich.console import Console

    from dyt_edge.build import build_artifact

    err = Console(stderr=True)
    kwargs: dict[str, Any] = dict(precision=opts.precision, calib=calib, calib_size=calib_size,
                                  accuracy_control=accuracy_control, max_drop=max_drop,
                                  output=output)

    # Progress goes to stderr: a transient spinner (nothing is left behind, so a bad input
    # still ends in exactly one line), then NNCF's own progress bars while it quantizes (NNCF
    # draws them on stdout: redirected to stderr too, so --json output stays clean).
    with contextlib.redirect_stdout(sys.stderr), err.status("building") as status:
        stopped = []

        def progress(stage: str) -> None:
            if stage.startswith("using the most recent export"):
                err.print(stage)
            elif stage.startswith("quantizing"):
                status.stop()
                stopped.append(True)
                if not as_json:
                    err.print(f"{stage}...")
            else:
                status.update(f"{stage}...")
                if stopped:
                    status.start()
                    stopped.clear()

        result = build_artifact(artifact, opts.target, progress=progress, **kwargs)
    if as_json:
        typer.echo(json.dumps({"path": str(result.path), "source": str(result.source.path),
                               "picked": result.picked, "build": result.build}, indent=2,
                              default=str))
        return
    render(result)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}%"


def render(result: Any, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = result.manifest
    b = m["build"]
    size = sum(f["bytes"] for f in m["files"].values())
    console.print(f"[bold green]built[/] {result.path}/  ({b['target']} {b['precision']}, "
                  f"from {result.source.path})")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("target", f"{b['target']} (OpenVINO {b['tools'].get('openvino', '?')}"
                  + (f", NNCF {b['tools']['nncf']}" if "nncf" in b["tools"] else "") + ")"
                  if b["target"] == "openvino" else b["target"])
    table.add_row("precision", f"{b['precision']} (weights {b.get('weights', '?')}, runtimes "
                  f"set INFERENCE_PRECISION_HINT={b.get('inference_precision', '?')})")
    table.add_row("model", f"{', '.join(f['path'] for f in m['files'].values())} "
                  f"({_size(size)}); float IR: {b.get('source_ir', '?')}")
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
        table.add_row("quantizers", f"{cal['quantization']['fake_quantize_nodes']} FakeQuantize "
                      "(symmetric, transformer preset)")
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

    data = "" if is_demo_model(m) else " --data DATA"
    console.print(f"next: dyt-edge validate {result.path} --target {b['target']}{data}")
    console.print(f"      dyt-edge bench {result.path} --target {b['target']}{data}")
