"""``dyt-edge demo``: the whole pipeline in one command, on the embedded digits model (is every
target exact?) and on a ViT-B/16-sized model (does skipping pay?).

Steps (each reuses what is already there and still valid, so a second run is quick):

1. **train** the digits demo model (``dyt-edge train --data digits``), or reuse
   ``runs/digits-mlp.safetensors`` when ``dyt-edge train`` wrote it from the digits preset;
2. **export** it to ``dyt-edge-out/digits-mlp/`` (ONNX + OpenVINO IR with the default ``pack``
   dispatch, validated in ONNX Runtime and OpenVINO);
3. **build** OpenVINO IR at fp32 and INT8 (NNCF, calibrated on the digits training split);
4. per target (ONNX Runtime fp32, OpenVINO fp32, OpenVINO INT8, and OpenVINO bf16 where the CPU
   has it): **validate** against PyTorch on the held-out digits, then **bench** it against the
   complete model on the same runtime and precision;
5. **ViT-B/16**: the 4-block, width-64 digits model is too small for skipping to pay (the
   dispatch overhead is a large share of its tiny sub-blocks), so the same run also measures a
   model of the paper's size: a synthetic ViT-B/16 DyT (:mod:`dyt_edge.synthetic`: random
   weights at trained-model scales, gates calibrated so that half of the patch tokens of the
   demo images are active; its accuracy means nothing and the table says so), saved to
   ``runs/synthetic-vitb16.safetensors``, exported (not validated: the digits rows validate
   every target) and benched on OpenVINO f32 against its complete model at batch 1 and 8;
6. print one table: model | target | precision | status | size MB | accuracy | delta vs
   PyTorch | ms/img | img/s | speedup vs complete at batch 1 and batched.

A target that fails gets its row (``failed`` with the reason, or ``built, failed validation``)
and the run goes on; the exit code is 1 when any target did not pass.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .config import DEFAULT_DISPATCH
from .errors import DytEdgeError
from .reports import report_header

KIND = "demo"
SCHEMA_VERSION = 1
"""Version of the JSON report (1: the first with the common header of ``docs/reports.md``)."""

DEFAULT_CHECKPOINT = Path("runs") / "digits-mlp.safetensors"
DEFAULT_OUT = Path("dyt-edge-out") / "digits-mlp"
BENCH_BATCHES = (1, 32)
"""ms/img is reported at batch 1 (latency), img/s and the speedup at batch 32 (throughput)."""
VITB_CHECKPOINT = Path("runs") / "synthetic-vitb16.safetensors"
VITB_DATA = Path("runs") / "synthetic-vitb16-images.npz"
VITB_OUT = Path("dyt-edge-out") / "synthetic-vitb16"
VITB_BATCHES = (1, 8)
"""A ViT-B/16 inference on 2 cores takes ~0.2 s per image: batch 8 keeps the run short."""
VITB_IMAGES = 32
VITB_RATE = 0.5
VITB_NAME = "ViT-B/16 (synthetic)"

Say = Callable[[str], None]


@dataclass
class TargetRow:
    target: str
    precision: str
    status: str = "failed"
    """``passed`` | ``built, failed validation`` | ``failed``; ``measured`` for the synthetic
    model (benched, nothing to validate on)."""
    model: str = "digits"
    batched: int = BENCH_BATCHES[-1]
    """The batch size of ``images_per_s`` and ``speedup``."""
    artifact: Optional[str] = None
    size_mb: Optional[float] = None
    accuracy: Optional[float] = None
    """Top-1 on the held-out digits, percent."""
    reference_accuracy: Optional[float] = None
    delta: Optional[float] = None
    """Accuracy minus PyTorch's, points."""
    agreement: Optional[float] = None
    """Top-1 agreement with PyTorch, percent."""
    flips: Optional[float] = None
    """Gate decisions flipped vs PyTorch, percent."""
    ms_per_image: Optional[float] = None
    """Batch-1 mean latency."""
    images_per_s: Optional[float] = None
    """Batch-32 throughput."""
    speedup: Optional[float] = None
    """Batch-32 throughput over the complete model's (same runtime and precision)."""
    speedup_b1: Optional[float] = None
    flops_ratio: Optional[float] = None
    failed_checks: list[str] = field(default_factory=list)
    error: Optional[str] = None
    seconds: float = 0.0


@dataclass
class DemoResult:
    checkpoint: str
    trained: bool
    export: str
    rows: list[TargetRow]
    seconds: float
    steps: dict[str, float]
    created: str = ""

    @property
    def passed(self) -> bool:
        return all(r.status in ("passed", "measured") for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report of ``dyt-edge demo --json`` (``docs/reports.md``)."""
        return {**report_header(KIND, SCHEMA_VERSION, self.created),
                "checkpoint": self.checkpoint, "trained": self.trained, "export": self.export,
                "passed": self.passed, "seconds": self.seconds, "steps": self.steps,
                "rows": [asdict(r) for r in self.rows]}


def demo_targets(bf16: Optional[bool] = None) -> list[tuple[str, str]]:
    """(target, precision) pairs the demo runs; bf16 only where the CPU has it (None: ask
    OpenVINO)."""
    targets = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "int8")]
    if bf16 is None:
        bf16 = _cpu_has("BF16")
    if bf16:
        targets.append(("openvino", "bf16"))
    return targets


def _cpu_has(capability: str) -> bool:
    try:
        from .runtimes.openvino_runtime import device_capabilities

        return capability in device_capabilities()
    except Exception:  # noqa: BLE001 - no OpenVINO: the openvino rows report it themselves
        return False


def _checkpoint_metadata(path: Path) -> Optional[dict[str, str]]:
    """The dyt-edge metadata of the checkpoint at ``path``, or None when there is no readable
    checkpoint there (it is then made again)."""
    if not path.is_file():
        return None
    try:
        from .checkpoint import read_checkpoint

        return read_checkpoint(path).metadata
    except DytEdgeError:
        return None


def _reusable_checkpoint(path: Path) -> bool:
    """True when ``path`` is a model ``dyt-edge train`` wrote from the digits data."""
    from .checkpoint import training_record

    record = training_record(_checkpoint_metadata(path) or {})
    return record is not None and record["data"] == "digits"


def _reusable_export(out: Path, checkpoint: Path) -> bool:
    from .artifacts import ArtifactError, file_sha256, load_artifact

    try:
        art = load_artifact(out)
        info = art.info
    except ArtifactError:
        return False
    return (info.source.sha256 == file_sha256(checkpoint)
            and info.dispatch.mode == DEFAULT_DISPATCH and "openvino" in art.kinds
            and bool(info.section("validation").get("passed", True)))


def run_demo(*, checkpoint: Path = DEFAULT_CHECKPOINT, out: Path = DEFAULT_OUT,
             retrain: bool = False, duration: float = 1.5, warmup: float = 0.3,
             targets: Optional[list[tuple[str, str]]] = None, say: Optional[Say] = None,
             realistic: Any = True) -> DemoResult:
    """Run the demo; returns its result (the CLI renders it). Raises only when a step every
    target depends on (training, export) fails. ``realistic``: True for the synthetic
    ViT-B/16 row, False to leave it out, or a :class:`~dyt_edge.config.DyTConfig` to measure
    a synthetic model of that shape instead (tests)."""
    say = say or (lambda _m: None)
    start = time.perf_counter()
    steps: dict[str, float] = {}

    # 1. train or reuse
    t0 = time.perf_counter()
    trained = False
    if retrain or not _reusable_checkpoint(checkpoint):
        from .train import TrainConfig, train

        say(f"train: the digits demo model -> {checkpoint} (about 2 minutes on 2 cores)")

        def on_epoch(event) -> None:
            if event.kind == "epoch" and (event.epoch % 5 == 0 or event.epoch == 1):
                say(f"train: epoch {event.epoch}/{event.epochs}, loss {event.loss:.3f}, "
                    f"activation {event.activation:.2f}, {event.elapsed_s:.0f} s")

        result = train(TrainConfig(data="digits", output=str(checkpoint)), progress=on_epoch)
        trained = True
        say(f"train: {result.summary().get('accuracy', 0):.2%} held-out"
            if isinstance(result.summary().get("accuracy"), float) else "train: done")
    else:
        say(f"train: reusing {checkpoint} (pass --retrain to train again)")
    steps["train"] = time.perf_counter() - t0

    # 2. export
    t0 = time.perf_counter()
    from .exporters.pipeline import ExportOptions, export_checkpoint

    if trained or not _reusable_export(out, checkpoint):
        say(f"export: {checkpoint} -> {out} (ONNX + OpenVINO IR, {DEFAULT_DISPATCH} dispatch, "
            "validated)")
        export_checkpoint(checkpoint, out, ExportOptions(format="openvino"))
    else:
        say(f"export: reusing {out}")
    steps["export"] = time.perf_counter() - t0

    from .artifacts import load_artifact, utc_now

    exported = load_artifact(out)
    rows = []
    built: dict = {}
    for target, precision in (targets or demo_targets()):
        t0 = time.perf_counter()
        row = _run_target(exported, target, precision, duration, warmup, say, built)
        row.seconds = time.perf_counter() - t0
        steps[f"{target}-{precision}"] = row.seconds
        rows.append(row)
    if realistic is not False:
        t0 = time.perf_counter()
        row = realistic_row(None if realistic is True else realistic, duration=duration,
                            warmup=warmup, say=say)
        row.seconds = time.perf_counter() - t0
        steps["vitb16"] = row.seconds
        rows.append(row)
    return DemoResult(checkpoint=str(checkpoint), trained=trained, export=str(out), rows=rows,
                      seconds=time.perf_counter() - start, steps=steps, created=utc_now())


def _artifact_for(exported, target: str, precision: str, say: Say, built: dict):
    """The artifact a target runs: the export itself for ONNX Runtime, a build for OpenVINO
    (bf16 runs the fp32 IR at bf16 inference precision). ``built`` caches builds of this run."""
    if target == "onnxruntime":
        return exported
    from .build import build_artifact

    built_precision = "fp32" if precision == "bf16" else precision
    key = (target, built_precision)
    if key not in built:
        say(f"build: {target} {built_precision}"
            + (" (NNCF, calibrated on the digits training split)"
               if built_precision == "int8" else ""))
        built[key] = build_artifact(exported, target, precision=built_precision,
                                    calib="digits" if built_precision == "int8" else None
                                    ).artifact
    return built[key]


def _run_target(exported, target: str, precision: str, duration: float, warmup: float,
                say: Say, built: dict) -> TargetRow:
    from .bench import bench_artifact
    from .validate import validate_artifact

    row = TargetRow(target=target, precision=precision)
    try:
        art = _artifact_for(exported, target, precision, say, built)
        row.artifact = str(art.path)
        row.size_mb = _model_megabytes(art, target)
        say(f"validate: {target} {precision}")
        report = validate_artifact(art, target, precision=precision)
        m = report.metrics
        row.accuracy = m.get("target_accuracy_pct")
        row.reference_accuracy = m.get("reference_accuracy_pct")
        row.delta = m.get("accuracy_delta_points")
        row.agreement = m.get("top1_agreement_pct")
        row.flips = m.get("flip_pct")
        row.failed_checks = [c.name for c in report.checks if c.status == "fail"]
        say(f"bench: {target} {precision} vs its complete model, batch "
            f"{', '.join(map(str, BENCH_BATCHES))}")
        bench = bench_artifact(art, target, precision=precision, batches=BENCH_BATCHES,
                               duration=duration, warmup=warmup)
        b1, b32 = bench.result(BENCH_BATCHES[0]), bench.result(BENCH_BATCHES[-1])
        row.ms_per_image = b1.dyt.latency.mean / b1.batch
        row.images_per_s = b32.dyt.images_per_s
        row.speedup = b32.speedup
        row.speedup_b1 = b1.speedup
        row.flops_ratio = b32.flops_ratio
        row.status = "passed" if report.passed else "built, failed validation"
    except DytEdgeError as exc:
        row.error = str(exc)
        row.status = "built, failed validation" if row.failed_checks else "failed"
        say(f"[{target} {precision}] {exc}")
    except Exception as exc:  # noqa: BLE001 - one target failing must not stop the demo
        row.error = _unexpected(exc)
        say(f"[{target} {precision}] unexpected error: {row.error}")
    return row


def _unexpected(exc: BaseException) -> str:
    """``TypeName: first line`` of an error no dyt-edge check anticipated."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"


def _model_megabytes(art, target: str) -> Optional[float]:
    files = art.info.files
    kinds = ("onnx",) if target == "onnxruntime" else ("openvino", "openvino_weights")
    total = sum(int(files[k].bytes or 0) for k in kinds if k in files)
    return total / 1e6 if total else None


# -- the realistic-size model ---------------------------------------------------------------------

def realistic_row(config: Any = None, *, duration: float = 1.5, warmup: float = 0.3,
                  say: Optional[Say] = None, checkpoint: Path = VITB_CHECKPOINT,
                  data: Path = VITB_DATA, out: Path = VITB_OUT) -> TargetRow:
    """The synthetic ViT-B/16 row (see the module doc): build or reuse the model and its
    export, then bench it on OpenVINO f32 against its complete model. ``config``: another
    shape than ViT-B/16 (tests)."""
    from .config import Preprocessing
    from .synthetic import vitb16_config

    say = say or (lambda _m: None)
    cfg = config or vitb16_config(preprocessing=Preprocessing.vtab(224))
    row = TargetRow(target="openvino", precision="fp32", model=VITB_NAME if config is None
                    else f"synthetic {cfg.embed_dim}x{cfg.depth}", batched=VITB_BATCHES[-1])
    try:
        _synthetic_files(cfg, checkpoint, data, out, say)
        from .artifacts import load_artifact
        from .bench import bench_artifact

        art = load_artifact(out)
        row.artifact = str(art.path)
        row.size_mb = _model_megabytes(art, "openvino")
        say(f"bench: {row.model} on OpenVINO f32 vs its complete model, batch "
            f"{', '.join(map(str, VITB_BATCHES))} (the complete model is exported on first use)")
        progress = _Milestones(say, "bench: ")
        bench = bench_artifact(art, "openvino", precision="fp32", batches=VITB_BATCHES,
                               duration=duration, warmup=warmup, data=str(data),
                               images=VITB_IMAGES, progress=progress)
        b1, bn = bench.result(VITB_BATCHES[0]), bench.result(VITB_BATCHES[-1])
        row.ms_per_image = b1.dyt.latency.mean / b1.batch
        row.images_per_s = bn.dyt.images_per_s
        row.speedup, row.speedup_b1 = bn.speedup, b1.speedup
        row.flops_ratio = bn.flops_ratio
        row.status = "measured"
    except DytEdgeError as exc:
        row.error = str(exc)
        say(f"[{row.model}] {exc}")
    except Exception as exc:  # noqa: BLE001 - the digits rows stand on their own
        row.error = _unexpected(exc)
        say(f"[{row.model}] unexpected error: {row.error}")
    return row


def _synthetic_files(cfg: Any, checkpoint: Path, data: Path, out: Path, say: Say) -> None:
    """The demo images (.npz), the synthetic checkpoint and its export, each made unless a
    valid one is there."""
    import json

    import numpy as np

    from .artifacts import atomic_write_bytes
    from .data import load_images
    from .synthetic import pixel_images

    record = json.dumps({"config": cfg.to_dict(), "rate": VITB_RATE, "seed": 0,
                         "images": VITB_IMAGES}, sort_keys=True)
    if not _same_synthetic(checkpoint, record) or not data.is_file():
        say(f"synthetic: {VITB_IMAGES} demo images -> {data}")
        import io

        buf = io.BytesIO()
        np.savez(buf, images=pixel_images(VITB_IMAGES, cfg.img_size, seed=2026))
        data.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(data, buf.getvalue())
        say(f"synthetic: a {cfg.depth}-block width-{cfg.embed_dim} DyT with random weights at "
            f"trained-model scales, gates calibrated to r {VITB_RATE:g} on those images -> "
            f"{checkpoint}")
        from .checkpoint import save_model
        from .synthetic import synthetic_model

        images = load_images(str(data), cfg.preprocessing).images.numpy()
        model = synthetic_model(cfg, rate=VITB_RATE, images=images)
        save_model(model, checkpoint, metadata={"dyt_edge.synthetic": record})
        del model
    else:
        say(f"synthetic: reusing {checkpoint}")
    if not _reusable_export(out, checkpoint):
        from .exporters.pipeline import ExportOptions, export_checkpoint

        say(f"export: {checkpoint} -> {out} (OpenVINO IR, {DEFAULT_DISPATCH} dispatch; not "
            "validated: a random model, the digits rows validate every target)")
        export_checkpoint(checkpoint, out, ExportOptions(format="openvino", validate=False),
                          progress=lambda stage: say(f"export: {stage}"))
    else:
        say(f"export: reusing {out}")


def _same_synthetic(path: Path, record: str) -> bool:
    return (_checkpoint_metadata(path) or {}).get("dyt_edge.synthetic") == record


class _Milestones:
    """A bench progress callback that passes on each new step once (not every tick)."""

    def __init__(self, say: Say, prefix: str) -> None:
        self.say, self.prefix, self.last = say, prefix, None

    def __call__(self, message: str, fraction: Optional[float]) -> None:
        step = message.split(":")[0] if message.startswith("batch ") else message
        if step != self.last:
            self.last = step
            self.say(self.prefix + step)
