"""Which INT8 settings pay over bf16 on OpenVINO, measured on the ViT-B/16 DyT of
``vs_pytorch.py`` (same checkpoint, export and images in ``--work``).

Each INT8 variant is the product's quantization
(:func:`dyt_edge.calibration.openvino_int8.quantize`, the dispatch path float) with settings
changed: SmoothQuant on (the default) or off, the attention core (``ScaledDotProductAttention``)
quantized (the default) or kept float (``float_attention``). Each runs with its float parts at
f32 and at bf16 (the ``INFERENCE_PRECISION_HINT``), interleaved with the bf16 DyT (gates f32)
it is compared against. Agreement: top-1 and gate decisions against the f32 DyT on the same
images (a random model: its accuracy means nothing; ``validate`` on the trained digits model
measures that).

    python benchmarks/int8_levers.py [--work DIR] [--batches 1,8] [--rounds 5] [--chunk 1.5]
        [--threads 2] [--json PATH]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "default": {},
    "no-smoothquant": {"smooth_quant": False},
    "float-attention": {"float_attention": True},
    "no-smoothquant float-attention": {"smooth_quant": False, "float_attention": True},
}


def main(argv=None) -> int:
    import numpy as np

    import vs_pytorch as vp
    from dyt_edge.artifacts import load_artifact
    from dyt_edge.calibration.data import CalibrationSet
    from dyt_edge.calibration.openvino_int8 import QuantizeSettings, quantize
    from dyt_edge.data import load_images
    from dyt_edge.runtimes.backends import import_openvino
    from dyt_edge.runtimes.openvino_runtime import OpenVinoModel

    ap = vp.common_arguments(__doc__)
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    ov = import_openvino()
    cfg = vp.model_config(args.tiny)
    paths = vp.prepare_files(args.work, cfg, 0.5, 64 if not args.tiny else 8,
                             args.calib_images, log)
    images = np.ascontiguousarray(
        load_images(str(paths["images"]), cfg.preprocessing).images.numpy(), dtype=np.float32)
    art = load_artifact(paths["export"])
    names = list(art.info.dispatch.dispatchers)
    float_model = ov.Core().read_model(str(paths["export"] / "model.xml"))
    n_calib = min(args.calib_images, len(images))
    calib = CalibrationSet(images=images[:n_calib], labels=None, spec=str(paths["images"]),
                           name="generated", split=None, requested=n_calib, skipped=0, seed=0,
                           preprocessing=cfg.preprocessing)
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads}
    bf16 = vp.cpu_has_bf16()
    compiled = {"f32 DyT": OpenVinoModel(float_model, hint="f32", config=config)}
    if bf16:
        compiled["bf16 DyT"] = OpenVinoModel(float_model, hint="bf16", config=config)
    quantizers = {}
    for key, changes in VARIANTS.items():
        t0 = time.perf_counter()
        res = quantize(float_model, calib, dispatcher_names=names,
                       settings=QuantizeSettings(subset_size=n_calib, **changes))
        quantizers[key] = res.quantizers
        log(f"INT8 {key}: {res.quantizers} quantizers ({time.perf_counter() - t0:.0f} s)")
        compiled[f"int8 {key}"] = OpenVinoModel(res.model, hint="f32", config=config)
        if bf16:
            compiled[f"int8 {key} +bf16 rest"] = OpenVinoModel(res.model, hint="bf16",
                                                               config=config)
    ref_logits, ref_masks = compiled["f32 DyT"].run(images)
    agreement = {}
    for name, model in compiled.items():
        logits, masks = model.run(images)
        agreement[name] = {"top1": float((logits.argmax(1) == ref_logits.argmax(1)).mean()),
                           "gate_flips": float((masks != ref_masks).mean())}
    reference = "bf16 DyT" if bf16 else "f32 DyT"
    record = {"machine": vp.machine(), "threads": args.threads, "rounds": args.rounds,
              "chunk_s": args.chunk, "reference": reference, "quantizers": quantizers,
              "agreement_vs_f32": agreement, "results": {}}
    for b in [int(v) for v in args.batches.split(",")]:
        inputs = [images[i:i + b] for i in range(0, len(images) - b + 1, b)][:8]
        calls = {}
        for name, model in compiled.items():
            fns = []
            for x in inputs:
                req = model.compiled.create_infer_request()
                req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x), shared_memory=True))
                fns.append(lambda r=req: (r.start_async(), r.wait()))
            calls[name] = fns
        per_round = vp.interleaved(calls, b, args.rounds, args.chunk)
        record["results"][str(b)] = {
            name: {"img_s": statistics.median(rates),
                   f"vs_{reference.split()[0]}": statistics.median(
                       [a / c for a, c in zip(rates, per_round[reference])]),
                   "img_s_rounds": [round(v, 2) for v in rates]}
            for name, rates in per_round.items()}
    key = f"vs_{reference.split()[0]}"
    batches = list(record["results"])
    print("| model | " + " | ".join(f"batch {b} img/s | batch {b} vs {reference}"
                                     for b in batches) + " | top-1 vs f32 | gate flips vs f32 |")
    print("|---|" + "---|---|" * len(batches) + "---|---|")
    for name in compiled:
        cells = [f"{record['results'][b][name]['img_s']:.1f} | "
                 f"{record['results'][b][name][key]:.2f}x" for b in batches]
        a = agreement[name]
        print(f"| {name} | " + " | ".join(cells) + f" | {a['top1']:.1%} | {a['gate_flips']:.2%} |")
    if args.json:
        vp.write_json(args.json, record, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
