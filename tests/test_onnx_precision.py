"""The precision checker of the TensorRT graphs (calibration/onnx_precision.py): it passes the
export and both conversions, and catches each way a graph can round the dispatch path or
quantize wrongly."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .helpers.onnx import FLOAT, HALF, load


def test_checker_accepts_the_export_and_both_conversions(onnx_exports, fp16_topk, int8_topk):
    from dyt_edge.calibration.onnx_precision import check_precisions

    assert check_precisions(load(onnx_exports, "topk")) == []
    assert check_precisions(fp16_topk[0]) == []
    assert check_precisions(int8_topk[0]) == []


def test_checker_catches_a_gate_rounded_through_fp16(fp16_topk):
    """What block-list FP16 converters produce: the gate's logits cast to fp16 and back."""
    from dyt_edge.calibration.onnx_precision import check_precisions

    m = copy.deepcopy(fp16_topk[0])
    gemm = next(n for n in m.graph.node if n.name.endswith("gate/Gemm_0"))
    logits = gemm.output[0]
    gemm.output[0] = logits + "_f32"
    at = list(m.graph.node).index(gemm) + 1
    m.graph.node.insert(at, helper.make_node("Cast", [logits + "_f32"], [logits + "_f16"],
                                             to=HALF, name="broken_down"))
    m.graph.node.insert(at + 1, helper.make_node("Cast", [logits + "_f16"], [logits], to=FLOAT,
                                                 name="broken_up"))
    problems = check_precisions(m)
    assert any(logits + "_f16" in p and "float16" in p for p in problems), problems


def test_checker_catches_a_gate_computed_in_fp16(fp16_topk):
    from dyt_edge.calibration.onnx_precision import check_precisions

    m = copy.deepcopy(fp16_topk[0])
    g = m.graph
    gemm = next(n for n in g.node if n.name.endswith("gate/Gemm_0"))
    cast_in = next(n for n in g.node if gemm.input[0] in n.output)
    gemm.input[0] = cast_in.input[0]  # the fp16 residual stream, uncast
    inits = {t.name: t for t in g.initializer}
    for i in (1, 2):
        t = inits[gemm.input[i]]
        g.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(t).astype(np.float16), t.name + "_h"))
        gemm.input[i] = t.name + "_h"
    out = gemm.output[0]
    gemm.output[0] = out + "_h"
    g.node.insert(list(g.node).index(gemm) + 1,
                  helper.make_node("Cast", [out + "_h"], [out], to=FLOAT, name="broken_up"))
    onnx.checker.check_model(m, full_check=True)  # valid ONNX, wrong precision
    problems = check_precisions(m)
    assert any("gate" in p and "float16" in p for p in problems), problems


def test_checker_catches_a_nonzero_zero_point(int8_topk):
    from dyt_edge.calibration.onnx_precision import check_precisions

    m = copy.deepcopy(int8_topk[0])
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    zp = next(t for t in m.graph.initializer if t.name == q.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zp.name))
    problems = check_precisions(m)
    assert any("zero point 3" in p for p in problems), problems


def test_checker_catches_uint8_and_missing_zero_points_and_bad_scales(int8_topk):
    from dyt_edge.calibration.onnx_precision import check_precisions

    m = copy.deepcopy(int8_topk[0])
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    inits = {t.name: t for t in m.graph.initializer}
    pair = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and n.input[2] == qs[0].input[2]]
    inits[qs[0].input[2]].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8),
                                                           qs[0].input[2]))
    inits[qs[1].input[1]].CopyFrom(numpy_helper.from_array(np.array(-0.5, np.float32),
                                                           qs[1].input[1]))
    problems = check_precisions(m)
    assert any("uint8, not int8" in p for p in problems), problems
    assert any("scale not positive" in p for p in problems), problems
    assert len(pair) == 2
    del qs[2].input[2]
    assert any("no zero point" in p for p in check_precisions(m))


def test_checker_catches_qdq_in_front_of_layernorm(int8_topk):
    from dyt_edge.calibration.onnx_precision import check_precisions

    m = copy.deepcopy(int8_topk[0])
    g = m.graph
    ln = next(n for n in g.node if n.op_type == "LayerNormalization")
    x = ln.input[0]
    g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "bad_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), "bad_zp")])
    at = list(g.node).index(ln)
    g.node.insert(at, helper.make_node("QuantizeLinear", [x, "bad_scale", "bad_zp"], ["bad_q"],
                                       name="bad_Q"))
    g.node.insert(at + 1, helper.make_node("DequantizeLinear", ["bad_q", "bad_scale", "bad_zp"],
                                           ["bad_dq"], name="bad_DQ"))
    ln.input[0] = "bad_dq"
    problems = check_precisions(m)
    assert any("bad_DQ feeds LayerNormalization" in p and "layernorm" in p
               for p in problems), problems


def test_checker_catches_a_quantized_gate_and_an_fp16_layernorm(onnx_exports, fp16_topk):
    from dyt_edge.calibration.onnx_precision import check_precisions

    m = load(onnx_exports, "topk")
    g = m.graph
    gemm = next(n for n in g.node if n.name.endswith("gate/Gemm_0"))
    g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                          numpy_helper.from_array(np.array(0, np.int8), "z")])
    at = list(g.node).index(gemm)
    g.node.insert(at, helper.make_node("QuantizeLinear", [gemm.input[0], "s", "z"], ["gq"],
                                       name="gate_Q"))
    g.node.insert(at + 1, helper.make_node("DequantizeLinear", ["gq", "s", "z"], ["gdq"],
                                           name="gate_DQ"))
    gemm.input[0] = "gdq"
    assert any("gate_DQ feeds Gemm" in p for p in check_precisions(m))

    m16 = copy.deepcopy(fp16_topk[0])
    ln = next(n for n in m16.graph.node if n.op_type == "LayerNormalization")
    cast_in = next(n for n in m16.graph.node if ln.input[0] in n.output)
    ln.input[0] = cast_in.input[0]  # fp16 into LayerNorm
    problems = check_precisions(m16)
    assert any(p.startswith(f"LayerNormalization {ln.name}") for p in problems), problems
