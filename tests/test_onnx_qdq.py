"""ONNX -> explicit INT8 Q/DQ for TensorRT (calibration/onnx_qdq.py): symmetric, int8 zero points
0, every MatMul / Gemm / Conv outside the float scope quantized and nothing in it, the rest fp32
or fp16, and parity on ONNX Runtime; the FP16 conversion of the same exports where both are
checked together. The graphs are conftest's ``onnx_exports``."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from .helpers.onnx import FLOAT, HALF, dispatcher_names, load, types_of


def qdq_nodes(model):
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_zero_points_are_int8_zeros_and_scales_positive(int8_topk):
    q, report = int8_topk
    inits = {t.name: t for t in q.graph.initializer}
    nodes = qdq_nodes(q)
    assert report["quantize_linear"] > 0 and report["dequantize_linear"] > 0
    assert len(nodes) == report["quantize_linear"] + report["dequantize_linear"]
    per_channel = 0
    for n in nodes:
        assert len(n.input) == 3 and n.input[2] in inits, n.name
        zp, scale = inits[n.input[2]], numpy_helper.to_array(inits[n.input[1]])
        assert zp.data_type == TensorProto.INT8, n.name
        assert not numpy_helper.to_array(zp).any(), n.name
        assert (scale > 0).all() and np.isfinite(scale).all(), n.name
        per_channel += scale.ndim == 1 and scale.size > 1
    assert per_channel >= report["int8_weights"] > 0  # per-channel weights
    weights = [t for t in q.graph.initializer if t.data_type == TensorProto.INT8
               and len(t.dims) >= 2]
    assert len(weights) == report["int8_weights"]


def test_int8_quantizes_every_matmul_outside_the_scope_and_nothing_in_it(onnx_exports, int8_topk):
    from dyt_edge.calibration.scope import onnx_float_scope

    q, report = int8_topk
    scope = onnx_float_scope(load(onnx_exports, "topk"))
    producer = {o: n for n in q.graph.node for o in n.output}
    quantizable = [n for n in q.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                   and n.name not in scope.reasons]
    assert len(quantizable) == report["quantizable_nodes"] == report["quantized_nodes"] >= 14
    for n in quantizable:  # activation and weight both through a DequantizeLinear
        for x in n.input[:2]:
            assert producer[x].op_type == "DequantizeLinear", f"{n.name} input {x}"
    assert report["not_quantized"] == []
    for n in q.graph.node:
        if n.name in scope.reasons:  # the float scope reads no dequantized value
            for x in n.input:
                p = producer.get(x)
                assert p is None or p.op_type not in ("DequantizeLinear", "QuantizeLinear"), \
                    f"{n.name} ({scope.reasons[n.name]}) reads {p.name}"
        if n.op_type == "QuantizeLinear":  # and nothing of the dispatch path is quantized
            p = producer.get(n.input[0])
            assert p is None or scope.reasons.get(p.name) not in ("gate", "index"), n.name
    for n in q.graph.node:  # Q/DQ only ever feed MatMul / Gemm / Conv
        if n.op_type == "DequantizeLinear":
            for c in q.graph.node:
                if n.output[0] in c.input:
                    assert c.op_type in ("MatMul", "Gemm", "Conv"), (n.name, c.name)
    gates = [n.name for n in q.graph.node if scope.reasons.get(n.name) == "gate"
             and n.op_type == "Gemm"]
    assert len(gates) == 2
    assert q.graph.output[0].name == "logits" and producer["logits"].op_type == "Gemm"


def test_int8_parity_on_onnx_runtime(onnx_exports, int8_topk, blob_images):
    from dyt_edge.calibration.onnx_precision import parity

    q, _ = int8_topk
    p = parity(load(onnx_exports, "topk"), q, blob_images[48:],
               dispatcher_names=dispatcher_names(onnx_exports, "topk"))
    assert p["max_abs_diff"] > 0  # it is a different (quantized) model
    assert p["max_abs_diff"] <= 0.1 * p["logit_scale"]
    assert p["top1_agreement_pct"] >= 90.0
    assert p["flip_pct"] <= 5.0


def test_int8_with_the_rest_in_fp16(onnx_exports, blob_images):
    """float_precision="fp16": int8 MatMuls, fp16 elsewhere, the gates and LayerNorm fp32, and
    Q/DQ with fp16 scales (opset 19)."""
    from dyt_edge.calibration.onnx_precision import check_precisions, parity
    from dyt_edge.calibration.onnx_qdq import to_qdq_int8

    original = load(onnx_exports, "topk")
    q, report = to_qdq_int8(original, blob_images[:32], float_precision="fp16")
    assert report["opset"] == 19 and report["float_precision"] == "fp16"
    assert report["fp16"]["kept_fp32_counts"]["gate"] >= 8
    types = types_of(q)
    qdq = qdq_nodes(q)
    assert qdq and all(types[n.input[1]] == HALF for n in qdq)  # fp16 scales
    assert all(types[n.output[0]] == HALF for n in qdq if n.op_type == "DequantizeLinear")
    lns = [n for n in q.graph.node if n.op_type == "LayerNormalization"]
    assert all(types[n.input[0]] == FLOAT and types[n.output[0]] == FLOAT for n in lns)
    assert check_precisions(q) == []
    p = parity(original, q, blob_images[32:64])
    assert p["top1_agreement_pct"] >= 90.0 and p["max_abs_diff"] <= 0.1 * p["logit_scale"]


def test_int8_can_leave_attention_matmuls_in_float(onnx_exports, blob_images):
    from dyt_edge.calibration.onnx_precision import check_precisions
    from dyt_edge.calibration.onnx_qdq import to_qdq_int8

    q, report = to_qdq_int8(load(onnx_exports, "topk"), blob_images[:16], method="minmax",
                            attention_matmuls=False)
    producer = {o: n for n in q.graph.node for o in n.output}
    inits = {t.name for t in q.graph.initializer}
    bmm = [n for n in q.graph.node if n.op_type == "MatMul"
           and not any(x in inits or producer[x].op_type == "DequantizeLinear"
                       and producer[x].input[0] in inits for x in n.input)]
    assert len(bmm) == report["attention_matmul_nodes"] == 4  # Q.K^T and P.V, two blocks
    for n in bmm:
        assert all(producer[x].op_type != "DequantizeLinear" for x in n.input), n.name
    assert report["quantized_nodes"] == report["quantizable_nodes"] == 14
    assert check_precisions(q) == []


def test_capacity_exports_convert_both_ways(onnx_exports, blob_images):
    from dyt_edge.calibration.onnx_fp16 import to_fp16
    from dyt_edge.calibration.onnx_precision import check_precisions, parity
    from dyt_edge.calibration.onnx_qdq import to_qdq_int8

    original = load(onnx_exports, "capacity")
    names = dispatcher_names(onnx_exports, "capacity")
    topks = [n for n in original.graph.node if n.op_type == "TopK"]
    assert topks and all(n.input[1] in {t.name for t in original.graph.initializer}
                         for n in topks)  # a static K
    m16, r16 = to_fp16(original, dispatcher_names=names)
    q, rq = to_qdq_int8(original, blob_images[:24], dispatcher_names=names, method="percentile")
    assert check_precisions(m16) == [] and check_precisions(q) == []
    assert rq["quantized_nodes"] == rq["quantizable_nodes"]
    assert rq["calibration"] == {"method": "percentile", "percentile": 99.999, "images": 24,
                                 "items": 24}
    for converted in (m16, q):
        p = parity(original, converted, blob_images[:32], dispatcher_names=names)
        assert p["top1_agreement_pct"] >= 90.0


def test_two_gates_per_block_and_a_static_batch(tmp_path, blob_images):
    """The attn_mlp variant (a gate before attention and one before the MLP, attention over the
    active tokens only) exported with a static batch of 4: both conversions keep all four
    gates fp32, calibration and parity feed whole batches."""
    from dyt_edge.calibration.onnx_fp16 import to_fp16
    from dyt_edge.calibration.onnx_precision import check_precisions, parity
    from dyt_edge.calibration.onnx_qdq import to_qdq_int8
    from dyt_edge.exporters.pipeline import ExportOptions, export_model
    from dyt_edge.model import build_model

    from .helpers import randomize_dyt, tiny_config

    # The backbone's init draws from torch's global generator: seed it here, or the weights
    # (and the int8 agreement on 10 images) depend on which tests ran before.
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = randomize_dyt(build_model(tiny_config(depth=2, variant="attn_mlp")),
                              seed=3).eval()
    export_model(model, tmp_path / "b4", ExportOptions(batch=4, validate=False))
    original = onnx.load(str(tmp_path / "b4" / "model.onnx"))
    m16, r16 = to_fp16(original)
    assert len(r16["dispatchers"]) == 4 and r16["kept_fp32_counts"]["gate"] >= 16
    q, rq = to_qdq_int8(original, blob_images[:10], method="minmax")
    assert rq["calibration"]["items"] == 3  # 10 images in batches of 4, the last filled up
    assert rq["quantized_nodes"] == rq["quantizable_nodes"]
    assert check_precisions(m16) == [] and check_precisions(q) == []
    for converted in (m16, q):
        p = parity(original, converted, blob_images[:10])
        assert p["images"] == 10 and p["top1_agreement_pct"] >= 90.0
        assert len(p["layers"]) == 4
