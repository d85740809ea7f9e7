"""The benchmark timer of ``dyt-edge bench``: prepared single inferences timed in warmup and
interleaved chunks (:class:`Timer`), and :func:`measure`, which times the DyT artifact and the
complete model at each batch size (the method: ``docs/bench.md``)."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional, Sequence

from .plan import interleave, schedule
from .results import BatchResult, Measurement
from .stats import latency_stats

MIN_ITERATIONS = 5
"""Timed inferences per model and batch size, however short the duration."""
TIMED_BATCHES = 4
"""Distinct batches of images timed in turn (DyT's cost depends on the content)."""
THROUGHPUT_LATENCY_SHARE = 0.25
"""With the throughput hint: length of the sequential latency loop, relative to a chunk."""

MeasureProgress = Optional[Callable[[str, Optional[float]], None]]
"""``progress(message, fraction)``: ``fraction`` in [0, 1] is how far the measurement is;
``None`` marks a note worth printing as a line (``baseline: ...``)."""


def timed_batches(images: Any, batch: int, count: int) -> list[Any]:
    """Up to ``count`` distinct consecutive batches; images repeated when there are too few."""
    import numpy as np

    n = images.shape[0]
    k = max(1, min(count, n // batch))
    out = []
    for i in range(k):
        idx = (np.arange(batch) + i * batch) % n
        out.append(np.ascontiguousarray(images[idx]))
    return out


class Timer:
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


def measure(dyt: Any, complete: Any, pixels: Any, sizes: Sequence[int], duration: float,
            warmup: float, hint: str, progress: MeasureProgress) -> list[BatchResult]:
    """Time the ``dyt`` runtime (and ``complete``, unless None) at each batch size of ``sizes``
    on batches of ``pixels``: ``warmup`` seconds each, then ``duration`` seconds each in
    interleaved chunks (:func:`~dyt_edge.bench.plan.schedule`)."""
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
        batches = timed_batches(pixels, b, TIMED_BATCHES)
        timers = {name: Timer(rt, batches, hint) for name, rt in models}
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


__all__ = ["MIN_ITERATIONS", "MeasureProgress", "THROUGHPUT_LATENCY_SHARE", "TIMED_BATCHES",
           "Timer", "measure", "timed_batches"]
