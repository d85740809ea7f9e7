"""``dyt-edge train``: fine-tune a DyT model with the paper's recipe and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import JsonOut, check_json_out, emit_json, human_console, json_stdout_guard

ARCH_PANEL = "Model"
TRAIN_PANEL = "Training"


def train(
    data: Annotated[str, typer.Option(
        "--data", help="'digits' (embedded: scikit-learn digits, 32x32, patch 4), an "
        "ImageFolder directory, or an .npz with 'images' and 'labels'.")] = "digits",
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="timm ViT architecture name, e.g. vit_tiny_patch16_224 (shape only, "
        "nothing is downloaded). Default: the small digits preset ViT.",
        rich_help_panel=ARCH_PANEL)] = None,
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", help="Local backbone weights (.safetensors/.pth state dict, timm key "
        "names). Without it the backbone starts from random init.",
        rich_help_panel=ARCH_PANEL)] = None,
    img_size: Annotated[Optional[int], typer.Option(
        "--img-size", help="Input image size (default: the arch's; 32 for the preset).",
        rich_help_panel=ARCH_PANEL)] = None,
    patch_size: Annotated[Optional[int], typer.Option(
        "--patch-size", help="Patch size (default: the arch's; 4 for the preset).",
        rich_help_panel=ARCH_PANEL)] = None,
    variant: Annotated[str, typer.Option(
        "--variant", help="Where tokens are dispatched: mlp | attn | attn_mlp | layer.",
        rich_help_panel=ARCH_PANEL)] = "mlp",
    adapter: Annotated[str, typer.Option(
        "--adapter", help="Adapter kind: adapter | moe (MoE-adapter).",
        rich_help_panel=ARCH_PANEL)] = "adapter",
    experts: Annotated[int, typer.Option(
        "--experts", help="Experts of the MoE-adapter.", rich_help_panel=ARCH_PANEL)] = 4,
    adapter_dim: Annotated[Optional[int], typer.Option(
        "--adapter-dim", help="Adapter bottleneck (default 16 for the preset, else 64).",
        rich_help_panel=ARCH_PANEL)] = None,
    adapter_scale: Annotated[Optional[float], typer.Option(
        "--adapter-scale", help="Adapter output scale (default 1.0 for the preset, else 0.1).",
        rich_help_panel=ARCH_PANEL)] = None,
    rate: Annotated[float, typer.Option(
        "--rate", help="Target activation rate r: the share of patch tokens the dispatchers "
        "should keep.", rich_help_panel=TRAIN_PANEL)] = 0.5,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", help="Epochs (default: the recipe's).", rich_help_panel=TRAIN_PANEL)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Batch size.", rich_help_panel=TRAIN_PANEL)] = None,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Peak learning rate (AdamW, warmup then cosine).",
        rich_help_panel=TRAIN_PANEL)] = None,
    freeze: Annotated[Optional[bool], typer.Option(
        "--freeze/--no-freeze", help="Freeze the backbone (only adapters, dispatchers and the "
        "head train). Default: frozen with --weights (the paper), trained from random init.",
        rich_help_panel=TRAIN_PANEL)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.",
                                      rich_help_panel=TRAIN_PANEL)] = 0,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", help="CPU threads (default: cores, at most 8). Same seed and thread count "
        "give the same model.", rich_help_panel=TRAIN_PANEL)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Where to write the model (default runs/<data>-<variant>"
        ".safetensors).")] = None,
    json_out: JsonOut = None,
) -> None:
    """Fine-tune a DyT model on a dataset with the paper's recipe, then save it.

    Loss: cross-entropy of the dynamic and the complete pass, KL to the (detached) complete
    pass, and 2 * (mean activation - rate)^2; straight-through Gumbel-sigmoid gates
    (temperature 5). Reports held-out accuracy with exact token skipping, and how much each
    dispatcher really skips.
    """
    from ..data import data_name
    from ..train import TrainConfig

    out = (output if output is not None
           else Path("runs") / f"{data_name(data)}-{variant}.safetensors")
    cfg = TrainConfig(
        data=data, arch=arch, weights=str(weights) if weights is not None else None,
        img_size=img_size, patch_size=patch_size, variant=variant, adapter_kind=adapter,
        num_experts=experts, adapter_dim=adapter_dim, adapter_scale=adapter_scale,
        target_rate=rate, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        freeze_backbone=freeze, threads=threads, output=str(out))
    json_out = check_json_out(json_out, "train.json")
    console = human_console(json_out)
    with json_stdout_guard(json_out):
        result = _run_with_progress(cfg, console)
        render(result, console)
    emit_json(json_out, result.to_dict())


def _run_with_progress(cfg: Any, out: Any):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from ..train import TrainEvent, train

    console = Console(stderr=True)  # the bar; notes and epochs go to `out` (stdout)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("loading data", total=None, status="")

        def on_event(ev: TrainEvent) -> None:
            if ev.kind == "note" and ev.message:
                out.print(f"[dim]{ev.message}[/dim]")
            elif ev.kind == "start":
                bar.update(task, description="training", total=ev.steps, completed=0)
            elif ev.kind == "step":
                bar.update(task, completed=ev.step,
                           status=f"epoch {ev.epoch}/{ev.epochs}  loss {ev.loss:.3f}  "
                                  f"active {ev.activation:.2f}")
            elif ev.kind == "epoch":
                out.print(f"epoch {ev.epoch:>3}/{ev.epochs}  loss {ev.loss:.4f}  "
                                  f"train acc {100 * (ev.accuracy or 0):.1f}%  "
                                  f"active {ev.activation:.3f}  ({ev.elapsed_s:.0f} s)")
            elif ev.kind == "eval":
                bar.update(task, description="evaluated")

        return train(cfg, progress=on_event)


def render(result: Any, console: Any = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        from rich.console import Console

        console = Console()
    if result.showcase:
        console.print("[bold]Held-out digits and each dispatcher's decisions[/bold] "
                      "(# token runs the MLP, . token skips it)")
        console.print(result.showcase, markup=False, highlight=False)
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("data", f"{escape(result.data_name)}: {result.train_size} training / "
                            f"{result.test_size} held-out images"
                    + (f" ({result.skipped} unreadable skipped)" if result.skipped else ""))
    summary.add_row("held-out accuracy",
                    f"{100 * result.accuracy:.2f}% with token skipping "
                    f"({100 * result.accuracy_complete:.2f}% with every token active)")
    summary.add_row("activation", f"{result.activation_mean:.3f} measured on held-out images "
                                  f"(target {result.config.target_rate:g})")
    if result.background_activation is not None:
        summary.add_row("background vs digit",
                        f"{result.background_activation:.3f} on background patches (pixel 0) "
                        f"vs {result.foreground_activation:.3f} on digit patches")
    summary.add_row("time", f"{result.seconds:.1f} s training, {result.total_seconds:.1f} s "
                            f"in all ({result.config.threads} threads, "
                            f"{len(result.history)} epochs)")
    for note in result.notes:
        if note.startswith("stopped"):
            summary.add_row("note", note)
    if result.checkpoint is not None:
        summary.add_row("saved", escape(str(result.checkpoint)))
    console.print(summary)

    table = Table(title="Activation per dispatcher (share of patch tokens kept, held-out)")
    table.add_column("dispatcher")
    table.add_column("active", justify="right")
    if result.background_per_dispatcher is not None:
        table.add_column("on background", justify="right")
        table.add_column("on digit", justify="right")
    for i, name in enumerate(result.dispatchers):
        row = [name, f"{result.activation_per_dispatcher[i]:.3f}"]
        if result.background_per_dispatcher is not None:
            row += [f"{result.background_per_dispatcher[i]:.3f}",
                    f"{result.foreground_per_dispatcher[i]:.3f}"]
        table.add_row(*row)
    console.print(table)
    if result.checkpoint is not None:
        import shlex

        command = (f"dyt-edge inspect {shlex.quote(str(result.checkpoint))} "
                   f"--data {shlex.quote(result.config.data)}")
        console.print(f"next: [bold]{escape(command)}[/bold]", highlight=False, soft_wrap=True)
