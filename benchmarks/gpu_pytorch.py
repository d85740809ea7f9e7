"""PyTorch on a GPU: DyT ``topk`` and ``pack`` dispatch against the complete model, on CUDA.

The model is the ViT-B/16-shaped DyT of ``export_vitb.py`` and ``dispatch_cost.py`` (random
weights, no download; adapters of bottleneck 64; gate biases calibrated so that about ``r`` of
the patch tokens of generated images are active in every layer: :func:`export_vitb.calibrated_vitb`;
``r`` >= 1 opens every gate), on the generated images ``dispatch_cost.py`` measures (seed 2024).
It runs in the product's PyTorch runtime (:class:`dyt_edge.runtimes.torch_runtime.TorchRuntime`,
as ``dyt-edge bench --target pytorch --device cuda`` runs it), once per dispatch mode:
``complete`` (every token), ``topk`` (per image the K = batch-max active tokens) and ``pack``
(the batch's active tokens in one matrix), one copy of the fp32 weights on the GPU, at fp16
autocast by default (the gates stay fp32).

Timing, per batch size:

* the batch's images are staged on the device once per model (``Runtime.prepare``; up to 16
  distinct batches, cycled, as ``dyt-edge bench`` does); each prepared call ends with
  ``torch.cuda.synchronize``, so a call is the finished work, data-dependent shapes included;
* warm-up (not timed): every DyT mode runs every staged batch once (a new K or M is a new shape
  for cuBLAS and the caching allocator; these runs also give the masks), the complete model
  one batch, then every model keeps running for a short while;
* interleaved rounds: in each round every model runs a chunk of whole inferences in turn (order
  ABC CBA ...), timed by the wall clock after the synchronize and by CUDA events recorded
  around the chunk; a round gives each DyT mode a paired ratio (its img/s / the complete
  model's img/s in that round), and the result is the median over the rounds;
* the mean activation of each DyT mode is measured from its own masks on the staged batches,
  and the FLOPs ratio (complete / DyT, :mod:`dyt_edge.flops`) computed at it: at the mean rate
  per layer (what ``pack`` computes) and at the per-batch maximum (what ``topk`` computes).

Budget: ``--budget-s`` (default 420 s) bounds the whole run, model build included. The time left
is shared among the batch sizes still to run; each share pays a short warm-up and up to
``--rounds`` rounds of chunks of at most 1.5 s. When the share is too small, rounds are cut
(after the first), and when the budget is spent, the remaining batch sizes are not run; the
output says what was cut. With the defaults, a modern GPU finishes in about 5 minutes.

    python benchmarks/gpu_pytorch.py [--batches 1,8,32,64,128,256] [--precision fp32|fp16|bf16]
        [--rate 0.5] [--modes topk,pack] [--variant mlp] [--budget-s 420] [--rounds 9]
        [--device cuda[:N]] [--json PATH]
    python benchmarks/gpu_pytorch.py --device cpu --tiny --batches 1,2 --budget-s 5   # logic
    python benchmarks/gpu_pytorch.py --markdown PATH.json    # the README table of a run

``--device cpu --tiny`` runs a tiny DyT (32x32 images, 2 blocks) on the CPU: it checks the
script's logic in seconds, its numbers mean nothing. Without a usable CUDA device (and without
``--device cpu``) the script exits 1 with one line saying why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_BATCHES = "1,8,32,64,128,256"
MAX_TIMED_BATCHES = 16
"""Distinct batches staged per batch size (fewer when the images do not fill them)."""
CHUNK_MAX_S = 1.5
CHUNK_MIN_S = 0.02
WARMUP_MAX_S = 2.0
"""Untimed running per model and batch size after every staged batch ran once."""
RESERVE_S = 5.0
"""Budget kept for the report at the end (at most 5% of the budget)."""
IMAGE_SEED = 2024
NO_GPU_HINT = ("run it on a machine with an NVIDIA GPU and driver; --device cpu --tiny checks "
               "the script's logic on the CPU")


# -- the plan --------------------------------------------------------------------------------------

def plan_batch(remaining_s: float, batches_left: int, models: int, rounds_max: int) -> dict:
    """How one batch size spends its share of the time left: ``share_s``, ``warmup_s`` (per
    model), ``rounds`` and ``chunk_s``; ``rounds`` < ``rounds_max`` when the share cannot hold
    them with chunks of at least :data:`CHUNK_MIN_S`."""
    share = max(remaining_s, 0.0) / max(batches_left, 1)
    warmup = min(WARMUP_MAX_S, 0.1 * share / models)
    timed = max(share - warmup * models, 0.0)
    fit = int(timed // (models * CHUNK_MIN_S))
    rounds = max(1, min(rounds_max, fit))
    chunk = min(CHUNK_MAX_S, max(CHUNK_MIN_S, timed / (rounds * models)))
    return {"share_s": share, "warmup_s": warmup, "rounds": rounds, "chunk_s": chunk}


def paired(ips: dict, reference: str) -> dict:
    """Per model: the median img/s over rounds and the median of the per-round ratios to
    ``reference`` (with their range)."""
    out = {}
    for name, values in ips.items():
        ratios = [a / b for a, b in zip(values, ips[reference]) if b > 0]
        out[name] = {"img_s": statistics.median(values),
                     "img_s_rounds": [round(v, 3) for v in values],
                     "ratio_to_complete": statistics.median(ratios) if ratios else None,
                     "ratio_min": min(ratios) if ratios else None,
                     "ratio_max": max(ratios) if ratios else None}
    return out


# -- timing ----------------------------------------------------------------------------------------

class Chunks:
    """Chunks of whole prepared calls, timed by the wall clock (every call synchronizes) and,
    on CUDA, by events recorded around the chunk."""

    def __init__(self, torch, device) -> None:
        self.torch = torch
        self.cuda = device.type == "cuda"

    def run(self, calls: list, seconds: float, start: int = 0) -> tuple[int, float, float]:
        """(calls made, wall seconds, GPU seconds or nan); at least one call."""
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            begin, end = (torch.cuda.Event(enable_timing=True),
                          torch.cuda.Event(enable_timing=True))
            begin.record()
        n, t0 = 0, time.perf_counter()
        while True:
            calls[(start + n) % len(calls)]()
            n += 1
            wall = time.perf_counter() - t0
            if wall >= seconds:
                break
        gpu = math.nan
        if self.cuda:
            end.record()
            end.synchronize()
            wall = time.perf_counter() - t0
            gpu = begin.elapsed_time(end) / 1e3
        return n, wall, gpu


def measure_batch(runtimes: dict, images, batch: int, plan: dict, deadline: float, cfg,
                  chunks: Chunks) -> tuple[list, list]:
    """Rows (one per mode) for one batch size, and what was cut."""
    from dispatch_cost import activation_stats
    from dyt_edge.bench.plan import interleave
    from dyt_edge.bench.timer import timed_batches

    cut: list[str] = []
    t_start = time.perf_counter()
    staged = timed_batches(images, batch, MAX_TIMED_BATCHES)
    # Warm-up, not timed: every staged batch once per DyT mode (each a new K / M: a new shape;
    # the masks give the activation), the complete model's shape once, then a short while each.
    activation = {}
    for mode, rt in runtimes.items():
        if mode == "complete":
            rt.run(staged[0])
        else:
            activation[mode] = activation_stats([rt.run(x).masks for x in staged], cfg)
    calls = {mode: [rt.prepare(x) for x in staged] for mode, rt in runtimes.items()}
    for mode, fns in calls.items():
        chunks.run(fns, plan["warmup_s"])
    names = list(runtimes)
    ips = {m: [] for m in names}
    gpu_ips = {m: [] for m in names}
    made = {m: 0 for m in names}
    batch_deadline = t_start + 1.25 * plan["share_s"]
    current, round_t0 = 0, time.perf_counter()
    for r, mode in interleave(names, plan["rounds"]):
        if r != current:  # round ``current`` finished: is there time for one more like it?
            current = r
            now = time.perf_counter()
            last_round, round_t0 = now - round_t0, now
            if now + last_round > min(deadline, batch_deadline):
                cut.append(f"batch {batch}: {r} of {plan['rounds']} rounds (budget)")
                break
        n, wall, gpu = chunks.run(calls[mode], plan["chunk_s"], start=made[mode])
        made[mode] += n
        ips[mode].append(n * batch / wall)
        gpu_ips[mode].append(n * batch / gpu if gpu == gpu and gpu > 0 else math.nan)
    done = min(len(v) for v in ips.values())
    ips = {m: v[:done] for m, v in ips.items()}
    summary = paired(ips, "complete")
    rows = []
    for mode in names:
        s = summary[mode]
        gpu_values = [v for v in gpu_ips[mode][:done] if v == v]
        row = {"mode": mode, "batch": batch, **s,
               "gpu_img_s": statistics.median(gpu_values) if gpu_values else None,
               "ms_per_batch": 1e3 * batch / s["img_s"], "rounds": done,
               "calls": made[mode], "chunk_s": round(plan["chunk_s"], 4)}
        if mode == "complete":
            row.update(activation=1.0, flops_ratio=1.0, flops_ratio_padded=1.0, efficiency=None)
        else:
            a = activation[mode]
            row.update(activation=a["mean"], activation_per_layer=a["per_layer"],
                       flops_ratio=a["flops_ratio"], flops_ratio_padded=a["flops_ratio_padded"],
                       efficiency=(s["ratio_to_complete"] / a["flops_ratio"]
                                   if s["ratio_to_complete"] else None))
        rows.append(row)
    del calls, staged
    return rows, cut


# -- the model ----------------------------------------------------------------------------------

def build(args):
    """(model, config, description)."""
    if args.tiny:
        from dyt_edge.config import DyTConfig
        from dyt_edge.synthetic import synthetic_model

        cfg = DyTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                        num_classes=10, variant=args.variant, adapter_dim=8,
                        adapter_scale=0.1).validate()
        model = synthetic_model(cfg, rate=args.rate, seed=0)
        return model, cfg, (f"tiny DyT ({args.variant}; 32x32, 2 blocks, width 64), synthetic "
                            f"weights, gates calibrated to r = {args.rate:g}: checks the logic "
                            "only")
    from export_vitb import calibrated_vitb

    model = calibrated_vitb(args.variant, args.rate)
    return model, model.config, (f"ViT-B/16 DyT ({args.variant}), random weights, gate biases "
                                 f"calibrated to r = {args.rate:g} on generated images "
                                 "(export_vitb.calibrated_vitb)")


def machine_facts(torch, device) -> dict:
    from dyt_edge.runtimes.base import cpu_name
    from dyt_edge.runtimes.torch_runtime import cuda_facts

    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
             "platform": platform.platform(), "device": str(device), "gpu": None}
    if device.type == "cuda":
        facts.update(cuda_facts(torch, device))
    return facts


# -- output -------------------------------------------------------------------------------------

def _ratio(row) -> str:
    if row.get("ratio_to_complete") is None:
        return "-"
    cell = f"{row['ratio_to_complete']:.2f}x"
    if row.get("efficiency") is not None:
        cell += f" ({row['efficiency']:.2f})"
    return cell


def markdown_table(record: dict) -> str:
    """Per batch size: the complete model's img/s and each DyT mode's ratio to it (efficiency =
    ratio / FLOPs ratio at the measured mean activation, in brackets)."""
    modes = [m for m in record["modes"] if m != "complete"]
    head = (["batch", "complete img/s"]
            + [f"`{m}` ratio (eff.)" for m in modes]
            + [f"`{m}` activation / FLOPs ratio" for m in modes] + ["rounds"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in record["batches"]:
        cells = {r["mode"]: r for r in record["results"] if r["batch"] == b}
        if "complete" not in cells:
            continue
        line = [str(b), f"{cells['complete']['img_s']:.1f}"]
        line += [_ratio(cells[m]) if m in cells else "" for m in modes]
        line += [f"{cells[m]['activation']:.2f} / {cells[m]['flops_ratio']:.2f}"
                 if m in cells else "" for m in modes]
        line.append(str(cells["complete"]["rounds"]))
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def print_report(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if console.width < 120:  # not a terminal (a log file): do not squeeze the table
        console = Console(width=120)
    m = record["machine"]
    where = (f"{m['gpu']} (compute capability {m['compute_capability']}), CUDA {m['cuda']}"
             if m.get("gpu") else f"CPU ({m['cpu']})")
    console.print(f"{record['model']}", highlight=False)
    console.print(f"{where}; torch {m['torch']}; precision {record['precision_in_effect']}; "
                  f"{record['elapsed_s']:.0f} s of a {record['settings']['budget_s']:g} s budget",
                  highlight=False)
    table = Table(title="img/s and ratio to the complete model (median of paired rounds)",
                  title_justify="left")
    for col in ("batch", "mode", "img/s", "ms / batch", "ratio", "range", "activation",
                "FLOPs ratio", "efficiency", "rounds"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in record["results"]:
        rng = ("-" if r["ratio_min"] is None or r["mode"] == "complete"
               else f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}")
        table.add_row(str(r["batch"]), r["mode"], f"{r['img_s']:.1f}", f"{r['ms_per_batch']:.2f}",
                      f"{r['ratio_to_complete']:.3f}x", rng, f"{r['activation']:.3f}",
                      f"{r['flops_ratio']:.2f}", "-" if r["efficiency"] is None
                      else f"{r['efficiency']:.2f}", str(r["rounds"]))
    console.print(table)
    for line in record["cut"]:
        console.print(f"cut: {line}", highlight=False)
    print()
    print(markdown_table(record))


# -- main ------------------------------------------------------------------------------------------

def _parse_batches(text: str) -> list[int]:
    from dyt_edge.bench.plan import check_batches

    try:
        return list(check_batches([int(p) for p in text.split(",") if p.strip()]))
    except ValueError:
        from dyt_edge.errors import UsageError

        raise UsageError(f"--batches takes comma-separated batch sizes, got '{text}'",
                         "e.g. --batches 1,8,32") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default=DEFAULT_BATCHES)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                        help="default: fp16 (CUDA autocast, gates fp32); fp32 with --device cpu")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="share r of patch tokens the gates are calibrated to keep")
    parser.add_argument("--modes", default="topk,pack", help="DyT dispatch modes beside complete")
    parser.add_argument("--variant", default="mlp", choices=("mlp", "attn", "attn_mlp", "layer"))
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="wall-clock budget of the whole run, model build included")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (at most)")
    parser.add_argument("--images", type=int, default=None,
                        help="generated images (default: the largest batch, at least 16)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny DyT instead of ViT-B/16 (checks the logic in seconds)")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--markdown", metavar="JSON", default=None,
                        help="print the README table of an earlier run's --json, and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return 0
    from dyt_edge.errors import DytEdgeError

    try:
        return run(args)
    except DytEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args) -> int:
    t_start = time.perf_counter()
    import torch

    from dyt_edge.data import generated_images
    from dyt_edge.errors import UsageError
    from dyt_edge.runtimes import RuntimeOptions, RuntimeSetupError
    from dyt_edge.runtimes.torch_runtime import TorchRuntime, resolve_device

    sizes = _parse_batches(args.batches)
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise UsageError(f"--rate must be positive, got {args.rate:g}", "e.g. --rate 0.5")
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        raise UsageError(f"--budget-s must be a positive number of seconds, got "
                         f"{args.budget_s:g}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    modes = ["complete"] + [m.strip() for m in args.modes.split(",")
                            if m.strip() and m.strip() != "complete"]
    for m in modes[1:]:
        if m not in ("topk", "pack", "mask"):
            raise UsageError(f"unknown dispatch mode '{m}' for --modes", "choose topk, pack, mask")
    try:
        device = resolve_device(torch, args.device)
    except RuntimeSetupError as exc:  # the script runs on cuda unless told: its own hint
        hint = (NO_GPU_HINT if exc.message.startswith("no CUDA GPU")
                else (exc.hint or "").replace("drop --device", "check the logic with --device cpu "
                                              "--tiny"))
        raise RuntimeSetupError(exc.message, hint) from None
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    budget = float(args.budget_s)
    deadline = t_start + budget - min(RESERVE_S, 0.05 * budget)

    log(f"building the model on the CPU ({'tiny' if args.tiny else 'ViT-B/16'}, r = "
        f"{args.rate:g})")
    model, cfg, description = build(args)
    runtimes = {m: TorchRuntime.from_model(model, options=RuntimeOptions(
        device=str(device), precision=precision, dispatch=m)) for m in modes}
    ref = runtimes["complete"]
    n_images = args.images or max(max(sizes), 16)
    images = generated_images(n_images, cfg.in_chans, cfg.img_size, seed=IMAGE_SEED)
    log(f"on {ref.describe()['device']}, {ref.precision_in_effect()}; {n_images} generated "
        f"images; {deadline - time.perf_counter():.0f} s of budget left")

    results: list = []
    cut: list[str] = []
    chunks = Chunks(torch, device)
    record = {"schema": "dyt-edge.gpu-pytorch", "schema_version": 1,
              "command": " ".join(sys.argv), "model": description, "variant": args.variant,
              "rate": args.rate, "modes": modes, "batches": sizes, "precision": precision,
              "precision_in_effect": ref.precision_in_effect(),
              "settings": {"budget_s": budget, "rounds_max": args.rounds, "images": n_images,
                           "image_seed": IMAGE_SEED, "device": str(device), "tiny": args.tiny,
                           "max_timed_batches": MAX_TIMED_BATCHES, "chunk_max_s": CHUNK_MAX_S,
                           "warmup_max_s": WARMUP_MAX_S,
                           "timing": "prepared calls (input staged once, each call ends with "
                                     "torch.cuda.synchronize), chunks timed by the wall clock "
                                     "and CUDA events, rounds interleaved, warm-up excluded"},
              "machine": machine_facts(torch, device), "runtime": ref.describe(),
              "results": results, "cut": cut, "elapsed_s": None}
    for i, b in enumerate(sizes):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            cut.append(f"batch {b}: not run (the budget was spent)")
            continue
        plan = plan_batch(remaining, len(sizes) - i, len(modes), args.rounds)
        if plan["rounds"] < args.rounds:
            cut.append(f"batch {b}: {plan['rounds']} of {args.rounds} rounds planned (budget)")
        log(f"batch {b}: {plan['rounds']} rounds of {plan['chunk_s']:.2f} s chunks per model")
        try:
            rows, more = measure_batch(runtimes, images, b, plan, deadline, cfg, chunks)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            cut.append(f"batch {b}: out of GPU memory")
            log(f"batch {b}: out of GPU memory")
            continue
        results.extend(rows)
        cut.extend(more)
        for r in rows:
            log(f"  {r['mode']:<8} {r['img_s']:10.1f} img/s  ratio {r['ratio_to_complete']:.3f}  "
                f"activation {r['activation']:.3f}  FLOPs ratio {r['flops_ratio']:.2f}  "
                f"rounds {r['rounds']}")
        record["elapsed_s"] = round(time.perf_counter() - t_start, 2)
        if args.json:  # after every batch size: an interrupted run keeps what it measured
            Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    record["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    print_report(record)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
