"""What token dispatch costs on CPU runtimes: DyT graphs against the complete graph, side by side.

The model is the ViT-B/16-shaped DyT of ``export_vitb.py`` (random weights, no download; adapters
of bottleneck 64; the gate biases are calibrated so that about ``r`` of the patch tokens of
generated images are active in every layer, see :func:`export_vitb.calibrated_vitb`). It is
exported once per dispatch mode (``complete``, ``topk``, ``pack``, optionally ``capacity``) with
the exporter the CLI uses; each activation rate ``r`` then only changes the gate biases in the
exported graph (OpenVINO: :func:`set_gate_biases` on the read model; ONNX Runtime: the pinned
gate-bias initializers), so every rate runs the very same graph. ``r = 1.0`` opens every gate
(bias +1e4).

Targets (``--targets``): ONNX Runtime f32, OpenVINO CPU f32 and bf16 (``INFERENCE_PRECISION_HINT``,
read back after compiling), and OpenVINO INT8: every graph, complete included, quantized once by
the product's own path (:mod:`dyt_edge.calibration.openvino_int8`: NNCF, transformer model type,
the dispatch path in float) on ``--calib-images`` generated images at the gate biases of
``--int8-rate``; the INT8 rows give the speedup over the INT8 complete model and over the f32
complete model (which runs in the same interleaved rounds).

Throughput is measured interleaved: for each target, batch size and rate, every model runs a
short chunk in turn (the order rotating per round), for several rounds, so that a change in the
machine's load (2 shared cores) hits all models alike. Each round gives a paired ratio
(model img/s / complete img/s); the table shows the median ratio over rounds and the median img/s.

The FLOPs ratio (:mod:`dyt_edge.flops`, complete / DyT) is computed at the activation measured
on the benchmark images: at the mean rate per layer ("ideal", what ``pack`` pays), at the batch
maximum per layer ("padded": ``topk`` runs K = the largest active count of the batch), and at
the capacity ("capacity": a static K). Efficiency = speedup / ideal FLOPs ratio.

    python benchmarks/dispatch_cost.py [--rates 0.3,0.5,0.7,0.9,1.0] [--batches 1,32]
        [--modes pack,topk[,capacity]] [--capacity 0.7] [--variant mlp|attn|attn_mlp|layer]
        [--targets onnxruntime:f32,openvino:f32,openvino:bf16,openvino:int8]
        [--int8-rate 0.5] [--calib-images 32] [--rounds 5] [--chunk 1.5]
        [--work DIR] [--reuse] [--simplify] [--profile] [--json PATH]
    python benchmarks/dispatch_cost.py --markdown PATH.json    # the README table of a run

The full default run takes about 55 minutes on 2 cores (each ViT-B export ~40 s, each INT8
quantization about a minute; ``--reuse`` keeps the exports in ``--work`` between runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

OPEN_BIAS = 1.0e4
"""Gate bias that opens every gate (r = 1.0)."""


# -- the model and its gate biases ---------------------------------------------------------------

def gate_biases(rates: list[float], seed: int = 0, variant: str = "mlp"
                ) -> dict[float, dict[str, float]]:
    """Per rate, the calibrated bias of every dispatcher (same weights for every rate)."""
    import torch

    from export_vitb import calibrated_vitb

    out = {}
    names = None
    for r in rates:
        if r >= 1.0:
            continue
        model = calibrated_vitb(variant, r, seed=seed)
        names = model.config.dispatcher_names
        out[r] = {n: float(ts.mlp_head.bias.detach()[0])
                  for n, ts in zip(names, model.token_selects)}
        del model
    for r in rates:
        if r >= 1.0:
            if names is None:
                from dyt_edge.config import DyTConfig
                names = DyTConfig(variant=variant, num_classes=1000).dispatcher_names
            out[r] = {n: OPEN_BIAS for n in names}
    torch.set_num_threads(os.cpu_count() or 1)
    return out


def export_modes(modes: list[str], work: Path, capacity: float, simplify: bool, reuse: bool,
                 log, variant: str = "mlp") -> dict[str, Path]:
    """Export the calibrated (r = 0.5) model once per dispatch mode, format openvino."""
    from dyt_edge.artifacts import load_artifact
    from dyt_edge.exporters.pipeline import ExportOptions, export_model
    from export_vitb import calibrated_vitb

    paths = {}
    model = None
    for mode in modes:
        path = work / mode
        cap = capacity if mode == "capacity" else None
        if reuse and (path / "dyt_edge.json").exists():
            info = load_artifact(path).info
            if (info.dispatch.mode == mode and info.dispatch.capacity == cap
                    and info.variant == variant):
                log(f"reusing the {mode} export in {path}")
                paths[mode] = path
                continue
        if model is None:
            model = calibrated_vitb(variant, 0.5)
        t0 = time.perf_counter()
        export_model(model, path, ExportOptions(format="openvino", dispatch=mode, capacity=cap,
                                                simplify=simplify, validate=False),
                     source={"path": None, "sha256": None,
                             "format": "random ViT-B/16 (benchmarks/dispatch_cost.py)"})
        log(f"exported {mode} in {time.perf_counter() - t0:.0f} s -> {path}")
        paths[mode] = path
    return paths


# -- runners --------------------------------------------------------------------------------------

class OvModel:
    """A timed OpenVINO CPU model: compiled by the product's runner
    (:class:`dyt_edge.runtimes.openvino_runtime.OpenVinoModel`, f32 unless ``hint`` says), with
    one infer request called directly (no output conversion in the timed call)."""

    def __init__(self, core, model, hint: str = "f32", profile: bool = False) -> None:
        from dyt_edge.runtimes.openvino_runtime import OpenVinoModel

        config = {"PERFORMANCE_HINT": "LATENCY", **({"PERF_COUNT": True} if profile else {})}
        self.compiled = OpenVinoModel(model, hint=hint, config=config, core=core).compiled
        self.request = self.compiled.create_infer_request()
        self.masks_port = next(o for o in self.compiled.outputs if "masks" in o.get_names())

    def __call__(self, x):
        self.request.infer({0: x}, share_inputs=True)
        return self.request.get_tensor(self.masks_port).data

    def profile(self) -> dict[str, float]:
        """Microseconds per op type for the last inference."""
        out: dict[str, float] = {}
        for p in self.request.profiling_info:
            if p.status.name != "EXECUTED":
                continue
            out[p.node_type] = out.get(p.node_type, 0.0) + p.real_time.total_seconds() * 1e6
        return out

    def profile_nodes(self) -> list[tuple[str, str, float]]:
        return [(p.node_name, p.node_type, p.real_time.total_seconds() * 1e6)
                for p in self.request.profiling_info if p.status.name == "EXECUTED"]


class OrtModel:
    """A timed ONNX Runtime CPU session, made by the product's runner
    (:class:`dyt_edge.runtimes.ort_runtime.OrtModel`); the call returns the masks."""

    def __init__(self, onnx_bytes: bytes) -> None:
        from dyt_edge.runtimes.ort_runtime import OrtModel as Runner

        self.session = Runner(onnx_bytes).session()
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x):
        out = self.session.run(None, {"images": x})
        return out[self.names.index("masks")]


class PerRate:
    """``models[mode, rate]``: built on first use by ``make(mode, rate)``, and only one rate's
    models alive at a time (a ViT-B session holds ~350 MB of weights plus its activation
    arenas; fifteen of them at batch 32 exhaust 24 GB)."""

    def __init__(self, make) -> None:
        self.make = make
        self.rate = None
        self.cache: dict = {}

    def __getitem__(self, key):
        mode, rate = key
        if rate != self.rate:
            self.cache.clear()
            gc.collect()
            self.rate = rate
        if mode not in self.cache:
            self.cache[mode] = self.make(mode, rate)
        return self.cache[mode]


def openvino_models(paths, names, biases, hint="f32", profile=False, read=None) -> PerRate:
    """(mode, rate) -> OvModel at inference precision ``hint``; ``names[mode]``: the export's
    dispatchers; ``read(mode)`` gives the ``openvino.Model`` (default: the export's IR)."""
    from dyt_edge.runtimes.backends import import_openvino

    core = import_openvino().Core()
    read = read or (lambda m: core.read_model(str(paths[m] / "model.xml")))
    originals = {m: read(m) for m in paths}
    return PerRate(lambda m, r: OvModel(core, with_biases(originals[m], names[m], biases[r]),
                                        hint, profile))


def ort_models(paths, biases) -> PerRate:
    import numpy as np
    import onnx

    from dyt_edge.artifacts import load_artifact
    from dyt_edge.exporters.torch_onnx import set_initializer

    protos, disp = {}, {}
    for mode, path in paths.items():
        disp[mode] = load_artifact(path).info.section("graph_report")["dispatchers"]
        protos[mode] = onnx.load(str(path / "model.onnx"))

    def make(mode, r):
        for d in disp[mode]:
            if not d.get("gate_bias"):
                raise RuntimeError(f"{mode}: {d['name']} has no gate-bias initializer")
            set_initializer(protos[mode], d["gate_bias"],
                            np.array([biases[r][d["name"]]], np.float32))
        return OrtModel(protos[mode].SerializeToString())

    return PerRate(make)


def int8_models(paths, names, images, calib_bias: dict[str, float], log) -> dict:
    """mode -> INT8 ``openvino.Model`` of that export, quantized once (at the gate biases
    ``calib_bias``) by the product's own path (:func:`dyt_edge.calibration.openvino_int8.quantize`:
    NNCF, transformer model type, the dispatch path kept in float); the gate biases of each rate
    are set on clones afterwards, as for the float graphs (the gate path has no quantizers)."""
    import numpy as np

    from dyt_edge.calibration.data import CalibrationSet
    from dyt_edge.calibration.openvino_int8 import QuantizeSettings, quantize
    from dyt_edge.config import Preprocessing
    from dyt_edge.runtimes.backends import import_openvino

    core = import_openvino().Core()
    calib = CalibrationSet(images=np.ascontiguousarray(images), labels=None, spec="generated",
                           name="generated", split=None, requested=len(images), skipped=0,
                           seed=2024, preprocessing=Preprocessing.vtab(224))
    out = {}
    for mode, path in paths.items():
        model = with_biases(core.read_model(str(path / "model.xml")), names[mode], calib_bias)
        res = quantize(model, calib, dispatcher_names=names[mode],
                       settings=QuantizeSettings(subset_size=len(images)))
        log(f"INT8 {mode}: {res.quantizers} quantizers, {res.seconds:.0f} s"
            + (f"; {'; '.join(res.notes)}" if res.notes else ""))
        out[mode] = res.model
    return out


def with_biases(model, names, values):
    """A clone of ``model`` with the gate biases ``values`` (dispatcher -> float)."""
    from dyt_edge.exporters.openvino.ir import set_gate_biases

    clone = model.clone()
    missing = set_gate_biases(clone, names, {n: [values[n]] for n in names})
    if missing:
        raise RuntimeError(f"gate Add not found for {missing[:3]}")
    return clone


# -- measurement ----------------------------------------------------------------------------------

def interleaved(models: dict, batches: list, rounds: int, chunk_s: float, warmup: int = 32):
    """Round-robin chunks over ``models`` (name -> callable(x)): per round and model, img/s of
    wall time and of process CPU time (all threads; robust to other processes' load).

    Each chunk runs whole inferences until ``chunk_s`` has passed (at least one); inputs cycle
    over ``batches``. Before timing, every model runs up to ``warmup`` of the batches once (a
    data-dependent K is a new shape for the runtime the first time it is seen).
    """
    for fn in models.values():
        for x in batches[:warmup]:
            fn(x)
    names = list(models)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    pos = {n: 0 for n in names}
    for rnd in range(rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for n in order:
            fn = models[n]
            done = 0
            t0, c0 = time.perf_counter(), time.process_time()
            while True:
                x = batches[pos[n] % len(batches)]
                pos[n] += 1
                fn(x)
                done += x.shape[0]
                el = time.perf_counter() - t0
                if el >= chunk_s:
                    break
            wall[n].append(done / el)
            cpu[n].append(done / max(time.process_time() - c0, 1e-9))
    return wall, cpu


def summarize(measured, reference: str, also: str | None = None) -> dict:
    """Per model: median img/s and the median paired ratio to ``reference`` (and to ``also``,
    as ``speedup_also``, when given)."""
    wall, cpu = measured
    out = {}
    for n, rs in wall.items():
        ratios = [a / b for a, b in zip(rs, wall[reference])]
        cpu_ratio = sum(1 / v for v in cpu[reference]) / sum(1 / v for v in cpu[n])
        out[n] = {"img_s": statistics.median(rs), "img_s_rounds": [round(v, 3) for v in rs],
                  "speedup": statistics.median(ratios),
                  "speedup_min": min(ratios), "speedup_max": max(ratios),
                  "cpu_img_s": len(cpu[n]) / sum(1 / v for v in cpu[n]),
                  "cpu_speedup": cpu_ratio}
        if also:
            out[n]["speedup_also"] = statistics.median(
                [a / b for a, b in zip(rs, wall[also])])
    return out


def activation_stats(masks_list, cfg, capacity_slots=None) -> dict:
    """Masks [B, L, P] of batches -> measured activation and FLOPs ratios."""
    import numpy as np

    from dyt_edge.flops import model_flops

    masks = np.concatenate([np.asarray(m, bool) for m in masks_list])
    p = masks.shape[2]
    mean_rates = masks.mean(axis=(0, 2))
    counts = masks.sum(axis=2)                                   # [N, L]
    padded = np.mean([c.max(axis=0) for c in
                      (np.asarray(m, bool).sum(axis=2) for m in masks_list)], axis=0) / p
    complete = model_flops(cfg, None).total
    res = {"mean": float(mean_rates.mean()), "per_layer": [round(float(v), 3) for v in mean_rates],
           "per_image_active_min": int(counts.min()), "per_image_active_max": int(counts.max()),
           "batch_max_rate_per_layer": [round(float(v), 3) for v in padded],
           "flops_ratio": complete / model_flops(cfg, [float(v) for v in mean_rates]).total,
           "flops_ratio_padded": complete / model_flops(cfg, [float(min(v, 1.0))
                                                            for v in padded]).total}
    if capacity_slots:
        res["flops_ratio_capacity"] = complete / model_flops(cfg, capacity_slots / p).total
        res["capacity_overflow_images"] = int((counts > capacity_slots).any(axis=1).sum())
    return res


# -- main -----------------------------------------------------------------------------------------


def markdown_table(record: dict) -> str:
    """The README's table: per target and rate, each DyT mode's speedup over the complete model
    on the same runtime and precision, per batch size, with the efficiency (speedup / FLOPs
    ratio at the mean activation) in brackets; INT8 cells add the speedup over f32 complete."""
    rows = record["results"]
    modes = [m for m in record["modes"] if m != "complete"]
    batches = record["batches"]
    head = ["target", "r", "activation", "FLOPs ratio"] + [
        f"batch {b} `{m}`" + (" (default)" if m == "pack" else "") for b in batches
        for m in modes]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen = []
    for row in rows:
        key = (row["runtime"], row["precision"], row["rate"])
        if key not in seen:
            seen.append(key)
    for runtime, precision, rate in seen:
        cells = {(r["batch"], r["mode"]): r for r in rows
                 if (r["runtime"], r["precision"], r["rate"]) == (runtime, precision, rate)}
        first = next(iter(cells.values()))
        act = record["activation"].get(f"{runtime}:{precision} r={rate} batch={batches[0]}", {})
        line = [f"{'ONNX Runtime' if runtime == 'onnxruntime' else 'OpenVINO'} "
                f"{precision.upper() if precision == 'int8' else precision}", f"{rate:g}",
                f"{act['mean']:.2f}" if act else "", f"{first.get('flops_ratio', 0):.2f}"]
        for b in batches:
            for m in modes:
                r = cells.get((b, m))
                if r is None:
                    line.append("")
                    continue
                cell = f"{r['speedup']:.2f}x"
                if r.get("efficiency") is not None and rate < 1.0:
                    cell += f" ({r['efficiency']:.2f})"
                if r.get("speedup_vs_f32_complete") is not None:
                    cell += f" · {r['speedup_vs_f32_complete']:.2f}x vs f32"
                line.append(cell)
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


TARGETS = ("onnxruntime:f32", "openvino:f32", "openvino:bf16", "openvino:int8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="0.3,0.5,0.7,0.9,1.0")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--modes", default="pack,topk",
                        help="DyT dispatch modes beside complete (pack: the default export, "
                        "topk, capacity)")
    parser.add_argument("--variant", default="mlp", choices=("mlp", "attn", "attn_mlp", "layer"),
                        help="where the gates sit (default: mlp, the published code's)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="runtime:precision pairs (default: %(default)s)")
    parser.add_argument("--capacity", type=float, default=0.7,
                        help="capacity mode's fraction of patch tokens (default 0.7)")
    parser.add_argument("--int8-rate", type=float, default=0.5,
                        help="the rate whose gate biases the INT8 calibration runs at")
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=float, default=1.5, help="seconds per chunk")
    parser.add_argument("--images", type=int, default=64, help="benchmark images (generated)")
    parser.add_argument("--work", default=None, help="export directory (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="reuse exports found in --work")
    parser.add_argument("--simplify", action="store_true", help="simplify the exports")
    parser.add_argument("--profile", action="store_true",
                        help="OpenVINO per-op-type profile of every model (PERF_COUNT)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", metavar="JSON", default=None,
                        help="print the README table of an earlier run's --json, and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return 0

    import numpy as np

    import dyt_edge.runtimes  # noqa: F401 - disables telemetry before ORT / OpenVINO load
    from dyt_edge.config import DyTConfig
    from dyt_edge.exporters.validation import generated_images

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    rates = [float(r) for r in args.rates.split(",")]
    batch_sizes = [int(b) for b in args.batches.split(",")]
    modes = ["complete"] + [m for m in args.modes.split(",") if m and m != "complete"]
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r} (choose from {', '.join(TARGETS)})")
    cfg = DyTConfig(variant=args.variant, num_classes=1000, adapter_dim=64, adapter_scale=0.1)
    slots = cfg.capacity_slots(args.capacity)

    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dyt-edge-dispatch-")
        work = Path(tmp.name)
    log("calibrating gate biases")
    biases = gate_biases(rates, variant=args.variant)
    paths = export_modes(modes, work, args.capacity, args.simplify, args.reuse, log,
                         variant=args.variant)

    images = generated_images(args.images, 3, 224, seed=2024)
    from dyt_edge.artifacts import load_artifact

    exports = {}
    dispatchers = {}
    for mode, path in paths.items():
        info = load_artifact(path).info
        report = info.section("graph_report")
        dispatchers[mode] = list(info.dispatch.dispatchers)
        exports[mode] = {"path": str(path), "nodes": report["nodes"],
                         "dispatch_ops": report["dispatch_ops"],
                         "simplify": info.section("simplify").get("tool"),
                         "created": info.created}
    record = {"model": f"ViT-B/16 DyT ({args.variant}), random weights, gate biases calibrated "
                       "to r on generated images (r = 1.0: every gate open)",
              "variant": args.variant,
              "command": " ".join(sys.argv), "modes": modes, "capacity": args.capacity,
              "capacity_slots": slots, "rates": rates, "batches": batch_sizes,
              "targets": targets, "rounds": args.rounds, "exports": exports,
              "chunk_s": args.chunk, "results": [], "activation": {}, "profiles": {},
              "skipped": {}, "int8": {},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_start": os.getloadavg()}}

    for target in targets:
        runtime, precision = target.split(":")
        log(f"{target}: preparing")
        f32_complete = None
        if runtime == "openvino":
            from dyt_edge.runtimes.backends import import_openvino

            record["machine"]["openvino"] = import_openvino().__version__
            if precision == "int8":
                r_cal = args.int8_rate if args.int8_rate in biases else next(
                    r for r in rates if r < 1.0)
                quantized = int8_models(paths, dispatchers, images[:args.calib_images],
                                        biases[r_cal], log)
                core = import_openvino().Core()
                models = openvino_models(paths, dispatchers, biases, "f32",
                                         read=quantized.__getitem__)
                # the INT8 target compares against the f32 complete model
                f32_complete = OvModel(core, core.read_model(str(paths["complete"] / "model.xml")))
                # how many gate decisions INT8 kept, at the calibration rate
                agree = {}
                for m in modes:
                    if m == "complete":
                        continue
                    ref = OvModel(core, with_biases(core.read_model(str(paths[m] / "model.xml")),
                                                    dispatchers[m], biases[r_cal]))
                    agree[m] = float(np.mean([np.mean(np.array(models[m, r_cal](images[i:i + 1]))
                                                      == np.array(ref(images[i:i + 1])))
                                              for i in range(min(16, len(images)))]))
                    del ref
                gc.collect()
                record["int8"] = {"calibration_rate": r_cal, "calibration_images":
                                  min(args.calib_images, len(images)), "gate_agreement": agree}
                log(f"INT8 gate decisions equal to f32 at r={r_cal} on 16 images: "
                    + ", ".join(f"{m} {v:.2%}" for m, v in agree.items()))
            else:
                try:
                    models = openvino_models(paths, dispatchers, biases, precision,
                                             profile=args.profile)
                    models["complete", rates[0]]  # compiles: fails here if the CPU cannot
                except Exception as exc:  # noqa: BLE001 - e.g. bf16 on a CPU without it
                    record["skipped"][target] = str(exc).splitlines()[0][:300]
                    log(f"{target}: skipped ({record['skipped'][target]})")
                    continue
        else:
            from dyt_edge.runtimes.backends import import_onnxruntime

            if precision != "f32":
                parser.error(f"{target}: the ONNX Runtime rows are f32")
            record["machine"]["onnxruntime"] = import_onnxruntime().__version__
            models = ort_models(paths, biases)
        for r in rates:
            # activation on the benchmark images, from this target's first DyT graph
            probe = next(((m, r) for m in modes if m != "complete"), None)
            for b in batch_sizes:
                batches = [np.ascontiguousarray(images[i:i + b])
                           for i in range(0, len(images) - b + 1, b)]
                if probe:
                    masks = [np.array(models[probe](x)) for x in batches]
                    act = activation_stats(masks, cfg, slots)
                    record["activation"][f"{target} r={r} batch={b}"] = act
                group = {m: models[m, r] for m in modes}
                if f32_complete is not None:
                    group["complete f32"] = f32_complete
                log(f"{target} r={r} batch={b}: {len(group)} models x {args.rounds} rounds")
                load = os.getloadavg()[0]
                res = summarize(interleaved(group, batches, args.rounds, args.chunk), "complete",
                                "complete f32" if f32_complete is not None else None)
                for m, v in res.items():
                    extra = (f"  vs f32 complete {v['speedup_also']:.3f}"
                             if "speedup_also" in v else "")
                    print(f"  {m:<13} {v['img_s']:7.2f} img/s  speedup {v['speedup']:.3f} "
                          f"[{v['speedup_min']:.3f}, {v['speedup_max']:.3f}]  CPU-time speedup "
                          f"{v['cpu_speedup']:.3f}{extra}", flush=True)
                    if m == "complete f32":
                        continue
                    if "speedup_also" in v:
                        v["speedup_vs_f32_complete"] = v.pop("speedup_also")
                    row = {"runtime": runtime, "precision": precision, "rate": r, "batch": b,
                           "mode": m, "loadavg": load, **v}
                    if probe:
                        row["flops_ratio"] = act["flops_ratio"]
                        row["flops_ratio_padded"] = act["flops_ratio_padded"]
                        row["efficiency"] = v["speedup"] / act["flops_ratio"]
                        # what this mode computes: topk pads to the batch maximum, capacity
                        # to its static K, pack computes the active tokens alone
                        own = {"topk": act["flops_ratio_padded"],
                               "capacity": act.get("flops_ratio_capacity")}.get(
                                   m, act["flops_ratio"] if m != "complete" else 1.0)
                        row["flops_ratio_own"] = own
                        row["efficiency_own"] = v["speedup"] / own if own else None
                    record["results"].append(row)
                if args.json:  # after every group: a crash keeps what was measured
                    Path(args.json).write_text(json.dumps(record, indent=2))
                if probe:
                    print(f"  activation mean {act['mean']:.3f}, per-image active "
                          f"{act['per_image_active_min']}..{act['per_image_active_max']} of "
                          f"{cfg.num_patches}; FLOPs ratio {act['flops_ratio']:.3f} (ideal), "
                          f"{act['flops_ratio_padded']:.3f} (batch max), "
                          f"{act.get('flops_ratio_capacity', float('nan')):.3f} (capacity)",
                          flush=True)
                if args.profile and runtime == "openvino":
                    for m in modes:
                        fn = models[m, r]
                        fn(batches[0])
                        if not hasattr(fn, "profile"):
                            continue
                        try:
                            prof = fn.profile()
                        except Exception:  # noqa: BLE001 - compiled without PERF_COUNT
                            continue
                        record["profiles"][f"{target} r={r} batch={b} {m}"] = prof
                        top = sorted(prof.items(), key=lambda kv: -kv[1])[:8]
                        total = sum(prof.values())
                        print(f"  profile {m}: total {total / 1e3:.1f} ms; " + ", ".join(
                            f"{k} {v / 1e3:.1f}" for k, v in top), flush=True)
        del models, f32_complete

    record["machine"]["loadavg_end"] = os.getloadavg()
    print()
    print(f"{'runtime':<12}{'prec':<6}{'r':>5}{'batch':>6}  {'mode':<10}{'img/s':>8}"
          f"{'speedup':>9}{'cpu-sp':>8}{'vs-f32':>8}{'FLOPs':>7}{'padded':>7}{'eff':>6}"
          f"{'eff-own':>8}{'load':>6}")
    for row in record["results"]:
        vs = row.get("speedup_vs_f32_complete")
        print(f"{row['runtime']:<12}{row['precision']:<6}{row['rate']:>5}{row['batch']:>6}  "
              f"{row['mode']:<10}{row['img_s']:>8.2f}{row['speedup']:>9.3f}"
              f"{row['cpu_speedup']:>8.3f}" + (f"{vs:>8.3f}" if vs else " " * 8)
              + (f"{row['flops_ratio']:>7.3f}{row['flops_ratio_padded']:>7.3f}"
                 f"{row['efficiency']:>6.2f}" if "flops_ratio" in row else " " * 20)
              + (f"{row['efficiency_own']:>8.2f}" if row.get("efficiency_own") else " " * 8)
              + f"{row['loadavg']:>6.1f}")
    print("speedup: median over rounds of the paired wall-clock ratio to the complete model on "
          "the same runtime and precision; cpu-sp: the same from process CPU time; vs-f32: INT8 "
          "against the f32 complete model; FLOPs: complete / DyT at the mean activation "
          "(padded: at the per-batch maximum, what topk computes); eff = speedup / FLOPs; "
          "eff-own = speedup / the FLOPs ratio of what the mode computes (topk: padded, "
          "capacity: its K, pack: FLOPs)")
    for target, why in record["skipped"].items():
        print(f"skipped {target}: {why}")
    print()
    print(markdown_table(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
