"""The export formats, as one declarative table.

The table drives the CLI's choices and help, the argument check (an option a format does not
take is refused by name, never silently ignored) and the README's format table. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from dyt_edge.config import closest
from dyt_edge.errors import UsageError

# The opsets every target parses: TensorRT 10.0/10.1 parse 9-20 (10.15 and 11.x up to 24),
# LayerNorm needs >= 17 to map onto TensorRT's normalisation layer, OpenVINO 2025+ reads all of
# them. 18 is the exporter's own opset (no version conversion). 17 is refused: torch 2.14's
# exporter starts at 18, and its fallback down-conversion to 17 (onnx's C++ converter) writes
# ReduceMax nodes with an empty attribute that ONNX Runtime rejects as an invalid graph.
OPSET_RANGE = (18, 20)
DEFAULT_OPSET = 18

# Every option `dyt-edge export` has, as (parameter name, flag). Model-override options
# (--adapter-scale, ...) describe the checkpoint, not the format, and are always accepted.
EXPORT_OPTIONS = {
    "dispatch": "--dispatch",
    "capacity": "--capacity",
    "opset": "--opset",
    "batch": "--batch",
    "simplify": "--simplify/--no-simplify",
    "validate": "--validate/--no-validate",
    "atol": "--atol",
}


@dataclass(frozen=True)
class ExportFormat:
    name: str
    description: str
    files: tuple[tuple[str, str], ...]
    """(kind, file name) written into the artifact directory, besides dyt_edge.json; the
    first is the model a runtime loads."""
    options: frozenset[str]
    """Keys of :data:`EXPORT_OPTIONS` this format accepts."""
    runtime: str
    """Where the validation runs."""
    packages: tuple[str, ...]
    cpu: bool = True
    gpu: bool = True

    @property
    def primary(self) -> str:
        """File name of the model a runtime loads (``model.onnx``, ``model.xml``)."""
        return self.files[0][1]


_ALL = frozenset(EXPORT_OPTIONS)

FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            name="onnx",
            description="one .onnx file, weights inside, dynamic batch; TopK/GatherND/ScatterND "
                        "dispatch (ONNX Runtime, TensorRT's ONNX parser, OpenVINO)",
            files=(("onnx", "model.onnx"),),
            options=_ALL,
            runtime="ONNX Runtime (CPU, fp32)",
            packages=("onnx", "onnxruntime"),
        ),
        ExportFormat(
            name="openvino",
            description="OpenVINO IR (model.xml + model.bin, f32 weights) converted from the "
                        "validated ONNX, which is kept beside it",
            files=(("openvino", "model.xml"), ("openvino_weights", "model.bin"),
                   ("onnx", "model.onnx")),
            options=_ALL,
            runtime="ONNX Runtime, then OpenVINO CPU with INFERENCE_PRECISION_HINT=f32",
            packages=("onnx", "onnxruntime", "openvino"),
            gpu=False,
        ),
    )
}

FORMAT_NAMES = tuple(FORMATS)


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UsageError(f"unknown format '{name}'",
                         f"{closest(name, FORMAT_NAMES)}choose one of: {', '.join(FORMAT_NAMES)}")
    return FORMATS[name]


def check_options(fmt: ExportFormat, given: Mapping[str, Any]) -> None:
    """Refuse, by name, options the user gave that ``fmt`` does not take.

    ``given`` maps :data:`EXPORT_OPTIONS` keys to the values the user passed (None = not given).
    """
    refused = [EXPORT_OPTIONS[k] for k, v in given.items()
               if v is not None and k in EXPORT_OPTIONS and k not in fmt.options]
    if refused:
        takers = [f.name for f in FORMATS.values()
                  if any(k in f.options for k, v in given.items() if v is not None)]
        raise UsageError(f"--format {fmt.name} does not take {', '.join(refused)}",
                         f"drop it, or use a format that does: {', '.join(takers)}"
                         if takers else "drop it")


def check_opset(opset: Optional[int]) -> int:
    """The opset to export at (default :data:`DEFAULT_OPSET`); refuse what a target cannot parse."""
    if opset is None:
        return DEFAULT_OPSET
    lo, hi = OPSET_RANGE
    if not lo <= int(opset) <= hi:
        why = ("the PyTorch exporter writes opset 18 and up (its down-conversion to 17 "
               "produces invalid ReduceMax nodes; LayerNorm needs >= 17 anyway)" if opset < lo
               else "TensorRT 10.0/10.1 parse opsets up to 20")
        raise UsageError(f"opset {opset} cannot be parsed by every target: {why}",
                         f"pass --opset between {lo} and {hi}; the default is {DEFAULT_OPSET}")
    return int(opset)


def parse_batch(value: Optional[str]) -> Optional[int]:
    """``--batch``: 'dynamic' (None, the default) or a positive integer (a static batch)."""
    if value is None or str(value).strip().lower() == "dynamic":
        return None
    text = str(value).strip()
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--batch must be 'dynamic' or a positive integer, got '{value}'",
                         "e.g. --batch dynamic (one file for every batch size) or --batch 8"
                         ) from None
    if n <= 0:
        raise UsageError(f"--batch must be positive, got {n}", "e.g. --batch 1")
    return n


def check_capacity(dispatch: str, capacity: Optional[float]) -> Optional[float]:
    if dispatch == "capacity":
        if capacity is None:
            raise UsageError("--dispatch capacity needs --capacity C",
                             "C is the fraction of patch tokens each dispatcher keeps, in (0, 1]")
        if not 0.0 < float(capacity) <= 1.0:
            raise UsageError(f"capacity {capacity} is outside (0, 1]",
                             "pass a fraction of patch tokens such as --capacity 0.6")
        return float(capacity)
    if capacity is not None:
        raise UsageError(f"--capacity applies to --dispatch capacity only, not '{dispatch}'",
                         "drop --capacity or pass --dispatch capacity")
    return None


def output_target(fmt: ExportFormat, output: Any) -> Any:
    """What ``-o`` asks of ``fmt``: an :class:`~dyt_edge.output_files.OutputTarget` (a directory,
    or a model file name inside one). A file name whose suffix ``fmt`` does not write is a
    :class:`UsageError` naming the fix."""
    from pathlib import Path

    from dyt_edge import artifacts, output_files

    p = Path(output)
    suffix = Path(fmt.primary).suffix
    writes = {f.name: Path(f.primary).suffix for f in FORMATS.values()}
    refuse: dict[str, tuple[str, str]] = {}
    for other, other_suffix in writes.items():
        if other_suffix != suffix:
            refuse[other_suffix] = (
                f"--format {fmt.name} writes a model file ending in {suffix}, not "
                f"{other_suffix}", f"pass -o {p.with_suffix(suffix)}, or --format {other} for "
                f"a {other_suffix} file")
    refuse[".bin"] = ("a .bin is the OpenVINO weights file, written beside the .xml",
                      f"pass -o {p.with_suffix(suffix)}"
                      + (f" (--format {fmt.name} writes {p.with_suffix('.bin').name} "
                         "beside it)" if fmt.name == "openvino" else ""))
    refuse[".json"] = (f"-o names the model file; the manifest ({artifacts.MANIFEST_NAME}) is "
                       "written beside it", f"pass -o {p.with_suffix(suffix)}, or a directory")
    for engine in (".engine", ".plan"):
        refuse[engine] = ("a TensorRT engine is built from an export, not exported",
                          f"export with -o {p.with_suffix('.onnx')}, then run `dyt-edge build "
                          "--target tensorrt` on it")
    if fmt.name == "openvino":
        refuse[".onnx"] = (f"--format openvino writes an .xml IR (+ .bin; the validated ONNX "
                           f"is kept beside it as {p.with_suffix('.onnx').name})",
                           f"pass -o {p.with_suffix('.xml')}, or --format onnx for an .onnx "
                           "model")
    return output_files.output_target(p, suffix, refuse)


def format_table_markdown() -> str:
    """The README's table of formats and the options each takes."""
    rows = ["| format | files | options | validated on | CPU | GPU |",
            "|---|---|---|---|---|---|"]
    for f in FORMATS.values():
        opts = " ".join(f"`{EXPORT_OPTIONS[k]}`" for k in EXPORT_OPTIONS if k in f.options)
        files = ", ".join(name for _, name in f.files)
        rows.append(f"| `{f.name}` | {files} | {opts} | {f.runtime} | "
                    f"{'yes' if f.cpu else 'no'} | {'yes' if f.gpu else 'no'} |")
    return "\n".join(rows)
