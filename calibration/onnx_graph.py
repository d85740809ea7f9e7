"""ONNX graph helpers shared by the precision conversions for TensorRT (:mod:`.onnx_fp16`,
:mod:`.onnx_qdq`) and their checker (:mod:`.onnx_precision`): reading types, attributes and
nodes, the source-graph checks, the float scope of a graph, writing a model.

Why TensorRT wants graphs with explicit precisions, and how the conversions were chosen and
measured, is in ``docs/calibration.md``.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Optional, Union

from ..errors import DytEdgeError
from .scope import MASKS_OUTPUT, FloatScope, onnx_float_scope


MIN_OPSET = 17
"""LayerNormalization is an ONNX op from opset 17; TensorRT maps it onto its normalization
layer (below 17 LayerNorm is decomposed and overflows in FP16)."""


QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


# Inputs whose float type does not have to match the node's precision.
ANY_TYPE_INPUTS = {("Shape", 0), ("Size", 0), ("Cast", 0), ("CastLike", 0)}


# Inputs that are float32 by definition whatever the node's precision.
FLOAT32_INPUTS = {("Resize", 2)}


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class GraphConversionError(DytEdgeError):
    """A graph that cannot be converted, or a conversion that broke the precision contract."""


def onnx_module():
    import onnx

    return onnx


def opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def named(model):
    """A copy of ``model`` in which every node has a unique name (the scope matches names)."""
    m = copy.deepcopy(model)
    seen: set[str] = set()
    for i, n in enumerate(m.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}" if not n.name else f"{n.name}_{i}"
        seen.add(n.name)
    return m


def elem_types(model) -> dict[str, int]:
    """Element type of every tensor: declared, initializers, and ONNX type inference."""
    onnx = onnx_module()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphConversionError(f"ONNX type inference fails on the graph ({first[:200]})",
                                   "re-export the model") from None
    g = inferred.graph
    types: dict[str, int] = {}
    for v in (*g.input, *g.output, *g.value_info):
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for n in g.node:
        if n.op_type == "Constant":
            t = attr(n, "value")
            if t is not None and n.output:
                types[n.output[0]] = t.data_type
    return types


def float_types():
    from onnx import TensorProto

    return {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def type_name(t: Optional[int]) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(t).lower() if t else "unknown"


def check_source(model) -> None:
    """The input of a converter: an fp32 DyT export at opset >= 17, not yet converted."""
    from onnx import TensorProto

    version = opset(model)
    if version < MIN_OPSET:
        raise GraphConversionError(
            f"the ONNX is at opset {version}; TensorRT needs opset >= {MIN_OPSET} to keep "
            "LayerNorm one LayerNormalization op (below that it is decomposed and overflows in "
            "FP16)", f"re-export with `dyt-edge export --opset {MIN_OPSET}` or newer")
    g = model.graph
    if MASKS_OUTPUT not in {o.name for o in g.output}:
        raise GraphConversionError(
            f"the ONNX has no '{MASKS_OUTPUT}' output, so its dispatch path cannot be found",
            "pass a model exported by `dyt-edge export`")
    if any(n.op_type in QDQ_OPS for n in g.node):
        raise GraphConversionError("the ONNX already holds QuantizeLinear/DequantizeLinear "
                                   "nodes", "convert the fp32 export, not a converted graph")
    if any(t.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16) for t in g.initializer):
        raise GraphConversionError("the ONNX already holds fp16/bf16 weights",
                                   "convert the fp32 export, not a converted graph")
    for n in g.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in n.attribute):
            raise GraphConversionError(f"node {n.name} ({n.op_type}) has a subgraph, which "
                                       "these conversions do not handle",
                                       "export without control flow")
    for t in g.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise GraphConversionError("the ONNX's weights are not loaded (external data)",
                                       "load it with onnx.load(path) before converting")


def float_scope(model, dispatcher_names: Optional[list[str]], **options) -> FloatScope:
    scope = onnx_float_scope(model, dispatcher_names, **options)
    missing = [d.name for d in scope.dispatchers if d.gate_linear is None]
    if missing:
        raise GraphConversionError(f"the gate MatMul of {missing[0]} was not found in the "
                                   "ONNX; its gate cannot be kept in fp32",
                                   "re-export the model, and report it if it persists")
    if dispatcher_names is not None and len(scope.dispatchers) != len(dispatcher_names):
        raise GraphConversionError(f"found {len(scope.dispatchers)} dispatchers in the ONNX, "
                                   f"the manifest names {len(dispatcher_names)}",
                                   "re-export the model")
    return scope


def verify(model, what: str) -> None:
    """ONNX checker with strict type inference: every node's input types agree."""
    onnx = onnx_module()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphConversionError(f"the {what} graph is not valid ONNX ({first[:300]})",
                                   "report it with the model") from None


def raise_on(problems: list[str], what: str) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GraphConversionError(f"the {what} graph breaks the precision contract: "
                                   f"{problems[0]}{more}", "report it with the model")


def write_model(model, path: Union[str, Path]) -> int:
    """Write a converted graph atomically (one file; the models here stay under 2 GB)."""
    from ..artifacts import atomic_write_bytes

    return atomic_write_bytes(path, model.SerializeToString())


def constants_to_initializers(model) -> None:
    """Float-valued ``Constant`` nodes become initializers (same values; the pass then gives
    each consumer the constant in its own precision instead of casting it)."""
    from onnx import TensorProto, numpy_helper

    keep = []
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.output:
            a = n.attribute[0]
            value = None
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                value = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_floats"):
                import numpy as np

                value = np.asarray(a.f if a.name == "value_float" else list(a.floats),
                                   dtype=np.float32)
            if value is not None:
                model.graph.initializer.append(numpy_helper.from_array(value, n.output[0]))
                continue
        keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def node_precisions(model) -> Counter:
    """Nodes by the float type they compute in: ``fp16`` / ``fp32`` (a Cast counts as ``cast``,
    nodes without float tensors as ``integer``)."""
    from onnx import TensorProto

    types = elem_types(model)
    counts: Counter = Counter()
    for n in model.graph.node:
        if n.op_type == "Cast":
            counts["cast"] += 1
            continue
        ts = {types.get(x) for x in (*n.input, *n.output) if x} & float_types()
        if TensorProto.FLOAT16 in ts:
            counts["fp16"] += 1
        elif ts:
            counts["fp32"] += 1
        else:
            counts["integer"] += 1
    return counts


def float_view(model):
    """``model`` without its Q/DQ: each DequantizeLinear(QuantizeLinear(x)) read as x, each
    dequantized weight as a float initializer. Node names are kept (for the float scope)."""
    import numpy as np
    from onnx import numpy_helper

    m = copy.deepcopy(model)
    g = m.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    alias: dict[str, str] = {}
    drop = []
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            src = producers.get(n.input[0])
            if src is not None and src.op_type == "QuantizeLinear":
                alias[n.output[0]] = src.input[0]
                drop.append(n)
            elif n.input[0] in inits and len(n.input) > 1 and n.input[1] in inits:
                x = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
                scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
                if scale.ndim == 1 and x.ndim > 1:
                    shape = [1] * x.ndim
                    shape[int(attr(n, "axis", 1)) % x.ndim] = -1
                    scale = scale.reshape(shape)
                g.initializer.append(numpy_helper.from_array(x * scale, n.output[0]))
                drop.append(n)
        elif n.op_type == "QuantizeLinear":
            drop.append(n)
    for n in drop:
        g.node.remove(n)
    for n in g.node:
        for i, x in enumerate(n.input):
            while x in alias:
                x = alias[x]
            n.input[i] = x
    for o in g.output:
        if o.name in alias:  # a graph output read through Q/DQ: keep its producer visible
            g.node.append(identity(alias[o.name], o.name))
    return m


def identity(src: str, dst: str):
    from onnx import helper

    return helper.make_node("Identity", [src], [dst], name=f"{dst}__identity")


def drop_dead(model) -> None:
    """Remove Q/DQ nodes (and initializers) that no longer feed anything."""
    g = model.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {x for n in g.node for x in n.input if x} | outputs
        dead = [n for n in g.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {x for n in g.node for x in n.input if x}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
