"""TensorRT build plans: batch profiles, trtexec command lines, the engine record, and which
dispatch mode to deploy. Torch-free and TensorRT-free (tested on machines without either).

Why ``pack`` is the default on TensorRT and when to deploy ``capacity`` instead is explained,
with the TensorRT facts it rests on, in ``docs/backends.md`` (section "TensorRT: which dispatch
mode"); :data:`RECOMMENDATION` is its one-line form.
"""

from __future__ import annotations

import datetime as _dt
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ...errors import UsageError
from ...manifest import Dispatch
from ...reports import report_header
from ...runtimes.tensorrt.engine_file import (ENGINE_FILE, METADATA_FILE, METADATA_KIND,
                                              METADATA_SCHEMA, ONNX_FILE)
from ...runtimes.tensorrt.gpus import SUPPORTED_MAJORS, DetectedGpu, GpuProfile
from ...runtimes.tensorrt.install import TensorRTInstall

DEFAULT_BATCH = "1:8:32"
DEFAULT_WORKSPACE_GIB = 4.0
MAX_WORKSPACE_GIB = 1024.0
TOPK_MAX_K = 3840

RECOMMENDATION = ("keep the default `pack` export for exact results at every batch size (the "
                  "MLP computes the batch's active tokens alone); deploy `capacity` where static "
                  "shapes matter more than exactness (kernels chosen for the exact shapes, no "
                  "host sync inside the engine, CUDA graphs), with --capacity at or above the "
                  "activation rate measured on real images")


# -- --batch ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile of the batch dimension (``MIN:OPT:MAX``)."""

    min: int
    opt: int
    max: int
    static: bool = False
    """The export has a static batch (no profile needed: min = opt = max)."""

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def shapes(self, chw: Sequence[int]) -> dict[str, tuple[int, ...]]:
        c = tuple(int(v) for v in chw)
        return {"min": (self.min, *c), "opt": (self.opt, *c), "max": (self.max, *c)}

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min, "opt": self.opt, "max": self.max, "static": self.static}


def parse_batch(text: Optional[str], static_batch: Optional[int] = None) -> BatchProfile:
    """``--batch MIN:OPT:MAX`` (or one number N for N:N:N), checked: integers, 1 <= MIN <= OPT
    <= MAX. A static-batch export takes no other batch than its own."""
    if static_batch is not None:
        s = int(static_batch)
        if text is not None:
            prof = parse_batch(text)
            if (prof.min, prof.opt, prof.max) != (s, s, s):
                raise UsageError(f"--batch {text}: this export has a static batch of {s}",
                                 f"drop --batch (the engine takes batch {s}), or re-export "
                                 "with a dynamic batch")
        return BatchProfile(s, s, s, static=True)
    raw = DEFAULT_BATCH if text is None else str(text).strip()
    parts = raw.split(":")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise UsageError(f"--batch takes MIN:OPT:MAX (three integers), got '{text}'",
                         f"e.g. --batch {DEFAULT_BATCH} (the default), or --batch 8 for 8:8:8")
    lo, opt, hi = (int(p) for p in parts)
    if lo < 1:
        raise UsageError(f"--batch {text}: the smallest batch must be at least 1",
                         f"e.g. --batch 1:{max(opt, 1)}:{max(hi, 1)}")
    if not lo <= opt <= hi:
        raise UsageError(f"--batch {text}: needs MIN <= OPT <= MAX",
                         f"e.g. --batch {min(lo, opt, hi)}:{sorted((lo, opt, hi))[1]}:"
                         f"{max(lo, opt, hi)}")
    return BatchProfile(lo, opt, hi)


def check_workspace(gib: Optional[float]) -> float:
    """``--workspace GiB``: positive, at most :data:`MAX_WORKSPACE_GIB`."""
    if gib is None:
        return DEFAULT_WORKSPACE_GIB
    try:
        value = float(gib)
    except (TypeError, ValueError):
        raise UsageError(f"--workspace takes a size in GiB, got {gib!r}",
                         "e.g. --workspace 4") from None
    if not 0 < value <= MAX_WORKSPACE_GIB or value != value:
        raise UsageError(f"--workspace must be in (0, {MAX_WORKSPACE_GIB:g}] GiB, got {gib}",
                         "e.g. --workspace 4")
    return value


def workspace_mib(gib: float) -> int:
    return max(1, int(round(gib * 1024)))


# -- trtexec ------------------------------------------------------------------------------------

def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_command(*, major: int, onnx: str, engine: str, input_name: str,
                    batch: BatchProfile, chw: Sequence[int], workspace_gib: float,
                    timing_cache: Optional[str] = None) -> list[str]:
    """The ``trtexec`` line that builds the same engine with TensorRT ``major``.

    Both majors build a strongly typed network from the ONNX (whose precisions are explicit):
    TensorRT 10 needs ``--stronglyTyped``; TensorRT 11 removed weak typing and the flag (always
    on), and its precision flags (``--fp16``, ``--int8``) are gone, so none is passed to either.
    ``--memPoolSize=workspace:N`` is in MiB (no suffix: trtexec's default unit). Shapes are
    given only for a dynamic batch (every dynamic input needs its profile).
    """
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if not batch.static:
        shapes = batch.shapes(chw)
        cmd += [f"--minShapes={input_name}:{shape_text(shapes['min'])}",
                f"--optShapes={input_name}:{shape_text(shapes['opt'])}",
                f"--maxShapes={input_name}:{shape_text(shapes['max'])}"]
    if major < 11:
        cmd.append("--stronglyTyped")
    cmd.append(f"--memPoolSize=workspace:{workspace_mib(workspace_gib)}")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def shell(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def trtexec_majors(gpu: Optional[GpuProfile], trt: Optional[TensorRTInstall]) -> list[int]:
    """The majors to print a command for: the installed one, else each one the GPU supports."""
    if trt is not None and trt.major in SUPPORTED_MAJORS:
        return [trt.major]
    return list(gpu.majors if gpu is not None else SUPPORTED_MAJORS)


# -- dispatch -----------------------------------------------------------------------------------

def dispatch_advice(dispatch: Dispatch, report: Optional[Mapping[str, Any]] = None
                    ) -> list[str]:
    """What the export's dispatch mode means on TensorRT (``docs/backends.md``), as lines."""
    mode = dispatch.mode
    dispatchers = (report or {}).get("dispatchers") or []
    lines: list[str] = []
    if mode == "topk":
        bounds = [d.get("k_bound") for d in dispatchers if d.get("k_bound") is not None]
        bound = max(bounds) if bounds else None
        ok = bound is not None and bound < TOPK_MAX_K
        lines.append(
            "this export: topk (TopK with a data-dependent K = the batch's largest active "
            f"count, <= {bound if bound is not None else '?'} tokens"
            + (f", under TensorRT's limit of {TOPK_MAX_K}" if ok else
               f"; TensorRT needs K < {TOPK_MAX_K}") + "): exact, but the dispatched tokens "
            "have data-dependent shapes (host sync inside the engine, no CUDA graphs), and a "
            "batch pays its busiest image (the default pack export pays the mean)")
    elif mode == "capacity":
        slots = list(dispatch.capacity_slots) if dispatch.capacity_slots is not None else None
        lines.append(f"this export: capacity {dispatch.capacity} ({slots} slots per layer): "
                     "static shapes (kernels for the exact shapes, CUDA graphs possible); tokens "
                     "beyond the slots are dropped: check the overflow with `dyt-edge validate`")
    elif mode == "pack":
        lines.append("this export: pack (NonZero: the batch's active tokens in one matrix): "
                     "exact, a batch costs its mean activation; the dispatched tokens have "
                     "data-dependent shapes (host sync inside the engine, no CUDA graphs)")
    else:
        lines.append(f"this export: {mode} (no token skipping: every token is computed)")
    lines.append("recommended: " + RECOMMENDATION)
    if mode in ("topk", "pack"):
        lines.append("for static shapes: dyt-edge export CKPT --dispatch capacity --capacity C "
                     "(C from `dyt-edge bench --data DATA`'s activation rate), then build it")
    return lines


# -- engine metadata ----------------------------------------------------------------------------

def engine_metadata(*, trt: TensorRTInstall, gpu: DetectedGpu, profile: GpuProfile,
                    precision: str, batch: BatchProfile, input_name: str,
                    chw: Sequence[int], dispatch: Mapping[str, Any],
                    source_model: Mapping[str, Any], onnx: Mapping[str, Any],
                    engine: Mapping[str, Any], workspace_gib: float,
                    io: Sequence[Mapping[str, Any]] = (),
                    timing_cache: Optional[str] = None) -> dict[str, Any]:
    """What is stored beside the engine (``engine.json``) and in the manifest: enough to
    refuse loading it where it cannot run (another GPU, another TensorRT)."""
    return {
        **report_header(METADATA_KIND, METADATA_SCHEMA,
                        _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")),
        "engine": dict(engine),
        "tensorrt": {"version": trt.version, "major": trt.major, "package": trt.package,
                     "cuda_major": trt.cuda_major},
        "gpu": {"name": gpu.name, "profile": profile.key, "compute_capability": gpu.cc,
                "sm": profile.sm, "architecture": profile.architecture,
                "memory_mib": gpu.memory_mib, "driver": gpu.driver},
        "precision": precision,
        "strongly_typed": True,
        "hardware_compatibility": "none",
        "profile": {"input": input_name, **{k: list(v) for k, v in batch.shapes(chw).items()},
                    "static": batch.static},
        "dispatch": dict(dispatch),
        "source_model": dict(source_model),
        "onnx": dict(onnx),
        "workspace_mib": workspace_mib(workspace_gib),
        "timing_cache": timing_cache,
        "io": [dict(t) for t in io],
    }


# -- the plan -----------------------------------------------------------------------------------

@dataclass
class TensorRTPlan:
    """Everything a TensorRT build will do, decided before anything is built."""

    export: str
    """The export directory."""
    source_onnx: str
    source_sha256: str
    output: str
    """The artifact directory the build writes."""
    precision: str
    conversion: str
    """What happens to the ONNX before TensorRT parses it."""
    gpu: Optional[GpuProfile]
    detected: Optional[DetectedGpu]
    tensorrt: Optional[TensorRTInstall]
    input_name: str
    chw: tuple[int, int, int]
    batch: BatchProfile
    workspace_gib: float
    timing_cache: Optional[str]
    dispatch: Dispatch
    graph_report: dict[str, Any]
    """:func:`dyt_edge.exporters.graph_report.analyze` of the source ONNX."""
    calibration: Optional[str] = None
    problems: list[Any] = field(default_factory=list)
    """:class:`~dyt_edge.runtimes.tensorrt.install.Problem` s that stop a real build here."""
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def engine_onnx(self) -> str:
        """The ONNX TensorRT parses: the export's (fp32), else the converted one, written into
        the output directory."""
        return self.source_onnx if self.precision == "fp32" else str(Path(self.output) /
                                                                     ONNX_FILE)

    @property
    def ok(self) -> bool:
        return not self.problems

    def commands(self) -> dict[int, list[str]]:
        return {major: trtexec_command(
            major=major, onnx=self.engine_onnx, engine=str(Path(self.output) / ENGINE_FILE),
            input_name=self.input_name, batch=self.batch, chw=self.chw,
            workspace_gib=self.workspace_gib, timing_cache=self.timing_cache)
            for major in trtexec_majors(self.gpu, self.tensorrt)}

    def advice(self) -> list[str]:
        return dispatch_advice(self.dispatch, self.graph_report)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "ok": self.ok, "export": self.export,
            "source_model": {"file": self.source_onnx, "sha256": self.source_sha256},
            "output": self.output, "precision": self.precision, "conversion": self.conversion,
            "calibration": self.calibration,
            "gpu": self.gpu.to_dict() if self.gpu else None,
            "detected_gpu": self.detected.to_dict() if self.detected else None,
            "tensorrt": self.tensorrt.to_dict() if self.tensorrt else None,
            "input": {"name": self.input_name, "chw": list(self.chw)},
            "batch": self.batch.to_dict(),
            "profile": {k: list(v) for k, v in self.batch.shapes(self.chw).items()},
            "workspace_gib": self.workspace_gib, "workspace_mib": workspace_mib(
                self.workspace_gib), "timing_cache": self.timing_cache,
            "dispatch": self.dispatch.to_dict(), "dispatch_advice": self.advice(),
            "tensorrt_compatibility": self.graph_report.get("tensorrt", []),
            "trtexec": {str(m): shell(c) for m, c in self.commands().items()},
            "problems": [asdict(p) if hasattr(p, "__dataclass_fields__") else str(p)
                         for p in self.problems],
            "warnings": list(self.warnings),
        }


def render(plan: TensorRTPlan, console=None) -> None:
    """The dry-run report: the ONNX's TensorRT compatibility, the plan, dispatch advice and the
    trtexec line(s)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..graph_report import render as render_graph

    console = console or Console()
    title = "TensorRT build plan" + (" (dry run: nothing is built)" if plan.dry_run else "")
    console.print(f"[bold]{title}[/]")
    render_graph(plan.graph_report, console)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    g = plan.gpu
    if g is not None:
        table.add_row("GPU", f"{g.name} ({g.sm}, {g.architecture}, {g.memory}; FP16 tensor "
                      f"cores {'yes' if g.fp16_tensor_cores else 'no'}, INT8 tensor cores "
                      f"{'yes' if g.int8_tensor_cores else 'no'})")
        table.add_row("TensorRT for it", f"{g.tensorrt}; pip: {g.package}")
    else:
        table.add_row("GPU", "none (no GPU detected; pass --gpu NAME to plan for one)")
    d = plan.detected
    table.add_row("this machine", (f"{d.name} ({d.cc}, {d.memory_mib} MiB, {d.source})" if d
                                   else "no NVIDIA GPU found"))
    t = plan.tensorrt
    broken = "" if t is None or t.importable else \
        f" [red]not importable[/]: {escape(str(t.import_error))}"
    table.add_row("installed", t.describe() + broken if t else "TensorRT not installed")
    table.add_row("precision", f"{plan.precision}: {plan.conversion}")
    if plan.calibration:
        table.add_row("calibration", plan.calibration)
    table.add_row("network", "strongly typed, parsed from " + plan.engine_onnx)
    shapes = plan.batch.shapes(plan.chw)
    table.add_row("profile", ("static batch " + str(plan.batch.min)) if plan.batch.static else
                  f"{plan.input_name}: min {shape_text(shapes['min'])}, opt "
                  f"{shape_text(shapes['opt'])}, max {shape_text(shapes['max'])}")
    table.add_row("workspace", f"{plan.workspace_gib:g} GiB ({workspace_mib(plan.workspace_gib)}"
                  " MiB)")
    table.add_row("timing cache", plan.timing_cache or "none (--timing-cache PATH reuses tactic "
                  "timings between builds)")
    table.add_row("writes", f"{plan.output}/ ({ENGINE_FILE}, {ONNX_FILE}, {METADATA_FILE}, "
                  "dyt_edge.json)")
    console.print(table)
    console.print("[bold]Dispatch on TensorRT[/]")
    for line in plan.advice():
        console.print(f"  {escape(line)}")
    console.print("[bold]Equivalent trtexec command[/]" + (
        "" if plan.tensorrt is not None else " (no TensorRT installed: one per supported major)"))
    for major, cmd in plan.commands().items():
        console.print(f"  TensorRT {major}.x:", soft_wrap=True)
        console.print(f"    {escape(shell(cmd))}", soft_wrap=True)
    if plan.precision != "fp32":
        console.print(f"  ({plan.engine_onnx} is the converted {plan.precision} graph that "
                      "`dyt-edge build` writes; trtexec takes no precision flag for it)")
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    for p in plan.problems:
        console.print(f"[red]missing:[/] {escape(str(p))}")


__all__ = ["BatchProfile", "DEFAULT_BATCH", "DEFAULT_WORKSPACE_GIB", "ENGINE_FILE",
           "METADATA_FILE", "ONNX_FILE", "RECOMMENDATION", "TensorRTPlan",
           "check_workspace", "dispatch_advice", "engine_metadata", "parse_batch", "render",
           "shell", "trtexec_command", "trtexec_majors"]
