"""Options shared by several commands (Annotated aliases), so each is spelled once, and the
few formatting helpers their tables share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

MODEL_PANEL = "Checkpoint overrides (when the checkpoint does not say)"

AdapterScale = Annotated[Optional[float], typer.Option(
    "--adapter-scale", help="Adapter output scale s (not stored in published state_dicts: "
    "1.0 for the VTAB recipe, 0.1 for the image recipes).", rich_help_panel=MODEL_PANEL)]
AdapterLayerNorm = Annotated[Optional[str], typer.Option(
    "--adapter-layernorm", help="Adapter LayerNorm placement: in | out.",
    rich_help_panel=MODEL_PANEL)]
NumHeads = Annotated[Optional[int], typer.Option(
    "--num-heads", help="Attention heads (default: the checkpoint's args, else timm's standard "
    "head count for its width: 192->3, 384->6, 768->12, 1024/1280->16, ...; other widths need "
    "it).",
    rich_help_panel=MODEL_PANEL)]
ImgSize = Annotated[Optional[int], typer.Option(
    "--img-size", help="Input image size (default: from pos_embed).", rich_help_panel=MODEL_PANEL)]
Preproc = Annotated[Optional[str], typer.Option(
    "--preprocessing", help="Preprocessing recipe: vtab (squash to 224x224, aspect ratio not "
    "kept, no crop; bicubic; mean=std=0.5) | imagenet (shorter side to 256, center crop "
    "224x224; bicubic; ImageNet mean/std). Sizes follow the model's input size.",
    rich_help_panel=MODEL_PANEL)]
ClassNamesFile = Annotated[Optional[Path], typer.Option(
    "--class-names", help="Text file of class names, one per line in class-index order (blank "
    "lines ignored; one name per class). Default: the names a dyt-edge checkpoint records "
    "(published checkpoints record none).", rich_help_panel=MODEL_PANEL, show_default=False)]

Data = Annotated[Optional[str], typer.Option(
    "--data", help="Images: 'digits', an ImageFolder directory, or an .npz (images, labels).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def model_overrides(adapter_scale: Optional[float] = None, adapter_layernorm: Optional[str] = None,
                    num_heads: Optional[int] = None, img_size: Optional[int] = None,
                    preprocessing: Optional[str] = None) -> dict[str, Any]:
    """The checkpoint-loader overrides the user actually gave."""
    given = dict(adapter_scale=adapter_scale, adapter_layernorm=adapter_layernorm,
                 num_heads=num_heads, img_size=img_size, preprocessing=preprocessing)
    return {k: v for k, v in given.items() if v is not None}


CheckpointArg = Annotated[Path, typer.Argument(
    help="DyT checkpoint: a published .pth/.pt or a dyt-edge .safetensors.",
    show_default=False)]


def size_text(n: int) -> str:
    """A file size for a table: ``1.2 MB``, or ``34.5 kB`` below 100 kB."""
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
