"""`dyt-edge build --target openvino`: float and INT8 artifacts, and bad input as one line."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dyt_edge.artifacts import MANIFEST_NAME, load_artifact

from .helpers import TINY_NAMES as NAMES
from .helpers import assert_one_line_error, cli, write_folder, write_npz


def leftovers(directory: Path) -> list[str]:
    """Build outputs and staging files a failed build must not leave."""
    return sorted(p.name for p in directory.iterdir()
                  if p.name.startswith((".", "openvino-", "tensorrt-")))


def ov():
    from dyt_edge.runtimes.backends import import_openvino

    return import_openvino()


def run_f32(xml: Path, x: np.ndarray):
    from dyt_edge.runtimes.openvino_runtime import OpenVinoModel

    out = OpenVinoModel(xml, hint="f32").outputs(x)
    return out["logits"], out["masks"].astype(bool)


def images(n: int = 6, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def export(tiny_ov_export) -> Path:
    return tiny_ov_export


@pytest.fixture
def work(tiny_ov_work) -> Path:
    return tiny_ov_work


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data") / "calib.npz", 24)


# -- float builds ---------------------------------------------------------------------------------

def test_fp32_build_writes_a_loadable_artifact(capsys, work):
    code, out, err = cli(capsys, "build", "--target", "openvino", work)
    assert code == 0, err
    built = work / "openvino-fp32"
    assert sorted(p.name for p in built.iterdir()) == [MANIFEST_NAME, "model.bin", "model.xml"]
    assert "next: dyt-edge validate" in out and "dyt-edge bench" in out
    art = load_artifact(built)
    m, src = art.manifest, load_artifact(work).manifest
    b = m["build"]
    assert m["format"] == "openvino" and set(m["files"]) == {"openvino", "openvino_weights"}
    assert b["target"] == "openvino" and b["precision"] == "fp32"
    assert b["weights"] == "f32" and b["inference_precision"] == "f32"
    assert (built / b["parent"]).resolve() == work.resolve()
    assert b["source_model"]["sha256"] == src["files"]["onnx"]["sha256"]
    assert b["source_ir"] == "export model.xml" and "calibration" not in b
    assert m["model"] == src["model"] and m["dispatch"] == src["dispatch"]
    assert m["preprocessing"] == src["preprocessing"] and m["source"] == src["source"]
    assert m["openvino"]["compress_to_fp16"] is False
    # exactly the export's IR
    x = images()
    la, ma = run_f32(work / "model.xml", x)
    lb, mb = run_f32(built / "model.xml", x)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ma, mb)
    # the runtime interface opens it
    from dyt_edge.runtimes import open_runtime

    with open_runtime("openvino", built) as rt:
        assert rt.precision == "fp32"
        res = rt.run(x)
    np.testing.assert_allclose(res.logits, la, atol=1e-5)


def test_build_json_on_stdout_alone(capsys, work, tmp_path):
    out_dir = tmp_path / "ov32"
    code, out, err = cli(capsys, "build", "--target", "openvino", work, "-o", out_dir,
                         "--json", "-")
    assert code == 0, err
    d = json.loads(out)  # stdout holds the JSON alone; the summary went to stderr
    assert d["path"] == str(out_dir) and d["source"] == str(work) and d["picked"] is False
    assert d["build"]["target"] == "openvino" and d["build"]["precision"] == "fp32"
    assert "next: dyt-edge validate" in err


def test_bf16_and_fp16_builds_record_their_precision(work):
    from dyt_edge.build import build_artifact
    bf16 = build_artifact(work, "openvino", precision="bf16")
    assert bf16.path == work / "openvino-bf16"
    assert bf16.build["precision"] == "bf16" and bf16.build["inference_precision"] == "bf16"
    assert bf16.build["weights"] == "f32"
    assert load_artifact(bf16.path).manifest["build"]["precision"] == "bf16"

    fp16 = build_artifact(work, "openvino", precision="f16")  # alias
    b = fp16.build
    assert b["precision"] == "fp16" and b["weights"] == "f16" and b["inference_precision"] == "f16"
    assert b["fp16_weights"]["compressed"] > 0 and b["fp16_weights"]["kept_f32"] == len(NAMES)
    assert fp16.manifest["files"]["openvino_weights"]["bytes"] < \
        bf16.manifest["files"]["openvino_weights"]["bytes"] * 0.75
    # below f32 the gates are stored as Multiply + ReduceSum (f32 wherever the IR is compiled),
    # their weights f32
    assert bf16.build["f32_gates"] == NAMES and b["f32_gates"] == NAMES
    model = ov().Core().read_model(str(fp16.path / "model.xml"))
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    source = ov().Core().read_model(str(work / "model.xml"))

    def matmuls(m):
        return sum(op.get_type_name() == "MatMul" for op in m.get_ops())

    assert matmuls(source) - matmuls(model) == len(NAMES)
    for name in NAMES:
        gate = ops[f"{name}/gate/GateMultiply"]
        w = gate.input_value(1).get_node()
        assert w.get_type_name() == "Constant"
        assert w.get_output_element_type(0) == ov().Type.f32
    la, ma = run_f32(work / "model.xml", images())
    lb, _ = run_f32(fp16.path / "model.xml", images())
    assert np.abs(la - lb).max() < 5e-2


def test_an_export_without_ir_is_converted_from_onnx(work):
    from dyt_edge.build import build_artifact

    m = json.loads((work / MANIFEST_NAME).read_text())
    for kind in ("openvino", "openvino_weights"):
        (work / m["files"].pop(kind)["path"]).unlink()
    m["format"] = "onnx"
    m["openvino"] = None
    (work / MANIFEST_NAME).write_text(json.dumps(m))
    result = build_artifact(work, "openvino", output=work / "ir")
    assert result.build["source_ir"] == "converted from model.onnx"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
    x = images(8)
    ref_logits, ref_masks = sess.run(["logits", "masks"], {"images": x})
    logits, masks = run_f32(result.path / "model.xml", x)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
    np.testing.assert_array_equal(masks, ref_masks.astype(bool))
    # the gates' real biases are back (the converter drops `x + 0`; the build reuses the
    # exporter's placeholder trick)
    from dyt_edge.exporters.openvino.ir import gate_adds

    assert set(gate_adds(ov().Core().read_model(str(result.path / "model.xml")), NAMES)) == \
        set(NAMES)


# -- INT8 -----------------------------------------------------------------------------------------

def test_int8_build_from_a_folder_with_corrupt_and_odd_sized_images(capsys, work, tmp_path):
    folder = write_folder(tmp_path / "calib", good=20, corrupt=3,
                          sizes=((20, 20), (48, 40), (32, 32)))
    code, out, err = cli(capsys, "build", "-t", "openvino", work, "-p", "int8", "--calib",
                         folder, "--calib-size", 40)
    assert code == 0, err
    built = work / "openvino-int8"
    b = load_artifact(built).manifest["build"]
    cal = b["calibration"]
    assert b["precision"] == "int8" and b["weights"] == "int8"
    assert cal["data"] == str(folder) and cal["size"] == 40 and cal["images"] == 20
    assert cal["skipped"] == 3 and cal["seed"] == 0 and cal["accuracy_control"] is None
    scope = cal["ignored_scope"]
    assert scope["dispatchers"] == len(NAMES)
    assert {"gate", "dispatch", "index", "layernorm", "gelu"} <= set(scope["by_reason"])
    assert cal["quantization"]["fake_quantize_nodes"] > 0
    assert cal["quantization"]["preset"] == "performance"
    assert {"openvino", "nncf", "dyt_edge"} <= set(b["tools"])
    check = b["check"]
    assert check["images"] == 20 and 0.0 <= check["top1_agreement"] <= 1.0
    assert set(check["mask_agreement"]) == set(NAMES)
    assert "top-1 agreement" in out and "kept float" in out
    # the IR holds FakeQuantize nodes, none on the float scope
    model = ov().Core().read_model(str(built / "model.xml"))
    fqs = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fqs) == cal["quantization"]["fake_quantize_nodes"]
    from dyt_edge.calibration.scope import openvino_float_scope, quantizer_violations

    assert quantizer_violations(model, openvino_float_scope(model, NAMES)) == []
    # the runtime opens it as int8
    from dyt_edge.runtimes import open_runtime

    with open_runtime("openvino", built) as rt:
        assert rt.precision == "int8"
        assert np.isfinite(rt.run(images()).logits).all()


def test_accuracy_control_on_a_labelled_npz(work, npz):
    from dyt_edge.build import build_artifact

    result = build_artifact(work, "openvino", precision="int8", calib=str(npz), calib_size=24,
                            accuracy_control=True, max_drop=5)
    ac = result.build["calibration"]["accuracy_control"]
    assert ac["max_drop"] == 5.0 and ac["images"] == 24 and ac["inference_precision"] == "f32"
    assert 0.0 <= ac["int8"] <= 100.0 and abs(ac["float"] - ac["int8"] - ac["drop"]) < 1e-6
    assert result.build["calibration"]["labels"] is True


def test_demo_model_calibrates_on_digits_by_default(work):
    """For the digits demo model (and only it) --calib defaults to digits' training split."""
    from dyt_edge.build import build_artifact

    m = json.loads((work / MANIFEST_NAME).read_text())
    demo = copy.deepcopy(m)
    demo["source"]["training"] = {"data": "digits"}
    demo["model"]["patch_size"] = 4  # what is_demo_model() looks for; the IR is unchanged
    (work / MANIFEST_NAME).write_text(json.dumps(demo))
    result = build_artifact(work, "openvino", precision="int8", calib_size=24)
    cal = result.build["calibration"]
    assert cal["data"] == "digits" and cal["split"] == "train" and cal["images"] == 24


# -- choosing the export -------------------------------------------------------------------------

def test_the_most_recent_export_is_picked_and_said(capsys, work, tmp_path, monkeypatch):
    root = tmp_path / "proj" / "dyt-edge-out"
    root.mkdir(parents=True)
    shutil.copytree(work, root / "tiny")
    monkeypatch.chdir(tmp_path / "proj")
    code, out, err = cli(capsys, "build", "--target", "openvino")
    assert code == 0, err
    assert "using the most recent export" in err and "tiny" in err
    assert (root / "tiny" / "openvino-fp32" / MANIFEST_NAME).is_file()
    # a build is never taken for "the most recent export"
    code, out, err = cli(capsys, "build", "--target", "openvino", "-p", "bf16")
    assert code == 0, err
    assert (root / "tiny" / "openvino-bf16" / MANIFEST_NAME).is_file()
    assert not (root / "tiny" / "openvino-fp32" / "openvino-bf16").exists()


# -- bad input ------------------------------------------------------------------------------------

def _bad_setup(case: str, work: Path, tmp: Path, npz: Path) -> tuple[list, tuple[str, ...]]:
    """(arguments after `build`, needles of the error line) for each bad-input case."""
    base = ["-t", "openvino", work]
    int8 = base + ["-p", "int8"]
    unlabelled = write_npz(tmp / "u.npz", 20, labels=False)
    if case == "calib_missing":
        return int8 + ["--calib", tmp / "nope"], ("data not found",)
    if case == "calib_empty":
        (tmp / "empty").mkdir()
        return int8 + ["--calib", tmp / "empty"], ("no images",)
    if case == "calib_unreadable":
        (tmp / "bad.npz").write_bytes(b"not a zip")
        return int8 + ["--calib", tmp / "bad.npz"], ("cannot read",)
    if case == "calib_all_corrupt":
        write_folder(tmp / "broken", good=0, corrupt=4)
        return int8 + ["--calib", tmp / "broken"], ("could be read",)
    if case == "calib_too_few":
        write_folder(tmp / "few", good=3, corrupt=4)
        return int8 + ["--calib", tmp / "few"], ("only 3 usable", "4 unreadable")
    if case == "calib_required":
        return int8, ("--calib is required",)
    if case == "calib_without_int8":
        return base + ["--calib", npz], ("--calib applies to --precision int8 only",)
    if case == "artifact_missing":
        return ["-t", "openvino", tmp / "nothing-here"], ("does not exist",)
    if case == "not_an_artifact":
        (tmp / "plain").mkdir()
        return ["-t", "openvino", tmp / "plain"], ("not a dyt-edge artifact",)
    if case == "already_built":
        fake = work / "openvino-fp32x"
        fake.mkdir()
        m = json.loads((work / MANIFEST_NAME).read_text())
        m["build"] = {"target": "openvino", "precision": "fp32", "parent": ".."}
        (fake / MANIFEST_NAME).write_text(json.dumps(m))
        return ["-t", "openvino", fake], ("already a built artifact",)
    if case == "unknown_target":
        return ["-t", "openvno", work], ("unknown target 'openvno'", "did you mean 'openvino'")
    if case == "unknown_precision":
        return base + ["-p", "fp61"], ("unknown precision 'fp61'", "did you mean")
    if case == "no_target":
        return [work], ("--target is required",)
    if case == "tensorrt":
        # no GPU and no TensorRT here (and in CI): the plan goes to stdout, one error line
        return ["-t", "tensorrt", work], ("cannot build a TensorRT engine here",
                                          "nothing was written")
    if case == "ac_without_labels":
        return int8 + ["--calib", unlabelled, "--accuracy-control"], ("has no labels",)
    if case == "max_drop_zero":
        return int8 + ["--calib", npz, "--accuracy-control", "--max-drop", "0"], ("(0, 100]",)
    if case == "max_drop_high":
        return int8 + ["--calib", npz, "--accuracy-control", "--max-drop", "150"], ("(0, 100]",)
    if case == "max_drop_alone":
        return int8 + ["--calib", npz, "--max-drop", "1"], ("--max-drop needs",)
    if case == "calib_size_zero":
        return int8 + ["--calib", npz, "--calib-size", "0"], ("--calib-size must be positive",)
    if case == "calib_size_negative":
        return int8 + ["--calib", npz, "--calib-size", "-3"], ("--calib-size must be positive",)
    if case == "output_under_a_file":
        (tmp / "afile").write_text("x")
        return base + ["-o", tmp / "afile" / "out"], ("is a file",)
    if case == "output_foreign_dir":
        (tmp / "mine").mkdir()
        (tmp / "mine" / "notes.txt").write_text("keep me")
        return base + ["-o", tmp / "mine"], ("not empty", "refusing")
    if case == "output_is_the_export":
        return base + ["-o", work], ("would replace the export",)
    raise AssertionError(case)


BAD = ["calib_missing", "calib_empty", "calib_unreadable", "calib_all_corrupt", "calib_too_few",
       "calib_required", "calib_without_int8", "artifact_missing", "not_an_artifact",
       "already_built", "unknown_target", "unknown_precision", "no_target", "tensorrt",
       "ac_without_labels", "max_drop_zero", "max_drop_high", "max_drop_alone",
       "calib_size_zero", "calib_size_negative", "output_under_a_file", "output_foreign_dir",
       "output_is_the_export"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_leaves_nothing(capsys, work, tmp_path, npz, case):
    data = tmp_path / "data"
    data.mkdir()
    args, needles = _bad_setup(case, work, data, npz)
    before = leftovers(work)
    code, out, err = cli(capsys, "build", *args)
    assert_one_line_error(code, err, *needles)
    assert leftovers(work) == before
    if case == "output_foreign_dir":
        assert (data / "mine" / "notes.txt").read_text() == "keep me"
    if case.startswith(("unknown", "max_drop", "calib_size", "no_target", "calib_without")):
        assert code == 2  # usage errors


def test_an_interrupted_build_leaves_nothing(work, npz, monkeypatch):
    """A failure inside the builder (here: NNCF raising) leaves no output directory."""
    from dyt_edge.build import build_artifact
    from dyt_edge.calibration import openvino_int8

    def boom(*args, **kwargs):
        raise openvino_int8.QuantizationError("NNCF quantization failed: boom")

    monkeypatch.setattr(openvino_int8, "quantize", boom)
    before = leftovers(work)
    with pytest.raises(openvino_int8.QuantizationError):
        build_artifact(work, "openvino", precision="int8", calib=str(npz))
    assert leftovers(work) == before


def test_tensorrt_slot_is_in_the_builder_registry():
    from dyt_edge.exporters.builder import Builder
    from dyt_edge.exporters.registry import BUILDERS, TARGETS, get_builder

    assert TARGETS == ("openvino", "tensorrt")
    for target in BUILDERS:
        builder = get_builder(target)
        assert isinstance(builder, Builder) and builder.target == target


def test_build_help_does_not_import_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys; from dyt_edge.cli import main; rc = main(['build', '--help']); "
            "heavy = [m for m in ('torch', 'openvino', 'nncf', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert "--calib" in proc.stdout and "--accuracy-control" in proc.stdout


# -- other variants and dispatch modes (slow: one export + one INT8 build each) -------------------

@pytest.mark.slow
@pytest.mark.parametrize("variant, adapter, dispatch", [
    ("attn", "adapter", "topk"), ("attn_mlp", "adapter", "topk"), ("layer", "adapter", "topk"),
    ("mlp", "moe", "topk"), ("mlp", "adapter", "pack"), ("mlp", "adapter", "capacity"),
])
def test_int8_keeps_the_dispatch_path_float_for_every_variant(tmp_path, npz, variant, adapter,
                                                              dispatch):
    from dyt_edge.build import build_artifact
    from dyt_edge.calibration.scope import openvino_float_scope, quantizer_violations
    from dyt_edge.checkpoint import save_model
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint
    from dyt_edge.model import build_model

    from .helpers import randomize_dyt, tiny_config

    model = randomize_dyt(build_model(tiny_config(depth=2, variant=variant,
                                                  adapter_kind=adapter)), seed=1)
    ckpt = save_model(model, tmp_path / "m.safetensors")
    capacity = 0.5 if dispatch == "capacity" else None
    export_checkpoint(ckpt, tmp_path / "export", ExportOptions(dispatch=dispatch,
                                                               capacity=capacity))
    result = build_artifact(tmp_path / "export", "openvino", precision="int8", calib=str(npz))
    names = model.config.dispatcher_names
    q = ov().Core().read_model(str(result.path / "model.xml"))
    scope = openvino_float_scope(q, names)
    assert len(scope.dispatchers) == len(names)
    assert all(d.gate_linear for d in scope.dispatchers)
    assert quantizer_violations(q, scope) == []
    assert result.build["calibration"]["quantization"]["fake_quantize_nodes"] > 0
    assert result.build["check"]["top1_agreement"] >= 0.5
