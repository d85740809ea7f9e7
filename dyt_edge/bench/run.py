"""Running ``dyt-edge bench``: the artifact and its complete baseline opened on the target, the
activation measured on DATA, both models timed, and the :class:`BenchResult` assembled."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .activation import (activation_summary, add_per_class, flops_summary,
                         measure_activation, padding_notes)
from .plan import (DEFAULT_DURATION, DEFAULT_IMAGES, DEFAULT_WARMUP, check_settings,
                   resolve_batches, schedule)
from .results import BenchResult
from .timer import (MIN_ITERATIONS, THROUGHPUT_LATENCY_SHARE, TIMED_BATCHES, MeasureProgress,
                    measure)


def _load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    from ..runtimes.base import cpu_name

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "usable_cores": usable,
            "platform": platform.platform(), "python": platform.python_version()}


def bench_artifact(artifact: Any, target: str, *, precision: Optional[str] = None,
                   batches: Optional[Sequence[int]] = None,
                   duration: float = DEFAULT_DURATION, warmup: float = DEFAULT_WARMUP,
                   data: Optional[str] = None, baseline: bool = True, hint: str = "latency",
                   streams: Optional[int] = None, threads: Optional[int] = None,
                   images: int = DEFAULT_IMAGES, progress: MeasureProgress = None,
                   device: Optional[str] = None, float_parts: Optional[str] = None
                   ) -> BenchResult:
    """Benchmark ``artifact`` (an :class:`~dyt_edge.artifacts.Artifact` or a path) on ``target``
    against its complete model (the method: ``docs/bench.md``).

    ``batches=None`` means the default (1, 8, 32), or the artifact's own batch when it is
    static. ``device`` is the runtime's device (``RuntimeOptions.device``: ``cuda:N`` for
    ``pytorch`` on a GPU; default: the runtime's); the complete model runs on the same one.
    Errors a user can cause (bad settings, DATA, a target or precision that cannot run
    the artifact, a missing checkpoint for the baseline) are :class:`~dyt_edge.errors.
    DytEdgeError` subclasses raised before any timing starts.
    """
    from ..artifacts import Artifact, load_artifact, utc_now
    from ..runtimes import (RuntimeOptions, canonical_precision, float_parts_extra,
                            open_runtime, runtime_class)

    load_before = _load_average()
    art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
    info = art.info
    check_settings(duration, warmup, images, hint)
    runtime_class(target)  # an unknown target is a usage error, before any work
    extra = float_parts_extra(target, float_parts)
    sizes = resolve_batches(info.batch, batches)
    if precision is not None:
        precision = canonical_precision(precision)
    note = (lambda msg: progress(msg, None)) if progress else (lambda msg: None)
    step = (lambda msg: progress(msg, 0.0)) if progress else (lambda msg: None)
    notes: list[str] = []

    # DATA first: the cheapest thing to get wrong.
    from ..data import data_name, default_data, is_demo_model, load_images

    spec = default_data(data, demo=is_demo_model(info), purpose="benchmarking")
    pre = info.preprocessing()
    loaded = load_images(spec, pre, limit=int(images))
    if len(loaded) == 0:
        from ..errors import DataError

        raise DataError(f"no usable images in {spec}")
    import numpy as np

    pixels = np.ascontiguousarray(loaded.images.numpy(), dtype=np.float32)
    if loaded.skipped:
        notes.append(f"{loaded.skipped} unreadable image file(s) in {spec} were skipped")
    if len(loaded) < max(sizes):
        notes.append(f"{spec} gave {len(loaded)} images, fewer than batch {max(sizes)}: images "
                     "are repeated to fill the batch")

    options = RuntimeOptions(precision=precision, hint=hint, streams=streams, threads=threads,
                             device=device, extra=extra)
    dyt = open_runtime(target, art, options)
    complete = None
    try:
        prec = dyt.precision
        mode = info.dispatch.mode
        # activation, from the runtime's own masks
        static = dyt.static_batch
        step(f"activation: running {len(pixels)} images of {spec}")
        per_image = measure_activation(dyt, pixels, static or max(sizes))
        activation = activation_summary(per_image, info, spec, loaded, sizes, mode)
        add_per_class(activation, per_image, info, loaded, notes)
        if per_image is None:
            notes.append(f"{target} does not expose the dispatch masks of this artifact: "
                         "activation, FLOPs ratio and efficiency are not reported")
        base_info = None
        if baseline:
            step("baseline: preparing the complete model")
            base_art, base_options, base_info = _open_baseline(art, target, prec, options, note,
                                                               step)
            complete = open_runtime(target, base_art, base_options)
        flops = flops_summary(info, activation)
        results = measure(dyt, complete, pixels, sizes, duration, warmup, hint, progress)
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
                "streams": streams, "threads": threads, "device": device, "data": spec,
                "data_name": data_name(spec), "images": len(loaded),
                "timed_batches": TIMED_BATCHES, "baseline": bool(baseline),
                "latency": lat, "throughput": thr}
    return BenchResult(artifact=_artifact_info(art), target=target, precision=prec,
                       settings=settings, machine=machine, runtime=runtime_info,
                       results=results, baseline=base_info, activation=activation,
                       flops=flops, notes=notes, created=utc_now())


def _artifact_info(art: Any) -> dict[str, Any]:
    info = art.info
    return {"path": str(art.path), "format": info.format, "variant": info.variant,
            "dispatch": info.dispatch.mode, "capacity": info.dispatch.capacity,
            "batch": "dynamic" if info.batch is None else info.batch,
            "checkpoint": info.source.path, "checkpoint_sha256": info.source.sha256,
            "build": dict(info.build.record) if info.build else None}


def _open_baseline(art: Any, target: str, precision: str, options: Any,
                   note: Callable[[str], None], step: Callable[[str], None]
                   ) -> tuple[Any, Any, dict[str, Any]]:
    """The complete model's artifact and runtime options, and how it was obtained."""
    from dataclasses import replace

    if target == "pytorch":
        # The reference rebuilds the model from the checkpoint: the complete baseline is the
        # same checkpoint run with dispatch "complete".
        from ..baseline import NO_BASELINE_HINT, BaselineError

        src = art.info.source.path
        if not src or not Path(src).is_file():
            raise BaselineError(f"the complete baseline runs the checkpoint {src}, which is "
                                "missing", NO_BASELINE_HINT)
        message = "baseline: the same checkpoint in PyTorch with dispatch complete"
        note(message)
        return (art, replace(options, precision=precision, dispatch="complete"),
                {"path": str(art.path), "dispatch": "complete",
                 "how": "the recorded checkpoint, run with dispatch complete", "log": [message]})
    from ..baseline import baseline_artifact

    log: list[str] = []

    def say(message: str) -> None:
        log.append(message)
        note(message)

    base = baseline_artifact(art, target, log=say,
                             export_progress=lambda stage: step(f"baseline: {stage}"))
    how = ("the artifact itself (it runs the complete model)" if base.path == art.path
           else "the recorded checkpoint exported with dispatch complete"
           + (", built the same way" if art.info.is_build else ""))
    return (base, replace(options, precision=precision),
            {"path": str(base.path), "dispatch": "complete", "how": how, "log": log})


__all__ = ["bench_artifact", "machine_info"]
