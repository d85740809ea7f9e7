"""Runtimes: every backend equals the PyTorch reference, says what it runs, and refuses clearly.

Three tiny exports (pack, the default, topk and capacity dispatch, each with an OpenVINO IR) are
made once for the module; the bad-input cases work on copies of them with an edited manifest.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt_edge import artifacts
from dyt_edge.errors import UsageError
from dyt_edge.runtimes import (RuntimeOptions, RuntimeSetupError, RuntimeUnavailable,
                               open_runtime)
from dyt_edge.runtimes.torch_runtime import TorchRuntime

from .helpers import controlled_model, mixed_batch, saved

ATOL = 1e-4
BATCHES = (1, 3, 8)
TARGETS = ("pytorch", "onnxruntime", "openvino")
ONE = RuntimeOptions(threads=1)


class Exported:
    def __init__(self, tmp: Path, name: str, **options) -> None:
        from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint

        torch.manual_seed(0)
        self.model = controlled_model("mlp", depth=2)
        self.ckpt = saved(tmp, self.model, name)
        self.dispatch = options.get("dispatch", "pack")
        self.capacity = options.get("capacity")
        result = export_checkpoint(self.ckpt, tmp / name, ExportOptions(format="openvino",
                                                                         **options))
        self.path = result.path

    def reference(self, x: torch.Tensor, mode=None):
        mode = mode or self.dispatch
        with torch.no_grad(), self.model.dispatching(mode, self.capacity
                                                     if mode == "capacity" else None):
            logits, masks = self.model(x, return_masks=True)
        return logits.numpy(), masks.numpy()


@pytest.fixture(scope="module")
def tmp_rt(tmp_path_factory):
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(scope="module")
def packed(tmp_rt):
    """The default export (pack dispatch)."""
    return Exported(tmp_rt, "packed")


@pytest.fixture(scope="module")
def topk(tmp_rt):
    return Exported(tmp_rt, "topk", dispatch="topk")


@pytest.fixture(scope="module")
def capacity(tmp_rt):
    return Exported(tmp_rt, "capacity", dispatch="capacity", capacity=0.5)


def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of the artifact at ``src`` whose manifest ``edit(manifest)`` changed."""
    shutil.copytree(src, dst)
    manifest = artifacts.read_manifest(dst)
    edit(manifest)
    artifacts.write_manifest(dst, manifest)
    return dst


def openvino_caps(monkeypatch, caps):
    """OpenVINO reporting ``caps`` as the CPU's optimisation capabilities."""
    from dyt_edge.runtimes.openvino_runtime import OpenVinoRuntime

    ov = OpenVinoRuntime.import_backend()

    class Core(ov.Core):
        def get_property(self, *args):
            if args[-1] == "OPTIMIZATION_CAPABILITIES":
                return list(caps)
            return super().get_property(*args)

    monkeypatch.setattr(ov, "Core", Core)
    return ov


# -- parity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("export", ["packed", "topk", "capacity"])
@pytest.mark.parametrize("target", TARGETS)
def test_every_runtime_equals_the_pytorch_model(request, target, export):
    exp = request.getfixturevalue(export)
    with open_runtime(target, exp.path, ONE) as rt:
        assert rt.precision == "fp32"
        for b in BATCHES:
            x = mixed_batch(b, seed=b)
            ref, ref_masks = exp.reference(x)
            out = rt.run(x.numpy())
            assert out.logits.dtype == np.float32 and out.logits.shape == ref.shape
            diff = float(np.abs(out.logits - ref).max())
            assert diff <= ATOL, f"{target} batch {b}: max diff {diff} (atol {ATOL})"
            assert out.masks.dtype == np.bool_
            assert np.array_equal(out.masks, ref_masks), f"{target} batch {b}: masks differ"
        active = out.masks.sum(axis=2)
        assert active.min() < active.max()  # the batch really had mixed active counts


def test_capacity_export_drops_overflowing_tokens(capacity):
    """The capacity fixture exercises overflow: a bright image has all 16 patch tokens active
    and capacity 0.5 runs 8 of them, so its logits differ from the exact (mask) model, while
    images that fit (none or half active) match it."""
    x = mixed_batch(3, seed=3)
    exact, _ = capacity.reference(x, "mask")
    with open_runtime("openvino", capacity.path, ONE) as rt:
        out = rt.run(x.numpy())
    active = out.masks.sum(axis=2).max(axis=1)  # the gates' decisions, before capacity
    assert list(active) == [0, 16, 8]
    diff = np.abs(out.logits - exact).max(axis=1)
    # tiny weights: dropping tokens moves these logits by ~1e-5, fp32 noise is ~1e-8
    assert diff[1] > 1e-6 and diff[0] < 1e-6 and diff[2] < 1e-6, diff


@pytest.mark.parametrize("target", TARGETS)
def test_describe_says_what_runs(packed, target):
    with open_runtime(target, packed.path, ONE) as rt:
        d = rt.describe()
    assert d["target"] == target and d["precision"] == "fp32" and d["hint"] == "latency"
    assert d["backend"].split()[-1][0].isdigit()  # "<name> <version>"
    assert d["device"].startswith(("CPU",))
    assert str(d["precision_in_effect"]).startswith("fp32")
    assert d["threads"] == 1 and d["streams"] == 1
    assert Path(d["model_file"]).is_file() and d["model_bytes"] > 0
    if target == "openvino":
        assert d["inference_precision_hint"] == "f32" and d["performance_hint"] == "LATENCY"
        assert d["optimal_requests"] >= 1
        assert d["model_bytes"] == sum((packed.path / n).stat().st_size
                                       for n in ("model.xml", "model.bin"))


@pytest.mark.parametrize("target", TARGETS)
def test_prepare_and_throughput_run(packed, target):
    x = mixed_batch(3, seed=0).numpy()
    with open_runtime(target, packed.path, ONE) as rt:
        call = rt.prepare(x)
        call()
        call()
        n, seconds = rt.throughput(x, 0.05)
        assert n > 0 and seconds > 0
        assert np.array_equal(rt.run(x).masks, packed.reference(torch.from_numpy(x))[1])


def test_openvino_throughput_hint_and_streams(packed):
    x = mixed_batch(2, seed=0).numpy()
    with open_runtime("openvino", packed.path,
                      RuntimeOptions(hint="throughput", streams=2, threads=2)) as rt:
        d = rt.describe()
        assert d["performance_hint"] == "THROUGHPUT" and d["streams"] == 2
        assert d["optimal_requests"] >= 2
        n, seconds = rt.throughput(x, 0.05)
        assert n >= 1 and seconds > 0
        out = rt.run(x)
    ref, _ = packed.reference(torch.from_numpy(x))
    assert float(np.abs(out.logits - ref).max()) <= ATOL


# -- precisions -----------------------------------------------------------------------------------

def test_openvino_bf16_runs_and_reports_bf16(packed):
    from dyt_edge.runtimes.openvino_runtime import OpenVinoRuntime

    ov = OpenVinoRuntime.import_backend()
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        pytest.skip(f"this CPU has no BF16 in OpenVINO ({', '.join(caps)})")
    x = mixed_batch(8, seed=5).numpy()
    ref, _ = packed.reference(torch.from_numpy(x))
    with open_runtime("openvino", packed.path, RuntimeOptions(precision="bf16", threads=1)) as rt:
        assert rt.precision == "bf16"
        d = rt.describe()
        assert d["precision_in_effect"] == "bf16" and d["inference_precision_hint"] == "bf16"
        out = rt.run(x)
    diff = float(np.abs(out.logits - ref).max())
    # fp32 is within ~1e-7 here, bf16 ~1e-3 on logits of size ~0.14
    assert 1e-5 < diff < 0.02, diff  # bf16 really ran (not f32), and stays close


def test_pytorch_bf16_autocast(packed):
    x = mixed_batch(3, seed=1).numpy()
    ref, _ = packed.reference(torch.from_numpy(x))
    with open_runtime("pytorch", packed.path, RuntimeOptions(precision="bf16")) as rt:
        assert rt.describe()["precision_in_effect"].startswith("bf16")
        out = rt.run(x)
    assert out.logits.dtype == np.float32
    assert 1e-5 < float(np.abs(out.logits - ref).max()) < 0.02


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_openvino_refuses_a_precision_the_cpu_lacks(monkeypatch, packed, precision):
    ov = openvino_caps(monkeypatch, ["FP32", "INT8", "BIN"])
    name = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("openvino", packed.path, RuntimeOptions(precision=precision))
    msg = str(info.value)
    assert f"cannot run {precision}" in msg and name in msg
    assert "FP32, INT8, BIN" in msg and "choose one of: fp32, int8" in msg


def test_openvino_accepts_fp16_when_the_cpu_reports_it_but_checks_what_compiled(monkeypatch,
                                                                                 packed):
    """fp16 passes the capability check when FP16 is reported; the precision read back after
    compiling decides (a CPU without FP16 compiles f16 as bf16: that is refused, not believed)."""
    openvino_caps(monkeypatch, ["FP32", "FP16", "BF16", "INT8"])
    try:
        rt = open_runtime("openvino", packed.path, RuntimeOptions(precision="fp16", threads=1))
    except RuntimeSetupError as exc:
        assert "not the f16 asked for" in str(exc)
    else:
        with rt:
            assert rt.describe()["inference_precision_hint"] == "f16"


def test_openvino_refuses_a_precision_other_than_asked(monkeypatch, packed):
    """The precision in effect is read back, never assumed."""
    from dyt_edge.runtimes.openvino_runtime import OpenVinoRuntime

    ov = OpenVinoRuntime.import_backend()

    class Compiled:
        def __init__(self, real):
            self._real = real

        def get_property(self, name):
            if name == "INFERENCE_PRECISION_HINT":
                return ov.Type.bf16
            return self._real.get_property(name)

        def __getattr__(self, name):
            return getattr(self._real, name)

    class Core(ov.Core):
        def compile_model(self, *args, **kwargs):
            return Compiled(super().compile_model(*args, **kwargs))

    monkeypatch.setattr(ov, "Core", Core)
    with pytest.raises(RuntimeSetupError, match="compiled .* at bf16, not the f32 asked for"):
        open_runtime("openvino", packed.path, ONE)


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_int8_on_a_float_artifact_is_refused(packed, target):
    with pytest.raises(RuntimeSetupError, match="is not an INT8 model"):
        open_runtime(target, packed.path, RuntimeOptions(precision="int8"))


def test_onnxruntime_fp16_needs_an_fp16_model(packed):
    with pytest.raises(RuntimeSetupError, match="is not an FP16 model"):
        open_runtime("onnxruntime", packed.path, RuntimeOptions(precision="fp16"))
    with pytest.raises(RuntimeSetupError, match="onnxruntime cannot run precision bf16"):
        open_runtime("onnxruntime", packed.path, RuntimeOptions(precision="bf16"))


def test_onnxruntime_checks_the_graph_against_the_manifest(packed, tmp_path):
    """A manifest claiming an INT8 build over a float graph is refused: the precision comes
    from the graph, not the manifest's word."""
    art = edited(packed.path, tmp_path / "claims-int8",
                 lambda m: m.update(build={"target": "onnxruntime", "precision": "int8"}))
    with pytest.raises(RuntimeSetupError, match="holds a fp32 graph .* manifest says int8"):
        open_runtime("onnxruntime", art, ONE)
    with pytest.raises(RuntimeSetupError, match="is an INT8 model; ONNX Runtime runs it as int8"):
        open_runtime("onnxruntime", art, RuntimeOptions(precision="fp32"))


def test_pytorch_is_the_fp32_reference_for_built_artifacts(packed, tmp_path):
    """A built artifact (here: one claiming bf16) still gets the fp32 reference."""
    art = edited(packed.path, tmp_path / "built",
                 lambda m: m.update(build={"target": "openvino", "precision": "bf16"}))
    with open_runtime("pytorch", art) as rt:
        assert rt.precision == "fp32"
    with pytest.raises(RuntimeSetupError, match="pytorch cannot run precision int8"):
        open_runtime("pytorch", art, RuntimeOptions(precision="int8"))


# -- options --------------------------------------------------------------------------------------

@pytest.mark.parametrize("options,needles", [
    (dict(precision="fp33"), ["unknown precision 'fp33'", "did you mean 'fp32'"]),
    (dict(hint="latncy"), ["unknown performance hint 'latncy'", "did you mean 'latency'"]),
    (dict(streams=0), ["streams must be positive"]),
    (dict(threads=-1), ["threads must be positive"]),
])
def test_bad_options_are_usage_errors(packed, options, needles):
    for target in TARGETS:
        with pytest.raises(UsageError) as info:
            open_runtime(target, packed.path, RuntimeOptions(**options))
        for needle in needles:
            assert needle in str(info.value)


def test_precision_aliases():
    spelled = {"f32": "fp32", "FP32": "fp32", "float16": "fp16", "f16": "fp16",
               "bfloat16": "bf16", "i8": "int8", None: None}
    for given, canonical in spelled.items():
        assert RuntimeOptions(precision=given).checked().precision == canonical


@pytest.mark.parametrize("target", ["pytorch", "onnxruntime"])
def test_streams_are_an_openvino_setting(packed, target):
    with pytest.raises(RuntimeSetupError, match="has no streams"):
        open_runtime(target, packed.path, RuntimeOptions(streams=2))


def test_openvino_unknown_device(packed):
    with pytest.raises(RuntimeSetupError, match="OpenVINO has no device 'NPU7'"):
        open_runtime("openvino", packed.path, RuntimeOptions(device="NPU7"))


# -- artifacts that do not fit --------------------------------------------------------------------

def test_openvino_on_an_onnx_only_artifact(packed, tmp_path):
    def onnx_only(m):
        m["format"] = "onnx"
        m["files"] = {"onnx": m["files"]["onnx"]}

    art = edited(packed.path, tmp_path / "onnx-only", onnx_only)
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("openvino", art)
    assert str(info.value) == (f"artifact {art} has no OpenVINO IR (run `dyt-edge build "
                               f"--target openvino {art}` or export with --format openvino)")
    with open_runtime("onnxruntime", art, ONE) as rt:  # the same artifact runs on its target
        assert rt.run(mixed_batch(1).numpy()).logits.shape == (1, 5)


def test_engine_artifact_on_onnxruntime_and_openvino(packed, tmp_path):
    def engine(m):
        m["format"] = "tensorrt"
        m["files"] = {"tensorrt": {"path": "model.engine", "bytes": 1, "sha256": "0"}}
        m["build"] = {"target": "tensorrt", "precision": "fp16", "parent": ".."}

    art = edited(packed.path, tmp_path / "engine", engine)
    with pytest.raises(RuntimeSetupError,
                       match=r"has no ONNX model for --target onnxruntime \(built for tensorrt "
                             r"at fp16; it holds: tensorrt\) \(pass the export it was built"):
        open_runtime("onnxruntime", art)
    with pytest.raises(RuntimeSetupError, match="is a tensorrt build and has no OpenVINO IR"):
        open_runtime("openvino", art)


def test_openvino_build_on_onnxruntime(packed, tmp_path):
    def ov_build(m):
        m["files"] = {k: v for k, v in m["files"].items() if k != "onnx"}
        m["build"] = {"target": "openvino", "precision": "fp32", "parent": ".."}

    art = edited(packed.path, tmp_path / "openvino-fp32", ov_build)
    with pytest.raises(RuntimeSetupError,
                       match=r"has no ONNX model .*\(built for openvino at fp32; it holds: "
                             r"openvino\)"):
        open_runtime("onnxruntime", art)
    with open_runtime("openvino", art, ONE) as rt:
        assert rt.precision == "fp32"


def test_missing_model_file(packed, tmp_path):
    art = edited(packed.path, tmp_path / "no-bin", lambda m: None)
    (art / "model.bin").unlink()
    with pytest.raises(RuntimeSetupError, match="is incomplete: model.bin is missing"):
        open_runtime("openvino", art)


@pytest.mark.parametrize("target", TARGETS)
def test_wrong_images_are_refused(packed, target):
    with open_runtime(target, packed.path, ONE) as rt:
        for shape in [(1, 3, 16, 16), (1, 1, 32, 32), (3, 32, 32)]:
            with pytest.raises(RuntimeSetupError,
                               match=r"do not fit this model .*\[B, 3, 32, 32\]"):
                rt.run(np.zeros(shape, np.float32))
        with pytest.raises(UsageError, match="batch size must be at least 1"):
            rt.run(np.zeros((0, 3, 32, 32), np.float32))


@pytest.mark.parametrize("target", TARGETS)
def test_static_batch_mismatch(packed, tmp_path, target):
    art = edited(packed.path, tmp_path / "static", lambda m: m.update(batch=3))
    with open_runtime(target, art, ONE) as rt:
        assert rt.run(mixed_batch(3).numpy()).logits.shape == (3, 5)
        with pytest.raises(RuntimeSetupError, match="static batch of 3; got 2 images"):
            rt.run(mixed_batch(2).numpy())
        with pytest.raises(RuntimeSetupError, match="static batch of 3"):
            rt.prepare(mixed_batch(8).numpy())


# -- the PyTorch reference ------------------------------------------------------------------------

def test_pytorch_refuses_a_changed_checkpoint(packed, tmp_path):
    ckpt = tmp_path / "copy.safetensors"
    shutil.copyfile(packed.ckpt, ckpt)
    art = edited(packed.path, tmp_path / "art", lambda m: m["source"].update(path=str(ckpt)))
    with open_runtime("pytorch", art) as rt:  # the same bytes: accepted
        assert rt.describe()["model_file"] == str(ckpt)
    with open(ckpt, "ab") as f:
        f.write(b"\0")
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("pytorch", art)
    assert f"the checkpoint {ckpt} changed since this artifact was exported" in str(info.value)
    assert "re-export" in str(info.value)
    ckpt.unlink()
    with pytest.raises(RuntimeSetupError, match=f"{ckpt}, is missing .*put it back"):
        open_runtime("pytorch", art)


def test_pytorch_refuses_an_artifact_without_a_checkpoint(packed, tmp_path):
    art = edited(packed.path, tmp_path / "mem",
                 lambda m: m.update(source={"path": None, "sha256": None, "format": "in-memory"}))
    with pytest.raises(RuntimeSetupError, match="records no checkpoint"):
        open_runtime("pytorch", art)


def test_pytorch_uses_the_recorded_config(packed, tmp_path):
    """A published state_dict has no adapter scale: the export got it from --adapter-scale, the
    manifest records it, and the reference loads with it (not failing, not defaulting)."""
    from dyt_edge.checkpoint import file_sha256, load_model
    from dyt_edge.errors import CheckpointError

    bare = tmp_path / "bare.pth"
    torch.save(packed.model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="adapter scale not found"):
        load_model(bare, num_heads=packed.model.config.num_heads)  # width 32: heads asked for
    assert packed.model.config.adapter_scale == 0.5  # not the default 0.1
    art = edited(packed.path, tmp_path / "art", lambda m: m["source"].update(
        path=str(bare), sha256=file_sha256(bare), format="published", layout="state_dict"))
    x = mixed_batch(8, seed=2)
    ref, ref_masks = packed.reference(x)
    with open_runtime("pytorch", art) as rt:
        assert rt.model.config.adapter_scale == 0.5
        out = rt.run(x.numpy())
    assert float(np.abs(out.logits - ref).max()) <= 1e-5
    assert np.array_equal(out.masks, ref_masks)


@pytest.mark.parametrize("mode", ["mask", "complete", "topk"])
def test_pytorch_dispatch_override(capacity, mode):
    x = mixed_batch(8, seed=4)
    ref, ref_masks = capacity.reference(x, mode)
    with open_runtime("pytorch", capacity.path, RuntimeOptions(dispatch=mode)) as rt:
        assert rt.describe()["dispatch"] == mode
        out = rt.run(x.numpy())
    assert float(np.abs(out.logits - ref).max()) <= 1e-5
    assert np.array_equal(out.masks, ref_masks)


def test_pytorch_bad_dispatch(packed):
    with pytest.raises(UsageError, match="unknown dispatch mode 'topkk'.*did you mean 'topk'"):
        open_runtime("pytorch", packed.path, RuntimeOptions(dispatch="topkk"))
    with pytest.raises(UsageError, match="capacity needs a capacity"):
        open_runtime("pytorch", packed.path, RuntimeOptions(dispatch="capacity"))
    with open_runtime("pytorch", packed.path,
                      RuntimeOptions(dispatch="capacity", extra={"capacity": 0.25})) as rt:
        x = mixed_batch(3)
        out = rt.run(x.numpy())
    with torch.no_grad(), packed.model.dispatching("capacity", 0.25):
        ref = packed.model(x).numpy()
    assert float(np.abs(out.logits - ref).max()) <= 1e-6
    assert float(np.abs(out.logits - packed.reference(x, "mask")[0]).max()) > 1e-6


def test_pytorch_threads_are_restored(packed):
    before = torch.get_num_threads()
    with open_runtime("pytorch", packed.path, RuntimeOptions(threads=before + 1)) as rt:
        assert torch.get_num_threads() == before + 1 == rt.describe()["threads"]
    assert torch.get_num_threads() == before


def test_pytorch_from_model(packed):
    x = mixed_batch(3, seed=6)
    ref, ref_masks = packed.reference(x, "mask")
    before = packed.model.dispatch_mode
    with TorchRuntime.from_model(packed.model, {"dispatch": {"mode": "mask"}}) as rt:
        out = rt.run(x.numpy())
        assert rt.describe()["model"] == "in-memory"
    assert packed.model.dispatch_mode == before  # untouched
    assert float(np.abs(out.logits - ref).max()) <= 1e-5 and np.array_equal(out.masks, ref_masks)


# -- TensorRT -------------------------------------------------------------------------------------

def test_tensorrt_missing_names_the_install_command(monkeypatch, packed):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed
    with pytest.raises(RuntimeUnavailable) as info:
        open_runtime("tensorrt", packed.path)
    msg = str(info.value)
    assert msg.startswith("TensorRT is not installed")
    assert 'pip install "dyt-edge[tensorrt]"' in msg and "dyt-edge[tensorrt-v100]" in msg


def test_tensorrt_present_refuses_honestly(monkeypatch, packed, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(RuntimeSetupError, match="has no TensorRT engine .*build --target tensorrt"):
        open_runtime("tensorrt", packed.path)

    def engine(m):
        m["files"] = {"tensorrt": {"path": "model.engine", "bytes": 1, "sha256": "0"}}
        m["build"] = {"target": "tensorrt", "precision": "fp16"}

    art = edited(packed.path, tmp_path / "engine", engine)
    with pytest.raises(RuntimeSetupError, match="incomplete: model.engine is missing"):
        open_runtime("tensorrt", art)


def test_unavailable_backends_name_their_install_command(monkeypatch, packed):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeUnavailable, match=r"ONNX Runtime is not installed \(pip install"):
        open_runtime("onnxruntime", packed.path)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(RuntimeUnavailable, match=r"OpenVINO is not installed \(pip install"):
        open_runtime("openvino", packed.path)


def test_describe_is_json(packed):
    with open_runtime("openvino", packed.path, ONE) as rt:
        json.dumps(rt.describe())
