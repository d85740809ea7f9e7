"""``dyt-edge bench``: throughput and latency of a DyT artifact on a runtime, against the
complete model measured the same way in the same run, with the activation and FLOPs that
explain the speedup.

:func:`bench_artifact` returns a :class:`BenchResult`. How it measures: ``docs/bench.md``; the
JSON report: ``docs/reports.md``.

Modules: :mod:`.plan` (batch sizes, settings, the order of the timed chunks), :mod:`.timer`
(the benchmark timer), :mod:`.stats` (latency statistics, speedup, efficiency),
:mod:`.activation` (tokens kept and FLOPs), :mod:`.results` (the result and its JSON),
:mod:`.run` (a whole run).
"""

from .activation import batch_max_rates, computed_rates, measure_activation, padding_notes
from .plan import (DEFAULT_BATCHES, DEFAULT_DURATION, DEFAULT_IMAGES, DEFAULT_WARMUP,
                   check_batches, check_settings, interleave, parse_batches, resolve_batches,
                   schedule)
from .results import SCHEMA, SCHEMA_VERSION, BatchResult, BenchResult, Measurement
from .run import bench_artifact, machine_info
from .stats import LatencyStats, latency_stats, percentile, ratios
from .timer import MIN_ITERATIONS, TIMED_BATCHES, MeasureProgress, Timer

__all__ = ["BatchResult", "BenchResult", "DEFAULT_BATCHES", "DEFAULT_DURATION",
           "DEFAULT_IMAGES", "DEFAULT_WARMUP", "LatencyStats", "MIN_ITERATIONS", "MeasureProgress",
           "Measurement", "SCHEMA", "SCHEMA_VERSION", "TIMED_BATCHES", "Timer", "batch_max_rates",
           "bench_artifact", "check_batches", "check_settings", "computed_rates", "interleave",
           "latency_stats", "machine_info", "measure_activation", "padding_notes",
           "parse_batches", "percentile", "ratios", "resolve_batches", "schedule"]
