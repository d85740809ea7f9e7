"""Latency statistics and the ratios of a ``dyt-edge bench`` run: nearest-rank percentiles
(trtexec's convention), the speedup and the efficiency (``docs/bench.md``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class LatencyStats:
    """Per-inference latencies, in milliseconds."""

    mean: float
    p50: float
    p90: float
    p95: float
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
                        p95=percentile(ms, 95), p99=percentile(ms, 99), min=ms[0], max=ms[-1],
                        count=len(ms))


def ratios(dyt_ips: Optional[float], complete_ips: Optional[float],
           flops_ratio: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    """``(speedup, efficiency)``: DyT img/s over complete img/s, and the speedup over the FLOPs
    ratio (None where an input is missing)."""
    if not dyt_ips or not complete_ips:
        return None, None
    speedup = dyt_ips / complete_ips
    return speedup, (speedup / flops_ratio if flops_ratio else None)


__all__ = ["LatencyStats", "latency_stats", "percentile", "ratios"]
