"""INT8 settings: the attention core kept float (``float_attention``), SmoothQuant on / off /
auto, the float parts' precision; their build flags, records and runtime use."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import TINY_NAMES as NAMES
from .helpers import assert_one_line_error as one_line_error
from .helpers import cli, write_npz


def _sdpa_inputs_quantized(model) -> list[bool]:
    """Per ScaledDotProductAttention op: is any of q, k, v fed by a FakeQuantize?"""
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "ScaledDotProductAttention":
            out.append(any(op.input_value(i).get_node().get_type_name() == "FakeQuantize"
                           for i in range(3)))
    return out


def test_float_attention_keeps_q_k_v_unquantized(tiny_ov_export, tmp_path):
    from dyt_edge import artifacts
    from dyt_edge.calibration.data import load_calibration
    from dyt_edge.calibration.openvino_int8 import QuantizeSettings, quantize
    from dyt_edge.calibration.scope import quantizer_violations
    from dyt_edge.runtimes.backends import import_openvino
    from dyt_edge.runtimes.openvino_runtime import OpenVinoModel

    info = artifacts.load_artifact(tiny_ov_export).info
    calib = load_calibration(str(write_npz(tmp_path / "c.npz", 16)), info, 16)
    float_model = import_openvino().Core().read_model(str(tiny_ov_export / "model.xml"))
    default = quantize(float_model, calib, dispatcher_names=NAMES)
    kept = quantize(float_model, calib, dispatcher_names=NAMES,
                    settings=QuantizeSettings(float_attention=True))
    assert _sdpa_inputs_quantized(default.model) == [True] * len(NAMES)
    assert _sdpa_inputs_quantized(kept.model) == [False] * len(NAMES)
    assert 0 < kept.quantizers < default.quantizers
    assert quantizer_violations(kept.model, kept.scope) == []
    assert QuantizeSettings(float_attention=True).to_dict()["float_attention"] is True
    x = calib.images
    ref = OpenVinoModel(float_model).run(x)[0]
    got = OpenVinoModel(kept.model).run(x)[0]
    assert np.isfinite(got).all() and (ref.argmax(1) == got.argmax(1)).mean() >= 0.75


# -- the build flags: --smooth-quant, --float-attention / --quantize-attention, --float-parts ----

def _has_bf16() -> bool:
    from dyt_edge.runtimes.openvino_runtime import device_capabilities

    return "BF16" in device_capabilities()


@pytest.mark.parametrize("args, needles", [
    (["-p", "int8", "--smooth-quant", "maybe"], ("--smooth-quant must be one of auto, on, off",)),
    (["-p", "int8", "--float-parts", "int8"], ("--float-parts must be one of",)),
    (["--float-parts", "bf16"], ("--float-parts applies to --precision int8 only",)),
    (["--float-attention"], ("--float-attention / --quantize-attention applies to --precision "
                             "int8 only",)),
])
def test_bad_int8_settings_are_usage_errors(capsys, tiny_ov_work, args, needles):
    code, out, err = cli(capsys, "build", "-t", "openvino", tiny_ov_work, *args)
    one_line_error(code, err, *needles)
    assert code == 2 and not [p for p in tiny_ov_work.iterdir() if p.is_dir()]


@pytest.mark.parametrize("flag, value", [("--smooth-quant", "off"), ("--float-parts", "fp32"),
                                         ("--float-attention", None)])
def test_openvino_int8_settings_are_refused_for_tensorrt(capsys, tiny_ov_work, bare_machine,
                                                          flag, value):
    args = [flag] + ([value] if value else [])
    code, out, err = cli(capsys, "build", "-t", "tensorrt", tiny_ov_work, "-p", "int8",
                         "--calib", "digits", *args)
    one_line_error(code, err, f"{flag} applies to --target openvino only")


def test_explicit_settings_are_recorded_and_used(capsys, tiny_ov_work, tmp_path):
    """SmoothQuant off, attention quantized, float parts fp32: recorded, no gate rewrite (f32
    runs them f32 anyway), the attention's q / k / v quantized."""
    from dyt_edge.artifacts import load_artifact
    from dyt_edge.runtimes import RuntimeOptions, open_runtime
    from dyt_edge.runtimes.backends import import_openvino

    npz = write_npz(tmp_path / "c.npz", 16)
    code, out, err = cli(capsys, "build", "-t", "openvino", tiny_ov_work, "-p", "int8",
                         "--calib", npz, "--smooth-quant", "off", "--quantize-attention",
                         "--float-parts", "fp32")
    assert code == 0, err
    assert "SmoothQuant off; attention core int8" in " ".join(out.split())
    art = load_artifact(tiny_ov_work / "openvino-int8")
    b = art.info.build.record
    q = b["calibration"]["quantization"]
    assert b["float_parts"] == "fp32" and b["inference_precision"] == "f32"
    assert q["smooth_quant"] is False and q["smooth_quant_mode"] == "off"
    assert q["float_attention"] is False and b["f32_gates"] == []
    assert q["smooth_quant_agreement"] == {"off": b["check"]["top1_agreement"]}
    model = import_openvino().Core().read_model(str(art.path / "model.xml"))
    assert _sdpa_inputs_quantized(model) == [True] * len(NAMES)
    assert not [op for op in model.get_ops() if "nncf_smooth_quant" in op.get_friendly_name()]
    rt = open_runtime("openvino", art, RuntimeOptions())
    assert rt.describe()["precision_in_effect"] == "int8 (float parts f32)"


@pytest.mark.skipif("not _has_bf16()", reason="the CPU has no bf16")
def test_bf16_float_parts_bake_f32_gates_and_keep_attention_float(tiny_ov_work, tmp_path,
                                                                   monkeypatch):
    """The default on a bf16 CPU: float parts bf16 (recorded; the runtime applies it), gates
    stored f32 in the IR, attention float. On a CPU without bf16 the runtime runs the float
    parts f32 and says so; --float-parts (extra inference_precision) overrides the record."""
    from dyt_edge.build import build_artifact
    from dyt_edge.runtimes import RuntimeOptions, open_runtime
    from dyt_edge.runtimes import openvino_runtime as ovr
    from dyt_edge.runtimes.backends import import_openvino

    result = build_artifact(tiny_ov_work, "openvino", precision="int8",
                            calib=str(write_npz(tmp_path / "c.npz", 16)))
    b = result.build
    assert b["float_parts"] == "bf16" and b["inference_precision"] == "bf16"
    assert b["f32_gates"] == NAMES
    assert b["calibration"]["quantization"]["float_attention"] is True
    assert b["calibration"]["quantization"]["smooth_quant_mode"] == "auto"
    model = import_openvino().Core().read_model(str(result.path / "model.xml"))
    assert _sdpa_inputs_quantized(model) == [False] * len(NAMES)
    names = {op.get_friendly_name() for op in model.get_ops()}
    assert {f"{n}/gate/GateReduceSum" for n in NAMES} <= names
    # compiled as it is stored, as a model server does (no dyt-edge rewrite): the gates run f32
    core = import_openvino().Core()
    compiled = core.compile_model(core.read_model(str(result.path / "model.xml")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "bf16"})
    gate_precisions = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if "/gate/GateReduceSum" in op.get_rt_info()["originalLayersNames"].astype(str)}
    assert gate_precisions == {"f32"}

    d = open_runtime("openvino", result.path, RuntimeOptions()).describe()
    assert d["precision_in_effect"] == "int8 (float parts bf16)"
    assert d["gate_path"].startswith(f"f32 ({len(NAMES)} gate(s)")
    d = open_runtime("openvino", result.path,
                     RuntimeOptions(extra={"inference_precision": "fp32"})).describe()
    assert d["precision_in_effect"] == "int8 (float parts f32)"
    monkeypatch.setitem(ovr.CAPABILITY, "bf16", "NO-SUCH-CAPABILITY")  # a CPU without bf16
    d = open_runtime("openvino", result.path, RuntimeOptions()).describe()
    assert d["precision_in_effect"] == ("int8 (float parts f32; the artifact's float parts are "
                                        "bf16, which CPU lacks: they run f32)")


def test_smooth_quant_auto_quantizes_again_below_the_agreement_bar(tiny_ov_work, tmp_path,
                                                                    monkeypatch):
    from dyt_edge.build import build_artifact
    from dyt_edge.exporters.openvino import builder as ovb

    monkeypatch.setattr(ovb, "SMOOTH_QUANT_MIN_AGREEMENT", 1.01)  # nothing clears it
    result = build_artifact(tiny_ov_work, "openvino", precision="int8", float_parts="fp32",
                            calib=str(write_npz(tmp_path / "c.npz", 16)))
    q = result.build["calibration"]["quantization"]
    assert set(q["smooth_quant_agreement"]) == {"off", "on"}
    kept = "on" if q["smooth_quant"] else "off"
    assert q["smooth_quant_agreement"][kept] == max(q["smooth_quant_agreement"].values())
    assert result.build["check"]["top1_agreement"] == q["smooth_quant_agreement"][kept]
    assert any(n.startswith("--smooth-quant auto: top-1 agreement") for n in result.notes)
    from dyt_edge.artifacts import MANIFEST_NAME

    assert sorted(p.name for p in result.path.iterdir()) == sorted([MANIFEST_NAME, "model.bin",
                                                                    "model.xml"])


def test_float_parts_of_validate_and_bench_are_checked(capsys, tiny_ov_export, tmp_path):
    code, out, err = cli(capsys, "validate", tiny_ov_export, "-t", "onnxruntime",
                         "--float-parts", "bf16")
    one_line_error(code, err, "--float-parts applies to --target openvino only")
    code, out, err = cli(capsys, "bench", tiny_ov_export, "-t", "openvino",
                         "--float-parts", "int4")
    one_line_error(code, err, "--float-parts must be fp32, bf16 or fp16, got 'int4'")
    code, out, err = cli(capsys, "bench", tiny_ov_export, "-t", "openvino", "--float-parts",
                         "bf16", "--no-baseline", "--duration", "0.1", "--warmup", "0.1",
                         "--data", write_npz(tmp_path / "d.npz", 4))
    one_line_error(code, err, "float parts apply to INT8 artifacts", "runs fp32 throughout")


def test_the_complete_baseline_repeats_the_int8_settings():
    from dyt_edge.baseline import _calibration
    from dyt_edge.manifest import Build

    record = {"calibration": {"data": "digits", "size": 64, "seed": 0, "quantization": {
        "smooth_quant": False, "float_attention": True}}, "float_parts": "bf16"}
    got = _calibration(Build(target="openvino", precision="int8", record=record), None, None,
                       None)
    assert got["smooth_quant"] == "off" and got["float_attention"] is True
    assert got["float_parts"] == "bf16"
    old = _calibration(Build(target="openvino", precision="int8", record={
        "calibration": {"data": "digits", "size": 64, "seed": 0, "quantization": {
            "smooth_quant": True}}}), None, None, None)  # a build from before these flags
    assert (old["smooth_quant"], old["float_attention"], old["float_parts"]) == ("on", False,
                                                                                 "fp32")
