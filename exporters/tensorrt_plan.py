"""TensorRT build plans: batch profiles, trtexec command lines, engine metadata, and which
dispatch mode to deploy. Torch-free and TensorRT-free (tested on machines without either).

Dispatch on TensorRT: ``pack`` (the default), ``topk`` or ``capacity``
--------------------------------------------------------------------
All three export modes parse on TensorRT 10.x and 11.x (NonZero since 8.5, TopK with a
data-dependent K since 8.6 as long as K < 3840 and ``sorted=1``, GatherND, ScatterND without a
reduction); they differ in what TensorRT knows about shapes when it builds the engine, and in
what a batch costs.

``pack`` (the default export) finds the active tokens of the whole batch with NonZero, gathers
them into one ``[M, C]`` matrix (GatherND), runs the MLP on it and scatters the results back
(ScatterND): M is the batch's total active count, so a batch costs its *mean* activation, at any
batch size. ``topk`` computes, per batch, K = the largest number of tokens any image lets
through and gathers ``[B, K, C]`` (TopK with a data-dependent K): one busy image makes the whole
batch pay for its tokens. Both are exactly the DyT reference (no token is ever dropped), and
both have one *data-dependent* dimension per dispatcher (M or K), known only while the engine
runs: TensorRT picks kernels without knowing it, has to learn the size while the engine runs,
and such an engine cannot be captured in a CUDA graph. Since they pay that price alike, ``pack``
is the better of the two for the ``mlp`` variant (equal at batch 1, the mean instead of the
maximum above it), and it has no TopK, so TensorRT's K < 3840 bound does not apply (a TopK over
the flattened batch would pass it at batch 20 with ViT-B/16's 197 tokens, which is why ``pack``
uses NonZero). Attention sub-blocks (variants ``attn``, ``attn_mlp``, ``layer``) gather per image
in both modes (TopK, K = the batch maximum): each image attends among its own tokens only. No
output allocator is needed: the engine's outputs (``logits`` [B, classes], ``masks`` [B, L, N])
have shapes that follow from the batch alone; output allocators are only for data-dependent
*outputs* (a ``NonZero`` that is a network output).

``capacity`` keeps a fixed number of slots per layer (``--capacity C``: a share of the patch
tokens) and runs TopK with a constant K. Every shape is then static for a given batch, so the
only dynamic dimension is the batch itself, covered by the optimization profile (``--batch
MIN:OPT:MAX``, tuned for OPT): TensorRT selects kernels for the exact shapes, no host
synchronisation happens inside the engine, and CUDA graphs work (``RuntimeOptions.extra
["cuda_graph"]``). The price: an image whose gates want more tokens than C loses the overflow
(``dyt-edge validate`` counts it), and an image that wants fewer still pays for C.

Recommendation: **keep the default ``pack`` export** on TensorRT for exact results at every
batch size; **deploy ``capacity``** where static shapes matter more than exactness (CUDA graphs,
the lowest latency at a served batch), with C at or slightly above the activation rate
measured on real images (``dyt-edge bench --data DATA`` reports it; pick C so that
``dyt-edge validate`` shows no or negligible capacity overflow) and ``--batch`` whose OPT is the
batch you serve. ``topk`` brings nothing over ``pack`` for the ``mlp`` variant. This
recommendation follows the TensorRT documentation and the facts above; it has not been
measured on a GPU here (no GPU on the development machines): ``dyt-edge bench --target
tensorrt`` on both exports settles it for a given model and GPU.
"""

from __future__ import annotations

import datetime as _dt
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from dyt_edge.errors import UsageError

from .tensorrt_gpus import (SUPPORTED_MAJORS, DetectedGpu, GpuProfile, TensorRTInstall,
                            parse_version)

DEFAULT_BATCH = "1:8:32"
DEFAULT_WORKSPACE_GIB = 4.0
MAX_WORKSPACE_GIB = 1024.0
ENGINE_FILE = "model.engine"
ONNX_FILE = "model.onnx"
METADATA_FILE = "engine.json"
METADATA_FORMAT = "dyt-edge tensorrt engine"
METADATA_SCHEMA = 1
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

def dispatch_advice(manifest: Mapping[str, Any], report: Optional[Mapping[str, Any]] = None
                    ) -> list[str]:
    """What the export's dispatch mode means on TensorRT (see the module doc), as lines."""
    dispatch = manifest.get("dispatch") or {}
    mode = dispatch.get("mode", "?")
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
        cap = dispatch.get("capacity")
        slots = dispatch.get("capacity_slots")
        lines.append(f"this export: capacity {cap} ({slots} slots per layer): static shapes "
                     "(kernels for the exact shapes, CUDA graphs possible); tokens beyond the "
                     "slots are dropped: check the overflow with `dyt-edge validate`")
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
                    io: Sequence[Mapping[str, Any]] = (), dyt_edge_version: str = "?",
                    timing_cache: Optional[str] = None) -> dict[str, Any]:
    """What is stored beside the engine (``engine.json``) and in the manifest: enough to
    refuse loading it where it cannot run (another GPU, another TensorRT)."""
    return {
        "format": METADATA_FORMAT,
        "schema": METADATA_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dyt_edge_version": dyt_edge_version,
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


def check_engine_metadata(meta: Mapping[str, Any], gpu: Optional[DetectedGpu],
                          trt_version: Optional[str], *, allow_gpu_model_mismatch: bool = False
                          ) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of running an engine with metadata ``meta`` on ``gpu`` under
    TensorRT ``trt_version``. A different TensorRT version or compute capability is always a
    problem (the engine cannot load, or loads and fails); a different GPU model of the same
    compute capability (A10 vs A2, A100 vs A30) is a problem too unless
    ``allow_gpu_model_mismatch`` (then a warning: TensorRT itself warns it may be slower or
    fail)."""
    problems: list[str] = []
    warnings: list[str] = []
    if meta.get("format") != METADATA_FORMAT:
        return [f"not a dyt-edge TensorRT engine record (format {meta.get('format')!r})"], []
    if int(meta.get("schema", 0)) > METADATA_SCHEMA:
        problems.append(f"engine record schema {meta.get('schema')} is newer than this "
                        f"dyt-edge reads ({METADATA_SCHEMA})")
    built_trt = str((meta.get("tensorrt") or {}).get("version", "?"))
    if trt_version is not None and parse_version(built_trt) != parse_version(trt_version):
        problems.append(f"the engine was built with TensorRT {built_trt}, this is TensorRT "
                        f"{trt_version} (an engine only loads in the TensorRT version that "
                        "built it)")
    built = meta.get("gpu") or {}
    built_name = built.get("name", "?")
    built_cc = str(built.get("compute_capability", "?"))
    if gpu is None:
        problems.append(f"no NVIDIA GPU found (the engine was built for {built_name}, "
                        f"compute capability {built_cc})")
    elif gpu.cc != built_cc:
        problems.append(f"the engine was built for {built_name} (compute capability "
                        f"{built_cc}), this GPU is {gpu.name} ({gpu.cc}): engines do not "
                        "move between GPU architectures")
    elif built.get("profile") and gpu.profile.key != built.get("profile"):
        msg = (f"the engine was built on {built_name}, this GPU is {gpu.name} (same compute "
               f"capability {gpu.cc})")
        if allow_gpu_model_mismatch:
            warnings.append(msg + ": it may run slower or fail (TensorRT's own warning)")
        else:
            problems.append(msg + ": engines are built for one GPU model")
    return problems, warnings


def rebuild_hint(manifest: Mapping[str, Any], artifact: Path) -> str:
    build = manifest.get("build") or {}
    parent = build.get("parent")
    src = (artifact / parent).resolve() if parent else "EXPORT"
    return (f"rebuild it here: dyt-edge build --target tensorrt {src} --gpu auto --precision "
            f"{build.get('precision', 'fp32')}")


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
    dispatch: dict[str, Any]
    graph_report: dict[str, Any]
    """:func:`dyt_edge.exporters.graph_report.analyze` of the source ONNX."""
    calibration: Optional[str] = None
    problems: list[Any] = field(default_factory=list)
    """:class:`~.tensorrt_gpus.Problem` s that stop a real build here."""
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
        return dispatch_advice({"dispatch": self.dispatch}, self.graph_report)

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
            "dispatch": self.dispatch, "dispatch_advice": self.advice(),
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

    from .graph_report import render as render_graph

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
    table.add_row("installed", (t.describe() + ("" if t.importable else
                                                 f" [red]not importable[/]: {escape(str(t.import_error))}"))
                  if t else "TensorRT not installed")
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
           "METADATA_FILE", "ONNX_FILE", "RECOMMENDATION", "TensorRTPlan", "check_engine_metadata",
           "check_workspace", "dispatch_advice", "engine_metadata", "parse_batch", "render",
           "shell", "trtexec_command", "trtexec_majors"]
