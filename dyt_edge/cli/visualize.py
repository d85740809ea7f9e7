"""``dyt-edge visualize``: PNGs of the per-layer activation rates and of the tokens each layer
keeps, for a checkpoint or an exported artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (AdapterLayerNorm, AdapterScale, Data, ImgSize, JsonOut, NumHeads,
                      Preproc, check_json_out, emit_json, json_stdout_guard, json_to_stdout,
                      model_overrides)


def visualize(
    source: Annotated[Optional[Path], typer.Argument(
        metavar="CKPT_OR_ARTIFACT", show_default=False,
        help="A checkpoint (.pth, .pt, .safetensors) or an artifact directory "
        "(default: the most recent export under dyt-edge-out/).")] = None,
    data: Data = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", show_default=False,
        help="Directory for the PNGs. \\[default: <artifact>/figures/, or "
        "dyt-edge-out/figures/<checkpoint stem>/]")] = None,
    images: Annotated[int, typer.Option(
        "--images", help="Images drawn with their active tokens (one of each class first).")] = 6,
    samples: Annotated[int, typer.Option(
        "--samples", help="Images the activation rates are measured on.")] = 512,
    target: Annotated[str, typer.Option(
        "--target", help="For an artifact: the runtime whose masks are drawn: pytorch (the "
        "recorded checkpoint) | onnxruntime | openvino.")] = "pytorch",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per inference.")] = 32,
    adapter_scale: AdapterScale = None,
    adapter_layernorm: AdapterLayerNorm = None,
    num_heads: NumHeads = None,
    img_size: ImgSize = None,
    preprocessing: Preproc = None,
    json_out: JsonOut = None,
) -> None:
    """Draw what the dispatchers do on real images.

    Writes activation_rates.png (each layer's activation rate, mean over --data, with the
    overall mean and the training target r when known), tokens.png (a few images with the
    patch tokens each layer keeps highlighted), activation_map.png (how often each patch
    position is kept), activation_by_class.png (with labelled data) and activation.json (the
    numbers behind them). --data defaults to digits for the digits demo model only. --json
    carries what activation.json holds.
    """
    from ..visualize import visualize as run

    overrides = model_overrides(adapter_scale, adapter_layernorm, num_heads, img_size,
                                preprocessing)
    json_out = check_json_out(json_out, "visualize.json")
    from rich.console import Console
    from rich.progress import Progress

    err = Console(stderr=True)
    with json_stdout_guard(json_out), Progress(console=err, transient=True) as bar:
        task = bar.add_task("measuring dispatch", total=None)
        result = run(source, data, output, images=images, samples=samples, target=target,
                     batch_size=batch_size, overrides=overrides,
                     on_start=lambda total: bar.update(task, total=total),
                     progress=lambda n: bar.advance(task, n))
    for note in result.notes:
        err.print(note, highlight=False)
    m = result.measurement
    line = (f"activation {m.mean:.3f} (mean of {len(m.dispatchers)} dispatchers) on "
            f"{m.samples} images of {m.data_name}")
    if m.target_rate is not None:
        line += f"; target r = {m.target_rate:g}"
    if m.accuracy is not None:
        line += f"; accuracy {100 * m.accuracy:.2f}%"
    if m.skipped:
        line += f"; {m.skipped} unreadable files skipped"
    to_err = json_to_stdout(json_out)  # --json -: stdout holds the JSON alone
    typer.echo(line, err=to_err)
    for path in result.paths:
        typer.echo(f"wrote {path}", err=to_err)
    written = emit_json(json_out, result.summary())
    if written is not None:
        typer.echo(f"wrote {written}", err=to_err)
