"""The TensorRT runtime (runtimes/tensorrt/runtime.py): the engine record checked against this
machine, buffers, copies, chunking, timing and CUDA graphs against a fake ``tensorrt`` and a fake
CUDA driver (see ``fakes/``), and real engines, only where CUDA and TensorRT are present (the
tests marked ``tensorrt`` skip with the reason elsewhere)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from dyt_edge.runtimes import RuntimeOptions
from dyt_edge.runtimes.tensorrt import gpus

from .fakes.cuda import FakeCuda, no_driver
from .fakes.gpus import A10, T4
from .fakes.tensorrt import fake_network
from .helpers import TINY_NAMES as NAMES


def test_runtime_refuses_an_engine_from_another_gpu_or_tensorrt(tiny_ov_work, monkeypatch,
                                                                fake_trt):
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import RuntimeSetupError, open_runtime
    from dyt_edge.runtimes.tensorrt import cuda

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    built = build_artifact(tiny_ov_work, "tensorrt").path
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [A10])
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("tensorrt", built)
    msg = str(info.value)
    assert "built for Tesla T4 (compute capability 7.5), this GPU is NVIDIA A10G (8.6)" in msg
    assert f"dyt-edge build --target tensorrt {tiny_ov_work.resolve()} --gpu auto" in msg
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    monkeypatch.setattr(fake_trt, "__version__", "10.5.0")
    with pytest.raises(RuntimeSetupError, match="built with TensorRT 10.4.0, this is TensorRT "
                                                "10.5.0"):
        open_runtime("tensorrt", built)
    monkeypatch.setattr(fake_trt, "__version__", "10.4.0")
    with pytest.raises(RuntimeSetupError, match="is a fp32 engine; a TensorRT engine runs at "
                                                "the precision it was built for"):
        open_runtime("tensorrt", built, RuntimeOptions(precision="fp16"))
    # a matching record goes on to CUDA: without a driver, one clear error
    monkeypatch.setattr(cuda.Cuda, "__init__", no_driver)
    with pytest.raises(RuntimeSetupError, match="the NVIDIA driver cannot be loaded"):
        open_runtime("tensorrt", built)
    # a corrupted engine is refused before CUDA
    (built / "model.engine").write_bytes(b"XXXX-ENGINE")
    with pytest.raises(RuntimeSetupError, match="does not match its record"):
        open_runtime("tensorrt", built)


def test_runtime_wiring_with_a_fake_tensorrt_and_cuda(tiny_ov_work, monkeypatch, fake_trt):
    """The runtime's buffers, shapes, copies, chunking, timing hooks and CUDA-graph fallback,
    run against a fake ``tensorrt`` (a made-up network) and a fake CUDA driver. This checks the
    runtime's wiring, not TensorRT or CUDA."""
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime
    from dyt_edge.runtimes.tensorrt import cuda as cuda_driver

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    built = build_artifact(tiny_ov_work, "tensorrt", precision="fp32").path
    monkeypatch.setattr(cuda_driver, "Cuda", FakeCuda)
    fake_trt.calls.clear()
    x = np.random.default_rng(5).standard_normal((40, 3, 32, 32)).astype(np.float32)
    with open_runtime("tensorrt", built) as rt:
        cuda = FakeCuda.current
        assert rt.batch_range == (1, 32)
        assert len(cuda.memory) == 3 and len(cuda.pinned) == 3  # allocated once, for batch 32
        out = rt.run(x[:3])
        logits, masks = fake_network(x[:3])
        np.testing.assert_allclose(out.logits, logits, rtol=1e-6)
        assert out.masks.dtype == np.bool_ and np.array_equal(out.masks, masks)
        assert ("execute_async_v3", 77) in fake_trt.calls  # on the runtime's stream
        assert cuda.log[-4:] == [("h2d", 3 * 3 * 32 * 32 * 4), ("d2h", 3 * 5 * 4),
                                 ("d2h", 3 * 2 * 16), ("sync",)]
        big = rt.run(x)  # 40 > the profile's 32: two chunks
        logits, masks = fake_network(x)
        np.testing.assert_allclose(big.logits, logits, rtol=1e-6)
        assert np.array_equal(big.masks, masks)
        shapes = [c[2][0] for c in fake_trt.calls if c[0] == "set_input_shape"]
        assert shapes[-2:] == [32, 8]
        call = rt.prepare(x[:4])
        cuda.log.clear()
        call()
        assert [e[0] for e in cuda.log] == ["h2d", "d2h", "d2h", "sync"]
        assert rt.gpu_compute_ms(x[:4], iterations=3, warmup=1) == [0.25] * 3
        n, wall = rt.throughput(x[:4], 0.0)
        assert n == 8 and wall >= 0
        d = rt.describe()
        assert d["cuda_graph"].startswith("off") and "GPU Compute Time" in json.dumps(d)
        assert d["engine_built_for"] == "Tesla T4 (7.5), TensorRT 10.4.0"
        with pytest.raises(Exception, match="outside the engine's optimization profile"):
            rt.prepare(x[:33])
    assert cuda.memory == {} and cuda.pinned == {} and ("close",) in cuda.log

    # CUDA graphs: captured once per batch size and replayed
    with open_runtime("tensorrt", built, RuntimeOptions(extra={"cuda_graph": True})) as rt:
        cuda = FakeCuda.current
        first = rt.run(x[:2])
        second = rt.run(x[:2])
        np.testing.assert_array_equal(first.logits, second.logits)
        np.testing.assert_allclose(first.logits, fake_network(x[:2])[0], rtol=1e-6)
        assert cuda.log.count(("launch",)) == 2 and rt.describe()["cuda_graph"].startswith("on")
    # an engine with data-dependent shapes cannot be captured: said, and run without graphs
    fake_trt.data_dependent = True
    with open_runtime("tensorrt", built, RuntimeOptions(extra={"cuda_graph": True})) as rt:
        cuda = FakeCuda.current
        out = rt.run(x[:2])
        np.testing.assert_allclose(out.logits, fake_network(x[:2])[0], rtol=1e-6)
        note = rt.describe()["cuda_graph"]
        assert note.startswith("requested, not capturable") and "pack engine" in note
        assert ("launch",) not in cuda.log


def test_runtime_without_tensorrt_names_the_install_command(monkeypatch, tiny_ov_work):
    from dyt_edge.runtimes import RuntimeUnavailable, open_runtime

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeUnavailable, match=r'TensorRT is not installed \(pip install '
                                                 r'"dyt-edge\[tensorrt\]"'):
        open_runtime("tensorrt", tiny_ov_work)


# -- real engines: only where CUDA and TensorRT are present ---------------------------------------

def _real_setup() -> str:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"TensorRT is not importable here ({type(exc).__name__})"
    if not gpus.detect_gpus():
        return "no NVIDIA GPU (CUDA driver) found"
    return ""


_SKIP = _real_setup() if "tensorrt" not in sys.modules else "tensorrt already faked"
needs_trt = pytest.mark.skipif(bool(_SKIP), reason=_SKIP or "CUDA and TensorRT present")


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_matches_onnx_runtime(tiny_ov_work, precision):
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime

    result = build_artifact(tiny_ov_work, "tensorrt", precision=precision, batch="1:4:8")
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_runtime("tensorrt", result.path) as rt, \
            open_runtime("onnxruntime", result.path) as ref:
        got, want = rt.run(x), ref.run(x)
        assert got.masks.shape == (4, len(NAMES), 16)
        tol = 1e-3 if precision == "fp32" else 5e-2
        same = (got.masks == want.masks).all(axis=(1, 2))
        assert same.mean() >= 0.75
        np.testing.assert_allclose(got.logits[same], want.logits[same], atol=tol)
        assert rt.run(x[:1]).logits.shape == (1, 5)
        times = rt.gpu_compute_ms(x, iterations=5, warmup=1)
        assert len(times) == 5 and all(t > 0 for t in times)
        n, wall = rt.throughput(x, 0.2)
        assert n > 0 and wall > 0
        assert "GPU Compute Time" in json.dumps(rt.describe())


@pytest.mark.tensorrt
@needs_trt
def test_real_engine_cuda_graphs(tiny_ov_work):
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime

    result = build_artifact(tiny_ov_work, "tensorrt", batch="2:2:2")
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    graphs = RuntimeOptions(extra={"cuda_graph": True})
    with open_runtime("tensorrt", result.path, graphs) as rt:
        a = rt.run(x)
        b = rt.run(x)
        np.testing.assert_array_equal(a.logits, b.logits)
