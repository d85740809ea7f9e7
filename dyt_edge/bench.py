"""``bench``: throughput and latency of a DyT artifact on a runtime, against the complete model
measured the same way in the same run, with the activation and FLOPs that explain the speedup.

How it measures (per batch size ``B``)
--------------------------------------
* **Images**: real images from DATA (``digits`` by default for the demo model only: random noise
  misleads a dispatcher), preprocessed per the artifact's manifest. Up to ``images`` of them are
  loaded; for batch ``B`` they are cut into consecutive batches, and the first
  :data:`TIMED_BATCHES` of those are timed in turn (fewer images than ``B``: they are repeated).
* **Warmup**: each model runs every timed batch at least once, then on for ``warmup`` seconds.
  Nothing of it is recorded.
* **Interleaving**: the DyT model and the complete model run in alternating chunks
  (``rounds`` chunks of ``duration / rounds`` seconds each, order ABBA ABBA ...), so machine
  noise hits both alike. Each model gets ``duration`` seconds per batch size and at least
  :data:`MIN_ITERATIONS` timed inferences, however short the duration.
* **Latency** (trtexec / benchmark_app conventions): wall time of single synchronous inferences
  (``Runtime.prepare``: inputs bound once, nothing converted), in ms: mean, min, max and
  nearest-rank percentiles p50 / p90 / p99 (pXX = the smallest latency that at least XX% of
  inferences did not exceed).
* **Throughput**: images / wall time, in images per second. With ``hint="latency"`` the wall
  time is that of the sequential latency loop. With ``hint="throughput"`` it comes from
  ``Runtime.throughput`` (every stream kept busy, benchmark_app's throughput mode); the
  latencies are then taken from a shorter sequential loop after each chunk (a quarter of its
  length) and describe one inference at a time, not under load.
* **Speedup** = DyT img/s / complete img/s; **FLOPs ratio** = complete GFLOPs / DyT GFLOPs at
  the measured activation; **efficiency** = speedup / FLOPs ratio (1.0: the runtime turns every
  skipped FLOP into time; dispatch overhead and padding pull it below).
* **Activation**: the target runtime's own dispatch masks on every loaded image: per
  dispatcher, the fraction of patch tokens kept (CLS always runs). With data-dependent K
  (``topk``) a batch costs what its busiest image costs, so for each batch size the mean over
  batches of the per-batch maximum is reported too (``batch_max``: what the graph computes),
  with the GFLOPs at that rate (``computed_gflops``). ``capacity`` computes its fixed slots,
  ``mask`` and ``complete`` every token, ``pack`` exactly the active ones.

JSON schema (``schema_version`` 1)
-----------------------------------
::

    {
      "schema": "dyt-edge.bench", "schema_version": 1, "dyt_edge_version": str,
      "created": ISO-8601 UTC,
      "artifact": {"path", "format", "variant", "dispatch", "capacity", "batch" ("dynamic"|int),
                   "checkpoint", "checkpoint_sha256", "build" (the manifest's build or null)},
      "target": str, "precision": str (in effect),
      "settings": {"batches": [int], "duration_s", "warmup_s", "rounds", "min_iterations",
                   "hint", "streams", "threads", "data", "data_name", "images",
                   "timed_batches", "baseline": bool,
                   "latency": str, "throughput": str (how each was measured)},
      "machine": {"cpu", "cores" (logical), "usable_cores" (affinity), "platform", "python",
                  "load_average_before": [1, 5, 15 min], "load_average_after": [...]},
      "runtime": {"dyt": Runtime.describe(), "complete": Runtime.describe() | null},
      "baseline": {"path", "dispatch": "complete", "how": str,
                   "log": [str] (what was done: exported, built, or reused from the cache)}
                  | null,
      "activation": {"data", "images" (measured on), "skipped" (unreadable files),
                     "dispatch" (the artifact's mode), "dispatchers": [name],
                     "mean": float, "per_layer": [float] (fraction of patch tokens kept),
                     "batch_max": {"<B>": {"mean", "per_layer": [float], "batches",
                                           "computed_gflops"}},
                     "classes": null (unlabelled data) | {"relation", "names_from",
                                "accuracy" (see dyt_edge.validate's "classes")},
                     "per_class": [{"index", "name", "images", "mean",
                                    "per_layer": [float]}] (by class index; empty when the
                                   data has no labels)} | null,
      "flops": {"convention", "dyt_gflops", "complete_gflops", "ratio",
                "per_layer": [{"name", "activation", "gflops", "complete_gflops"}]} | null,
      "results": [{"batch": int,
                   "dyt": {"images_per_s", "ms_per_image", "iterations", "images", "wall_s",
                           "latency_ms": {"mean", "p50", "p90", "p99", "min", "max",
                                          "count"}},
                   "complete": {same} | null,
                   "speedup": float | null, "flops_ratio": float | null,
                   "efficiency": float | null,
                   "batch_max_activation": float | null, "computed_gflops": float | null}],
      "notes": [str]
    }

``latency_ms`` is per inference of a whole batch of ``B`` images; ``ms_per_image`` is
1000 / ``images_per_s``. Ratios are null when the baseline is off (``--no-baseline``), FLOPs
and activation when the runtime exposes no dispatch masks for the artifact.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .errors import UsageError

SCHEMA = "dyt-edge.bench"
SCHEMA_VERSION = 1
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_DURATION = 5.0
DEFAULT_WARMUP = 1.0
DEFAULT_IMAGES = 256
MIN_ITERATIONS = 5
"""Timed inferences per model and batch size, however short the duration."""
TIMED_BATCHES = 4
"""Distinct batches of images timed in turn (DyT's cost depends on the content)."""
CHUNK_S = 1.0
"""Target length of one interleaved chunk."""
THROUGHPUT_LATENCY_SHARE = 0.25
"""With the throughput hint: length of the sequential latency loop, relative to a chunk."""

Progress = Optional[Callable[[str, Optional[float]], None]]
"""``progress(message, fraction)``: ``fraction`` in [0, 1] is how far the measurement is;
``None`` marks a note worth printing as a line (``baseline: ...``)."""


# -- statistics ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyStats:
    """Per-inference latencies, in milliseconds."""

    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values``: the smallest value that at least
    ``p`` percent of the values do not exceed (trtexec's convention)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is outside (0, 100]")
    rank = math.ceil(p / 100.0 * len(sorted_values) - 1e-9)
    return float(sorted_values[max(rank, 1) - 1])


def latency_stats(seconds: Sequence[float]) -> LatencyStats:
    """Statistics of per-inference wall times given in seconds (reported in ms)."""
    if not seconds:
        raise ValueError("no latencies")
    ms = sorted(float(s) * 1e3 for s in seconds)
    return LatencyStats(mean=sum(ms) / len(ms), p50=percentile(ms, 50), p90=percentile(ms, 90),
                        p99=percentile(ms, 99), min=ms[0], max=ms[-1], count=len(ms))


def ratios(dyt_ips: Optional[float], complete_ips: Optional[float],
           flops_ratio: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    """``(speedup, efficiency)``: DyT img/s over complete img/s, and the speedup over the FLOPs
    ratio (None where an input is missing)."""
    if not dyt_ips or not complete_ips:
        return None, None
    speedup = dyt_ips / complete_ips
    return speedup, (speedup / flops_ratio if flops_ratio else None)


# -- results ------------------------------------------------------------------------------------

@dataclass
class Measurement:
    """One model at one batch size."""

    batch: int
    latency: LatencyStats
    iterations: int
    """Inferences behind the throughput."""
    wall_s: float

    @property
    def images(self) -> int:
        return self.iterations * self.batch

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def ms_per_image(self) -> float:
        return 1e3 / self.images_per_s if self.images_per_s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"images_per_s": self.images_per_s, "ms_per_image": self.ms_per_image,
                "iterations": self.iterations, "images": self.images, "wall_s": self.wall_s,
                "latency_ms": self.latency.to_dict()}


@dataclass
class BatchResult:
    batch: int
    dyt: Measurement
    complete: Optional[Measurement] = None
    flops_ratio: Optional[float] = None
    batch_max_activation: Optional[float] = None
    computed_gflops: Optional[float] = None

    @property
    def speedup(self) -> Optional[float]:
        return ratios(self.dyt.images_per_s,
                      self.complete.images_per_s if self.complete else None, self.flops_ratio)[0]

    @property
    def efficiency(self) -> Optional[float]:
        return ratios(self.dyt.images_per_s,
                      self.complete.images_per_s if self.complete else None, self.flops_ratio)[1]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "dyt": self.dyt.to_dict(),
                "complete": self.complete.to_dict() if self.complete else None,
                "speedup": self.speedup, "flops_ratio": self.flops_ratio,
                "efficiency": self.efficiency,
                "batch_max_activation": self.batch_max_activation,
                "computed_gflops": self.computed_gflops}


@dataclass
class BenchResult:
    """Everything ``bench`` measured; :meth:`to_dict` is the JSON (module docstring)."""

    artifact: dict[str, Any]
    target: str
    precision: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    runtime: dict[str, Any]
    results: list[BatchResult]
    baseline: Optional[dict[str, Any]] = None
    activation: Optional[dict[str, Any]] = None
    flops: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)
    created: str = ""

    def result(self, batch: int) -> BatchResult:
        return next(r for r in self.results if r.batch == batch)

    def to_dict(self) -> dict[str, Any]:
        from ._version import __version__

        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                "dyt_edge_version": __version__, "created": self.created,
                "artifact": self.artifact, "target": self.target, "precision": self.precision,
                "settings": self.settings, "machine": self.machine, "runtime": self.runtime,
                "baseline": self.baseline, "activation": self.activation, "flops": self.flops,
                "results": [r.to_dict() for r in self.results], "notes": list(self.notes)}


# -- argument checks ----------------------------------------------------------------------------

def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)`` (duplicates dropped, order kept); a usage error for
    anything but positive integers."""
    parts = [p.strip() for p in str(text).split(",")]
    values: list[int] = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise UsageError(f"--batch takes comma-separated batch sizes, got '{text}'",
                             "e.g. --batch 1,8,32") from None
        values.append(v)
    return check_batches(values)


def check_batches(batches: Sequence[int]) -> tuple[int, ...]:
    out: list[int] = []
    for b in batches:
        if isinstance(b, bool) or int(b) != b or int(b) <= 0:
            raise UsageError(f"batch sizes must be positive integers, got {b}",
                             "e.g. --batch 1,8,32")
        if int(b) not in out:
            out.append(int(b))
    if not out:
        raise UsageError("no batch sizes given", "e.g. --batch 1,8,32")
    return tuple(out)


def check_settings(duration: float, warmup: float, images: int, hint: str) -> None:
    from .runtimes import HINTS

    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0):
        raise UsageError(f"--duration must be a non-negative number of seconds, got {duration}")
    if not (isinstance(warmup, (int, float)) and math.isfinite(warmup) and warmup >= 0):
        raise UsageError(f"--warmup must be a non-negative number of seconds, got {warmup}")
    if int(images) <= 0:
        raise UsageError(f"--images must be positive, got {images}")
    if hint not in HINTS:
        from .config import closest

        raise UsageError(f"unknown performance hint '{hint}'",
                         f"{closest(hint, HINTS)}choose one of: {', '.join(HINTS)}")


def resolve_batches(manifest: dict[str, Any], batches: Optional[Sequence[int]]) -> tuple[int, ...]:
    """The batch sizes to run: ``batches`` (checked), else :data:`DEFAULT_BATCHES`; a
    static-batch artifact runs its own batch only."""
    static = manifest.get("batch", "dynamic")
    static = None if static in (None, "dynamic") else int(static)
    if batches is None:
        return (static,) if static is not None else DEFAULT_BATCHES
    checked = check_batches(batches)
    if static is not None:
        bad = [b for b in checked if b != static]
        if bad:
            raise UsageError(f"this artifact was exported with a static batch of {static}; it "
                             f"cannot run batch {bad[0]}",
                             f"pass --batch {static}, or re-export with --batch dynamic")
    return checked


# -- machine ------------------------------------------------------------------------------------

def _load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    from .runtimes.base import cpu_name

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "usable_cores": usable,
            "platform": platform.platform(), "python": platform.python_version()}


# -- activation ---------------------------------------------------------------------------------

def batch_max_rates(rates: Any, batch: int) -> tuple[list[float], int]:
    """Per-image rates ``[N, L]`` -> per dispatcher, the mean over consecutive batches of
    ``batch`` images of each batch's maximum rate (what data-dependent K computes), and how many
    batches. Fewer than ``batch`` images: one batch of all of them (repeating images does not
    change a maximum); a last partial batch is left out."""
    import numpy as np

    r = np.asarray(rates, dtype=np.float64)
    n = r.shape[0]
    full = n // batch
    if full == 0:
        return [float(v) for v in r.max(axis=0)], 1
    maxima = r[:full * batch].reshape(full, batch, -1).max(axis=1)
    return [float(v) for v in maxima.mean(axis=0)], full


def computed_rates(mode: str, per_image: Any, batch: int, manifest: dict[str, Any]
                   ) -> tuple[list[float], Optional[int]]:
    """The per-dispatcher rate a batch of ``batch`` actually computes in dispatch ``mode``."""
    import numpy as np

    r = np.asarray(per_image, dtype=np.float64)
    layers = r.shape[1]
    if mode == "topk":
        return batch_max_rates(r, batch)
    if mode == "capacity":
        slots = (manifest.get("dispatch") or {}).get("capacity_slots") or []
        patches = int(manifest["model"]["img_size"]) // int(manifest["model"]["patch_size"])
        patches = patches ** 2
        if len(slots) == layers:
            return [min(1.0, s / patches) for s in slots], None
        return [float(v) for v in r.mean(axis=0)], None
    if mode in ("mask", "complete"):
        return [1.0] * layers, None
    # pack: the active tokens (an attention sub-block's core is padded per image; the FLOPs
    # model counts it at the mean too)
    return [float(v) for v in r.mean(axis=0)], None


def measure_activation(runtime: Any, images: Any, batch: int) -> Optional[Any]:
    """Per-image, per-dispatcher rates ``[N, L]`` from the runtime's own masks (None when it
    exposes none). Images run in batches of ``batch`` (the last one padded by repetition)."""
    import numpy as np

    n = images.shape[0]
    rates = []
    for start in range(0, n, batch):
        x = images[start:start + batch]
        real = x.shape[0]
        if real < batch:
            x = np.concatenate([x, images[np.arange(batch - real) % n]])
        out = runtime.run(x)
        if out.masks is None:
            return None
        m = np.asarray(out.masks)[:real]
        rates.append(m.reshape(real, m.shape[1], -1).mean(axis=2))
    return np.concatenate(rates)


# -- timing -------------------------------------------------------------------------------------

def _batches_of(images: Any, batch: int, count: int) -> list[Any]:
    """Up to ``count`` distinct consecutive batches; images repeated when there are too few."""
    import numpy as np

    n = images.shape[0]
    k = max(1, min(count, n // batch))
    out = []
    for i in range(k):
        idx = (np.arange(batch) + i * batch) % n
        out.append(np.ascontiguousarray(images[idx]))
    return out


class _Timer:
    """One model at one batch size: prepared calls, warmup, chunks, totals."""

    def __init__(self, runtime: Any, batches: list[Any], hint: str,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.runtime = runtime
        self.batches = batches
        self.calls = [runtime.prepare(x) for x in batches]
        self.hint = hint
        self.clock = clock
        self.samples: list[float] = []
        self.iterations = 0
        self.wall = 0.0
        self._next = 0

    def _call(self) -> float:
        call = self.calls[self._next % len(self.calls)]
        self._next += 1
        t0 = self.clock()
        call()
        return self.clock() - t0

    def warmup(self, seconds: float) -> None:
        t0 = self.clock()
        for _ in self.calls:
            self._call()
        while self.clock() - t0 < seconds:
            self._call()

    def _sequential(self, seconds: float, min_calls: int) -> tuple[list[float], float]:
        samples: list[float] = []
        t0 = self.clock()
        while True:
            samples.append(self._call())
            elapsed = self.clock() - t0
            if len(samples) >= min_calls and elapsed >= seconds:
                return samples, elapsed

    def chunk(self, seconds: float, min_calls: int) -> None:
        if self.hint == "throughput":
            x = self.batches[self._next % len(self.batches)]
            self._next += 1
            done, wall = 0, 0.0
            while done < min_calls or wall < seconds:
                n, w = self.runtime.throughput(x, max(seconds - wall, 0.0))
                done, wall = done + int(n), wall + float(w)
            self.iterations += done
            self.wall += wall
            samples, _ = self._sequential(seconds * THROUGHPUT_LATENCY_SHARE, 1)
            self.samples += samples
        else:
            samples, wall = self._sequential(seconds, min_calls)
            self.samples += samples
            self.iterations += len(samples)
            self.wall += wall

    def result(self, batch: int) -> Measurement:
        return Measurement(batch=batch, latency=latency_stats(self.samples),
                           iterations=self.iterations, wall_s=self.wall)


def schedule(duration: float) -> tuple[int, float]:
    """``(rounds, seconds per chunk)`` for ``duration`` seconds per model and batch size."""
    rounds = max(2, math.ceil(duration / CHUNK_S - 1e-9))
    return rounds, duration / rounds


def interleave(models: Sequence[Any], rounds: int) -> list[tuple[int, Any]]:
    """The chunk order ABBA ABBA ... (each model first equally often): (round, model) pairs."""
    order = []
    for r in range(rounds):
        seq = list(models) if r % 2 == 0 else list(reversed(models))
        order += [(r, m) for m in seq]
    return order


# -- the benchmark ------------------------------------------------------------------------------

def bench_artifact(artifact: Any, target: str, *, precision: Optional[str] = None,
                   batches: Optional[Sequence[int]] = None,
                   duration: float = DEFAULT_DURATION, warmup: float = DEFAULT_WARMUP,
                   data: Optional[str] = None, baseline: bool = True, hint: str = "latency",
                   streams: Optional[int] = None, threads: Optional[int] = None,
                   images: int = DEFAULT_IMAGES, progress: Progress = None) -> BenchResult:
    """Benchmark ``artifact`` (an :class:`~dyt_edge.artifacts.Artifact` or a path) on ``target``
    against its complete model (see the module docstring for the method).

    ``batches=None`` means the default (1, 8, 32), or the artifact's own batch when it is
    static. Errors a user can cause (bad settings, DATA, a target or precision that cannot run
    the artifact, a missing checkpoint for the baseline) are :class:`~dyt_edge.errors.
    DytEdgeError` subclasses raised before any timing starts.
    """
    from .artifacts import Artifact, load_artifact, utc_now
    from .runtimes import RuntimeOptions, canonical_precision, open_runtime, runtime_class

    load_before = _load_average()
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    manifest = art.manifest
    check_settings(duration, warmup, images, hint)
    runtime_class(target)  # an unknown target is a usage error, before any work
    sizes = resolve_batches(manifest, batches)
    if precision is not None:
        precision = canonical_precision(precision)
    note = (lambda msg: progress(msg, None)) if progress else (lambda msg: None)
    step = (lambda msg: progress(msg, 0.0)) if progress else (lambda msg: None)
    notes: list[str] = []

    # DATA first: the cheapest thing to get wrong.
    from . import artifacts
    from .data import data_name, default_data, load_images

    spec = default_data(manifest, data, purpose="benchmarking")
    pre = artifacts.preprocessing_of(manifest)
    loaded = load_images(spec, pre, limit=int(images))
    if len(loaded) == 0:
        from .errors import DataError

        raise DataError(f"no usable images in {spec}")
    import numpy as np

    pixels = np.ascontiguousarray(loaded.images.numpy(), dtype=np.float32)
    if loaded.skipped:
        notes.append(f"{loaded.skipped} unreadable image file(s) in {spec} were skipped")
    if len(loaded) < max(sizes):
        notes.append(f"{spec} gave {len(loaded)} images, fewer than batch {max(sizes)}: images "
                     "are repeated to fill the batch")

    options = RuntimeOptions(precision=precision, hint=hint, streams=streams, threads=threads)
    dyt = open_runtime(target, art, options)
    complete = None
    try:
        prec = dyt.precision
        mode = str((manifest.get("dispatch") or {}).get("mode", "topk"))
        # activation, from the runtime's own masks
        static = dyt.static_batch
        step(f"activation: running {len(pixels)} images of {spec}")
        per_image = measure_activation(dyt, pixels, static or max(sizes))
        activation = _activation_summary(per_image, manifest, spec, loaded, sizes, mode)
        _add_per_class(activation, per_image, manifest, loaded, notes)
        if per_image is None:
            notes.append(f"{target} does not expose the dispatch masks of this artifact: "
                         "activation, FLOPs ratio and efficiency are not reported")
        base_info = None
        if baseline:
            step("baseline: preparing the complete model")
            base_art, base_options, base_info = _open_baseline(art, target, prec, options, note,
                                                               step)
            complete = open_runtime(target, base_art, base_options)
        flops = _flops(manifest, activation)
        results = _measure(dyt, complete, pixels, sizes, duration, warmup, hint, progress)
        for r in results:
            r.flops_ratio = flops["ratio"] if flops else None
            if activation is not None:
                bm = activation["batch_max"].get(str(r.batch))
                if bm is not None:
                    r.batch_max_activation = bm["mean"]
                    r.computed_gflops = bm["computed_gflops"]
        notes.extend(padding_notes(activation))
        runtime_info = {"dyt": dyt.describe(),
                        "complete": complete.describe() if complete is not None else None}
    finally:  # last opened, first closed (a runtime may restore process-wide settings)
        if complete is not None:
            complete.close()
        dyt.close()
    rounds, _ = schedule(duration)
    machine = {**machine_info(), "load_average_before": load_before,
               "load_average_after": _load_average()}
    if load_before and machine["usable_cores"] and load_before[0] > machine["usable_cores"]:
        notes.append(f"the machine was busy (load average {load_before[0]} on "
                     f"{machine['usable_cores']} cores): absolute numbers are pessimistic; the "
                     "interleaved speedups are the robust figure")
    if hint == "throughput":
        lat = (f"single synchronous inferences in a sequential loop after each throughput "
               f"chunk ({THROUGHPUT_LATENCY_SHARE:g} of its length), not under load")
        thr = "Runtime.throughput: images / wall time with every stream busy"
    else:
        lat = "single synchronous inferences (prepared, inputs bound once)"
        thr = "images / wall time of the sequential latency loop"
    settings = {"batches": list(sizes), "duration_s": float(duration), "warmup_s": float(warmup),
                "rounds": rounds, "min_iterations": MIN_ITERATIONS, "hint": hint,
                "streams": streams, "threads": threads, "data": spec,
                "data_name": data_name(spec), "images": len(loaded),
                "timed_batches": TIMED_BATCHES, "baseline": bool(baseline),
                "latency": lat, "throughput": thr}
    return BenchResult(artifact=_artifact_info(art), target=target, precision=prec,
                       settings=settings, machine=machine, runtime=runtime_info,
                       results=results, baseline=base_info, activation=activation,
                       flops=flops, notes=notes, created=utc_now())


def padding_notes(activation: Optional[dict[str, Any]]) -> list[str]:
    """A ``topk`` artifact computes, per dispatcher, K = the active count of the busiest image in
    the batch. When that is well above the mean at some batch size and token-wise (MLP)
    sub-blocks are dispatched, ``pack`` (which computes the active tokens alone) is the better
    export for batched serving: say so."""
    if not activation or activation.get("dispatch") != "topk":
        return []
    if not any(str(n).rsplit(".", 1)[-1].startswith("mlp")
               for n in activation.get("dispatchers") or []):
        return []
    mean = float(activation["mean"])
    worst = max(((int(b), float(v["mean"])) for b, v in activation["batch_max"].items()
                 if int(b) > 1), key=lambda bv: bv[1] - mean, default=None)
    if worst is None or worst[1] - mean < 0.1:
        return []
    return [f"topk computes K = the busiest image of each batch: {worst[1]:.0%} of the tokens at "
            f"batch {worst[0]} against a mean activation of {mean:.0%}; for batched serving "
            "export with --dispatch pack, which computes the active tokens alone"]


def _artifact_info(art: Any) -> dict[str, Any]:
    m = art.manifest
    d = m.get("dispatch") or {}
    src = m.get("source") or {}
    return {"path": str(art.path), "format": m.get("format"), "variant": m.get("variant"),
            "dispatch": d.get("mode"), "capacity": d.get("capacity"),
            "batch": m.get("batch", "dynamic"), "checkpoint": src.get("path"),
            "checkpoint_sha256": src.get("sha256"), "build": m.get("build")}


def _open_baseline(art: Any, target: str, precision: str, options: Any,
                   note: Callable[[str], None], step: Callable[[str], None]
                   ) -> tuple[Any, Any, dict[str, Any]]:
    """The complete model's artifact and runtime options, and how it was obtained."""
    from dataclasses import replace

    if target == "pytorch":
        # The reference rebuilds the model from the checkpoint: the complete baseline is the
        # same checkpoint run with dispatch "complete".
        from .baseline import NO_BASELINE_HINT, BaselineError

        src = (art.manifest.get("source") or {}).get("path")
        if not src or not Path(src).is_file():
            raise BaselineError(f"the complete baseline runs the checkpoint {src}, which is "
                                "missing", NO_BASELINE_HINT)
        message = "baseline: the same checkpoint in PyTorch with dispatch complete"
        note(message)
        return (art, replace(options, precision=precision, dispatch="complete"),
                {"path": str(art.path), "dispatch": "complete",
                 "how": "the recorded checkpoint, run with dispatch complete", "log": [message]})
    from .baseline import baseline_artifact

    log: list[str] = []

    def say(message: str) -> None:
        log.append(message)
        note(message)

    base = baseline_artifact(art, target, precision, log=say,
                             export_progress=lambda stage: step(f"baseline: {stage}"))
    how = ("the artifact itself (it runs the complete model)" if base.path == art.path
           else "the recorded checkpoint exported with dispatch complete"
           + (", built the same way" if art.manifest.get("build") else ""))
    return (base, replace(options, precision=precision),
            {"path": str(base.path), "dispatch": "complete", "how": how, "log": log})


def _activation_summary(per_image: Any, manifest: dict[str, Any], spec: str, loaded: Any,
                        sizes: Sequence[int], mode: str) -> Optional[dict[str, Any]]:
    if per_image is None:
        return None
    from .config import DyTConfig
    from .flops import model_flops

    config = DyTConfig.from_dict(manifest["model"])
    names = (manifest.get("dispatch") or {}).get("dispatchers") or config.dispatcher_names
    per_layer = [float(v) for v in per_image.mean(axis=0)]
    batch_max = {}
    for b in sizes:
        rates, count = computed_rates(mode, per_image, b, manifest)
        batch_max[str(b)] = {"mean": sum(rates) / len(rates), "per_layer": rates,
                             "batches": count,
                             "computed_gflops": model_flops(config, rates).gflops}
    return {"data": spec, "images": int(per_image.shape[0]), "skipped": int(loaded.skipped),
            "dispatch": mode, "dispatchers": list(names),
            "mean": sum(per_layer) / len(per_layer), "per_layer": per_layer,
            "batch_max": batch_max}


def _add_per_class(activation: Optional[dict[str, Any]], per_image: Any,
                   manifest: dict[str, Any], loaded: Any, notes: list[str]) -> None:
    """The activation per class (labelled data): ``activation["per_class"]`` and how the
    data's labels were matched to the artifact's classes (``activation["classes"]``), named by
    the artifact's class names, else the data's, else the index."""
    if activation is None:
        return
    from .class_names import match_artifact_classes, per_class_activation

    labels = None if loaded.labels is None else loaded.labels.numpy()
    match = match_artifact_classes(manifest, loaded.class_names, labels)
    activation["classes"] = match.to_dict() if match.groups is not None else None
    activation["per_class"] = per_class_activation(per_image, match)
    notes.extend(n for n in match.notes if "no accuracy" not in n)
    if match.relation == "different":
        notes.append("the data's class names are not the artifact's: activation per class is "
                     "grouped by the data's own classes")


def _flops(manifest: dict[str, Any], activation: Optional[dict[str, Any]]
           ) -> Optional[dict[str, Any]]:
    if activation is None:
        return None
    from .config import DyTConfig
    from .flops import model_flops

    config = DyTConfig.from_dict(manifest["model"])
    dyt = model_flops(config, activation["per_layer"])
    full = model_flops(config, None)
    per_layer = [{"name": d.name, "activation": list(d.activation), "gflops": d.total / 1e9,
                  "complete_gflops": c.total / 1e9} for d, c in zip(dyt.layers, full.layers)]
    return {"convention": dyt.to_dict()["convention"], "dyt_gflops": dyt.gflops,
            "complete_gflops": full.gflops, "ratio": full.total / dyt.total,
            "per_layer": per_layer}


def _measure(dyt: Any, complete: Any, pixels: Any, sizes: Sequence[int], duration: float,
             warmup: float, hint: str, progress: Progress) -> list[BatchResult]:
    rounds, chunk_s = schedule(duration)
    min_calls = math.ceil(MIN_ITERATIONS / rounds)
    models = [("dyt", dyt)] + ([("complete", complete)] if complete is not None else [])
    total = len(sizes) * len(models) * (warmup + duration) or 1.0
    done = 0.0

    def tick(msg: str, seconds: float) -> None:
        nonlocal done
        done += seconds
        if progress:
            progress(msg, min(done / total, 1.0))

    results = []
    for b in sizes:
        batches = _batches_of(pixels, b, TIMED_BATCHES)
        timers = {name: _Timer(rt, batches, hint) for name, rt in models}
        for name, timer in timers.items():
            if progress:
                progress(f"batch {b}: warming up {name}", done / total)
            timer.warmup(warmup)
            tick(f"batch {b}: warmed up {name}", warmup)
        for r, name in interleave([n for n, _ in models], rounds):
            timers[name].chunk(chunk_s, min_calls)
            tick(f"batch {b}: {name} chunk {r + 1}/{rounds}", chunk_s)
        results.append(BatchResult(
            batch=b, dyt=timers["dyt"].result(b),
            complete=timers["complete"].result(b) if "complete" in timers else None))
    return results
