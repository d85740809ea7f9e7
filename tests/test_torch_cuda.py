"""The PyTorch runtime on a CUDA GPU (:mod:`dyt_edge.runtimes.torch_runtime`), ``--device`` on
``validate`` and ``bench``, and ``benchmarks/gpu_pytorch.py``.

Without a GPU (this project's machines): every way a CUDA device can be unusable is one line
with a fix, through the runtime and through the command line; the precision rules per device;
the IEEE-fp32 switch; the benchmark script's no-GPU error and its logic on the CPU (``--device
cpu --tiny``). With a GPU (``-m cuda``; skipped with a reason elsewhere): CUDA fp32 within the
model's rounding of CPU fp32, fp16 within the fp16 thresholds, what ``describe()`` reports, and
the commands end to end.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt_edge.errors import UsageError
from dyt_edge.runtimes import RuntimeOptions, RuntimeSetupError, open_runtime
from dyt_edge.runtimes.torch_runtime import ieee_fp32, resolve_device

from .helpers import assert_one_line_error, cli, randomize_dyt, tiny_config, write_npz

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible to PyTorch "
                                "(torch.cuda.is_available() is False)")


# -- helpers --------------------------------------------------------------------------------------

@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as a GPU-less one sees it, whatever the real machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """One CUDA GPU as far as device resolution can tell (``T4``: compute capability 7.5); only
    for errors raised before anything runs on it."""
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))


@pytest.fixture(scope="module")
def script():
    """``benchmarks/gpu_pytorch.py`` as a module (its imports of the other scripts work)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("gpu_pytorch",
                                                      BENCHMARKS / "gpu_pytorch.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def images_npz(tmp_path_factory) -> Path:
    """24 random 32x32 images, no labels."""
    return write_npz(tmp_path_factory.mktemp("cuda-data") / "images.npz", 24, labels=False)


# -- the device, through the runtime --------------------------------------------------------------

def test_cuda_where_none_exists_is_one_line_with_the_fix(tiny_ov_export, no_gpu, monkeypatch):
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("pytorch", tiny_ov_export, RuntimeOptions(device="cuda"))
    exc = info.value
    assert exc.message == ("no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
                           "False)")
    assert "NVIDIA GPU and driver" in exc.hint and "drop --device" in exc.hint
    assert "\n" not in str(exc)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeSetupError, match="CUDA_VISIBLE_DEVICES='' may hide the GPUs"):
        open_runtime("pytorch", tiny_ov_export, RuntimeOptions(device="cuda:0"))


def test_cpu_only_torch_build_is_named(tiny_ov_export, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("pytorch", tiny_ov_export, RuntimeOptions(device="cuda"))
    assert "is a CPU-only build: it cannot run on cuda" in info.value.message
    assert "pip install torch==2.14.1" in info.value.hint


def test_cuda_index_out_of_range(fake_gpu):
    with pytest.raises(RuntimeSetupError) as info:
        resolve_device(torch, "cuda:3")
    assert info.value.message == "cuda:3 does not exist: PyTorch sees 1 CUDA GPU (cuda:0 Tesla T4)"
    assert "choose cuda:0" in info.value.hint
    assert resolve_device(torch, "CUDA") == torch.device("cuda", 0)
    assert resolve_device(torch, "cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "tpu", "cpu:1", "cuda0"])
def test_unknown_device_strings_are_usage_errors(device):
    with pytest.raises(UsageError) as info:
        resolve_device(torch, device)
    assert info.value.message == f"unknown device '{device}' for --target pytorch"
    assert "cuda:N" in info.value.hint


@pytest.mark.parametrize("device", [None, "", "cpu", " CPU "])
def test_cpu_spellings(device, tiny_ov_export):
    assert resolve_device(torch, device) == torch.device("cpu")
    with open_runtime("pytorch", tiny_ov_export, RuntimeOptions(device=device)) as rt:
        assert rt.describe()["device"].startswith("CPU (")
        assert rt.run(np.zeros((1, 3, 32, 32), np.float32)).logits.shape == (1, 5)


def test_fp16_on_the_cpu_is_refused(tiny_ov_export):
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("pytorch", tiny_ov_export, RuntimeOptions(precision="fp16"))
    assert "runs fp16 on a CUDA GPU only" in info.value.message
    assert "--device cuda" in info.value.hint and "bf16" in info.value.hint


def test_precisions_a_gpu_cannot_take_are_refused_before_loading(tiny_ov_export, fake_gpu):
    with pytest.raises(RuntimeSetupError, match="runs fp64 on the CPU only"):
        open_runtime("pytorch", tiny_ov_export, RuntimeOptions(device="cuda", precision="fp64"))
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("pytorch", tiny_ov_export, RuntimeOptions(device="cuda", precision="bf16"))
    assert info.value.message == "cuda:0 (Tesla T4, compute capability 7.5) has no bf16"
    assert "fp16" in info.value.hint
    with pytest.raises(RuntimeSetupError, match="cannot run precision int8.*fp32, fp16, bf16\\)"):
        open_runtime("pytorch", tiny_ov_export, RuntimeOptions(device="cuda", precision="int8"))


def test_ieee_fp32_switches_tf32_off_and_restores(monkeypatch):
    knobs = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    before = [k.fp32_precision for k in knobs]
    try:
        knobs[0].fp32_precision = "tf32"
        with ieee_fp32(torch):
            assert [k.fp32_precision for k in knobs] == ["ieee"] * 3
        assert knobs[0].fp32_precision == "tf32"
        with pytest.raises(ZeroDivisionError), ieee_fp32(torch):
            1 / 0
        assert knobs[0].fp32_precision == "tf32"
        assert [k.fp32_precision for k in knobs[1:]] == before[1:]
    finally:
        for k, v in zip(knobs, before):
            k.fp32_precision = v


# -- the command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["validate", "bench"])
def test_cli_cuda_where_none_exists(capsys, tiny_ov_export, images_npz, no_gpu, command):
    extra = ["--batch", "2"] if command == "bench" else []
    code, out, err = cli(capsys, command, tiny_ov_export, "--target", "pytorch", "--device",
                         "cuda", "--data", images_npz, *extra)
    assert code == 1
    assert_one_line_error(code, err, "no CUDA GPU is visible to PyTorch "
                          "(torch.cuda.is_available() is False)", "drop --device")


@pytest.mark.parametrize("args,needles,code", [
    (["--device", "tpu"], ["unknown device 'tpu'", "cuda:N"], 2),
    (["--precision", "fp16"], ["runs fp16 on a CUDA GPU only"], 1),
    ([], ["at fp32 on the CPU is the reference", "--device cuda"], 2),
    (["--device", "cpu"], ["at fp32 on the CPU is the reference"], 2),
])
def test_cli_validate_pytorch_target_flags(capsys, tiny_ov_export, images_npz, args, needles,
                                           code):
    got, out, err = cli(capsys, "validate", tiny_ov_export, "-t", "pytorch", "--data",
                        images_npz, *args)
    assert_one_line_error(got, err, *needles)
    assert got == code


def test_cli_device_reaches_other_runtimes(capsys, tiny_ov_export, images_npz):
    code, out, err = cli(capsys, "validate", tiny_ov_export, "-t", "onnxruntime", "--device",
                         "cuda", "--data", images_npz)
    assert_one_line_error(code, err, "--target onnxruntime runs on the CPU here, not 'cuda'")
    code, out, err = cli(capsys, "validate", tiny_ov_export, "-t", "openvino", "--device",
                         "NPU7", "--data", images_npz)
    assert_one_line_error(code, err, "OpenVINO has no device 'NPU7'")


def test_validate_pytorch_bf16_on_the_cpu_against_the_fp32_reference(tiny_ov_export,
                                                                      images_npz):
    from dyt_edge.validate import validate_artifact

    r = validate_artifact(tiny_ov_export, "pytorch", precision="bf16", data=str(images_npz),
                          samples=16, batch=8, device="cpu")
    assert r.target["target"] == "pytorch" and r.precision == "bf16"
    assert r.target["precision_in_effect"] == "bf16 (CPU autocast, gates fp32)"
    assert r.reference["precision"] == "fp32" and r.reference["device"].startswith("CPU")
    assert r.thresholds["precision"] == "bf16"
    assert 0 < r.metrics["max_abs_diff"] < 0.5  # bf16 really ran, and close to fp32


def test_bench_records_the_device(capsys, tiny_ov_export, images_npz):
    code, out, err = cli(capsys, "bench", tiny_ov_export, "-t", "pytorch", "--device", "cpu",
                         "--batch", "2", "--duration", "0.05", "--warmup", "0.01", "--images",
                         "8", "--data", images_npz, "--json", "-")
    assert code == 0, err
    d = json.loads(out)
    assert d["settings"]["device"] == "cpu"
    assert d["runtime"]["dyt"]["device"].startswith("CPU (")
    assert d["runtime"]["complete"]["dispatch"] == "complete"
    assert d["results"][0]["speedup"] > 0


# -- benchmarks/gpu_pytorch.py --------------------------------------------------------------------

def test_script_without_cuda_exits_1_with_one_line(script, capsys, no_gpu):
    assert script.main([]) == 1
    out, err = capsys.readouterr()
    assert_one_line_error(1, err, "no CUDA GPU is visible to PyTorch", "--device cpu --tiny")
    assert out == ""


def test_script_plan_fits_the_budget(script):
    roomy = script.plan_batch(420.0, 6, 3, 9)
    assert roomy["rounds"] == 9 and roomy["chunk_s"] == script.CHUNK_MAX_S
    assert roomy["warmup_s"] <= script.WARMUP_MAX_S
    assert 3 * (roomy["warmup_s"] + 9 * roomy["chunk_s"]) <= roomy["share_s"]
    tight = script.plan_batch(0.5, 2, 3, 9)
    assert tight["rounds"] == 3 and tight["chunk_s"] >= script.CHUNK_MIN_S
    assert 3 * tight["rounds"] * tight["chunk_s"] <= tight["share_s"]
    assert script.plan_batch(0.0, 1, 3, 9)["rounds"] == 1


def test_script_ratios_are_medians_of_paired_rounds(script):
    out = script.paired({"complete": [10.0, 5.0, 10.0], "pack": [20.0, 5.0, 15.0]}, "complete")
    assert out["pack"]["ratio_to_complete"] == pytest.approx(1.5)   # 2.0, 1.0, 1.5
    assert (out["pack"]["ratio_min"], out["pack"]["ratio_max"]) == (1.0, 2.0)
    assert out["pack"]["img_s"] == 15.0 and out["complete"]["ratio_to_complete"] == 1.0


def test_script_runs_its_logic_on_the_cpu(script, capsys, tmp_path):
    path = tmp_path / "gpu.json"
    code = script.main(["--device", "cpu", "--tiny", "--batches", "1,2", "--budget-s", "5",
                        "--json", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(path.read_text())
    assert d["schema"] == "dyt-edge.gpu-pytorch" and d["modes"] == ["complete", "topk", "pack"]
    assert d["batches"] == [1, 2] and d["precision"] == "fp32"
    assert d["machine"]["device"] == "cpu" and d["machine"]["gpu"] is None
    assert d["settings"]["budget_s"] == 5 and isinstance(d["cut"], list)
    assert d["elapsed_s"] < 15
    batches = sorted({r["batch"] for r in d["results"]})
    assert batches and batches[0] == 1  # batch 2 may be cut on a loaded machine, and says so
    assert len(d["results"]) == 3 * len(batches)
    if batches != [1, 2]:
        assert any("batch 2" in c for c in d["cut"])
    for r in d["results"]:
        assert r["img_s"] > 0 and math.isfinite(r["img_s"]) and r["rounds"] >= 1
        assert r["ratio_to_complete"] > 0 and math.isfinite(r["ratio_to_complete"])
        if r["mode"] == "complete":
            assert r["ratio_to_complete"] == 1.0 and r["activation"] == 1.0
        else:
            assert 0 < r["activation"] < 1 and r["flops_ratio"] > 1
            assert r["efficiency"] == pytest.approx(r["ratio_to_complete"] / r["flops_ratio"])
    assert "| batch | complete img/s | `topk` ratio (eff.) |" in out


# -- on a real GPU ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def separated_export(tmp_path_factory):
    """A tiny 10-class DyT exported from a checkpoint, its classifier scaled up so that its
    logits are a few units apart (top-1 agreement then measures the numerics, not ties)."""
    from dyt_edge.checkpoint import save_model
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint
    from dyt_edge.model import build_model

    base = tmp_path_factory.mktemp("cuda-export")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = randomize_dyt(build_model(tiny_config(num_classes=10, depth=2)), seed=3)
    with torch.no_grad():
        model.head.weight.mul_(60.0)
    ckpt = save_model(model, base / "sep.safetensors")
    return export_checkpoint(ckpt, base / "export",
                             ExportOptions(simplify=False, validate=False)).path


def _images(n: int = 48) -> np.ndarray:
    from dyt_edge.data import generated_images

    return generated_images(n, 3, 32, seed=11)


@pytest.mark.cuda
@needs_cuda
def test_cuda_describe_reports_the_gpu_and_keeps_gates_fp32(separated_export):
    with open_runtime("pytorch", separated_export,
                      RuntimeOptions(device="cuda", precision="fp16")) as rt:
        d = rt.describe()
        assert d["gpu"] == torch.cuda.get_device_name(0)
        assert d["compute_capability"] == "%d.%d" % torch.cuda.get_device_capability(0)
        assert d["cuda"] == torch.version.cuda and d["device"].startswith("cuda:0 (")
        assert d["precision_in_effect"] == "fp16 (CUDA autocast, gates fp32)"
        assert next(rt.model.parameters()).device.type == "cuda"
        x = torch.randn(2, 16, rt.model.config.embed_dim, device="cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            assert rt.model.token_selects[0].logits(x.half()).dtype == torch.float32
        out = rt.run(_images(4))
        assert out.logits.dtype == np.float32 and out.masks.dtype == np.bool_


@pytest.mark.cuda
@needs_cuda
def test_cuda_prepare_waits_for_the_work(separated_export):
    with open_runtime("pytorch", separated_export, RuntimeOptions(device="cuda")) as rt:
        call = rt.prepare(_images(8))
        logits, _ = call()
        assert logits.device.type == "cuda"
        assert torch.cuda.current_stream().query()  # nothing left in flight


@pytest.mark.cuda
@needs_cuda
def test_cuda_fp32_is_cpu_fp32_within_the_models_rounding(separated_export):
    from dyt_edge.rounding import rounding_scale, same_decisions

    x = _images()
    with open_runtime("pytorch", separated_export) as cpu, \
            open_runtime("pytorch", separated_export, RuntimeOptions(precision="fp64")) as f64, \
            open_runtime("pytorch", separated_export, RuntimeOptions(device="cuda")) as gpu:
        assert gpu.describe()["precision_in_effect"] == "fp32 (IEEE, TF32 off)"
        c32, c64, g32 = cpu.run(x), f64.run(x), gpu.run(x)
    scale = rounding_scale(c32.logits, c64.logits, c32.masks, c64.masks)
    same = same_decisions(g32.masks, c32.masks)
    assert same.mean() >= 0.9
    diff = np.abs(g32.logits[same].astype(np.float64) - c32.logits[same]).max()
    assert diff <= scale.tolerance(), (diff, scale)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_autocast_agrees_with_cpu_fp32(separated_export, precision):
    from dyt_edge.rounding import same_decisions
    from dyt_edge.validate import PRECISION_THRESHOLDS

    if precision == "bf16" and torch.cuda.get_device_capability(0) < (8, 0):
        pytest.skip("this GPU has no bf16")
    x = _images()
    with open_runtime("pytorch", separated_export) as cpu, \
            open_runtime("pytorch", separated_export,
                         RuntimeOptions(device="cuda", precision=precision)) as gpu:
        ref, got = cpu.run(x), gpu.run(x)
    limits = PRECISION_THRESHOLDS[precision]
    same = same_decisions(ref.masks, got.masks)
    assert same.mean() >= 0.5
    bound = limits.max_diff_rel * np.abs(ref.logits).max()  # the precision's validate bound
    assert np.abs(ref.logits[same] - got.logits[same]).max() <= bound
    assert 100 * np.mean(ref.masks != got.masks) <= limits.max_flips
    assert np.mean(ref.logits.argmax(1) == got.logits.argmax(1)) >= 0.9


@pytest.mark.cuda
@needs_cuda
def test_cli_validate_and_bench_on_cuda(capsys, separated_export, images_npz):
    code, out, err = cli(capsys, "validate", separated_export, "-t", "pytorch", "--device",
                         "cuda", "--precision", "fp16", "--data", images_npz, "--json", "-")
    assert code in (0, 1) and "Traceback" not in err
    d = json.loads(out)
    assert d["target"]["device"].startswith("cuda:0 (") and d["precision"] == "fp16"
    assert d["reference"]["device"].startswith("CPU (")
    m = d["metrics"]
    assert m["max_abs_diff_unflipped"] <= 0.02 * m["logit_scale"]  # fp16's bound
    assert m["top1_agreement_pct"] >= 90
    code, out, err = cli(capsys, "bench", separated_export, "-t", "pytorch", "--device", "cuda",
                         "--precision", "fp16", "--batch", "1,4", "--duration", "0.2",
                         "--warmup", "0.05", "--data", images_npz, "--json", "-")
    assert code == 0, err
    d = json.loads(out)
    assert d["runtime"]["dyt"]["gpu"] == torch.cuda.get_device_name(0)
    assert d["runtime"]["complete"]["device"].startswith("cuda:0 (")
    assert all(r["speedup"] > 0 for r in d["results"])


@pytest.mark.cuda
@needs_cuda
def test_script_on_cuda(script, capsys, tmp_path):
    path = tmp_path / "gpu.json"
    code = script.main(["--tiny", "--batches", "1,4", "--budget-s", "8", "--json", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(path.read_text())
    assert d["machine"]["gpu"] == torch.cuda.get_device_name(0)
    assert d["precision_in_effect"] == "fp16 (CUDA autocast, gates fp32)"
    assert d["results"] and all(r["ratio_to_complete"] > 0 for r in d["results"])
    assert all(r["gpu_img_s"] > 0 for r in d["results"])

