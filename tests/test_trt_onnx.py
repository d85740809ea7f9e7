"""TensorRT's explicit-precision graphs, built and checked on the CPU: FP16 with the dispatch path
and LayerNorm in fp32, INT8 with explicit symmetric Q/DQ, the precision checker, and parity on
ONNX Runtime (calibration/tensorrt_onnx.py).

One tiny DyT (depth 2, 16 patch tokens, mixed gate decisions) is exported once per module in the
``topk`` and ``capacity`` dispatch modes. Its classifier head is scaled up so that the logits
are a few units apart: top-1 agreement then measures the conversion, not ties between classes of
a random model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    import torch

    from dyt_edge.exporters.pipeline import ExportOptions, export_model
    from dyt_edge.model import build_model

    from .conftest import randomize_dyt, tiny_config

    base = tmp_path_factory.mktemp("trt-onnx")
    model = randomize_dyt(build_model(tiny_config(depth=2)), seed=1).eval()
    with torch.no_grad():
        model.head.weight.mul_(60.0)
    out = {}
    for mode, capacity in (("topk", None), ("capacity", 0.5)):
        export_model(model, base / mode, ExportOptions(dispatch=mode, capacity=capacity,
                                                       validate=False))
        out[mode] = base / mode
    return out


def load(exports, mode: str):
    return onnx.load(str(exports[mode] / "model.onnx"))


def dispatcher_names(exports, mode: str) -> list[str]:
    manifest = json.loads((exports[mode] / "dyt_edge.json").read_text())
    return manifest["dispatch"]["dispatchers"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Digits-shaped stand-ins: smooth blobs on a dark background, normalised to [-1, 1]."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for _ in range(96):
        cy, cx, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.3)]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = np.clip(blob + rng.normal(0, 0.05, blob.shape), 0, 1)
        out.append(np.stack([img * rng.uniform(0.6, 1.0) for _ in range(3)]))
    return (np.asarray(out, dtype=np.float32) - 0.5) / 0.5


@pytest.fixture(scope="module")
def fp16(exports):
    from dyt_edge.calibration.tensorrt_onnx import to_fp16

    return to_fp16(load(exports, "topk"), dispatcher_names=dispatcher_names(exports, "topk"))


@pytest.fixture(scope="module")
def int8(exports, images):
    from dyt_edge.calibration.tensorrt_onnx import to_qdq_int8

    return to_qdq_int8(load(exports, "topk"), images[:48],
                       dispatcher_names=dispatcher_names(exports, "topk"))


def types_of(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def by_name(model) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


# -- FP16 -----------------------------------------------------------------------------------------

def test_fp16_keeps_gate_topk_and_layernorm_in_fp32(exports, fp16):
    from dyt_edge.calibration.scope import onnx_float_scope

    m16, report = fp16
    original = load(exports, "topk")
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
    from dyt_edge.calibration.tensorrt_onnx import summary

    assert f"gate {len(gate)}" in summary(report) and "casts inserted" in summary(report)


def test_fp16_weights_are_fp16_except_the_gates(exports, fp16):
    m16, report = fp16
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


def test_fp16_graph_is_sorted_and_casts_once_per_tensor(fp16):
    m16, _ = fp16
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


def test_fp16_parity_on_onnx_runtime(exports, fp16, images):
    """Tolerance: fp16 keeps 11 significant bits (relative step 4.9e-4 per op); over two blocks
    the logits stay within 1% of the logit scale (`dyt-edge validate` allows 2% for fp16)."""
    from dyt_edge.calibration.tensorrt_onnx import parity

    m16, _ = fp16
    names = dispatcher_names(exports, "topk")
    p = parity(load(exports, "topk"), m16, images, dispatcher_names=names)
    assert p["logit_scale"] > 1.0  # the scaled head: classes a few units apart
    assert p["max_abs_diff_unflipped"] is not None
    assert p["max_abs_diff_unflipped"] <= 0.01 * p["logit_scale"]
    assert 0 < p["max_abs_diff"]  # it really ran in a lower precision
    assert p["top1_agreement_pct"] >= 98.0
    assert p["masks_compared"] and p["flip_pct"] <= 1.0
    assert [row["name"] for row in p["layers"]] == names
    assert 5 < p["reference_active_pct"] < 95  # mixed decisions: the gates are exercised


# -- INT8 Q/DQ ------------------------------------------------------------------------------------

def qdq_nodes(model):
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_zero_points_are_int8_zeros_and_scales_positive(int8):
    q, report = int8
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


def test_int8_quantizes_every_matmul_outside_the_scope_and_nothing_in_it(exports, int8):
    from dyt_edge.calibration.scope import onnx_float_scope

    q, report = int8
    scope = onnx_float_scope(load(exports, "topk"))
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


def test_int8_parity_on_onnx_runtime(exports, int8, images):
    from dyt_edge.calibration.tensorrt_onnx import parity

    q, _ = int8
    p = parity(load(exports, "topk"), q, images[48:],
               dispatcher_names=dispatcher_names(exports, "topk"))
    assert p["max_abs_diff"] > 0  # it is a different (quantized) model
    assert p["max_abs_diff"] <= 0.1 * p["logit_scale"]
    assert p["top1_agreement_pct"] >= 90.0
    assert p["flip_pct"] <= 5.0


def test_int8_with_the_rest_in_fp16(exports, images):
    """float_precision="fp16": int8 MatMuls, fp16 elsewhere, the gates and LayerNorm fp32, and
    Q/DQ with fp16 scales (opset 19)."""
    from dyt_edge.calibration.tensorrt_onnx import check_precisions, parity, to_qdq_int8

    original = load(exports, "topk")
    q, report = to_qdq_int8(original, images[:32], float_precision="fp16")
    assert report["opset"] == 19 and report["float_precision"] == "fp16"
    assert report["fp16"]["kept_fp32_counts"]["gate"] >= 8
    types = types_of(q)
    qdq = qdq_nodes(q)
    assert qdq and all(types[n.input[1]] == HALF for n in qdq)  # fp16 scales
    assert all(types[n.output[0]] == HALF for n in qdq if n.op_type == "DequantizeLinear")
    lns = [n for n in q.graph.node if n.op_type == "LayerNormalization"]
    assert all(types[n.input[0]] == FLOAT and types[n.output[0]] == FLOAT for n in lns)
    assert check_precisions(q) == []
    p = parity(original, q, images[32:64])
    assert p["top1_agreement_pct"] >= 90.0 and p["max_abs_diff"] <= 0.1 * p["logit_scale"]


def test_int8_can_leave_attention_matmuls_in_float(exports, images):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions, to_qdq_int8

    q, report = to_qdq_int8(load(exports, "topk"), images[:16], method="minmax",
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


def test_capacity_exports_convert_both_ways(exports, images):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions, parity, to_fp16, to_qdq_int8

    original = load(exports, "capacity")
    names = dispatcher_names(exports, "capacity")
    topks = [n for n in original.graph.node if n.op_type == "TopK"]
    assert topks and all(n.input[1] in {t.name for t in original.graph.initializer}
                         for n in topks)  # a static K
    m16, r16 = to_fp16(original, dispatcher_names=names)
    q, rq = to_qdq_int8(original, images[:24], dispatcher_names=names, method="percentile")
    assert check_precisions(m16) == [] and check_precisions(q) == []
    assert rq["quantized_nodes"] == rq["quantizable_nodes"]
    assert rq["calibration"] == {"method": "percentile", "percentile": 99.999, "images": 24,
                                 "items": 24}
    for converted in (m16, q):
        p = parity(original, converted, images[:32], dispatcher_names=names)
        assert p["top1_agreement_pct"] >= 90.0


def test_two_gates_per_block_and_a_static_batch(tmp_path, images):
    """The attn_mlp variant (a gate before attention and one before the MLP, attention over the
    active tokens only) exported with a static batch of 4: both conversions keep all four
    gates fp32, calibration and parity feed whole batches."""
    from dyt_edge.calibration.tensorrt_onnx import check_precisions, parity, to_fp16, to_qdq_int8
    from dyt_edge.exporters.pipeline import ExportOptions, export_model
    from dyt_edge.model import build_model

    from .conftest import randomize_dyt, tiny_config

    model = randomize_dyt(build_model(tiny_config(depth=2, variant="attn_mlp")), seed=3).eval()
    export_model(model, tmp_path / "b4", ExportOptions(batch=4, validate=False))
    original = onnx.load(str(tmp_path / "b4" / "model.onnx"))
    m16, r16 = to_fp16(original)
    assert len(r16["dispatchers"]) == 4 and r16["kept_fp32_counts"]["gate"] >= 16
    q, rq = to_qdq_int8(original, images[:10], method="minmax")
    assert rq["calibration"]["items"] == 3  # 10 images in batches of 4, the last filled up
    assert rq["quantized_nodes"] == rq["quantizable_nodes"]
    assert check_precisions(m16) == [] and check_precisions(q) == []
    for converted in (m16, q):
        p = parity(original, converted, images[:10])
        assert p["images"] == 10 and p["top1_agreement_pct"] >= 90.0
        assert len(p["layers"]) == 4


# -- the checker catches broken graphs ------------------------------------------------------------

def test_checker_accepts_the_export_and_both_conversions(exports, fp16, int8):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions

    assert check_precisions(load(exports, "topk")) == []
    assert check_precisions(fp16[0]) == []
    assert check_precisions(int8[0]) == []


def test_checker_catches_a_gate_rounded_through_fp16(fp16):
    """What block-list FP16 converters produce: the gate's logits cast to fp16 and back."""
    from dyt_edge.calibration.tensorrt_onnx import check_precisions

    m = copy.deepcopy(fp16[0])
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


def test_checker_catches_a_gate_computed_in_fp16(fp16):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions

    m = copy.deepcopy(fp16[0])
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


def test_checker_catches_a_nonzero_zero_point(int8):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions

    m = copy.deepcopy(int8[0])
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    zp = next(t for t in m.graph.initializer if t.name == q.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), zp.name))
    problems = check_precisions(m)
    assert any("zero point 3" in p for p in problems), problems


def test_checker_catches_uint8_and_missing_zero_points_and_bad_scales(int8):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions

    m = copy.deepcopy(int8[0])
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


def test_checker_catches_qdq_in_front_of_layernorm(int8):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions

    m = copy.deepcopy(int8[0])
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


def test_checker_catches_a_quantized_gate_and_an_fp16_layernorm(exports, fp16):
    from dyt_edge.calibration.tensorrt_onnx import check_precisions

    m = load(exports, "topk")
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

    m16 = copy.deepcopy(fp16[0])
    ln = next(n for n in m16.graph.node if n.op_type == "LayerNormalization")
    cast_in = next(n for n in m16.graph.node if ln.input[0] in n.output)
    ln.input[0] = cast_in.input[0]  # fp16 into LayerNorm
    problems = check_precisions(m16)
    assert any(p.startswith(f"LayerNormalization {ln.name}") for p in problems), problems


# -- bad input ------------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors(exports, fp16, images):
    from dyt_edge.calibration.tensorrt_onnx import GraphConversionError, to_fp16, to_qdq_int8
    from dyt_edge.errors import DytEdgeError

    original = load(exports, "topk")
    old = copy.deepcopy(original)
    old.opset_import[0].version = 16
    with pytest.raises(GraphConversionError, match="opset 16.*opset >= 17"):
        to_fp16(old)
    with pytest.raises(GraphConversionError, match="already holds fp16"):
        to_fp16(fp16[0])
    no_masks = copy.deepcopy(original)
    keep = [o for o in no_masks.graph.output if o.name != "masks"]
    del no_masks.graph.output[:]
    no_masks.graph.output.extend(keep)
    with pytest.raises(GraphConversionError, match="no 'masks' output"):
        to_fp16(no_masks)
    with pytest.raises(GraphConversionError, match=r"float32 \[N, 3, H, W\]"):
        to_qdq_int8(original, images[:4].astype(np.float64))
    with pytest.raises(GraphConversionError, match="the model takes"):
        to_qdq_int8(original, images[:4, :, :16, :16])
    with pytest.raises(GraphConversionError, match="unknown calibration method"):
        to_qdq_int8(original, images[:4], method="kl")
    with pytest.raises(DytEdgeError, match="manifest names 3"):
        to_fp16(original, dispatcher_names=["a", "b", "c"])
    # the input model is never modified
    assert original.SerializeToString() == load(exports, "topk").SerializeToString()


def test_write_model_is_atomic_and_loadable(tmp_path, fp16):
    from dyt_edge.calibration.tensorrt_onnx import write_model

    path = tmp_path / "model.fp16.onnx"
    size = write_model(fp16[0], path)
    assert path.stat().st_size == size
    assert onnx.load(str(path)).SerializeToString() == fp16[0].SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["model.fp16.onnx"]
