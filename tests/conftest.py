"""Shared fixtures: a tiny DyT export made once per session, torch on one thread, the digits
demo model for the slow tests, machines with or without (a fake) TensorRT, and the ONNX graphs
the TensorRT conversions are tested on. The helpers tests import are in ``helpers/``, the
fakes in ``fakes/``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import randomize_dyt, tiny_config


@pytest.fixture(scope="session")
def tiny_ov_export(tmp_path_factory) -> Path:
    """A depth-2 tiny DyT (16 patch tokens, mixed gate decisions; dispatchers
    ``helpers.TINY_NAMES``) exported once per session with --format openvino (model.onnx +
    model.xml). Shared: tests that write into an export work on a copy."""
    from dyt_edge.checkpoint import save_model
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint
    from dyt_edge.model import build_model

    base = tmp_path_factory.mktemp("tiny-build")
    model = randomize_dyt(build_model(tiny_config(depth=2)), seed=1)
    ckpt = save_model(model, base / "tiny.safetensors")
    export_checkpoint(ckpt, base / "export", ExportOptions(format="openvino"))
    return base / "export"


@pytest.fixture
def tiny_ov_work(tmp_path, tiny_ov_export) -> Path:
    """A private copy of `tiny_ov_export`, for tests whose builds are written inside it."""
    import shutil

    dst = tmp_path / "export"
    shutil.copytree(tiny_ov_export, dst)
    return dst


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread (no spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_demo_model(tmp_path_factory):
    """The digits demo model, trained once per test session with the real recipe (slow tests
    only): (checkpoint path, TrainResult)."""
    from dyt_edge.train import TrainConfig, train

    path = tmp_path_factory.mktemp("digits") / "digits-mlp.safetensors"
    result = train(TrainConfig(threads=2, output=str(path)))
    return path, result


# -- TensorRT machines --------------------------------------------------------------------------

@pytest.fixture
def bare_machine(monkeypatch):
    """This machine as CI sees it: no GPU, no TensorRT (whatever the real machine has)."""
    from dyt_edge.runtimes.tensorrt import gpus, install

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [])
    monkeypatch.setattr(install, "find_tensorrt", lambda import_module=True: None)


@pytest.fixture
def fake_trt(monkeypatch):
    """`fakes.tensorrt.fake_tensorrt` installed as ``tensorrt`` (the only TensorRT found: no pip
    metadata is read). Tests name the GPU present by patching ``gpus.detect_gpus``."""
    from dyt_edge.runtimes.tensorrt import install

    from .fakes.tensorrt import fake_tensorrt

    trt = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(install, "_distributions", lambda: [])
    return trt


# -- ONNX graphs for the TensorRT conversions ---------------------------------------------------

@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory) -> dict[str, Path]:
    """One tiny DyT (depth 2, 16 patch tokens, mixed gate decisions) exported in the ``topk`` and
    ``capacity`` dispatch modes: {mode: export directory}. Its classifier head is scaled up so
    that the logits are a few units apart: top-1 agreement then measures a conversion, not ties
    between the classes of a random model."""
    from dyt_edge.exporters.pipeline import ExportOptions, export_model
    from dyt_edge.model import build_model

    base = tmp_path_factory.mktemp("trt-onnx")
    with torch.random.fork_rng(devices=[]):  # the same weights whichever tests ran before
        torch.manual_seed(1)
        model = randomize_dyt(build_model(tiny_config(depth=2)), seed=1).eval()
    with torch.no_grad():
        model.head.weight.mul_(60.0)
    out = {}
    for mode, capacity in (("topk", None), ("capacity", 0.5)):
        export_model(model, base / mode, ExportOptions(dispatch=mode, capacity=capacity,
                                                       validate=False))
        out[mode] = base / mode
    return out


@pytest.fixture(scope="session")
def blob_images() -> np.ndarray:
    """Digits-shaped stand-ins: smooth blobs on a dark background, normalised to [-1, 1]."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for _ in range(96):
        cy, cx, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.3)]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = np.clip(blob + rng.normal(0, 0.05, blob.shape), 0, 1)
        out.append(np.stack([img * rng.uniform(0.6, 1.0) for _ in range(3)]))
    return (np.asarray(out, dtype=np.float32) - 0.5) / 0.5


@pytest.fixture(scope="session")
def fp16_topk(onnx_exports):
    """The ``topk`` export converted to FP16: (model, report). Tests that edit it work on a
    copy."""
    from dyt_edge.calibration.onnx_fp16 import to_fp16

    from .helpers.onnx import dispatcher_names, load

    return to_fp16(load(onnx_exports, "topk"),
                   dispatcher_names=dispatcher_names(onnx_exports, "topk"))


@pytest.fixture(scope="session")
def int8_topk(onnx_exports, blob_images):
    """The ``topk`` export converted to INT8 Q/DQ, calibrated on 48 `blob_images`: (model,
    report). Tests that edit it work on a copy."""
    from dyt_edge.calibration.onnx_qdq import to_qdq_int8

    from .helpers.onnx import dispatcher_names, load

    return to_qdq_int8(load(onnx_exports, "topk"), blob_images[:48],
                       dispatcher_names=dispatcher_names(onnx_exports, "topk"))
