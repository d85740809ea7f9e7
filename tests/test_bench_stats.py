"""Latency statistics and the ratios of `dyt-edge bench` (:mod:`dyt_edge.bench.stats`, and the
results built on them in :mod:`dyt_edge.bench.results`)."""

from __future__ import annotations

import random

import pytest

from dyt_edge.bench import BatchResult, LatencyStats, Measurement, latency_stats, percentile


def test_latency_stats_on_known_numbers():
    ms = list(range(1, 101))  # 1..100 ms
    random.Random(0).shuffle(ms)
    s = latency_stats([v / 1e3 for v in ms])
    assert s.count == 100
    assert s.mean == pytest.approx(50.5)
    assert (s.min, s.max) == pytest.approx((1.0, 100.0))
    assert (s.p50, s.p90, s.p95, s.p99) == pytest.approx((50.0, 90.0, 95.0, 99.0))

    s = latency_stats([0.004, 0.001, 0.003, 0.002])
    assert s.mean == pytest.approx(2.5)
    assert (s.p50, s.p90, s.p95, s.p99) == pytest.approx((2.0, 4.0, 4.0, 4.0))

    one = latency_stats([0.007])
    assert one.p50 == one.p95 == one.p99 == one.min == one.max == pytest.approx(7.0)


def test_p95_is_the_nearest_rank_between_p90_and_p99():
    """20 latencies: p90 is the 18th, p95 the 19th, p99 the 20th (trtexec's convention)."""
    ms = [float(v) for v in range(1, 21)]
    random.Random(1).shuffle(ms)
    s = latency_stats([v / 1e3 for v in ms])
    assert (s.p90, s.p95, s.p99) == pytest.approx((18.0, 19.0, 20.0))
    assert list(s.to_dict()) == ["mean", "p50", "p90", "p95", "p99", "min", "max", "count"]
    with pytest.raises(ValueError):
        latency_stats([])


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 90) == 9.0   # 90% of 10 values: the 9th
    assert percentile(values, 91) == 10.0  # more than 9 values needed: the 10th
    assert percentile(values, 10) == 1.0
    assert percentile(values, 100) == 10.0
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_speedup_flops_ratio_and_efficiency_arithmetic():
    lat = LatencyStats(1, 1, 1, 1, 1, 1, 1, 1)
    dyt = Measurement(batch=4, latency=lat, iterations=10, wall_s=2.0)       # 20 img/s
    complete = Measurement(batch=4, latency=lat, iterations=5, wall_s=2.0)   # 10 img/s
    assert dyt.images == 40 and dyt.images_per_s == pytest.approx(20.0)
    assert dyt.ms_per_image == pytest.approx(50.0)
    r = BatchResult(batch=4, dyt=dyt, complete=complete, flops_ratio=4.0)
    assert r.speedup == pytest.approx(2.0)
    assert r.efficiency == pytest.approx(0.5)
    d = r.to_dict()
    assert d["speedup"] == pytest.approx(2.0) and d["efficiency"] == pytest.approx(0.5)
    assert d["dyt"]["images_per_s"] == pytest.approx(20.0)
    alone = BatchResult(batch=4, dyt=dyt, complete=None, flops_ratio=4.0)
    assert alone.speedup is None and alone.efficiency is None
    assert alone.to_dict()["complete"] is None
