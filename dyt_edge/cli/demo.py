"""``dyt-edge demo``: train (or reuse) the digits model, export, build, validate and bench every
CPU target, and print one summary table. The library is :mod:`dyt_edge.demo`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from .options import JsonOut, check_json_out, emit_json, human_console, json_stdout_guard


def demo(
    retrain: Annotated[bool, typer.Option(
        "--retrain", help="Train the digits model again even when runs/digits-mlp.safetensors "
        "exists.")] = False,
    duration: Annotated[float, typer.Option(
        "--duration", help="Seconds of timing per model and batch size in the benchmarks.")]
    = 1.5,
    json_out: JsonOut = None,
    vitb: Annotated[bool, typer.Option(
        "--vitb/--no-vitb", help="Also measure a synthetic ViT-B/16 DyT (random weights, about "
        "2 minutes and 1.5 GB of files the first time) against its complete model on "
        "OpenVINO.")] = True,
) -> None:
    """The whole pipeline in one command: is every target exact, and does skipping pay?

    Trains the digits demo model (or reuses runs/digits-mlp.safetensors), exports it to
    dyt-edge-out/digits-mlp/, builds OpenVINO fp32 and INT8 (NNCF, calibrated on digits), then
    validates every CPU target against PyTorch on the held-out digits and benchmarks it against
    the complete model on the same runtime and precision. The digits model is too small for
    skipping to pay, so the same run measures a ViT-B/16-sized DyT with random weights (gates
    calibrated to half the tokens) on OpenVINO against its complete model. Exit code 1 when a
    target fails.
    """
    from rich.console import Console

    from dyt_edge.demo import run_demo
    from dyt_edge.errors import UsageError

    if not duration > 0:
        raise UsageError(f"--duration must be positive, got {duration}")
    json_out = check_json_out(json_out, "demo.json")
    out = human_console(json_out, width=max(Console().width, 140))
    err = Console(stderr=True)
    with json_stdout_guard(json_out):
        result = run_demo(retrain=retrain, duration=duration, realistic=vitb,
                          say=lambda m: err.print(m, highlight=False))
        render(result, out)
    emit_json(json_out, result.to_dict())
    if not result.passed:
        raise typer.Exit(1)


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def render(result: Any, console: Any) -> None:
    from rich.table import Table

    table = Table(title="dyt-edge demo: every CPU target, and what skipping saves",
                  caption="accuracy on the 359 held-out digits (the synthetic model has random "
                  "weights: no accuracy); ms/img and the first speedup at batch 1, img/s and the "
                  "second speedup batched (digits: 32, ViT-B/16: 8); speedup = over the complete "
                  "model on the same runtime and precision, measured in the same run")
    for col, justify in (("model", "left"), ("target", "left"), ("precision", "left"),
                         ("status", "left"), ("size MB", "right"), ("accuracy", "right"),
                         ("delta vs PyTorch", "right"), ("ms/img", "right"),
                         ("img/s", "right"), ("speedup b1 / batched", "right")):
        table.add_column(col, justify=justify, no_wrap=col in ("model", "target", "status"))
    for r in result.rows:
        style = {"passed": "green", "failed": "red", "measured": "green"}.get(r.status, "yellow")
        speedup = " / ".join(_fmt(v, ".2f", "x") for v in (r.speedup_b1, r.speedup)
                             if v is not None) or "-"
        table.add_row(r.model, r.target, r.precision, f"[{style}]{r.status}[/]",
                      _fmt(r.size_mb, ".2f"), _fmt(r.accuracy, ".2f", "%"),
                      _fmt(r.delta, "+.2f", " pt"), _fmt(r.ms_per_image, ".3f"),
                      _fmt(r.images_per_s, ",.1f" if (r.images_per_s or 0) < 100 else ",.0f"),
                      speedup)
    console.print(table)
    for r in result.rows:
        if r.error:
            console.print(f"[red]{r.target} {r.precision}:[/] {r.error}", highlight=False)
        elif r.failed_checks:
            console.print(f"[yellow]{r.target} {r.precision}:[/] failed "
                          + ", ".join(r.failed_checks), highlight=False)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.steps.items())
    console.print(f"{'passed' if result.passed else 'FAILED'} in {result.seconds:.0f} s "
                  f"({steps})", highlight=False)
