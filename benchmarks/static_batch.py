"""Static against dynamic batch shapes on OpenVINO, measured on the ViT-B/16 DyT of
``vs_pytorch.py`` (same checkpoint, dynamic-batch export and images in ``--work``).

Per batch size B, the checkpoint is exported again with a static batch (``dyt-edge export
--batch B``: the input is ``[B, 3, 224, 224]``, cached in ``--work``) and both exports are built
INT8 with the build's defaults (SmoothQuant off, as in ``vs_pytorch.py``). Four models per batch
size are timed interleaved: bf16 and INT8, each with a dynamic and a static batch. Inside the
graph the dispatch stays data-dependent either way (``pack``: the active tokens are packed with
NonZero), so what a static batch can save is in the parts before the first gate and in the
attention, which sees every token.

    python benchmarks/static_batch.py [--work DIR] [--batches 1,8] [--rounds 5] [--chunk 1.5]
        [--threads 2] [--json PATH]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def static_export(work: Path, checkpoint: Path, batch: int, calib: Path, calib_images: int,
                  log) -> Path:
    """The checkpoint exported with a static ``batch`` and built INT8 (cached in ``work``)."""
    from dyt_edge.artifacts import ArtifactError, load_artifact
    from dyt_edge.build import build_artifact
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint

    out = work / f"export-static-b{batch}"
    try:
        art = load_artifact(out)
        if art.info.batch == batch and (out / "openvino-int8" / "model.xml").is_file():
            log(f"reusing the static batch-{batch} export {out}")
            return out
    except ArtifactError:
        pass
    t0 = time.perf_counter()
    export_checkpoint(checkpoint, out, ExportOptions(format="openvino", batch=batch,
                                                     validate=False))
    build_artifact(load_artifact(out), "openvino", precision="int8", calib=str(calib),
                   calib_size=max(batch, (calib_images // batch) * batch), smooth_quant="off")
    log(f"static batch-{batch} export and INT8 build {out} ({time.perf_counter() - t0:.0f} s)")
    return out


def main(argv=None) -> int:
    import numpy as np

    import vs_pytorch as vp
    from dyt_edge.data import load_images
    from dyt_edge.runtimes import RuntimeOptions, open_runtime

    ap = vp.common_arguments(__doc__)
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cfg = vp.model_config(args.tiny)
    paths = vp.prepare_files(args.work, cfg, 0.5, 64 if not args.tiny else 16,
                             args.calib_images, log)
    images = np.ascontiguousarray(
        load_images(str(paths["images"]), cfg.preprocessing).images.numpy(), dtype=np.float32)
    bf16 = vp.cpu_has_bf16()
    floats = "bf16" if bf16 else "fp32"

    def runtime(path: Path, precision: str):
        return open_runtime("openvino", str(path), RuntimeOptions(
            precision=precision, threads=args.threads, hint="latency"))

    record: dict[str, Any] = {"machine": vp.machine(), "threads": args.threads,
                              "rounds": args.rounds, "chunk_s": args.chunk,
                              "float_precision": floats, "results": {}}
    for b in [int(v) for v in args.batches.split(",")]:
        static = static_export(args.work, paths["checkpoint"], b, paths["images"],
                               args.calib_images, log)
        models = {f"{floats} dynamic": runtime(paths["export"], floats),
                  f"{floats} static": runtime(static, floats),
                  "int8 dynamic": runtime(paths["int8"], "int8"),
                  "int8 static": runtime(static / "openvino-int8", "int8")}
        inputs = [images[i:i + b] for i in range(0, len(images) - b + 1, b)][:8]
        calls = {n: [rt.prepare(x) for x in inputs] for n, rt in models.items()}
        per_round = vp.interleaved(calls, b, args.rounds, args.chunk)
        del calls
        for rt in models.values():
            rt.close()
        rows = {}
        for name, rates in per_round.items():
            kind = name.split()[0]
            dynamic = per_round[f"{kind} dynamic"]
            rows[name] = {"img_s": statistics.median(rates),
                          "vs_dynamic": statistics.median(
                              [a / d for a, d in zip(rates, dynamic)]),
                          "img_s_rounds": [round(v, 2) for v in rates]}
        record["results"][str(b)] = rows
    batches = list(record["results"])
    print("| model | " + " | ".join(f"batch {b} img/s | batch {b} vs dynamic" for b in batches)
          + " |")
    print("|---|" + "---|---|" * len(batches))
    for name in record["results"][batches[0]]:
        cells = [f"{record['results'][b][name]['img_s']:.1f} | "
                 f"{record['results'][b][name]['vs_dynamic']:.2f}x" for b in batches]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        vp.write_json(args.json, record, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
