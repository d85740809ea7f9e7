"""The installed TensorRT and the guards between GPU, TensorRT version and precision, with the
command that fixes each refusal (runtimes/tensorrt/install.py)."""

from __future__ import annotations

import pytest

from dyt_edge.errors import UsageError
from dyt_edge.runtimes.tensorrt import gpus, install
from dyt_edge.runtimes.tensorrt.gpus import GPUS
from dyt_edge.runtimes.tensorrt.install import (TensorRTInstall, check_compatibility,
                                                resolve_target_gpu)

from .fakes.gpus import T4


@pytest.mark.parametrize("version", ["10.5.0", "10.16.1", "11.4.0"])
def test_v100_with_tensorrt_10_5_or_newer_is_refused_with_the_command_that_works(version):
    c = check_compatibility(GPUS["v100"], TensorRTInstall(version, "tensorrt-cu12", 12), "fp16",
                            python=(3, 11))
    assert not c.ok and [p.kind for p in c.problems] == ["version"]
    p = c.problems[0]
    assert f"TensorRT {version}" in p.message and "Volta support was removed in TensorRT 10.5" \
        in p.message
    assert 'pip install "tensorrt-cu12>=10.0,<10.5"' in p.fix
    assert "pip uninstall -y tensorrt-cu12 tensorrt-cu12-bindings tensorrt-cu12-libs" in p.fix


def test_v100_with_tensorrt_cu13_is_refused():
    c = check_compatibility(GPUS["v100"], TensorRTInstall("10.3.0", "tensorrt-cu13", 13), "fp32",
                            python=(3, 12))
    assert [p.kind for p in c.problems] == ["version"]
    p = c.problems[0]
    assert "built for CUDA 13" in p.message and "CUDA 13 dropped Volta" in p.message
    assert "pip uninstall -y tensorrt-cu13 tensorrt-cu13-bindings tensorrt-cu13-libs" in p.fix
    assert 'pip install "tensorrt-cu12>=10.0,<10.5"' in p.fix


def test_v100_with_tensorrt_10_4_is_fine_and_python_limits_are_named():
    ok = check_compatibility(GPUS["v100"], TensorRTInstall("10.4.0", "tensorrt-cu12", 12),
                             "fp16", python=(3, 12))
    assert ok.ok and not ok.warnings
    missing = check_compatibility(GPUS["v100"], None, "fp16", python=(3, 13))
    assert [p.kind for p in missing.problems] == ["tensorrt"]
    assert 'pip install "tensorrt-cu12>=10.0,<10.5"' in missing.problems[0].fix
    assert "wheels up to Python 3.12, this is Python 3.13" in missing.problems[0].fix


@pytest.mark.parametrize("version, package, cuda", [
    ("10.0.1", "tensorrt-cu12", 12), ("10.4.0", "tensorrt-cu12", 12),
    ("10.16.1", "tensorrt-cu13", 13), ("11.0.0", "tensorrt-cu12", 12),
    ("11.4.1", "tensorrt-cu13", 13)])
def test_t4_builds_with_tensorrt_10_and_11(version, package, cuda):
    for precision in ("fp32", "fp16", "int8"):
        c = check_compatibility(GPUS["t4"], TensorRTInstall(version, package, cuda), precision,
                                python=(3, 13))
        assert c.ok and not c.warnings, (precision, c)


def test_int8_on_v100_warns_and_other_guards():
    c = check_compatibility(GPUS["v100"], TensorRTInstall("10.4.0", "tensorrt-cu12", 12), "int8")
    assert c.ok and len(c.warnings) == 1 and "no INT8 tensor cores" in c.warnings[0]
    assert not check_compatibility(GPUS["t4"], TensorRTInstall("10.8.0"), "int8").warnings
    old = check_compatibility(GPUS["t4"], TensorRTInstall("8.6.1", "tensorrt", None), "fp16")
    assert [p.kind for p in old.problems] == ["version"] and "older than TensorRT 10.0" in \
        old.problems[0].message
    broken = check_compatibility(GPUS["t4"], TensorRTInstall(
        "10.8.0", "tensorrt-cu12-bindings", 12, importable=False,
        import_error="libnvinfer.so.10: cannot open shared object file"), "fp16")
    assert [p.kind for p in broken.problems] == ["tensorrt"]
    assert "cannot be imported (libnvinfer.so.10" in broken.problems[0].message
    newer = check_compatibility(GPUS["t4"], TensorRTInstall("12.0.0"), "fp16")
    assert newer.ok and "newer than the majors" in newer.warnings[0]
    both = check_compatibility(GPUS["t4"], TensorRTInstall(
        "10.8.0", "tensorrt-cu12", 12, packages=("tensorrt-cu12==10.8.0",
                                                  "tensorrt-cu13==10.8.0")), "fp16")
    assert "two CUDA variants" in both.problems[0].message


def test_the_target_gpu_is_the_one_present_unless_dry_run():
    profile, problems, _ = resolve_target_gpu("auto", None, dry_run=False)
    assert profile is None and "no NVIDIA GPU found (--gpu auto)" in problems[0].message
    profile, problems, _ = resolve_target_gpu(None, None, dry_run=True)
    assert profile is None and problems  # nothing to plan for: reported, the CLI exits 0
    profile, problems, warnings = resolve_target_gpu("auto", T4, dry_run=False)
    assert profile.key == "t4" and not problems and not warnings
    profile, problems, _ = resolve_target_gpu("v100", T4, dry_run=False)
    assert profile.key == "v100" and len(problems) == 1
    assert "--gpu v100 (Tesla V100, sm_70) but this machine has Tesla T4 (sm_75)" in \
        problems[0].message and "--gpu t4" in problems[0].fix
    profile, problems, warnings = resolve_target_gpu("v100", T4, dry_run=True)
    assert profile.key == "v100" and not problems and "planning for Tesla V100" in warnings[0]
    profile, problems, _ = resolve_target_gpu("t4", None, dry_run=False)
    assert profile.key == "t4" and "no NVIDIA GPU found" in problems[0].message
    assert resolve_target_gpu("T4", T4, dry_run=False)[1] == []
    with pytest.raises(UsageError, match="unknown GPU 'p100'"):
        resolve_target_gpu("p100", T4, dry_run=True)


def test_guard_errors_are_one_exception_with_every_fix():
    with pytest.raises(gpus.TensorRTSetupError) as info:
        install.require(check_compatibility(GPUS["v100"], TensorRTInstall(
            "10.5.0", "tensorrt-cu12", 12), "fp16").problems)
    assert "Volta support was removed" in str(info.value) and "<10.5" in str(info.value)
    install.require([])  # nothing to raise
