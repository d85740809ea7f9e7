"""Options shared by several commands (Annotated aliases), so each is spelled once, the one
``--json`` convention, and the few formatting helpers their tables share.

``--json PATH`` writes a command's result as JSON to PATH (checked before any work starts,
written atomically at the end); ``--json -`` prints that JSON on stdout instead, and then
stdout carries nothing else: tables, progress and messages go to stderr. A command checks the
value with :func:`check_json_out` first, prints its tables on :func:`human_console`, runs its
work inside :func:`json_stdout_guard` and ends with :func:`emit_json`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator, Mapping, Optional

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
DEVICE_HELP = ("Device of the target runtime (RuntimeOptions.device): cuda or cuda:N for "
               "pytorch (PyTorch on a GPU) and tensorrt (which GPU), an OpenVINO device name for "
               "openvino; onnxruntime runs on cpu only. \\[default: the runtime's: cpu for "
               "pytorch and onnxruntime, CPU for openvino, cuda:0 for tensorrt]")
Device = Annotated[Optional[str], typer.Option(
    "--device", metavar="DEVICE", show_default=False, help=DEVICE_HELP)]
FLOAT_PARTS_HELP = ("OpenVINO INT8 artifacts: run the parts INT8 leaves float (LayerNorm, "
                    "Softmax, GELU, residual adds; the gates stay f32) at fp32 | bf16 | fp16. "
                    "\\[default: the precision the build recorded (build --float-parts), fp32 "
                    "on a CPU without it]")
FloatParts = Annotated[Optional[str], typer.Option(
    "--float-parts", metavar="PRECISION", show_default=False, help=FLOAT_PARTS_HELP)]
JsonOut = Annotated[Optional[Path], typer.Option(
    "--json", metavar="PATH", show_default=False,
    help="Write the result as JSON to PATH (schema: docs/reports.md); '-' prints it on stdout "
    "instead, and everything else goes to stderr.")]


def json_to_stdout(json_out: Optional[Path]) -> bool:
    """Whether ``--json -`` was given (the JSON goes to stdout)."""
    return json_out is not None and str(json_out) == "-"


def check_json_out(json_out: Optional[Path], example: str = "report.json") -> Optional[Path]:
    """``--json``'s value, checked before any work: None, ``-`` (stdout), or a file path that
    can be written (missing parents created); a one-line :class:`UsageError` otherwise."""
    if json_out is None or json_to_stdout(json_out):
        return json_out
    from ..report_files import check_json_path

    return check_json_path(json_out, example)


def human_console(json_out: Optional[Path] = None, **kwargs: Any) -> Any:
    """The rich console for tables and messages: stdout, or stderr with ``--json -``."""
    from rich.console import Console

    return Console(stderr=json_to_stdout(json_out), **kwargs)


@contextlib.contextmanager
def json_stdout_guard(json_out: Optional[Path]) -> Iterator[None]:
    """With ``--json -``, whatever the work prints on stdout (a library's own messages, a
    ``typer.echo``) goes to stderr, so stdout holds the JSON alone."""
    if not json_to_stdout(json_out):
        yield
        return
    _STDOUT.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _STDOUT.pop()


_STDOUT: list[Any] = []
"""The real stdouts behind the active :func:`json_stdout_guard` blocks (innermost last)."""


def emit_json(json_out: Optional[Path], payload: Mapping[str, Any]) -> Optional[Path]:
    """Write ``payload`` (:func:`dyt_edge.reports.to_json`) where ``--json`` says: on stdout for
    ``-`` (returns None), else atomically to the file (returns its path). Nothing without
    ``--json``."""
    if json_out is None:
        return None
    if json_to_stdout(json_out):
        from ..reports import to_json

        out = _STDOUT[-1] if _STDOUT else sys.stdout
        out.write(to_json(payload))
        out.flush()
        return None
    from ..report_files import write_report

    return write_report(json_out, payload)


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
