"""TensorRT build plans: --batch profiles, --workspace, trtexec lines per TensorRT major, the
dispatch advice, and the engine record (exporters/tensorrt/plan.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dyt_edge.errors import UsageError
from dyt_edge.exporters.tensorrt import plan as tplan
from dyt_edge.manifest import Dispatch
from dyt_edge.runtimes.tensorrt.gpus import GPUS
from dyt_edge.runtimes.tensorrt.install import TensorRTInstall

from .fakes.tensorrt import engine_record

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_batch_profiles_parse_and_validate():
    assert str(tplan.parse_batch(None)) == "1:8:32"
    assert tplan.parse_batch("4:16:64").to_dict() == {"min": 4, "opt": 16, "max": 64,
                                                       "static": False}
    assert str(tplan.parse_batch("8")) == "8:8:8"
    assert tplan.parse_batch(None, static_batch=4).static
    assert str(tplan.parse_batch("4:4:4", static_batch=4)) == "4:4:4"
    assert tplan.parse_batch("1:8:32").shapes((3, 32, 32))["max"] == (32, 3, 32, 32)
    for bad, needle in [("0:8:32", "at least 1"), ("8:4:32", "MIN <= OPT <= MAX"),
                        ("1:64:32", "MIN <= OPT <= MAX"), ("1:8", "three integers"),
                        ("a:b:c", "three integers"), ("1:8:32:64", "three integers"),
                        ("-1:8:32", "three integers"), ("", "three integers")]:
        with pytest.raises(UsageError, match=needle):
            tplan.parse_batch(bad)
    with pytest.raises(UsageError, match="static batch of 4"):
        tplan.parse_batch("1:8:32", static_batch=4)
    assert tplan.check_workspace(None) == 4.0 and tplan.check_workspace(0.5) == 0.5
    for bad in (0, -1, 2048, float("nan")):
        with pytest.raises(UsageError, match="--workspace"):
            tplan.check_workspace(bad)


def test_trtexec_lines_per_major():
    kw = dict(onnx="e/model.onnx", engine="e/t/model.engine", input_name="images",
              batch=tplan.parse_batch("1:8:32"), chw=(3, 224, 224), workspace_gib=4,
              timing_cache="cache.bin")
    ten = tplan.trtexec_command(major=10, **kw)
    assert ten == ["trtexec", "--onnx=e/model.onnx", "--saveEngine=e/t/model.engine",
                   "--minShapes=images:1x3x224x224", "--optShapes=images:8x3x224x224",
                   "--maxShapes=images:32x3x224x224", "--stronglyTyped",
                   "--memPoolSize=workspace:4096", "--timingCacheFile=cache.bin"]
    eleven = tplan.trtexec_command(major=11, **kw)
    assert eleven == [c for c in ten if c != "--stronglyTyped"]  # always strongly typed in 11
    for cmd in (ten, eleven):
        assert not {"--fp16", "--int8", "--best", "--calib"} & {c.split("=")[0] for c in cmd}
    static = tplan.trtexec_command(major=10, **{**kw, "batch": tplan.parse_batch(
        None, static_batch=2), "timing_cache": None})
    assert not any("Shapes" in c for c in static) and not any("timingCache" in c
                                                                for c in static)
    assert tplan.trtexec_majors(GPUS["v100"], None) == [10]
    assert tplan.trtexec_majors(GPUS["t4"], None) == [10, 11]
    assert tplan.trtexec_majors(GPUS["t4"], TensorRTInstall("11.2.0")) == [11]
    assert tplan.trtexec_majors(None, None) == [10, 11]


def test_dispatch_advice_explains_pack_topk_and_capacity():
    pack = tplan.dispatch_advice(Dispatch("pack"))
    assert "NonZero" in pack[0] and "mean activation" in pack[0] and "data-dependent" in pack[0]
    assert pack[1].startswith("recommended: keep the default `pack` export")
    assert "--dispatch capacity" in pack[2]
    topk = tplan.dispatch_advice(Dispatch("topk"),
                                 {"dispatchers": [{"k_bound": 197}, {"k_bound": 197}]})
    assert "data-dependent K" in topk[0] and "<= 197 tokens, under TensorRT's limit of 3840" \
        in topk[0]
    assert "busiest image" in topk[0]
    assert topk[1] == pack[1] and "--dispatch capacity" in topk[2]
    over = tplan.dispatch_advice(Dispatch("topk"),
                                 {"dispatchers": [{"k_bound": 4097}]})
    assert "TensorRT needs K < 3840" in over[0]
    cap = tplan.dispatch_advice(Dispatch("capacity", 0.5, (98, 98)))
    assert "static shapes" in cap[0] and "overflow" in cap[0] and len(cap) == 2
    assert pack[1] == "recommended: " + tplan.RECOMMENDATION
    # the reasons, and the TensorRT facts they rest on, are on the page the module points to
    page = (DOCS / "backends.md").read_text(encoding="utf-8")
    assert "docs/backends.md" in tplan.__doc__ and "\n### Which dispatch mode" in page
    section = " ".join(page.split("\n### Which dispatch mode", 1)[1].split("\n#", 1)[0].split())
    assert "Recommendation" in section and "keep the default `pack`" in section
    assert "output allocators are for data-dependent *outputs*" in section


def test_engine_metadata_records_what_the_engine_needs():
    m = engine_record()
    assert m["tensorrt"]["version"] == "10.4.0" and m["gpu"]["name"] == "Tesla T4"
    assert m["gpu"]["compute_capability"] == "7.5" and m["gpu"]["profile"] == "t4"
    assert m["precision"] == "fp16" and m["strongly_typed"] is True
    assert m["profile"] == {"input": "images", "min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                            "max": [32, 3, 32, 32], "static": False}
    assert m["dispatch"] == {"mode": "topk"} and m["source_model"]["sha256"] == "ab" * 32
    assert json.loads(json.dumps(m)) == m
