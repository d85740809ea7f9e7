"""dyt-edge's OpenVINO artifacts against the published code's way of running the same checkpoint.

One ViT-B/16 DyT checkpoint (``dyt_edge.synthetic``: random weights at trained-model scales,
adapters of bottleneck 64, ``mlp`` dispatch, gates calibrated so that about ``--rate`` of the
patch tokens of generated images are active; nothing is downloaded) is run, interleaved in one
process on the same images:

* **PyTorch eager, as the published code runs it**: the model in ``pack`` dispatch, which is the
  published inference method (the batch's tokens flattened, ``nonzero()`` of the gate mask, the
  active tokens through the MLP as one packed matrix, scattered back), fp32 and bf16 autocast
  (gates fp32), through the product's PyTorch runtime (the checkpoint the export recorded).
* **dyt-edge's OpenVINO artifacts** of that checkpoint: the default export (``pack``) at f32 and
  bf16 (gates kept f32: see ``runtimes/openvino_gates.py``), the same bf16 with the gates left to
  OpenVINO (``bf16 gates-bf16``: what item "bf16 with f32 gates" costs), and the INT8 build
  (``dyt-edge build --precision int8``, calibrated on the generated images) with its float
  remainder (LayerNorm, Softmax, GELU, residual adds, the dispatch path) at f32 and at bf16.

Per model and batch size: img/s (median of ``--rounds`` interleaved chunks), the ratio to the
best PyTorch setting (median of per-round ratios), and the achieved GOP/s: img/s x the model's
FLOPs at the activation measured on the timed images (``dyt_edge.flops``; two ops per
multiply-add) against a matrix-multiply peak measured in the same run at each precision
(OpenVINO and PyTorch GEMMs of the MLP's shape, [8 x 197, 768] x [768, 3072], the better of the
two; before and after the rounds).

    python benchmarks/vs_pytorch.py [--work DIR] [--batches 1,8] [--rounds 5] [--chunk 1.5]
        [--rate 0.5] [--threads 2] [--calib-images 32] [--profile] [--json PATH]
    python benchmarks/vs_pytorch.py --markdown PATH.json     # the README table of a run

About 8 minutes on 2 cores the first time (checkpoint, export, INT8 build: kept in ``--work``
and reused when they match), then about 30 s per round and batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

GEMM = (8 * 197, 768, 3072)
"""M, K, N of the peak measurement: the MLP's first matmul at batch 8."""
PYTORCH = ("pytorch fp32", "pytorch bf16")


# -- the checkpoint and its artifacts ------------------------------------------------------------

def model_config(tiny: bool):
    from dyt_edge.config import Preprocessing
    from dyt_edge.synthetic import vitb16_config

    if tiny:  # the tests' shape: the same code path in seconds
        return vitb16_config(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                             num_classes=10, adapter_dim=8,
                             preprocessing=Preprocessing.vtab(32))
    return vitb16_config(preprocessing=Preprocessing.vtab(224))


def file_paths(work: Path) -> dict[str, Path]:
    return {"images": work / "images.npz", "checkpoint": work / "dyt-vitb16.safetensors",
            "export": work / "export", "int8": work / "export" / "openvino-int8",
            "record": work / "settings.json"}


def _settings(cfg, rate: float, n_images: int, calib_images: int) -> dict[str, Any]:
    """What the files are made from, as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps({"config": cfg.to_dict(), "rate": rate, "images": n_images,
                                  "calib_images": calib_images, "seed": 0,
                                  "int8": "build defaults, smooth_quant off"}))


def same_files(work: Path, cfg, rate: float, n_images: int, calib_images: int) -> bool:
    """``work`` holds every file, made with these settings."""
    paths = file_paths(work)
    return (paths["record"].is_file()
            and json.loads(paths["record"].read_text()) == _settings(cfg, rate, n_images,
                                                                     calib_images)
            and all(paths[k].exists() for k in ("images", "checkpoint", "export", "int8")))


def prepare_files(work: Path, cfg, rate: float, n_images: int, calib_images: int,
                  log: Callable[[str], None]) -> dict[str, Path]:
    """The images (.npz), the checkpoint, its export and INT8 build, each made unless ``work``
    holds one made with the same settings."""
    import io

    import numpy as np

    from dyt_edge.artifacts import atomic_write_bytes, load_artifact
    from dyt_edge.build import build_artifact
    from dyt_edge.checkpoint import save_model
    from dyt_edge.data import load_images
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint
    from dyt_edge.synthetic import pixel_images, synthetic_model

    work.mkdir(parents=True, exist_ok=True)
    paths = file_paths(work)
    record = _settings(cfg, rate, n_images, calib_images)
    if same_files(work, cfg, rate, n_images, calib_images):
        log(f"reusing the checkpoint and artifacts in {work}")
        return paths
    paths["record"].unlink(missing_ok=True)
    buf = io.BytesIO()
    np.savez(buf, images=pixel_images(n_images, cfg.img_size, seed=2026))
    atomic_write_bytes(paths["images"], buf.getvalue())
    t0 = time.perf_counter()
    images = load_images(str(paths["images"]), cfg.preprocessing).images.numpy()
    model = synthetic_model(cfg, rate=rate, images=images)
    save_model(model, paths["checkpoint"])
    del model
    log(f"checkpoint {paths['checkpoint']} ({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    export_checkpoint(paths["checkpoint"], paths["export"],
                      ExportOptions(format="openvino", validate=False))
    log(f"export (OpenVINO IR, pack) {paths['export']} ({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    # The build's defaults, with SmoothQuant off as --smooth-quant auto keeps it for a model
    # whose INT8 agrees with its float self (the trained digits model does). Here auto cannot
    # judge: this random model's 1000 logits are near ties, so no INT8 agrees on top-1.
    build_artifact(load_artifact(paths["export"]), "openvino", precision="int8",
                   calib=str(paths["images"]), calib_size=calib_images,
                   output=paths["int8"], smooth_quant="off")
    log(f"INT8 build {paths['int8']} ({time.perf_counter() - t0:.0f} s)")
    paths["record"].write_text(json.dumps(record))
    return paths


def open_models(paths: dict[str, Path], threads: int) -> dict[str, Any]:
    """name -> an open runtime."""
    from dyt_edge.runtimes import RuntimeOptions, open_runtime

    def ov(path: Path, precision: str, **extra: Any):
        return open_runtime("openvino", str(path), RuntimeOptions(
            precision=precision, threads=threads, hint="latency", extra=extra))

    export, int8 = paths["export"], paths["int8"]
    models = {
        "pytorch fp32": open_runtime("pytorch", str(export),
                                     RuntimeOptions(precision="fp32", threads=threads)),
        "pytorch bf16": open_runtime("pytorch", str(export),
                                     RuntimeOptions(precision="bf16", threads=threads)),
        "openvino f32": ov(export, "fp32"),
    }
    if cpu_has_bf16():
        models["openvino bf16"] = ov(export, "bf16")
        models["openvino bf16 gates-bf16"] = ov(export, "bf16", f32_gates=False)
    models["openvino int8"] = ov(int8, "int8")  # float parts as built: bf16 where the CPU has it
    if cpu_has_bf16():
        models["openvino int8 f32-rest"] = ov(int8, "int8", inference_precision="fp32")
    return models


def cpu_has_bf16() -> bool:
    """OpenVINO lists BF16 for this CPU (else the bf16 rows are left out: it would refuse)."""
    from dyt_edge.runtimes.openvino_runtime import device_capabilities

    return "BF16" in device_capabilities()


# -- peaks ---------------------------------------------------------------------------------------

def _time_calls(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds:
            return n / el


def gemm_peaks(threads: int, seconds: float = 1.0, shape: tuple[int, int, int] = GEMM
               ) -> dict[str, dict[str, float]]:
    """GOP/s (2 ops per multiply-add) of one [M, K] x [K, N] matmul per precision, through
    OpenVINO (f32, bf16 hint, int8: a quantized activation times int8 weights) and PyTorch
    (fp32, bf16; its int8 matmul, ``torch._int_mm``, is far slower on CPUs)."""
    import numpy as np
    import torch

    from dyt_edge.runtimes.backends import import_openvino

    ov = import_openvino()
    from openvino import opset13 as ops

    m, k, n = shape
    ops_per_call = 2.0 * m * k * n
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    core = ov.Core()

    def ov_gemm(hint: str, int8: bool) -> float:
        p = ops.parameter([m, k], np.float32)
        src, wsrc = p.output(0), ops.constant(w).output(0)
        if int8:
            # What an NNCF-quantized MatMul is: a FakeQuantize on the activation and int8
            # weights with a dequantizing scale (FakeQuantize on f32 weights is not turned into
            # an int8 kernel). The activation's quantization is part of the timed work.
            lim = float(np.abs(x).max())
            lo, hi = ops.constant(np.float32(-lim)), ops.constant(np.float32(lim))
            src = ops.fake_quantize(src, lo, hi, lo, hi, 256).output(0)
            scale = float(np.abs(w).max()) / 127.0
            wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            wsrc = ops.multiply(ops.convert(ops.constant(wq), np.float32),
                                ops.constant(np.float32(scale))).output(0)
        model = ov.Model([ops.matmul(src, wsrc, False, False)], [p])
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "INFERENCE_NUM_THREADS": threads,
                                                     "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        req.set_input_tensor(ov.Tensor(x, shared_memory=True))
        return _time_calls(lambda: (req.start_async(), req.wait()), seconds) * ops_per_call / 1e9

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        bx, bw = tx.bfloat16(), tw.bfloat16()
        with torch.inference_mode():
            torch_fp32 = _time_calls(lambda: tx @ tw, seconds) * ops_per_call / 1e9
            torch_bf16 = _time_calls(lambda: bx @ bw, seconds) * ops_per_call / 1e9
    finally:
        torch.set_num_threads(before)
    out = {"openvino": {"f32": ov_gemm("f32", False), "int8": ov_gemm("f32", True)},
           "pytorch": {"f32": torch_fp32, "bf16": torch_bf16}}
    if cpu_has_bf16():
        out["openvino"]["bf16"] = ov_gemm("bf16", False)
    return out


def best_peaks(runs: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Per precision, the best GOP/s of any library in any of the runs."""
    best: dict[str, float] = {}
    for run in runs:
        for per in run.values():
            for precision, value in per.items():
                best[precision] = max(best.get(precision, 0.0), value)
    return best


# -- measuring -----------------------------------------------------------------------------------

def interleaved(calls: dict[str, list[Callable[[], Any]]], batch: int, rounds: int,
                chunk_s: float) -> dict[str, list[float]]:
    """Round-robin chunks: per round, every model runs its prepared batches (cycling) until
    ``chunk_s`` has passed (at least one call); the order rotates per round. Returns img/s per
    round per model."""
    names = list(calls)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    pos = dict.fromkeys(names, 0)
    for fns in calls.values():  # warm-up: every input shape once
        for fn in fns:
            fn()
    for rnd in range(rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            fns = calls[name]
            done, t0 = 0, time.perf_counter()
            while True:
                fns[pos[name] % len(fns)]()
                pos[name] += 1
                done += batch
                el = time.perf_counter() - t0
                if el >= chunk_s:
                    break
            per_round[name].append(done / el)
    return per_round


def summarize(per_round: dict[str, list[float]], flops_per_image: float,
              peaks: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per model: median img/s, the median per-round ratio to the best PyTorch setting (the
    PyTorch model with the higher median img/s), achieved GOP/s and its fraction of the peak
    of the model's main precision."""
    torch_names = [n for n in PYTORCH if n in per_round]
    best_torch = max(torch_names, key=lambda n: statistics.median(per_round[n]))
    out = {}
    for name, rates in per_round.items():
        img_s = statistics.median(rates)
        ratios = [a / b for a, b in zip(rates, per_round[best_torch])]
        gops = img_s * 2.0 * flops_per_image / 1e9
        precision = main_precision(name)
        peak = peaks.get(precision)
        out[name] = {"img_s": img_s, "img_s_rounds": [round(v, 3) for v in rates],
                     "vs_best_pytorch": statistics.median(ratios), "best_pytorch": best_torch,
                     "gops": gops, "precision": precision, "peak_gops": peak,
                     "of_peak": gops / peak if peak else None}
    return out


def main_precision(name: str) -> str:
    """The precision of a model's matrix multiplies (its peak's key)."""
    if "int8" in name:
        return "int8"
    return "bf16" if "bf16" in name.split()[1] else "f32"


def activation(runtime, batches) -> tuple[list[float], float]:
    """Per-layer mean activation over ``batches`` (the masks the runtime reports) and the
    overall mean."""
    import numpy as np

    masks = np.concatenate([runtime.run(x).masks for x in batches]).astype(bool)
    per_layer = masks.mean(axis=(0, 2))
    return [float(v) for v in per_layer], float(per_layer.mean())


def profile_top(path: Path, threads: int, x, top: int = 12,
                precision: Optional[str] = None) -> dict[str, Any]:
    """OpenVINO per-node counters (``PERF_COUNT``) of one call at batch ``len(x)``, summed by
    node type, on a model compiled for this alone: once a model has run other shapes, its
    counters no longer add up to the call's time (seen with OpenVINO 2026.4: a batch-1 call of
    28 ms read 126-151 ms after batch-8 calls). The last of four calls on one input: its wall
    time, the sum over all nodes (the two agree when the counters are sound) and the ``top``
    node types."""
    from dyt_edge.runtimes import RuntimeOptions, open_runtime

    runtime = open_runtime("openvino", str(path), RuntimeOptions(
        precision=precision, threads=threads, hint="latency",
        extra={"config": {"PERF_COUNT": True}}))
    try:
        req = runtime.compiled.create_infer_request()
        for _ in range(3):
            req.infer({0: x})
        t0 = time.perf_counter()
        req.infer({0: x})
        wall_us = (time.perf_counter() - t0) * 1e6
        by_type: dict[str, float] = {}
        for info in req.profiling_info:
            us = info.real_time.total_seconds() * 1e6
            key = f"{info.node_type} ({info.exec_type})"
            by_type[key] = by_type.get(key, 0.0) + us
    finally:
        runtime.close()
    total = sum(by_type.values()) or 1.0
    rows = sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
    return {"call_wall_us": round(wall_us, 1), "nodes_total_us": round(total, 1),
            "nodes": [{"node": k, "us": round(v, 1), "share": round(v / total, 4)}
                      for k, v in rows]}


# -- report --------------------------------------------------------------------------------------

def markdown_table(record: dict) -> str:
    batches = record["batches"]
    names = list(record["results"][str(batches[0])])
    head = ["model"] + [h for b in batches for h in (f"batch {b} img/s", f"batch {b} vs best "
                                                     "PyTorch", f"batch {b} GOP/s (of peak)")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cells = [name]
        for b in batches:
            r = record["results"][str(b)][name]
            of = f" ({r['of_peak']:.0%})" if r.get("of_peak") else ""
            cells += [f"{r['img_s']:.1f}", f"{r['vs_best_pytorch']:.2f}x", f"{r['gops']:.0f}{of}"]
        lines.append("| " + " | ".join(cells) + " |")
    peaks = record["peaks"]
    lines.append("")
    lines.append("Matrix-multiply peaks, GOP/s, [{} x {}] x [{} x {}], {} threads (before / after "
                 "the rounds): ".format(GEMM[0], GEMM[1], GEMM[1], GEMM[2], record["threads"])
                 + "; ".join(f"{lib} {p} {b:.0f} / {a:.0f}"
                             for lib in peaks["before"] for p, b in peaks["before"][lib].items()
                             for a in [peaks["after"][lib][p]]))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    from dyt_edge.runtimes.base import cpu_name

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    import torch

    from dyt_edge.runtimes.backends import import_openvino

    info["torch"] = torch.__version__
    info["openvino"] = import_openvino().get_version().split("-")[0]
    return info


def write_json(path: Path, record: dict[str, Any], log: Callable[[str], None]) -> None:
    """A run's record as JSON (what ``--json`` writes, in every script of this family)."""
    path.write_text(json.dumps(record, indent=1, default=str))
    log(f"wrote {path}")


def common_arguments(doc: str) -> argparse.ArgumentParser:
    """The options this script shares with the scripts that reuse its files (``int8_levers``,
    ``static_batch``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/dyt-vs-pytorch"))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=float, default=1.5, help="seconds per model per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    return ap


def main(argv=None) -> int:
    ap = common_arguments(__doc__)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--images", type=int, default=64, help="generated images (timed + gates)")
    ap.add_argument("--profile", action="store_true",
                    help="also print OpenVINO's per-node counters of the INT8 and bf16 models")
    ap.add_argument("--prepare-only", action="store_true",
                    help="make (or check) the checkpoint and artifacts in --work, time nothing")
    ap.add_argument("--markdown", type=Path, help="print the README table of a --json file")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())))
        return 0

    import numpy as np

    from dyt_edge.data import load_images
    from dyt_edge.flops import model_flops

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    batches = [int(b) for b in args.batches.split(",")]
    cfg = model_config(args.tiny)
    paths = prepare_files(args.work, cfg, args.rate, args.images, args.calib_images, log)
    if args.prepare_only:
        return 0
    images = np.ascontiguousarray(
        load_images(str(paths["images"]), cfg.preprocessing).images.numpy(), dtype=np.float32)
    peak_seconds = 0.2 if args.tiny else 1.0
    peaks_before = gemm_peaks(args.threads, peak_seconds)
    log("peaks (GOP/s): " + json.dumps({k: {p: round(v) for p, v in d.items()}
                                          for k, d in peaks_before.items()}))
    models = open_models(paths, args.threads)
    record: dict[str, Any] = {"machine": machine(), "threads": args.threads, "rate": args.rate,
                              "rounds": args.rounds, "chunk_s": args.chunk, "batches": batches,
                              "model": "ViT-B/16 DyT, mlp, bottleneck 64 (random weights, "
                                       "gates calibrated)" if not args.tiny else "tiny",
                              "describe": {n: rt.describe() for n, rt in models.items()},
                              "results": {}, "activation": {}}
    results_by_batch = {}
    for b in batches:
        inputs = [images[i:i + b] for i in range(0, len(images) - b + 1, b)][:8]
        per_layer, mean = activation(models["openvino f32"], inputs)
        flops = model_flops(cfg, per_layer).total
        record["activation"][str(b)] = {"per_layer": [round(v, 3) for v in per_layer],
                                        "mean": round(mean, 4), "flops_per_image": flops,
                                        "flops_ratio": model_flops(cfg, None).total / flops}
        calls = {n: [rt.prepare(x) for x in inputs] for n, rt in models.items()}
        log(f"batch {b}: {len(inputs)} input batches, activation {mean:.3f}, "
            f"{args.rounds} rounds x {len(calls)} models x {args.chunk:g} s")
        results_by_batch[b] = interleaved(calls, b, args.rounds, args.chunk)
        del calls
        if args.profile:
            x = np.ascontiguousarray(images[:b])
            record.setdefault("profile", {}).setdefault("openvino int8", {})[str(b)] = \
                profile_top(paths["int8"], args.threads, x)
            if "openvino bf16" in models:
                record["profile"].setdefault("openvino bf16", {})[str(b)] = profile_top(
                    paths["export"], args.threads, x, precision="bf16")
    peaks_after = gemm_peaks(args.threads, peak_seconds)
    peaks = best_peaks([peaks_before, peaks_after])
    record["peaks"] = {"before": peaks_before, "after": peaks_after, "best": peaks}
    for b, per_round in results_by_batch.items():
        record["results"][str(b)] = summarize(per_round,
                                              record["activation"][str(b)]["flops_per_image"],
                                              peaks)
    for rt in models.values():
        rt.close()
    text = markdown_table(record)
    print(text)
    for name, per_batch in record.get("profile", {}).items():
        for b, prof in per_batch.items():
            print(f"\n{name}, batch {b}, time by node type (node times sum to "
                  f"{prof['nodes_total_us'] / 1e3:.1f} ms; the call took "
                  f"{prof['call_wall_us'] / 1e3:.1f} ms):")
            for r in prof["nodes"]:
                print(f"  {r['share']:6.1%}  {r['us']:9.0f} us  {r['node']}")
    if args.json:
        write_json(args.json, record, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
