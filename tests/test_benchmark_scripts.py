"""The benchmark scripts' own arithmetic and the README table they print (no model runs here:
the scripts themselves take minutes on ViT-B)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def dispatch_cost():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("dispatch_cost",
                                                      BENCHMARKS / "dispatch_cost.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_paired_ratios_are_per_round_medians(dispatch_cost):
    wall = {"complete": [10.0, 5.0, 10.0], "topk": [20.0, 5.0, 15.0], "ref": [5.0, 5.0, 5.0]}
    cpu = {k: list(v) for k, v in wall.items()}
    out = dispatch_cost.summarize((wall, cpu), "complete", "ref")
    # per round topk / complete: 2.0, 1.0, 1.5 -> median 1.5
    assert out["topk"]["speedup"] == pytest.approx(1.5)
    assert (out["topk"]["speedup_min"], out["topk"]["speedup_max"]) == (1.0, 2.0)
    assert out["topk"]["speedup_also"] == pytest.approx(3.0)       # 4, 1, 3 -> 3
    assert out["complete"]["speedup"] == 1.0


def test_per_rate_models_keep_one_rate_alive(dispatch_cost):
    made = []
    models = dispatch_cost.PerRate(lambda m, r: made.append((m, r)) or (m, r))
    assert models["topk", 0.5] == ("topk", 0.5)
    assert models["topk", 0.5] == ("topk", 0.5)                   # cached
    models["pack", 0.5]
    models["topk", 1.0]
    assert made == [("topk", 0.5), ("pack", 0.5), ("topk", 1.0)]
    assert list(models.cache) == ["topk"]                           # rate 0.5 released


def test_markdown_table_has_a_row_per_target_and_rate(dispatch_cost):
    def row(runtime, precision, rate, batch, mode, speedup, **extra):
        return {"runtime": runtime, "precision": precision, "rate": rate, "batch": batch,
                "mode": mode, "speedup": speedup, "flops_ratio": 1.5,
                "efficiency": speedup / 1.5, **extra}

    record = {"modes": ["complete", "topk", "pack"], "batches": [1, 32], "results": [
        row("openvino", "f32", 0.5, 1, "complete", 1.0),
        row("openvino", "f32", 0.5, 1, "topk", 1.44),
        row("openvino", "f32", 0.5, 32, "pack", 1.48),
        row("openvino", "int8", 0.5, 1, "topk", 1.33, speedup_vs_f32_complete=3.06)],
        "activation": {"openvino:f32 r=0.5 batch=1": {"mean": 0.474}}}
    lines = dispatch_cost.markdown_table(record).splitlines()
    assert lines[0].startswith("| target | r | activation | FLOPs ratio | batch 1 `topk` |")
    assert len(lines) == 4                                          # header, rule, two rows
    assert lines[2] == "| OpenVINO f32 | 0.5 | 0.47 | 1.50 | 1.44x (0.96) |  |  | 1.48x (0.99) |"
    assert "1.33x (0.89) · 3.06x vs f32" in lines[3] and lines[3].startswith("| OpenVINO INT8")
