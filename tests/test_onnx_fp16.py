"""ONNX -> FP16 for TensorRT (calibration/onnx_fp16.py): the dispatch path and LayerNorm stay
fp32, every other weight and op is fp16, one Cast per tensor and boundary, and parity on ONNX
Runtime. The graphs are conftest's ``onnx_exports``."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .helpers.onnx import FLOAT, HALF, dispatcher_names, load, types_of


def by_name(model) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}



def test_fp16_keeps_gate_topk_and_layernorm_in_fp32(onnx_exports, fp16_topk):
    from dyt_edge.calibration.scope import onnx_float_scope

    m16, report = fp16_topk
    original = load(onnx_exports, "topk")
    scope = onnx_float_scope(original)
    gate = [n for n, r in scope.reasons.items() if r == "gate"]
    assert len(scope.dispatchers) == 2 and len(gate) >= 8
    types = types_of(m16)
    nodes = by_name(m16)
    for name in gate:  # gate MatMul/Gemm, its input, weight, bias, logits, sigmoid, compare
        n = nodes[name]
        for x in (*n.input, *n.output):
            if x and types[x] not in (TensorProto.INT64, TensorProto.BOOL):
                assert types[x] == FLOAT, f"{x} of {n.op_type} {name} is {types[x]}"
    sigmoids = [nodes[n] for n in gate if nodes[n].op_type == "Sigmoid"]
    assert len(sigmoids) == 2 and all(types[s.output[0]] == FLOAT for s in sigmoids)
    topks = [n for n in m16.graph.node if n.op_type == "TopK"]
    assert len(topks) == 2
    for t in topks:
        assert types[t.input[0]] == FLOAT and types[t.output[0]] == FLOAT
        assert types[t.input[1]] == TensorProto.INT64 and types[t.output[1]] == TensorProto.INT64
    lns = [n for n in m16.graph.node if n.op_type == "LayerNormalization"]
    assert lns and all(types[x] == FLOAT for n in lns for x in (*n.input, n.output[0]))
    # the graph's I/O as exported; Casts at the boundaries
    assert types["images"] == FLOAT and types["logits"] == FLOAT
    assert types["masks"] == TensorProto.BOOL
    assert report["inputs"] == {"images": "float"}
    assert report["outputs"] == {"logits": "float", "masks": "bool"}
    assert report["casts_inserted"] > 0 and report["kept_fp32_counts"]["gate"] == len(gate)
    assert set(report["kept_fp32"]["layernorm"]) == {n.name for n in lns}
    from dyt_edge.calibration.onnx_precision import summary

    assert f"gate {len(gate)}" in summary(report) and "casts inserted" in summary(report)


def test_fp16_weights_are_fp16_except_the_gates(onnx_exports, fp16_topk):
    m16, report = fp16_topk
    types = types_of(m16)
    inits = {t.name for t in m16.graph.initializer}
    gates = set(report["kept_fp32"]["gate"])
    linear = [n for n in m16.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    weights = [(n, x) for n in linear for x in n.input[1:] if x in inits]
    assert len(weights) >= 14
    for n, w in weights:
        want = FLOAT if n.name in gates else HALF
        assert types[w] == want, f"{w} of {n.name} is {types[w]}"
    # the fp16 region computes in fp16: MatMuls outside the gate read and write fp16
    for n in linear:
        if n.name not in gates:
            assert types[n.input[0]] == HALF and types[n.output[0]] == HALF, n.name
    assert report["nodes"]["fp16"] > report["nodes"]["fp32"]
    assert report["weights"]["fp16_values"] > 10 * report["weights"]["fp32_values"]


def test_fp16_graph_is_sorted_and_casts_once_per_tensor(fp16_topk):
    m16, _ = fp16_topk
    onnx.checker.check_model(m16, full_check=True)  # topological order, consistent types
    casts = [(n.input[0], helper.get_attribute_value(n.attribute[0]))
             for n in m16.graph.node if n.op_type == "Cast"]
    assert len(casts) == len(set(casts))
    # no round trip fp32 -> fp16 -> fp32 anywhere (what block-list converters insert)
    producer = {o: n for n in m16.graph.node for o in n.output}
    for n in m16.graph.node:
        if n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) == FLOAT:
            p = producer.get(n.input[0])
            assert not (p is not None and p.op_type == "Cast"), n.name


def test_fp16_parity_on_onnx_runtime(onnx_exports, fp16_topk, blob_images):
    """Tolerance: fp16 keeps 11 significant bits (relative step 4.9e-4 per op); over two blocks
    the logits stay within 1% of the logit scale (`dyt-edge validate` allows 2% for fp16)."""
    from dyt_edge.calibration.onnx_precision import parity

    m16, _ = fp16_topk
    names = dispatcher_names(onnx_exports, "topk")
    p = parity(load(onnx_exports, "topk"), m16, blob_images, dispatcher_names=names)
    assert p["logit_scale"] > 1.0  # the scaled head: classes a few units apart
    assert p["max_abs_diff_unflipped"] is not None
    assert p["max_abs_diff_unflipped"] <= 0.01 * p["logit_scale"]
    assert 0 < p["max_abs_diff"]  # it really ran in a lower precision
    assert p["top1_agreement_pct"] >= 98.0
    assert p["masks_compared"] and p["flip_pct"] <= 1.0
    assert [row["name"] for row in p["layers"]] == names
    assert 5 < p["reference_active_pct"] < 95  # mixed decisions: the gates are exercised
