"""``dyt-edge bench``: throughput and latency of an artifact on a runtime, against the complete
model in the same run (speedup), with the activation and FLOPs that explain it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (DEVICE_HELP, FLOAT_PARTS_HELP, Data, JsonOut, check_json_out, emit_json,
                      human_console, json_stdout_guard, json_to_stdout)

BENCH_PANEL = "Benchmark"
RUNTIME_PANEL = "Runtime"
_TARGETS = "onnxruntime | openvino | tensorrt | pytorch"


def bench(
    artifact: Annotated[Optional[Path], typer.Argument(
        help="Artifact directory (an export or a build). \\[default: the most recent one under "
        "dyt-edge-out/]", show_default=False)] = None,
    target: Annotated[str, typer.Option(
        "--target", "-t", help=f"Runtime: {_TARGETS}.", rich_help_panel=RUNTIME_PANEL)] = ...,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", "-p", show_default=False,
        help="fp32 | fp16 | bf16 | int8. \\[default: what the artifact was built for, else "
        "fp32]", rich_help_panel=RUNTIME_PANEL)] = None,
    batch: Annotated[Optional[str], typer.Option(
        "--batch", "-b", show_default=False,
        help="Comma-separated batch sizes. \\[default: 1,8,32; a static-batch artifact: its "
        "batch]", rich_help_panel=BENCH_PANEL)] = None,
    duration: Annotated[float, typer.Option(
        "--duration", help="Seconds of timed inference per model and batch size.",
        rich_help_panel=BENCH_PANEL)] = 5.0,
    warmup: Annotated[float, typer.Option(
        "--warmup", help="Seconds of untimed warmup per model and batch size.",
        rich_help_panel=BENCH_PANEL)] = 1.0,
    data: Data = None,
    images: Annotated[int, typer.Option(
        "--images", help="Images loaded from DATA (for the activation and the timed batches).",
        rich_help_panel=BENCH_PANEL)] = 256,
    baseline: Annotated[bool, typer.Option(
        "--baseline/--no-baseline",
        help="Also time the complete model (exported from the recorded checkpoint and cached "
        "beside the export) for the speedup.", rich_help_panel=BENCH_PANEL)] = True,
    hint: Annotated[str, typer.Option(
        "--hint", help="Performance hint: latency (one request at a time) | throughput (every "
        "stream busy, benchmark_app-style).", rich_help_panel=RUNTIME_PANEL)] = "latency",
    streams: Annotated[Optional[int], typer.Option(
        "--streams", show_default=False, help="Parallel inference streams (OpenVINO). "
        "\\[default: the hint's]", rich_help_panel=RUNTIME_PANEL)] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", show_default=False, help="Inference threads. \\[default: the runtime's]",
        rich_help_panel=RUNTIME_PANEL)] = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", metavar="DEVICE", show_default=False, help=DEVICE_HELP,
        rich_help_panel=RUNTIME_PANEL)] = None,
    float_parts: Annotated[Optional[str], typer.Option(
        "--float-parts", metavar="PRECISION", show_default=False, help=FLOAT_PARTS_HELP,
        rich_help_panel=RUNTIME_PANEL)] = None,
    json_out: JsonOut = None,
    plot: Annotated[bool, typer.Option(
        "--plot", help="Chart throughput and speedup per batch size (PNG).",
        rich_help_panel=BENCH_PANEL)] = False,
    plot_dir: Annotated[Optional[Path], typer.Option(
        "--plot-dir", show_default=False, help="Where --plot writes (implies --plot). "
        "\\[default: beside --json PATH, else <artifact>/bench/]",
        rich_help_panel=BENCH_PANEL)] = None,
) -> None:
    """Time an artifact on a runtime against its complete model: img/s, latency, speedup.

    Per batch size: throughput (img/s) and latency mean / p50 / p90 / p95 / p99 of single
    inferences, for the DyT artifact and for the complete model on the same runtime and
    precision, timed in alternating chunks so that machine noise hits both; the speedup; the
    activation measured on real images (DATA) with the runtime's own masks; GFLOPs, the FLOPs
    ratio and the efficiency (speedup / FLOPs ratio).
    """
    from dyt_edge.bench import check_settings, parse_batches
    from dyt_edge.errors import UsageError

    sizes = parse_batches(batch) if batch is not None else None
    check_settings(duration, warmup, images, hint)
    for name, value in (("--streams", streams), ("--threads", threads)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, got {value}")
    json_out = check_json_out(json_out, "bench.json")
    json_path = None if json_to_stdout(json_out) else json_out

    from rich.console import Console

    from dyt_edge.artifacts import resolve_artifact
    from dyt_edge.runtimes import runtime_class

    runtime_class(target)  # an unknown target: a one-line error before anything loads
    from dyt_edge.runtimes import float_parts_extra

    float_parts_extra(target, float_parts)
    err = Console(stderr=True)
    art, picked = resolve_artifact(artifact)
    if picked:
        err.print(f"using the most recent export: {art.summary()}")
    with json_stdout_guard(json_out):
        result = _run(art, target, err, precision=precision, batches=sizes, duration=duration,
                      warmup=warmup, data=data, baseline=baseline, hint=hint, streams=streams,
                      threads=threads, images=images, device=device, float_parts=float_parts)
        payload = result.to_dict()
        render(payload, human_console(json_out))
    if emit_json(json_out, payload) is not None:
        err.print(f"wrote {json_path}")
    if plot or plot_dir is not None:
        out = plot_dir or (json_path.parent if json_path is not None else art.path / "bench")
        from dyt_edge.plots import plot_bench

        for p in plot_bench(payload, Path(out)):
            err.print(f"wrote {p}")


def _run(art: Any, target: str, err: Any, **kwargs: Any) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from dyt_edge.bench import bench_artifact

    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("preparing", total=1.0)

        def progress(message: str, fraction: Optional[float]) -> None:
            if fraction is None:
                bar.console.print(message)
            else:
                bar.update(task, description=message, completed=fraction)

        return bench_artifact(art, target, progress=progress, **kwargs)


def _ips(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _num(value: Optional[float], fmt: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def per_class_line(rows: list[dict[str, Any]], show: int = 5) -> str:
    """``activation per class: cat 41.0% (12), dog 55.3% (12)``; with many classes the
    lowest and highest ``show``."""
    def cell(r: dict[str, Any]) -> str:
        return f"{r['name']} {r['mean']:.1%} ({r['images']})"

    if len(rows) <= 2 * show + 2:
        return "activation per class (images): " + ", ".join(cell(r) for r in rows)
    ranked = sorted(rows, key=lambda r: (r["mean"], r["index"]))
    return (f"activation per class (images), {len(rows)} classes: lowest "
            + ", ".join(cell(r) for r in ranked[:show]) + "; highest "
            + ", ".join(cell(r) for r in ranked[-show:]))


def render(result: dict[str, Any], console: Any) -> None:
    """The results table, with the activation, FLOPs and notes around it."""
    from rich import box
    from rich.table import Table

    rt = result["runtime"]["dyt"]
    art = result["artifact"]
    s = result["settings"]
    console.print(f"[bold]{result['target']}[/] {result['precision']}  {art['path']}  "
                  f"(dispatch {art['dispatch']}, hint {s['hint']}, "
                  f"{rt.get('backend', '?')} on {rt.get('device', '?')})", highlight=False)
    act = result.get("activation")
    if act:
        console.print(f"activation: {act['mean']:.1%} of patch tokens on average over "
                      f"{len(act['per_layer'])} dispatchers, measured by {result['target']} on "
                      f"{act['images']} images of {s['data']}")
    if act and act.get("per_class"):
        console.print(per_class_line(act["per_class"]), highlight=False)
    fl = result.get("flops")
    if fl:
        console.print(f"GFLOPs: {fl['dyt_gflops']:.4g} (DyT at that activation) vs "
                      f"{fl['complete_gflops']:.4g} (complete): ratio {fl['ratio']:.2f}x")
    headers = ("batch", "DyT\nimg/s", "complete\nimg/s", "speedup", "FLOPs\nratio",
               "effi-\nciency", "DyT ms\nmean", "\np50", "\np90", "\np95", "\np99")
    rows = []
    for r in result["results"]:
        lat = r["dyt"]["latency_ms"]
        c = r["complete"]
        rows.append((str(r["batch"]), _ips(r["dyt"]["images_per_s"]),
                     _ips(c["images_per_s"] if c else None),
                     _num(r["speedup"], ".2f", "x"), _num(r["flops_ratio"], ".2f", "x"),
                     _num(r["efficiency"], ".2f"),
                     *(_ms(lat[k]) for k in ("mean", "p50", "p90", "p95", "p99"))))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 0, 0, 1))
    for i, col in enumerate(headers):
        width = max([len(x) for x in col.split("\n")] + [len(row[i]) for row in rows])
        table.add_column(col, justify="right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if act and act.get("batch_max") and act.get("dispatch") == "topk":
        parts = ", ".join(f"batch {b}: {v['mean']:.1%}" for b, v in act["batch_max"].items())
        console.print(f"computed per batch (K = the batch's busiest image): {parts}")
    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
