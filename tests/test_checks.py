"""`dyt-edge checks` (:mod:`dyt_edge.checks`): versions, CPU features, OpenVINO devices, GPUs
and TensorRT, the serve extra; each probe reported on its own, a failing one as its row's
error."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from dyt_edge import checks
from dyt_edge.checks import Library, library_info, parse_cpuinfo, run_checks

from .fakes.gpus import T4, V100
from .helpers import assert_one_line_error, cli

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8
bogomips\t: 4000.00

processor\t: 1
model name\t: Something else
flags\t\t: fpu
"""

SERVE = "dyt_edge.serving.tritonserver.availability"


@pytest.fixture
def no_serve(monkeypatch):
    """A serve extra that says why it cannot run."""
    monkeypatch.setattr(SERVE, lambda: (False, "nvidia-pytriton is not installed (pip ...)"))


@pytest.fixture
def no_gpu_no_serve(no_serve, bare_machine):
    """No GPU, no TensorRT (whatever this machine has), and no serve extra."""


def test_cpuinfo_parser_reads_the_first_processor():
    parsed = parse_cpuinfo(CPUINFO)
    assert parsed["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert "avx512_vnni" in parsed["flags"] and "fpu" in parsed["flags"]
    features = checks.cpu_features(parsed["flags"])
    assert list(features) == list(checks.CPU_FEATURES)
    assert features["avx512_vnni"] and features["amx_int8"] and features["avx2"]
    assert not features["avx_vnni"] and not features["amx_bf16"]
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0c\n")
    assert arm == {"model": None, "flags": ["asimd", "asimddp", "fp"]}
    assert parse_cpuinfo("") == {"model": None, "flags": []}


def test_cpu_info_counts_cores_and_reads_the_given_text():
    info = checks.cpu_info(CPUINFO)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["flags_read"]
    assert info["features"]["avx512f"] is True
    assert 1 <= info["usable_cores"] <= info["cores"]


def test_versions_come_from_the_package_metadata():
    torch_row = library_info(next(lib for lib in checks.LIBRARIES if lib.name == "torch"))
    assert torch_row["installed"] and torch_row["version"] == metadata.version("torch")
    assert torch_row["distribution"] == "torch"
    missing = library_info(Library("nothing", "dyt_edge_no_such_module",
                                   ("dyt-edge-no-such-distribution",), "tests"))
    assert missing["installed"] is False and missing["version"] is None
    names = [row["name"] for row in checks.libraries()]
    for name in ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxsim", "onnxslim",
                 "openvino", "nncf", "tensorrt", "cuda-bindings", "tritonclient",
                 "nvidia-pytriton"):
        assert name in names, name


def test_openvino_lists_this_cpu_and_its_precisions():
    ov = checks.openvino_devices()
    assert ov["installed"] and ov["version"]
    cpu = next(d for d in ov["devices"] if d["name"] == "CPU")
    assert cpu["error"] is None and cpu["full_name"]
    assert "FP32" in cpu["capabilities"] and "fp32" in cpu["precisions"]
    assert set(cpu["precisions"]) <= {"fp32", "bf16", "fp16", "int8"}


def test_a_failing_probe_is_its_rows_error_not_a_crash(monkeypatch, capsys, no_gpu_no_serve):
    import openvino

    def broken_core(*_a, **_k):
        raise RuntimeError("plugin registry is corrupt\nsecond line")

    monkeypatch.setattr(openvino, "Core", broken_core)
    monkeypatch.setattr(checks, "cpu_info", lambda text=None: 1 / 0)
    report = run_checks()
    assert report["openvino"]["error"] == "RuntimeError: plugin registry is corrupt"
    assert report["openvino"]["devices"] == []
    assert report["cpu"]["error"].startswith("ZeroDivisionError")
    assert report["libraries"] and report["serve"]["error"] is None  # the others still ran
    code, out, err = cli(capsys, "checks")
    assert code == 0, err
    text = " ".join(out.split())
    assert "plugin registry is corrupt" in text and "ZeroDivisionError" in text
    assert "Traceback" not in out + err


def test_no_gpu_no_tensorrt_and_serve_unavailable(no_gpu_no_serve):
    report = run_checks()
    assert report["gpus"] == {"devices": [], "error": None}
    trt = report["tensorrt"]
    assert trt["installed"] is False and trt["usable"] is False
    assert trt["problems"][0]["message"] == "no NVIDIA GPU found"
    assert 'dyt-edge[tensorrt]' in trt["problems"][0]["fix"]
    assert report["serve"] == {"ok": False, "error": None,
                               "detail": "nvidia-pytriton is not installed (pip ...)"}


def test_serve_that_cannot_import_or_raises_is_reported(monkeypatch, bare_machine):
    import sys

    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "dyt_edge.serving.tritonserver", None)
        serve = checks.serve_status()
    assert serve["ok"] is False and "serving package cannot be imported" in serve["detail"]

    def broken():
        raise OSError("ldd is missing")

    monkeypatch.setattr(SERVE, broken)
    serve = run_checks()["serve"]
    assert serve["ok"] is False and serve["error"] == "OSError: ldd is missing"


def test_a_t4_without_tensorrt_gets_the_install_command(monkeypatch, no_gpu_no_serve):
    from dyt_edge.runtimes.tensorrt import gpus

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    report = run_checks()
    (row,) = report["gpus"]["devices"]
    assert row["name"] == "Tesla T4" and row["profile"] == "t4"
    assert row["architecture"] == "Turing" and row["int8_tensor_cores"] is True
    trt = report["tensorrt"]
    assert trt["usable"] is False and trt["gpu"] == "t4"
    (problem,) = trt["problems"]
    assert problem["message"] == "TensorRT is not installed"
    assert 'pip install "tensorrt-cu12>=10.0"' in problem["fix"]


def test_a_v100_with_a_tensorrt_too_new_is_not_usable(monkeypatch, no_serve, fake_trt):
    from dyt_edge.runtimes.tensorrt import gpus

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [V100])
    monkeypatch.setattr(fake_trt, "__version__", "10.8.0")
    trt = run_checks()["tensorrt"]
    assert trt["installed"] and trt["version"] == "10.8.0" and trt["usable"] is False
    assert "removed in TensorRT 10.5" in trt["problems"][0]["message"]
    monkeypatch.setattr(fake_trt, "__version__", "10.4.0")
    trt = run_checks()["tensorrt"]
    assert trt["usable"] is True and trt["problems"] == [] and trt["gpu"] == "v100"


def test_cli_table_shows_every_section(monkeypatch, capsys, no_gpu_no_serve):
    from dyt_edge.runtimes.tensorrt import gpus

    monkeypatch.setattr(gpus, "detect_gpus", lambda: [T4])
    code, out, err = cli(capsys, "checks")
    assert code == 0, err
    text = " ".join(out.split())
    for needle in ("dyt-edge", "libraries", "torch", "nvidia-pytriton", "CPU", "avx2",
                   "OpenVINO", "CPU", "Tesla T4", "TensorRT not installed",
                   "nvidia-pytriton is not installed"):
        assert needle in text, needle


def test_cli_json_on_stdout_alone_and_to_a_file(capsys, tmp_path, no_gpu_no_serve):
    code, out, err = cli(capsys, "checks", "--json", "-")
    assert code == 0, err
    report = json.loads(out)  # stdout holds the JSON and nothing else
    assert report["schema"] == "dyt-edge.checks" and report["schema_version"] == 1
    assert list(report)[:4] == ["schema", "schema_version", "dyt_edge_version", "created"]
    assert report["serve"]["ok"] is False
    assert "libraries" in err  # the table went to stderr
    path = tmp_path / "sub" / "checks.json"
    code, out, err = cli(capsys, "checks", "--json", path)
    assert code == 0, err
    saved = json.loads(path.read_text())
    assert saved["schema"] == "dyt-edge.checks" and saved["libraries"] == report["libraries"]
    assert "libraries" in out
    code, _, err = cli(capsys, "checks", "--json", tmp_path)
    assert_one_line_error(code, err, "is a directory")


def test_help_says_what_it_checks(capsys):
    code, out, _ = cli(capsys, "checks", "--help")
    assert code == 0
    text = " ".join(out.split())
    for needle in ("versions", "AVX", "OpenVINO", "TensorRT", "serve", "exit code is 0"):
        assert needle in text, needle
