"""``dyt-edge build --target tensorrt`` up to the TensorRT calls (exporters/tensorrt/builder.py):
the dry-run report, clean failures naming what is missing, --onnx-only, flag checks, the guards
that refuse a build before anything runs, and the converted fp16 / int8 graphs it hands
TensorRT (a fake ``tensorrt``, see ``fakes/``).

No GPU and no TensorRT exist on the development machines or in CI (the TensorRT wheels on PyPI
fetch NVIDIA's libraries at install time, which these machines cannot reach): everything that
needs neither is tested with the real logic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dyt_edge.artifacts import MANIFEST_NAME
from dyt_edge.runtimes.tensorrt import gpus

from .fakes.gpus import T4, V100
from .helpers import TINY_NAMES as NAMES
from .helpers import assert_one_line_error as one_line_error
from .helpers import cli, write_npz


def built_dirs(export: Path) -> list[str]:
    return sorted(p.name for p in export.iterdir() if p.name.startswith((".", "tensorrt-")))


def test_dry_run_for_t4_prints_report_plan_and_trtexec_per_major(capsys, tiny_ov_work,
                                                                  bare_machine):
    code, out, err = cli(capsys, "build", "--target", "tensorrt", tiny_ov_work, "--gpu", "t4",
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
    assert lines[0] == (f"trtexec --onnx={tiny_ov_work}/model.onnx "
                        f"--saveEngine={tiny_ov_work}/tensorrt-t4-fp32/model.engine "
                        "--minShapes=images:1x3x32x32 --optShapes=images:8x3x32x32 "
                        "--maxShapes=images:32x3x32x32 --stronglyTyped "
                        "--memPoolSize=workspace:4096")
    assert lines[1] == lines[0].replace(" --stronglyTyped", "")
    assert built_dirs(tiny_ov_work) == []  # nothing written


def test_dry_run_for_v100_int8_only_tensorrt_10_and_a_warning(capsys, tiny_ov_work,
                                                             bare_machine, tmp_path):
    npz = write_npz(tmp_path / "calib.npz", 24)
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--gpu", "v100",
                         "-p", "int8", "--calib", npz, "--batch", "2:4:8", "--workspace", "1.5",
                         "--timing-cache", tmp_path / "tc.bin", "--dry-run")
    assert code == 0, err
    text = " ".join(out.split())
    assert "TensorRT 10.x:" in text and "TensorRT 11.x:" not in text
    assert "no INT8 tensor cores" in text and "explicit int8 QuantizeLinear" in text
    assert f"--onnx={tiny_ov_work}/tensorrt-v100-int8/model.onnx" in text
    assert f"--timingCacheFile={tmp_path / 'tc.bin'}" in text
    assert "--minShapes=images:2x3x32x32" in text and "--memPoolSize=workspace:1536" in text
    assert 'pip install "tensorrt-cu12>=10.0,<10.5"' in text
    assert not (tmp_path / "tc.bin").exists() and built_dirs(tiny_ov_work) == []


def test_dry_run_json_and_auto_without_gpu(capsys, tiny_ov_work, bare_machine):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--dry-run", "--json",
                         "-")
    assert code == 0, err
    plan = json.loads(out)  # stdout holds the JSON alone; the plan's tables went to stderr
    assert "Equivalent trtexec command" in err
    assert plan["dry_run"] is True and plan["gpu"] is None and plan["ok"] is False
    assert {p["kind"] for p in plan["problems"]} == {"gpu", "tensorrt"}
    assert set(plan["trtexec"]) == {"10", "11"}
    assert plan["tensorrt_compatibility"][0]["ok"] is True
    assert plan["batch"] == {"min": 1, "opt": 8, "max": 32, "static": False}
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--dry-run")
    assert code == 0 and "no GPU detected; pass --gpu NAME" in " ".join(out.split())


def test_without_dry_run_it_fails_cleanly_naming_what_is_missing(capsys, tiny_ov_work,
                                                                  bare_machine):
    code, out, err = cli(capsys, "build", "--target", "tensorrt", tiny_ov_work, "--gpu", "t4")
    line = one_line_error(code, err, "cannot build a TensorRT engine here",
                          "no NVIDIA GPU found", "TensorRT is not installed",
                          'pip install "tensorrt-cu12>=10.0"', "nothing was written")
    assert code == 1 and "Traceback" not in out
    assert "Equivalent trtexec command" in out  # the plan came first, on stdout
    assert built_dirs(tiny_ov_work) == []
    code, out, err = cli(capsys, "build", "--target", "tensorrt", tiny_ov_work)  # --gpu auto
    one_line_error(code, err, "no NVIDIA GPU found (--gpu auto)")
    assert built_dirs(tiny_ov_work) == [] and line


def test_the_failure_hint_points_at_onnx_only(capsys, tiny_ov_work, bare_machine):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--gpu", "t4", "-p",
                         "fp16")
    one_line_error(code, err, "cannot build a TensorRT engine here", "nothing was written",
                   "--onnx-only writes the converted ONNX for checking on ONNX Runtime")
    assert built_dirs(tiny_ov_work) == []


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_onnx_only_writes_the_converted_graph_that_validates_on_onnxruntime(
        capsys, tiny_ov_work, bare_machine, tmp_path, precision):
    """No GPU, no TensorRT: --onnx-only writes model.onnx and the manifest (no engine); ONNX
    Runtime opens it at its precision and `validate --target onnxruntime` passes."""
    import onnx

    from dyt_edge.runtimes import open_runtime

    npz = write_npz(tmp_path / "data.npz", 64)
    calib = ["--calib", npz, "--calib-size", "64"] if precision == "int8" else []
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--gpu", "t4", "-p",
                         precision, "--onnx-only", *calib)
    assert code == 0, err
    art = tiny_ov_work / f"tensorrt-t4-{precision}"
    assert built_dirs(tiny_ov_work) == [art.name]  # nothing else (no staging) left behind
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


def test_onnx_only_needs_a_named_gpu_without_one_and_only_for_tensorrt(capsys, tiny_ov_work,
                                                                       bare_machine):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "-p", "fp16",
                         "--onnx-only")
    one_line_error(code, err, "no NVIDIA GPU found (--gpu auto)", "name it with --gpu")
    code, out, err = cli(capsys, "build", "-t", "openvino", tiny_ov_work, "--onnx-only")
    one_line_error(code, err, "--onnx-only applies to --target tensorrt only")
    assert code == 2
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--gpu", "t4",
                         "--onnx-only", "--dry-run")
    one_line_error(code, err, "--onnx-only and --dry-run")
    assert built_dirs(tiny_ov_work) == []


def test_a_named_gpu_that_is_not_the_one_present_is_refused(capsys, tiny_ov_work,
                                                           monkeypatch, fake_trt):
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--gpu", "v100")
    one_line_error(code, err, "--gpu v100 (Tesla V100, sm_70) but this machine has Tesla T4",
                   "engines only run on the GPU they were built on")
    assert fake_trt.calls == [] and built_dirs(tiny_ov_work) == []
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "--gpu", "v100",
                         "--dry-run")
    assert code == 0 and "planning for Tesla V100" in " ".join(out.split())


def test_v100_with_a_too_new_tensorrt_is_refused_before_anything_runs(capsys, tiny_ov_work,
                                                                     monkeypatch, fake_trt):
    monkeypatch.setattr(gpus, "detect_gpus", lambda: [V100])
    monkeypatch.setattr(fake_trt, "__version__", "10.8.0")
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work)
    one_line_error(code, err, "TensorRT 10.8.0", "cannot build for Tesla V100",
                   'pip install "tensorrt-cu12>=10.0,<10.5"')
    assert fake_trt.calls == [] and built_dirs(tiny_ov_work) == []


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
def test_bad_tensorrt_flags_are_usage_errors(capsys, tiny_ov_work, bare_machine, args, needles):
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, *args)
    one_line_error(code, err, *needles)
    assert code == 2 and built_dirs(tiny_ov_work) == []


def test_tensorrt_flags_are_refused_for_openvino(capsys, tiny_ov_work):
    for args, flag in [(["--gpu", "t4"], "--gpu"), (["--dry-run"], "--dry-run"),
                       (["--batch", "1:8:32"], "--batch"), (["--workspace", "2"], "--workspace"),
                       (["--timing-cache", "x.bin"], "--timing-cache"),
                       (["--onnx-only"], "--onnx-only")]:
        code, out, err = cli(capsys, "build", "-t", "openvino", tiny_ov_work, *args)
        one_line_error(code, err, f"{flag} applies to --target tensorrt only")
        assert code == 2


def test_fp16_and_int8_graphs_are_converted_kept_and_checked(tiny_ov_work, monkeypatch,
                                                             fake_trt, tmp_path):
    """The fp16 / int8 builds hand TensorRT the converted graph (wiring checked with the fake
    tensorrt) and keep it; the graph itself is real and runs on ONNX Runtime."""
    import onnx

    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import open_runtime

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    fp16 = build_artifact(tiny_ov_work, "tensorrt", precision="fp16")
    assert fp16.path == tiny_ov_work / "tensorrt-t4-fp16"
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
    int8 = build_artifact(tiny_ov_work, "tensorrt", precision="int8", calib=str(npz),
                          calib_size=24)
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


def test_the_package_and_cli_help_import_no_tensorrt_or_cuda():
    import subprocess

    code = ("import sys; from dyt_edge.cli import main; rc = main(['build', '--help']); "
            "import dyt_edge.exporters.tensorrt.builder, dyt_edge.runtimes.tensorrt.runtime; "
            "bad = [m for m in ('tensorrt', 'cuda', 'torch') if m in sys.modules]; "
            "assert not bad, bad; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--dry-run" in proc.stdout and "--timing-cache" in proc.stdout
