"""A bounded load test of `dyt-edge serve`, next to the same artifact run directly.

The artifact is packaged for Triton (Python backend, dynamic batching) into a temporary
repository and served by the serve extra's Triton on 127.0.0.1. CLIENTS closed-loop clients
(one KServe-v2 HTTP connection each, one image per request, the next request sent when the
answer arrives) load it; the same artifact then runs in this process, one image per call, as
fast as it goes. Server and direct run take turns in `--rounds` chunks (server, direct,
server, direct, ...), so the machine's noise hits both alike, and never at the same time.
Every served answer is checked: its logits must match the direct run of the same image
(to the export's validation tolerance) and a request that fails or differs counts as failed.

    python benchmarks/serve_load.py ARTIFACT [--clients 8] [--duration 20] [--rounds 2]
                                    [--max-batch 8] [--queue-delay 1000] [--data digits]
                                    [--json FILE]

Reports requests/s (one image each), client-side latency p50 / p95 / p99, failed requests,
the merged batch sizes the server ran, and the direct run's images/s and latency at batch 1
(one call per image, what a single process serving requests one by one does) and at
`--max-batch` (the most the runtime gives this artifact on this machine; half as long).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def percentiles(ms: list[float]) -> dict[str, float]:
    from dyt_edge.bench.stats import percentile

    s = sorted(ms)
    return {f"p{p}": percentile(s, p) for p in (50, 95, 99)} if s else {}


def client_loop(url: str, model: str, images, want, atol: float, stop: threading.Event,
                out: dict) -> None:
    """One closed-loop client: request, check, repeat until ``stop``."""
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    i = 0
    try:
        while not stop.is_set():
            k = i % len(images)
            x = httpclient.InferInput("images", [1, *images.shape[1:]], "FP32")
            x.set_data_from_numpy(images[k:k + 1])
            t0 = time.perf_counter()
            try:
                r = client.infer(model, [x])
                ok = bool(np.abs(r.as_numpy("logits") - want[k:k + 1]).max() <= atol)
            except Exception:  # noqa: BLE001 - a failed request is counted, not fatal
                ok = False
            out["ms"].append((time.perf_counter() - t0) * 1e3)
            out["ok" if ok else "failed"] += 1
            i += 1
    finally:
        client.close()


def serve_chunk(url: str, model: str, clients: int, seconds: float, images, want,
                atol: float) -> dict:
    stop = threading.Event()
    outs = [{"ms": [], "ok": 0, "failed": 0} for _ in range(clients)]
    threads = [threading.Thread(target=client_loop, args=(url, model, images, want, atol, stop,
                                                          o)) for o in outs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "ms": [m for o in outs for m in o["ms"]],
            "ok": sum(o["ok"] for o in outs), "failed": sum(o["failed"] for o in outs)}


def direct_chunk(rt, images, seconds: float, batch: int = 1) -> dict:
    """The artifact in this process, ``batch`` images per call; ``ok`` counts images."""
    ms, n = [], 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        k = (n * batch) % len(images)
        x = images[k:k + batch]
        if len(x) < batch:
            x = images[:batch]
        t1 = time.perf_counter()
        rt.run(x)
        ms.append((time.perf_counter() - t1) * 1e3)
        n += 1
    return {"wall_s": time.perf_counter() - t0, "ms": ms, "ok": n * batch, "failed": 0}


def batch_sizes(url: str, model: str) -> dict[str, int]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()
    return {str(b["batch_size"]): int(b["compute_infer"]["count"])
            for b in stats.get("batch_stats", [])}


def summary(chunks: list[dict]) -> dict:
    wall = sum(c["wall_s"] for c in chunks)
    ok = sum(c["ok"] for c in chunks)
    ms = [m for c in chunks for m in c["ms"]]
    return {"requests_per_s": ok / wall if wall else 0.0, "requests": ok,
            "failed": sum(c["failed"] for c in chunks), "wall_s": wall,
            "latency_ms": percentiles(ms)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of load on the server (the direct run gets as long)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, each side")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay", type=int, default=1000, help="microseconds")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--port", type=int, default=18700, help="HTTP port (gRPC +1, "
                        "metrics +2)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from dyt_edge.artifacts import load_artifact
    from dyt_edge.data import load_images
    from dyt_edge.runtimes import open_runtime
    from dyt_edge.serving.package import PackageOptions, package_artifact
    from dyt_edge.runtimes.base import cpu_name
    from dyt_edge.serving.server import ServeOptions, TritonServer
    from dyt_edge.serving.spec import RUNTIME_OF_FORMAT

    art = load_artifact(args.artifact)
    info = art.info
    images = load_images(args.data, info.preprocessing(), limit=args.images).images
    images = np.ascontiguousarray(images, dtype=np.float32)
    atol = float((info.section("validation") or {}).get("atol") or 1e-4)
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    result = package_artifact(art, PackageOptions("triton", output=work / "repo", name="dyt",
                                                  max_batch=args.max_batch,
                                                  queue_delay_us=args.queue_delay))
    target = RUNTIME_OF_FORMAT[result.record["artifact"]["format"]]
    served, direct, direct_max = [], [], []
    load_before = os.getloadavg()
    with open_runtime(target, art) as rt, TritonServer(ServeOptions(
            work / "repo", http_port=args.port, grpc_port=args.port + 1,
            metrics_port=args.port + 2)) as server:
        want = np.concatenate([rt.run(images[i:i + 8]).logits for i in range(0, len(images), 8)])
        # Warm both up (first inferences compile kernels), unmeasured.
        serve_chunk(server.http_url, "dyt", args.clients, args.warmup, images, want, atol)
        direct_chunk(rt, images, args.warmup)
        direct_chunk(rt, images, args.warmup, args.max_batch)
        warm = batch_sizes(server.http_url, "dyt")
        per = args.duration / args.rounds
        for _ in range(args.rounds):
            served.append(serve_chunk(server.http_url, "dyt", args.clients, per, images, want,
                                      atol))
            direct.append(direct_chunk(rt, images, per))
            direct_max.append(direct_chunk(rt, images, per / 2, args.max_batch))
        sizes = batch_sizes(server.http_url, "dyt")
        describe = rt.describe()
    merged = {b: n - warm.get(b, 0) for b, n in sizes.items() if n - warm.get(b, 0) > 0}
    s, d, dm = summary(served), summary(direct), summary(direct_max)
    report = {
        "artifact": str(art.path), "dispatch": info.dispatch.mode, "runtime": describe,
        "clients": args.clients, "duration_s": args.duration, "rounds": args.rounds,
        "max_batch": args.max_batch, "queue_delay_us": args.queue_delay, "data": args.data,
        "server": {**s, "batch_sizes": merged},
        "direct": {**d, "images_per_s": d["requests_per_s"]},
        "direct_max_batch": {"images_per_s": dm["requests_per_s"], "batch": args.max_batch,
                             "latency_ms": dm["latency_ms"], "wall_s": dm["wall_s"]},
        "ratio_server_to_direct": (s["requests_per_s"] / d["requests_per_s"]
                                   if d["requests_per_s"] else None),
        "machine": {"cpu": cpu_name(),
                    "cores": len(os.sched_getaffinity(0)), "load_before": load_before,
                    "load_after": os.getloadavg(), "python": sys.version.split()[0]},
    }
    lat_s, lat_d = s["latency_ms"], d["latency_ms"]
    print(f"artifact {art.path} ({info.dispatch.mode}, {describe.get('backend', target)})")
    print(f"{'':24}{'img/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'failed':>8}")
    print(f"{f'serve, {args.clients} clients':24}{s['requests_per_s']:8.2f}"
          f"{lat_s.get('p50', 0):9.1f}{lat_s.get('p95', 0):9.1f}{lat_s.get('p99', 0):9.1f}"
          f"{s['failed']:8d}")
    print(f"{'direct, batch 1':24}{d['requests_per_s']:8.2f}{lat_d.get('p50', 0):9.1f}"
          f"{lat_d.get('p95', 0):9.1f}{lat_d.get('p99', 0):9.1f}{0:8d}")
    print(f"{f'direct, batch {args.max_batch}':24}{dm['requests_per_s']:8.2f}"
          f"{dm['latency_ms'].get('p50', 0):9.1f}{dm['latency_ms'].get('p95', 0):9.1f}"
          f"{dm['latency_ms'].get('p99', 0):9.1f}{0:8d}   (latency of a whole batch)")
    print(f"server / direct batch 1: {report['ratio_server_to_direct']:.2f}x; merged batch sizes "
          f"(size: executions): {merged}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
