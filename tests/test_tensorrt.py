"""TensorRT: GPU profiles and version guards, --batch, the dry-run report, clean failures, engine
metadata checks, the build's TensorRT call wiring (a fake ``tensorrt``), and real-engine tests
that only run where CUDA and TensorRT are present.

No GPU and no TensorRT exist on the development machines or in CI (the TensorRT wheels on PyPI
fetch NVIDIA's libraries at install time, which these machines cannot reach): everything
that needs neither is tested here with the real logic; the tests marked ``tensorrt`` skip with
the reason elsewhere.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dyt_edge.artifacts import MANIFEST_NAME, load_artifact
from dyt_edge.errors import UsageError
from dyt_edge.exporters import tensorrt_gpus as gpus
from dyt_edge.exporters import tensorrt_plan as tplan
from dyt_edge.exporters.tensorrt_gpus import (GPUS, DetectedGpu, TensorRTInstall,
                                              check_compatibility, resolve_target_gpu)

from .conftest import TINY_NAMES as NAMES
from .conftest import assert_one_line_error as one_line_error
from .conftest import cli, write_npz

T4 = DetectedGpu(0, "Tesla T4", (7, 5), 15360, "CUDA 12.4", "test")
V100 = DetectedGpu(0, "Tesla V100-SXM2-16GB", (7, 0), 16384, "CUDA 12.4", "test")
A10 = DetectedGpu(0, "NVIDIA A10G", (8, 6), 23028, "CUDA 12.4", "test")
A2 = DetectedGpu(0, "NVIDIA A2", (8, 6), 15356, "CUDA 12.4", "test")


def built_dirs(export: Path) -> list[str]:
    return sorted(p.name for p in export.iterdir() if p.name.startswith((".", "tensorrt-")))


@pytest.fixture(scope="module")
def export(tiny_ov_export) -> Path:
    return tiny_ov_export


@pytest.fixture
def work(tiny_ov_work) -> Path:
    return tiny_ov_work


@pytest.fixture
def bare_machine(monkeypatch):
    """This machine as CI sees it: no GPU, no TensorRT (whatever the real machine has)."""
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [])
    monkeypatch.setattr(gpus, "find_tensorrt", lambda import_module=True: None)


# -- GPU profiles and version guards ------------------------------------------------------------

def test_profiles_know_what_each_gpu_and_tensorrt_can_do():
    v100, t4 = GPUS["v100"], GPUS["t4"]
    assert (v100.compute_capability, v100.sm, v100.architecture) == ((7, 0), "sm_70", "Volta")
    assert v100.fp16_tensor_cores and not v100.int8_tensor_cores
    assert v100.majors == (10,) and v100.cuda_majors == (12,) and v100.python_max == (3, 12)
    assert v100.package == "tensorrt-cu12>=10.0,<10.5"
    assert (t4.compute_capability, t4.sm, t4.architecture) == ((7, 5), "sm_75", "Turing")
    assert t4.int8_tensor_cores and t4.majors == (10, 11) and t4.cuda_majors == (12, 13)
    assert t4.package == "tensorrt-cu12>=10.0"
    for p in GPUS.values():  # every other profile: Turing or newer, both majors
        assert p.compute_capability >= (7, 5) or p.key == "v100"


@pytest.mark.parametrize("name, cc, key", [
    ("Tesla T4", (7, 5), "t4"), ("Tesla V100-SXM2-16GB", (7, 0), "v100"),
    ("Tesla V100-PCIE-32GB", (7, 0), "v100"), ("NVIDIA A10G", (8, 6), "a10"),
    ("NVIDIA A10", (8, 6), "a10"), ("NVIDIA A100-SXM4-80GB", (8, 0), "a100"),
    ("NVIDIA L4", (8, 9), "l4"), ("NVIDIA H100 80GB HBM3", (9, 0), "h100"),
    ("NVIDIA RTX A6000", (8, 6), "sm_86"), ("Tesla T4", (8, 6), "sm_86"),
])
def test_detected_names_map_onto_profiles(name, cc, key):
    assert DetectedGpu(0, name, cc).profile.key == key


def test_nvidia_smi_rows_are_parsed():
    text = ("0, Tesla T4, 7.5, 15360, 550.54.15\n"
            "1, NVIDIA A100-SXM4-80GB, 8.0, 81920, 550.54.15\n"
            "garbage line\n")
    found = gpus.parse_nvidia_smi(text)
    assert [(g.index, g.name, g.compute_capability, g.memory_mib) for g in found] == [
        (0, "Tesla T4", (7, 5), 15360), (1, "NVIDIA A100-SXM4-80GB", (8, 0), 81920)]
    assert [g.profile.key for g in found] == ["t4", "a100"]


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
        gpus.require(check_compatibility(GPUS["v100"], TensorRTInstall(
            "10.5.0", "tensorrt-cu12", 12), "fp16").problems)
    assert "Volta support was removed" in str(info.value) and "<10.5" in str(info.value)
    gpus.require([])  # nothing to raise


# -- --batch, --workspace, trtexec --------------------------------------------------------------

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
    pack = tplan.dispatch_advice({"dispatch": {"mode": "pack"}})
    assert "NonZero" in pack[0] and "mean activation" in pack[0] and "data-dependent" in pack[0]
    assert pack[1].startswith("recommended: keep the default `pack` export")
    assert "--dispatch capacity" in pack[2]
    topk = tplan.dispatch_advice({"dispatch": {"mode": "topk"}},
                                 {"dispatchers": [{"k_bound": 197}, {"k_bound": 197}]})
    assert "data-dependent K" in topk[0] and "<= 197 tokens, under TensorRT's limit of 3840" \
        in topk[0]
    assert "busiest image" in topk[0]
    assert topk[1] == pack[1] and "--dispatch capacity" in topk[2]
    over = tplan.dispatch_advice({"dispatch": {"mode": "topk"}},
                                 {"dispatchers": [{"k_bound": 4097}]})
    assert "TensorRT needs K < 3840" in over[0]
    cap = tplan.dispatch_advice({"dispatch": {"mode": "capacity", "capacity": 0.5,
                                              "capacity_slots": [98, 98]}})
    assert "static shapes" in cap[0] and "overflow" in cap[0] and len(cap) == 2
    doc = " ".join(tplan.__doc__.split())
    assert "Recommendation: **keep the default ``pack`` export**" in doc
    assert "output allocators are only for data-dependent *outputs*" in doc


# -- engine metadata ----------------------------------------------------------------------------

def _meta(gpu: DetectedGpu = T4, version: str = "10.4.0") -> dict:
    return tplan.engine_metadata(
        trt=TensorRTInstall(version, "tensorrt-cu12", 12), gpu=gpu, profile=gpu.profile,
        precision="fp16", batch=tplan.parse_batch("1:8:32"), input_name="images",
        chw=(3, 32, 32), dispatch={"mode": "topk"}, source_model={"file": "model.onnx",
                                                                  "sha256": "ab" * 32},
        onnx={"file": "model.onnx", "sha256": "cd" * 32},
        engine={"file": "model.engine", "bytes": 10, "sha256": "ef" * 32}, workspace_gib=4)


def test_engine_metadata_records_what_the_engine_needs():
    m = _meta()
    assert m["tensorrt"]["version"] == "10.4.0" and m["gpu"]["name"] == "Tesla T4"
    assert m["gpu"]["compute_capability"] == "7.5" and m["gpu"]["profile"] == "t4"
    assert m["precision"] == "fp16" and m["strongly_typed"] is True
    assert m["profile"] == {"input": "images", "min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                            "max": [32, 3, 32, 32], "static": False}
    assert m["dispatch"] == {"mode": "topk"} and m["source_model"]["sha256"] == "ab" * 32
    assert json.loads(json.dumps(m)) == m


def test_an_engine_on_another_gpu_or_tensorrt_is_refused():
    meta = _meta()
    assert tplan.check_engine_metadata(meta, T4, "10.4.0") == ([], [])
    assert tplan.check_engine_metadata(meta, T4, "10.4.0.26") == ([], [])
    problems, _ = tplan.check_engine_metadata(meta, T4, "10.5.0")
    assert problems == ["the engine was built with TensorRT 10.4.0, this is TensorRT 10.5.0 "
                        "(an engine only loads in the TensorRT version that built it)"]
    problems, _ = tplan.check_engine_metadata(meta, A10, "10.4.0")
    assert "built for Tesla T4 (compute capability 7.5), this GPU is NVIDIA A10G (8.6)" in \
        problems[0]
    problems, _ = tplan.check_engine_metadata(meta, None, "10.4.0")
    assert "no NVIDIA GPU found" in problems[0]
    both, _ = tplan.check_engine_metadata(meta, V100, "11.0.0")
    assert len(both) == 2
    same_cc = _meta(A10)
    problems, warnings = tplan.check_engine_metadata(same_cc, A2, "10.4.0")
    assert "same compute capability 8.6" in problems[0] and not warnings
    problems, warnings = tplan.check_engine_metadata(same_cc, A2, "10.4.0",
                                                     allow_gpu_model_mismatch=True)
    assert not problems and "may run slower" in warnings[0]
    assert tplan.check_engine_metadata({"format": "x"}, T4, "10.4.0")[0]


# -- the CLI: dry run and clean failures ----------------------------------------------------------

def test_dry_run_for_t4_prints_report_plan_and_trtexec_per_major(capsys, work, bare_machine):
    code, out, err = cli(capsys, "build", "--target", "tensorrt", work, "--gpu", "t4",
                         "--dry-run")
    assert code == 0, err
    text = " ".join(out.split())
    for needle in ("TensorRT build plan (dry run: nothing is built)",
                   "TensorRT compatibility (ONNX parser)", "TensorRT 10.0 / 10.1",
                   "TensorRT 10.15+ / 11.x", "Dispatchers in the graph",
                   "Tesla T4 (sm_75, Turing", "TensorRT not installed",
                   "images: min 1x3x32x32, opt 8x3x32x32, max 32x3x32x32",
                   "4 GiB (4096 MiB)", "strongly typed", "Dispatch on TensorRT",
                   "recommended: keep the default `pack` export", "TensorRT 10.x:",
                   "TensorRT 11.x:", 'install it: pip install "tensorrt-cu12>=10.0"'):
        assert needle in text, needle
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("trtexec ")]
    assert len(lines) == 2
    assert lines[0] == (f"trtexec --onnx={work}/model.onnx --saveEngine={work}/tensorrt-t4-fp32/"
                        "model.engine --minShapes=images:1x3x32x32 --optShapes=images:8x3x32x32"
                        " --maxShapes=images:32x3x32x32 --stronglyTyped "
                        "--memPoolSize=workspace:4096")
    assert lines[1] == lines[0].replace(" --stronglyTyped", "")
    assert built_dirs(work) == []  # nothing written


def test_dry_run_for_v100_int8_only_tensorrt_10_and_a_warning(capsys, work, bare_machine,
                                                             tmp_path):
    npz = write_npz(tmp_path / "calib.npz", 24)
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--gpu", "v100", "-p", "int8",
                         "--calib", npz, "--batch", "2:4:8", "--workspace", "1.5",
                         "--timing-cache", tmp_path / "tc.bin", "--dry-run")
    assert code == 0, err
    text = " ".join(out.split())
    assert "TensorRT 10.x:" in text and "TensorRT 11.x:" not in text
    assert "no INT8 tensor cores" in text and "explicit int8 QuantizeLinear" in text
    assert f"--onnx={work}/tensorrt-v100-int8/model.onnx" in text
    assert f"--timingCacheFile={tmp_path / 'tc.bin'}" in text
    assert "--minShapes=images:2x3x32x32" in text and "--memPoolSize=workspace:1536" in text
    assert 'pip install "tensorrt-cu12>=10.0,<10.5"' in text
    assert not (tmp_path / "tc.bin").exists() and built_dirs(work) == []


def test_dry_run_json_and_auto_without_gpu(capsys, work, bare_machine):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["dry_run"] is True and plan["gpu"] is None and plan["ok"] is False
    assert {p["kind"] for p in plan["problems"]} == {"gpu", "tensorrt"}
    assert set(plan["trtexec"]) == {"10", "11"}
    assert plan["tensorrt_compatibility"][0]["ok"] is True
    assert plan["batch"] == {"min": 1, "opt": 8, "max": 32, "static": False}
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--dry-run")
    assert code == 0 and "no GPU detected; pass --gpu NAME" in " ".join(out.split())


def test_without_dry_run_it_fails_cleanly_naming_what_is_missing(capsys, work, bare_machine):
    code, out, err = cli(capsys, "build", "--target", "tensorrt", work, "--gpu", "t4")
    line = one_line_error(code, err, "cannot build a TensorRT engine here",
                          "no NVIDIA GPU found", "TensorRT is not installed",
                          'pip install "tensorrt-cu12>=10.0"', "nothing was written")
    assert code == 1 and "Traceback" not in out
    assert "Equivalent trtexec command" in out  # the plan came first, on stdout
    assert built_dirs(work) == []
    code, out, err = cli(capsys, "build", "--target", "tensorrt", work)  # --gpu auto
    one_line_error(code, err, "no NVIDIA GPU found (--gpu auto)")
    assert built_dirs(work) == [] and line


def test_the_failure_hint_points_at_onnx_only(capsys, work, bare_machine):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--gpu", "t4", "-p", "fp16")
    one_line_error(code, err, "cannot build a TensorRT engine here", "nothing was written",
                   "--onnx-only writes the converted ONNX for checking on ONNX Runtime")
    assert built_dirs(work) == []


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_onnx_only_writes_the_converted_graph_that_validates_on_onnxruntime(
        capsys, work, bare_machine, tmp_path, precision):
    """No GPU, no TensorRT: --onnx-only writes model.onnx and the manifest (no engine); ONNX
    Runtime opens it at its precision and `validate --target onnxruntime` passes."""
    import onnx

    from dyt_edge.runtimes import open_runtime

    npz = write_npz(tmp_path / "data.npz", 64)
    calib = ["--calib", npz, "--calib-size", "64"] if precision == "int8" else []
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--gpu", "t4", "-p",
                         precision, "--onnx-only", *calib)
    assert code == 0, err
    art = work / f"tensorrt-t4-{precision}"
    assert built_dirs(work) == [art.name]  # nothing else (no staging) left behind
    assert sorted(p.name for p in art.iterdir()) == ["dyt_edge.json", "model.onnx"]
    text = " ".join(out.split())
    assert "ONNX only: no engine" in text and "top-1 agreement" in text
    assert f"next: dyt-edge validate {art} --target onnxruntime" in text
    assert f"trtexec --onnx={art}/model.onnx --saveEngine={art}/model.engine" in text
    m = json.loads((art / MANIFEST_NAME).read_text())
    b = m["build"]
    assert b["target"] == "tensorrt" and b["precision"] == precision and b["onnx_only"]
    assert b["engine"] is None and b["gpu"]["profile"] == "t4" and set(m["files"]) == {"onnx"}
    assert b["check"]["top1_agreement_pct"] >= 90 and set(b["trtexec"]) == {"10", "11"}
    assert any("no engine (--onnx-only)" in n for n in b["notes"])
    assert (precision == "int8") == ("calibration" in b)
    g = onnx.load(str(art / "model.onnx"))
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in g.graph.node}
    else:
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.graph.initializer)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with open_runtime("onnxruntime", art) as rt:
        assert rt.precision == precision and rt.run(x).logits.shape == (2, 5)
    code, out, err = cli(capsys, "validate", art, "-t", "onnxruntime", "--data", npz,
                         "--samples", "64")
    assert code == 0, out + err
    assert f"PASSED onnxruntime {precision}" in " ".join(out.split())


def test_onnx_only_needs_a_named_gpu_without_one_and_only_for_tensorrt(capsys, work,
                                                                       bare_machine):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "-p", "fp16", "--onnx-only")
    one_line_error(code, err, "no NVIDIA GPU found (--gpu auto)", "name it with --gpu")
    code, out, err = cli(capsys, "build", "-t", "openvino", work, "--onnx-only")
    one_line_error(code, err, "--onnx-only applies to --target tensorrt only")
    assert code == 2
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--gpu", "t4", "--onnx-only",
                         "--dry-run")
    one_line_error(code, err, "--onnx-only and --dry-run")
    assert built_dirs(work) == []


def test_a_named_gpu_that_is_not_the_one_present_is_refused(capsys, work, monkeypatch,
                                                           fake_trt):
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--gpu", "v100")
    one_line_error(code, err, "--gpu v100 (Tesla V100, sm_70) but this machine has Tesla T4",
                   "engines only run on the GPU they were built on")
    assert fake_trt.calls == [] and built_dirs(work) == []
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--gpu", "v100", "--dry-run")
    assert code == 0 and "planning for Tesla V100" in " ".join(out.split())


def test_v100_with_a_too_new_tensorrt_is_refused_before_anything_runs(capsys, work,
                                                                     monkeypatch, fake_trt):
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [V100])
    monkeypatch.setattr(fake_trt, "__version__", "10.8.0")
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work)
    one_line_error(code, err, "TensorRT 10.8.0", "cannot build for Tesla V100",
                   'pip install "tensorrt-cu12>=10.0,<10.5"')
    assert fake_trt.calls == [] and built_dirs(work) == []


@pytest.mark.parametrize("args, needles", [
    (["--batch", "8:4:32"], ("MIN <= OPT <= MAX",)),
    (["--batch", "x"], ("--batch takes MIN:OPT:MAX",)),
    (["--batch", "0:1:2"], ("at least 1",)),
    (["--workspace", "0"], ("--workspace must be in",)),
    (["--gpu", "p100"], ("unknown GPU 'p100'", "choose one of: auto, t4, v100")),
    (["-p", "bf16"], ("fp32, fp16 or int8, not bf16",)),
    (["--accuracy-control", "-p", "int8", "--calib", "digits"], ("--accuracy-control applies",)),
    (["--calib", "digits"], ("--calib applies to --precision int8 only",)),
])
def test_bad_tensorrt_flags_are_usage_errors(capsys, work, bare_machine, args, needles):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, *args)
    one_line_error(code, err, *needles)
    assert code == 2 and built_dirs(work) == []


def test_tensorrt_flags_are_refused_for_openvino(capsys, work):
    for args, flag in [(["--gpu", "t4"], "--gpu"), (["--dry-run"], "--dry-run"),
                       (["--batch", "1:8:32"], "--batch"), (["--workspace", "2"], "--workspace"),
                       (["--timing-cache", "x.bin"], "--timing-cache"),
                       (["--onnx-only"], "--onnx-only")]:
        code, out, err = cli(capsys, "build", "-t", "openvino", work, *args)
        one_line_error(code, err, f"{flag} applies to --target tensorrt only")
        assert code == 2


# -- the build, with a fake tensorrt (call wiring only) -------------------------------------------

class _Enum:
    def __init__(self, **values):
        self.__dict__.update(values)


def _fake_tensorrt() -> types.ModuleType:
    """A stand-in for the ``tensorrt`` module that records the calls the build makes. It
    checks call *wiring* (flags, profile shapes, workspace, timing cache, files); it is not
    TensorRT and says nothing about whether TensorRT accepts the graph."""
    import importlib.machinery

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec() callers
    trt.__version__ = "10.4.0"
    trt.calls = calls = []
    trt.NetworkDefinitionCreationFlag = _Enum(STRONGLY_TYPED=5)
    trt.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = _Enum(INPUT="INPUT", OUTPUT="OUTPUT")

    class ILogger:
        Severity = _Enum(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor("images", (-1, 3, 32, 32))

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            calls.append(("OnnxParser", type(network).__name__))
            logger.log(ILogger.Severity.WARNING, "fake: INT64 weights cast down")

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            import onnx

            onnx.checker.check_model(path)  # a real ONNX file was written there
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            self.cache = Cache(bytes(data))
            return self.cache

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"FAKE-ENGINE"

    class Context:
        """Runs a made-up network on the fake device memory of :class:`FakeCuda`: logits[b, k]
        = mean(x[b]) * (k + 1), masks[b, l, n] = x[b, 0, l, n] > 0."""

        def __init__(self, engine):
            self.engine, self.addresses, self.batch = engine, {}, None

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            lo, _, hi = engine_profile
            if not lo[0] <= shape[0] <= hi[0]:
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name):
            return (self.batch, *self.engine._row(name)[3][1:])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            mem = FakeCuda.current
            if mem.capturing is not None:
                if trt.data_dependent:  # what TensorRT does for DDS engines under capture
                    mem.capturing.append("invalidated")
                    return False
                mem.capturing.append(self._run)
                return True
            self._run()
            return True

        def _run(self):
            mem = FakeCuda.current
            b = self.batch
            x = mem.view(self.addresses["images"], np.float32, (b, 3, 32, 32))
            logits = mem.view(self.addresses["logits"], np.float32, (b, 5))
            masks = mem.view(self.addresses["masks"], np.bool_, (b, 2, 16))
            logits[:] = x.mean(axis=(1, 2, 3))[:, None] * np.arange(1, 6, dtype=np.float32)
            masks[:] = x[:, 0, :2, :16] > 0

    engine_profile = [(1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32)]

    class Engine:
        num_io_tensors = 3
        _io = [("images", "INPUT", "DataType.FLOAT", (-1, 3, 32, 32)),
               ("logits", "OUTPUT", "DataType.FLOAT", (-1, 5)),
               ("masks", "OUTPUT", "DataType.BOOL", (-1, 2, 16))]

        def create_execution_context(self):
            return Context(self)

        def get_tensor_profile_shape(self, name, index):
            return engine_profile

        def get_tensor_name(self, i):
            return self._io[i][0]

        def _row(self, name):
            return next(r for r in self._io if r[0] == name)

        def get_tensor_mode(self, name):
            return self._row(name)[1]

        def get_tensor_dtype(self, name):
            return self._row(name)[2]

        def get_tensor_shape(self, name):
            return self._row(name)[3]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine", bytes(data)))
            return Engine()

    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, Parser, Runtime
    trt.nptype = lambda dtype: {"DataType.FLOAT": np.float32, "DataType.BOOL": np.bool_}[dtype]
    trt.data_dependent = False
    return trt


class FakeCuda:
    """Stands in for :class:`dyt_edge.runtimes.cuda_driver.Cuda`: "device" memory is numpy
    arrays keyed by fake addresses, streams run synchronously, a capture records the enqueues
    and a launch replays them. Checks the runtime's buffer and call wiring, not CUDA."""

    current: "FakeCuda" = None

    def __init__(self, index=0):
        FakeCuda.current = self
        self.memory, self.pinned, self.next = {}, {}, 4096
        self.capturing, self.log = None, []

    def _new(self, nbytes, table):
        ptr, self.next = self.next, self.next + int(nbytes) + 4096
        table[ptr] = np.zeros(max(int(nbytes), 1), np.uint8)
        return ptr

    def view(self, ptr, dtype, shape):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.memory[ptr][:n].view(dtype).reshape(shape)

    def make_current(self):
        pass

    def alloc(self, nbytes):
        return self._new(nbytes, self.memory)

    def free(self, ptr):
        del self.memory[ptr]

    def host_alloc(self, nbytes):
        ptr = self._new(nbytes, self.pinned)
        return ptr, self.pinned[ptr]

    def host_free(self, ptr):
        del self.pinned[ptr]

    def h2d(self, dst, src, nbytes, stream):
        self.log.append(("h2d", nbytes))
        self.memory[dst][:nbytes] = self.pinned[src][:nbytes]

    def d2h(self, dst, src, nbytes, stream):
        self.log.append(("d2h", nbytes))
        self.pinned[dst][:nbytes] = self.memory[src][:nbytes]

    def stream(self):
        return _FakeStream()

    def sync(self, stream):
        self.log.append(("sync",))

    def destroy_stream(self, stream):
        self.log.append(("destroy_stream",))

    def event(self):
        return object()

    def record(self, event, stream):
        pass

    def elapsed_ms(self, start, end):
        return 0.25

    def destroy_event(self, event):
        pass

    def begin_capture(self, stream):
        self.capturing = []

    def end_capture(self, stream):
        graph, self.capturing = self.capturing, None
        if "invalidated" in graph:
            from dyt_edge.runtimes.cuda_driver import CudaError

            raise CudaError("cuStreamEndCapture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED")
        return graph

    def instantiate(self, graph):
        return list(graph)

    def launch(self, graph_exec, stream):
        self.log.append(("launch",))
        for step in graph_exec:
            step()

    def destroy_graph(self, graph=None, graph_exec=None):
        self.log.append(("destroy_graph",))

    def close(self):
        self.log.append(("close",))


class _FakeStream:
    def __int__(self):
        return 77


@pytest.fixture
def fake_trt(monkeypatch):
    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(gpus, "_distributions", lambda: [])  # only the fake, no pip metadata
    return trt


def test_build_wiring_with_a_fake_tensorrt(capsys, work, monkeypatch, fake_trt, tmp_path):
    """Checks that the build calls the TensorRT API with the right flags and writes the right
    files: a fake ``tensorrt`` module records the calls. This verifies call wiring, not
    TensorRT (which cannot run here)."""
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    cache = tmp_path / "caches" / "t4.cache"
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--batch", "2:8:16",
                         "--workspace", "2", "--timing-cache", cache)
    assert code == 0, err
    built = work / "tensorrt-t4-fp32"
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
    assert (built / "model.onnx").read_bytes() == (work / "model.onnx").read_bytes()
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
    assert meta["source_model"]["sha256"] == load_artifact(work).manifest["files"]["onnx"][
        "sha256"]
    assert meta["dispatch"]["mode"] == "pack" and meta["precision"] == "fp32"
    assert [t["name"] for t in meta["io"]] == ["images", "logits", "masks"]
    assert any("TensorRT logged 1 warning" in n for n in b["notes"])
    text = " ".join(out.split())
    assert "built" in text and "Tesla T4" in text and "next: dyt-edge validate" in text
    # a second build starts from the saved timing cache
    fake_trt.calls.clear()
    code, out, err = cli(capsys, "build", "-t", "tensorrt", work, "--timing-cache", cache)
    assert code == 0, err
    assert ("create_timing_cache", b"+timed") in fake_trt.calls
    assert cache.read_bytes() == b"+timed+timed"
    # the kept ONNX runs on ONNX Runtime (the CPU check of what TensorRT parsed)
    from dyt_edge.runtimes import open_runtime

    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with open_runtime("onnxruntime", built) as rt, open_runtime("onnxruntime", work) as ref:
        np.testing.assert_array_equal(rt.run(x).logits, ref.run(x).logits)


def test_fp16_and_int8_graphs_are_converted_kept_and_checked(work, monkeypatch, fake_trt,
                                                             tmp_path):
    """The fp16 / int8 builds hand TensorRT the converted graph (wiring checked with the fake
    tensorrt) and keep it; the graph itself is real and runs on ONNX Runtime."""
    import onnx

    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    fp16 = build_artifact(work, "tensorrt", precision="fp16")
    assert fp16.path == work / "tensorrt-t4-fp16"
    parsed = Path(next(c for c in fake_trt.calls if c[0] == "parse_from_file")[1])
    assert parsed.name == "model.onnx"
    g = onnx.load(str(fp16.path / "model.onnx"))
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in g.graph.initializer) > 0
    b = fp16.build
    assert b["graph"]["conversion"].startswith("FP16:") and b["graph"]["precision_problems"] == []
    assert b["check"]["top1_agreement_pct"] >= 90 and b["check"]["data"] == "16 generated images"
    assert fp16.manifest["tensorrt"]["precision"] == "fp16"
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_runtime("onnxruntime", fp16.path) as rt:
        assert rt.precision == "fp16" and rt.run(x).logits.shape == (4, 5)

    npz = write_npz(tmp_path / "calib.npz", 24)
    int8 = build_artifact(work, "tensorrt", precision="int8", calib=str(npz), calib_size=24)
    q = onnx.load(str(int8.path / "model.onnx"))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for t in q.graph.initializer:  # symmetric: every int8 zero point is 0
        if t.name.endswith("zero_point"):
            assert not onnx.numpy_helper.to_array(t).any()
    assert int8.build["calibration"]["images"] == 24 and int8.build["check"]["data"] == \
        "24 calibration images"
    with open_runtime("onnxruntime", int8.path) as rt:
        assert rt.precision == "int8" and rt.run(x).masks.shape == (4, len(NAMES), 16)


# -- the runtime ----------------------------------------------------------------------------------

def test_runtime_refuses_an_engine_from_another_gpu_or_tensorrt(work, monkeypatch, fake_trt):
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import RuntimeSetupError, open_runtime
    from dyt_edge.runtimes import cuda_driver

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    built = build_artifact(work, "tensorrt").path
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [A10])
    with pytest.raises(RuntimeSetupError) as info:
        open_runtime("tensorrt", built)
    msg = str(info.value)
    assert "built for Tesla T4 (compute capability 7.5), this GPU is NVIDIA A10G (8.6)" in msg
    assert f"dyt-edge build --target tensorrt {work.resolve()} --gpu auto" in msg
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    monkeypatch.setattr(fake_trt, "__version__", "10.5.0")
    with pytest.raises(RuntimeSetupError, match="built with TensorRT 10.4.0, this is TensorRT "
                                                "10.5.0"):
        open_runtime("tensorrt", built)
    monkeypatch.setattr(fake_trt, "__version__", "10.4.0")
    with pytest.raises(RuntimeSetupError, match="is a fp32 engine; a TensorRT engine runs at "
                                                "the precision it was built for"):
        open_runtime("tensorrt", built, _options(precision="fp16"))
    # a matching record goes on to CUDA: without a driver, one clear error
    monkeypatch.setattr(cuda_driver.Cuda, "__init__", _no_driver)
    with pytest.raises(RuntimeSetupError, match="the NVIDIA driver cannot be loaded"):
        open_runtime("tensorrt", built)
    # a corrupted engine is refused before CUDA
    (built / "model.engine").write_bytes(b"XXXX-ENGINE")
    with pytest.raises(RuntimeSetupError, match="does not match its record"):
        open_runtime("tensorrt", built)


def _expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = x.mean(axis=(1, 2, 3))[:, None] * np.arange(1, 6, dtype=np.float32)
    return logits.astype(np.float32), x[:, 0, :2, :16] > 0


def test_runtime_wiring_with_a_fake_tensorrt_and_cuda(work, monkeypatch, fake_trt):
    """The runtime's buffers, shapes, copies, chunking, timing hooks and CUDA-graph fallback,
    run against a fake ``tensorrt`` (a made-up network) and a fake CUDA driver. This checks the
    runtime's wiring, not TensorRT or CUDA."""
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import cuda_driver, open_runtime

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    built = build_artifact(work, "tensorrt", precision="fp32").path
    monkeypatch.setattr(cuda_driver, "Cuda", FakeCuda)
    fake_trt.calls.clear()
    x = np.random.default_rng(5).standard_normal((40, 3, 32, 32)).astype(np.float32)
    with open_runtime("tensorrt", built) as rt:
        cuda = FakeCuda.current
        assert rt.batch_range == (1, 32)
        assert len(cuda.memory) == 3 and len(cuda.pinned) == 3  # allocated once, for batch 32
        out = rt.run(x[:3])
        logits, masks = _expected(x[:3])
        np.testing.assert_allclose(out.logits, logits, rtol=1e-6)
        assert out.masks.dtype == np.bool_ and np.array_equal(out.masks, masks)
        assert ("execute_async_v3", 77) in fake_trt.calls  # on the runtime's stream
        assert cuda.log[-4:] == [("h2d", 3 * 3 * 32 * 32 * 4), ("d2h", 3 * 5 * 4),
                                 ("d2h", 3 * 2 * 16), ("sync",)]
        big = rt.run(x)  # 40 > the profile's 32: two chunks
        logits, masks = _expected(x)
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
    with open_runtime("tensorrt", built, _options(extra={"cuda_graph": True})) as rt:
        cuda = FakeCuda.current
        first = rt.run(x[:2])
        second = rt.run(x[:2])
        np.testing.assert_array_equal(first.logits, second.logits)
        np.testing.assert_allclose(first.logits, _expected(x[:2])[0], rtol=1e-6)
        assert cuda.log.count(("launch",)) == 2 and rt.describe()["cuda_graph"].startswith("on")
    # an engine with data-dependent shapes cannot be captured: said, and run without graphs
    fake_trt.data_dependent = True
    with open_runtime("tensorrt", built, _options(extra={"cuda_graph": True})) as rt:
        cuda = FakeCuda.current
        out = rt.run(x[:2])
        np.testing.assert_allclose(out.logits, _expected(x[:2])[0], rtol=1e-6)
        note = rt.describe()["cuda_graph"]
        assert note.startswith("requested, not capturable") and "pack engine" in note
        assert ("launch",) not in cuda.log


def test_bench_baseline_engine_uses_the_same_gpu_profile_and_workspace(monkeypatch, tmp_path):
    """bench's complete-model baseline of a TensorRT build is built with the DyT engine's GPU,
    batch profile and workspace (the build itself is replaced: this checks the arguments)."""
    from dyt_edge import baseline, build
    from dyt_edge.artifacts import Artifact

    seen = {}

    def fake_build(exported, target, **kwargs):
        seen.update(kwargs, target=target)
        out = kwargs["output"]
        out.mkdir(parents=True)
        m = {"schema": 1, "files": {}, "build": {"target": target}}
        (out / MANIFEST_NAME).write_text(json.dumps(m))
        return types.SimpleNamespace(artifact=Artifact(out, m), manifest=m, path=out)

    monkeypatch.setattr(build, "build_artifact", fake_build)
    dyt = Artifact(tmp_path / "dyt", {"build": {
        "target": "tensorrt", "precision": "fp16", "gpu": {"profile": "t4"},
        "batch": {"min": 1, "opt": 4, "max": 16, "static": False}, "workspace_gib": 2.0,
        "tensorrt": {"version": "10.4.0"}}})
    exported = Artifact(tmp_path / "baseline", {"files": {"onnx": {"sha256": "ab"}}})
    exported.path.mkdir()
    got = baseline._baseline_build(dyt, exported, dyt.manifest["build"], None, None, None, None,
                                   lambda m: None, None)
    assert seen == {"target": "tensorrt", "precision": "fp16", "gpu": "t4", "batch": "1:4:16",
                    "workspace": 2.0, "output": exported.path / "tensorrt-fp16",
                    "progress": None}
    assert got.manifest["baseline"]["tensorrt"]["version"] == "10.4.0"


def _options(**kw):
    from dyt_edge.runtimes import RuntimeOptions

    return RuntimeOptions(**kw)


def _no_driver(self, index=0):
    from dyt_edge.runtimes.cuda_driver import CudaError

    raise CudaError("the NVIDIA driver cannot be loaded (libcuda.so.1 not found)",
                    "run on a machine with an NVIDIA GPU and its driver")


def test_runtime_without_tensorrt_names_the_install_command(monkeypatch, work):
    from dyt_edge.runtimes import RuntimeUnavailable, open_runtime

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeUnavailable, match=r'TensorRT is not installed \(pip install '
                                                 r'"dyt-edge\[tensorrt\]"'):
        open_runtime("tensorrt", work)


def test_the_package_and_cli_help_import_no_tensorrt_or_cuda():
    import subprocess

    code = ("import sys; from dyt_edge.cli import main; rc = main(['build', '--help']); "
            "import dyt_edge.tensorrt_build, dyt_edge.runtimes.tensorrt_runtime; "
            "bad = [m for m in ('tensorrt', 'cuda', 'torch') if m in sys.modules]; "
            "assert not bad, bad; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--dry-run" in proc.stdout and "--timing-cache" in proc.stdout


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
def test_real_engine_matches_onnx_runtime(work, precision):
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime

    result = build_artifact(work, "tensorrt", precision=precision, batch="1:4:8")
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
def test_real_engine_cuda_graphs(work):
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime

    result = build_artifact(work, "tensorrt", batch="2:2:2")
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with open_runtime("tensorrt", result.path, _options(extra={"cuda_graph": True})) as rt:
        a = rt.run(x)
        b = rt.run(x)
        np.testing.assert_array_equal(a.logits, b.logits)
        note = rt.describe()["cuda_graph"]
        assert note.startswith(("on", "requested, not capturable")), note
