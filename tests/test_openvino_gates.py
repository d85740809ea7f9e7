"""The gates stay f32 under a bf16 hint: the rewrite of each gate MatMul into Multiply +
ReduceSum, what the CPU plugin then runs, and what the runtime reports."""

from __future__ import annotations

import numpy as np
import pytest

from dyt_edge.runtimes import RuntimeOptions, open_runtime

from .helpers import TINY_NAMES, mixed_batch


def _ov():
    from dyt_edge.runtimes.backends import import_openvino

    return import_openvino()


def _has_bf16() -> bool:
    from dyt_edge.runtimes.openvino_runtime import device_capabilities

    return "BF16" in device_capabilities()


def _gate_types(model) -> dict[str, list[str]]:
    """Dispatcher -> the op types of its gate nodes (named ``<dispatcher>/gate/...``)."""
    out: dict[str, list[str]] = {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if "/gate/" in name:
            out.setdefault(name.split("/gate/")[0], []).append(op.get_type_name())
    return out


def _compile(model, hint: str):
    return _ov().Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "INFERENCE_NUM_THREADS": 1})


def _outputs(compiled, x):
    res = compiled(x)
    return {n: np.asarray(v) for p, v in res.items() for n in p.get_names()}


def test_rewrite_replaces_every_gate_matmul_and_keeps_f32_results(tiny_ov_export):
    from dyt_edge.runtimes.openvino_gates import gate_dispatchers, gates_as_reductions

    core = _ov().Core()
    xml = str(tiny_ov_export / "model.xml")
    original, rewritten = core.read_model(xml), core.read_model(xml)
    assert gate_dispatchers(original) == list(TINY_NAMES)
    assert all("MatMul" in t for t in _gate_types(original).values())

    assert gates_as_reductions(rewritten) == list(TINY_NAMES)
    for name, types in _gate_types(rewritten).items():
        assert "MatMul" not in types and {"Multiply", "ReduceSum"} <= set(types), (name, types)

    x = mixed_batch(8, seed=3).numpy()
    a, b = _outputs(_compile(original, "f32"), x), _outputs(_compile(rewritten, "f32"), x)
    assert np.array_equal(a["masks"], b["masks"])
    assert 0 < a["masks"].mean() < 1  # mixed decisions: the comparison means something
    np.testing.assert_allclose(b["logits"], a["logits"], rtol=0, atol=1e-5)


def test_rewrite_finds_nothing_in_a_model_without_gates():
    from openvino import opset13 as ops

    from dyt_edge.runtimes.openvino_gates import gates_as_reductions

    ov = _ov()
    p = ops.parameter([2, 4], np.float32)
    mm = ops.matmul(p, ops.constant(np.ones((4, 1), np.float32)), False, False)
    model = ov.Model([ops.sigmoid(mm)], [p])
    assert gates_as_reductions(model) == []
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("MatMul") == 1


def _runtime_precisions(compiled, needle: str) -> set[str]:
    """Runtime precisions of the executed nodes built from ops whose name contains needle."""
    found = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if needle in info["originalLayersNames"].astype(str):
            found.add((info["layerType"].astype(str), info["runtimePrecision"].astype(str)))
    return found


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has no BF16 in OpenVINO")
def test_under_bf16_the_plugin_runs_the_rewritten_gate_in_f32(tiny_ov_export):
    """The reason for the rewrite, checked against the installed OpenVINO: a gate MatMul runs
    bf16 under the bf16 hint; the rewritten gate's reduction runs f32."""
    from dyt_edge.runtimes.openvino_gates import gates_as_reductions

    core = _ov().Core()
    xml = str(tiny_ov_export / "model.xml")
    plain = _runtime_precisions(_compile(core.read_model(xml), "bf16"), "/gate/Gemm")
    model = core.read_model(xml)
    gates_as_reductions(model)
    kept = _runtime_precisions(_compile(model, "bf16"), "/gate/GateReduceSum")
    assert {p for t, p in plain if t == "FullyConnected"} == {"bf16"}, plain
    assert kept and {p for _, p in kept} == {"f32"}, kept


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has no BF16 in OpenVINO")
def test_runtime_reports_the_gate_path(tiny_ov_export):
    x = mixed_batch(4, seed=4).numpy()
    with open_runtime("openvino", tiny_ov_export,
                      RuntimeOptions(precision="bf16", threads=1)) as rt:
        kept = rt.describe()
        out_kept = rt.run(x)
    with open_runtime("openvino", tiny_ov_export,
                      RuntimeOptions(precision="bf16", threads=1,
                                     extra={"f32_gates": False})) as rt:
        plain = rt.describe()
        out_plain = rt.run(x)
    assert kept["gate_path"].startswith(f"f32 ({len(TINY_NAMES)} gate(s)")
    assert plain["gate_path"] == "bf16"
    assert kept["precision_in_effect"] == plain["precision_in_effect"] == "bf16"
    assert out_kept.logits.shape == out_plain.logits.shape


def test_f32_runs_are_left_alone(tiny_ov_export):
    with open_runtime("openvino", tiny_ov_export,
                      RuntimeOptions(precision="fp32", threads=1)) as rt:
        assert rt.describe()["gate_path"] == "f32"
        assert rt.f32_gates is None
