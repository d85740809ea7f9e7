"""The plots (dyt_edge.plots): token highlighting, and the bench charts from a synthetic bench
result (the visualize figures are drawn in test_visualize.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dyt_edge.errors import UsageError
from dyt_edge.plots import bench_series, highlight_tokens, plot_bench

from .helpers.figures import assert_png, leftovers


def test_highlight_tokens_keeps_active_patches_bright_and_dims_skipped_ones():
    image = np.full((8, 8, 3), 0.8, dtype=np.float32)
    mask = np.array([[True, False], [False, False]])
    out = highlight_tokens(image, mask, 4)
    assert out.shape == (8, 8, 3)
    active, skipped = out[:4, :4].mean(), out[4:, 4:].mean()
    assert active > 0.6 and skipped < 0.35
    np.testing.assert_allclose(out[:4, 4:], out[4:, 4:])  # every skipped patch alike


# -- bench charts ---------------------------------------------------------------------------------

def bench_result(target="openvino", precision="fp32", scale=1.0):
    """The parts of a `dyt-edge bench` JSON (dyt_edge.bench's schema) that the charts read."""
    return {"schema": "dyt-edge.bench", "target": target, "precision": precision,
            "flops": {"ratio": 1.4},
            "results": [{"batch": b, "dyt": {"images_per_s": 30.0 * scale * k},
                         "complete": {"images_per_s": 20.0 * scale * k},
                         "speedup": 1.5, "flops_ratio": 1.4, "efficiency": 1.5 / 1.4}
                        for b, k in ((1, 1.0), (8, 1.2), (32, 1.3))]}


def test_plot_bench_writes_throughput_and_speedup_charts(tmp_path):
    paths = plot_bench(bench_result(), tmp_path / "plots")
    assert [p.name for p in paths] == ["bench_throughput.png", "bench_speedup.png"]
    for p in paths:
        assert_png(p)
    several = [bench_result(), bench_result(precision="bf16", scale=1.6),
               bench_result(target="onnxruntime", scale=0.8)]
    paths = plot_bench(several, tmp_path / "all.png")
    assert [p.name for p in paths] == ["all-throughput.png", "all-speedup.png"]
    for p in paths:
        assert_png(p)
    assert leftovers(tmp_path) == []


def test_bench_series_reads_the_numbers_and_derives_speedup():
    s = bench_series(bench_result())
    assert s["label"] == "openvino fp32" and s["batch"] == [1, 8, 32]
    assert s["dyt"] == [30.0, 36.0, 39.0] and s["complete"] == [20.0, 24.0, 26.0]
    assert s["speedup"] == [1.5, 1.5, 1.5] and s["flops_ratio"] == [1.4, 1.4, 1.4]
    r = bench_result()
    for e in r["results"]:
        e["speedup"] = e["flops_ratio"] = None
    r["results"][2]["complete"] = None  # a row without baseline: no complete, no speedup
    s = bench_series(r)
    assert s["speedup"] == [1.5, 1.5, None] and s["flops_ratio"] == [1.4] * 3
    assert s["complete"][2] is None
    # the older spelling: "batches" and "throughput"
    old = {"target": "onnxruntime", "precision": "fp32", "batches": [
        {"batch": 4, "dyt": {"throughput": 12.0}, "complete": {"throughput": 8.0}}]}
    assert bench_series(old)["speedup"] == [1.5] and bench_series(old)["batch"] == [4]
    with pytest.raises(UsageError):
        plot_bench({"target": "openvino", "results": []}, Path("unused"))


def test_plot_bench_without_baseline_draws_throughput_only(tmp_path):
    r = bench_result()
    for e in r["results"]:
        e["complete"] = e["speedup"] = e["flops_ratio"] = e["efficiency"] = None
    paths = plot_bench(r, tmp_path)
    assert [p.name for p in paths] == ["bench_throughput.png"]
    assert_png(paths[0])
