"""``dyt-edge inspect``: what a checkpoint holds, and how much it skips on real images."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .options import (AdapterLayerNorm, AdapterScale, CheckpointArg, ClassNamesFile, Data,
                      ImgSize, JsonOut, NumHeads, Preproc, check_json_out, emit_json,
                      human_console, json_stdout_guard, model_overrides)


def inspect(
    checkpoint: CheckpointArg,
    data: Data = None,
    samples: Annotated[int, typer.Option(
        "--samples", help="Images to measure on (with --data).")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for --data.")] = 64,
    json_out: JsonOut = None,
    adapter_scale: AdapterScale = None,
    adapter_layernorm: AdapterLayerNorm = None,
    num_heads: NumHeads = None,
    img_size: ImgSize = None,
    preprocessing: Preproc = None,
    class_names: ClassNamesFile = None,
) -> None:
    """Show a checkpoint's architecture, variant, adapters, parameters and FLOPs.

    With --data, also run it on images and report the activation rate of every dispatcher
    (the share of patch tokens it sends through its sub-block), the FLOPs that implies, and
    the accuracy when the data has labels.
    """
    from ..inspection import inspect_checkpoint

    overrides = model_overrides(adapter_scale, adapter_layernorm, num_heads, img_size,
                                preprocessing)
    json_out = check_json_out(json_out, "inspect.json")
    with json_stdout_guard(json_out):
        if data is None:
            info = inspect_checkpoint(checkpoint, data=data, samples=samples,
                                      batch_size=batch_size, class_names=class_names,
                                      **overrides)
        else:
            from rich.console import Console
            from rich.progress import Progress

            with Progress(console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("measuring dispatch", total=None)
                info = inspect_checkpoint(checkpoint, data=data, samples=samples,
                                          batch_size=batch_size, class_names=class_names,
                                          progress=lambda n: bar.advance(task, n), **overrides)
        render(info, human_console(json_out))
    emit_json(json_out, info)


def _m(n: float) -> str:
    return f"{n / 1e6:.3f} M" if n < 1e9 else f"{n / 1e9:.2f} G"


def render(info: dict[str, Any], console: Any = None) -> None:
    from rich.table import Table

    from ..config import Preprocessing

    if console is None:
        from rich.console import Console

        console = Console()
    cfg, prov, params = info["config"], info["provenance"], info["parameters"]
    ck = info["checkpoint"]
    pre = cfg["preprocessing"]

    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("checkpoint", f"{ck['path']}  ({ck['format']}, {ck['layout']})")
    summary.add_row("sha256", ck["sha256"])
    summary.add_row("architecture",
                    f"ViT {cfg['img_size']}px, patch {cfg['patch_size']}, width "
                    f"{cfg['embed_dim']}, depth {cfg['depth']}, {cfg['num_heads']} heads, "
                    f"MLP x{cfg['mlp_ratio']:g}, {cfg['num_classes']} classes")
    summary.add_row("heads", f"{cfg['num_heads']}  (from {prov.get('num_heads', '?')})")
    names = info.get("class_names")
    if names:
        from ..class_names import preview

        summary.add_row("class names", f"{len(names)}: {preview(names)}  "
                                       f"(from {info.get('class_names_source')})")
    else:
        summary.add_row("class names", "not recorded (pass --class-names FILE)")
    summary.add_row("variant", f"{cfg['variant']}  ({len(info['dispatchers'])} dispatchers)")
    adapter = cfg["adapter_kind"]
    if adapter == "moe":
        adapter += f" ({cfg['num_experts']} experts)"
    summary.add_row("adapter", f"{adapter}, bottleneck {cfg['adapter_dim']}, "
                               f"layernorm {cfg['adapter_layernorm']}")
    scale = "learnable" if cfg["adapter_scale_learnable"] else f"{cfg['adapter_scale']:g}"
    summary.add_row("adapter scale", f"{scale}  (from {prov.get('adapter_scale', '?')})")
    summary.add_row("preprocessing",
                    f"{Preprocessing.from_dict(pre).describe()}  "
                    f"(from {prov.get('preprocessing', '?')})")
    summary.add_row("parameters",
                    f"{_m(params['total'])} total; trainable {_m(params['trainable'])} "
                    f"(adapters {_m(params['adapters'])}, dispatchers "
                    f"{_m(params['dispatchers'])}, head {_m(params['head'])})")
    flops = info["flops"]
    summary.add_row("GFLOPs", f"complete {flops['complete'] / 1e9:.3f} (plain ViT "
                              f"{flops['plain_vit'] / 1e9:.3f})")
    data = info["data"]
    if data:
        summary.add_row("measured on", f"{data['samples']} images of {data['name']}"
                        + (f" ({data['skipped']} unreadable skipped)" if data["skipped"] else ""))
        summary.add_row("activation", f"{data['activation_mean']:.3f} mean over dispatchers")
        summary.add_row("GFLOPs (measured)", f"{flops['measured'] / 1e9:.3f}  "
                        f"({flops['ratio']:.2f}x fewer than complete)")
        if data["accuracy"] is not None:
            summary.add_row("accuracy", f"{100 * data['accuracy']:.2f}%")
    console.print(summary)

    if data:
        table = Table(title="Activation per dispatcher (share of patch tokens kept)")
        for col in ("dispatcher", "mean", "min", "max", "layer GFLOPs"):
            table.add_column(col, justify="left" if col == "dispatcher" else "right")
        sites = len(info["dispatchers"]) // cfg["depth"]
        for i, name in enumerate(info["dispatchers"]):
            layer_flops = flops["per_layer"][i // sites] / 1e9
            table.add_row(name, f"{data['activation_per_dispatcher'][i]:.3f}",
                          f"{data['activation_min_per_dispatcher'][i]:.3f}",
                          f"{data['activation_max_per_dispatcher'][i]:.3f}",
                          f"{layer_flops:.4f}" if i % sites == 0 else "")
        console.print(table)
