"""The TensorRT build calls (exporters/tensorrt/engine.py) and the artifact they leave, checked
with a fake ``tensorrt`` that records the calls (see ``fakes/``): call wiring, not TensorRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dyt_edge.artifacts import MANIFEST_NAME, load_artifact
from dyt_edge.runtimes.tensorrt import gpus

from .fakes.gpus import T4
from .helpers import cli


def test_build_wiring_with_a_fake_tensorrt(capsys, tiny_ov_work, monkeypatch, fake_trt,
                                           tmp_path):
    """Checks that the build calls the TensorRT API with the right flags and writes the right
    files: a fake ``tensorrt`` module records the calls. This verifies call wiring, not
    TensorRT (which cannot run here)."""
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    cache = tmp_path / "caches" / "t4.cache"
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--batch", "2:8:16",
                         "--workspace", "2", "--timing-cache", cache)
    assert code == 0, err
    built = tiny_ov_work / "tensorrt-t4-fp32"
    names = [c[0] for c in fake_trt.calls]
    assert names == ["Builder", "create_network", "OnnxParser", "parse_from_file",
                     "set_memory_pool_limit", "set_shape", "add_optimization_profile",
                     "create_timing_cache", "set_timing_cache", "build_serialized_network",
                     "deserialize_cuda_engine"]
    calls = {c[0]: c[1:] for c in fake_trt.calls}
    assert calls["create_network"] == (1 << 5,)  # STRONGLY_TYPED, nothing else
    assert calls["set_memory_pool_limit"] == ("WORKSPACE", 2 << 30)
    assert calls["set_shape"] == ("images", (2, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    assert calls["create_timing_cache"] == (b"",) and calls["set_timing_cache"] == (False,)
    assert Path(calls["parse_from_file"][0]).name == "model.onnx"
    assert cache.read_bytes() == b"+timed"
    # the artifact
    assert sorted(p.name for p in built.iterdir()) == sorted(
        [MANIFEST_NAME, "engine.json", "model.engine", "model.onnx"])
    assert (built / "model.engine").read_bytes() == b"FAKE-ENGINE"
    assert (built / "model.onnx").read_bytes() == (tiny_ov_work / "model.onnx").read_bytes()
    m = load_artifact(built).manifest
    b = m["build"]
    assert m["format"] == "tensorrt" and set(m["files"]) == {"tensorrt", "onnx",
                                                              "tensorrt_metadata"}
    assert b["target"] == "tensorrt" and b["precision"] == "fp32"
    assert b["tensorrt"]["version"] == "10.4.0" and b["gpu"]["name"] == "Tesla T4"
    assert b["timing_cache"] == {"path": str(cache), "loaded_bytes": 0, "saved_bytes": 6}
    assert b["batch"] == {"min": 2, "opt": 8, "max": 16, "static": False}
    assert "--stronglyTyped" in b["trtexec"]["10"] and set(b["trtexec"]) == {"10"}
    meta = json.loads((built / "engine.json").read_text())
    assert meta == m["tensorrt"] == b["engine"]
    assert meta["engine"]["bytes"] == len(b"FAKE-ENGINE")
    assert meta["source_model"]["sha256"] == load_artifact(tiny_ov_work).manifest["files"]["onnx"][
        "sha256"]
    assert meta["dispatch"]["mode"] == "pack" and meta["precision"] == "fp32"
    assert [t["name"] for t in meta["io"]] == ["images", "logits", "masks"]
    assert any("TensorRT logged 1 warning" in n for n in b["notes"])
    text = " ".join(out.split())
    assert "built" in text and "Tesla T4" in text and "next: dyt-edge validate" in text
    # a second build starts from the saved timing cache
    fake_trt.calls.clear()
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--timing-cache", cache)
    assert code == 0, err
    assert ("create_timing_cache", b"+timed") in fake_trt.calls
    assert cache.read_bytes() == b"+timed+timed"
    # the kept ONNX runs on ONNX Runtime (the CPU check of what TensorRT parsed)
    from dyt_edge.runtimes import open_runtime

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with open_runtime("onnxruntime", built) as rt, open_runtime("onnxruntime", tiny_ov_work) as ref:
        np.testing.assert_array_equal(rt.run(x).logits, ref.run(x).logits)
