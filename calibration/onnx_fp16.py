"""ONNX -> FP16 for TensorRT's strongly typed networks, except what must stay fp32.

:func:`to_fp16` keeps fp32 the dispatch path (each gate's MatMul / Gemm, bias, Sigmoid and
compare; the active counts, K, TopK / NonZero and the index arithmetic) and LayerNormalization;
graph inputs and outputs keep their types. Precision is decided per node, and one explicit
``Cast`` is inserted where a tensor crosses between the fp32 and fp16 regions, once per tensor,
in topological order. Why this is a pass of its own rather than ``onnxconverter-common``:
``docs/calibration.md``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, Optional

from .onnx_graph import (ANY_TYPE_INPUTS, FLOAT32_INPUTS, QDQ_OPS, GraphConversionError, attr,
                         check_source, constants_to_initializers, elem_types, float_scope,
                         float_view, named, node_precisions, raise_on, type_name, verify)
from .onnx_precision import check_precisions

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx


FP32_REASONS = ("gate", "index")
"""Scope reasons whose nodes stay fp32 in the FP16 graph (plus TopK / NonZero and LayerNorm).
Nodes the scope keeps for ``dispatch`` because they *move token data* (GatherND / ScatterND /
Where on activations) follow the data's precision: moving values is exact in any type, and
their index inputs are integers whatever the precision."""


FP32_OPS = {"TopK": "dispatch", "NonZero": "dispatch", "LayerNormalization": "layernorm"}


_FP16_MAX = 65504.0


def _fp16_array(values: "np.ndarray") -> tuple["np.ndarray", int]:
    """fp16 copy of an array, finite values beyond the fp16 range clamped: (array, clamped)."""
    import numpy as np

    finite = np.isfinite(values)
    over = finite & (np.abs(values) > _FP16_MAX)
    out = np.where(over, np.sign(values) * _FP16_MAX, values).astype(np.float16)
    return out, int(over.sum())


def to_fp16(model: "onnx.ModelProto", *, dispatcher_names: Optional[list[str]] = None
            ) -> tuple["onnx.ModelProto", dict[str, Any]]:
    """The export in FP16 with the dispatch path and LayerNorm in fp32 (see the module doc).

    ``model`` (an fp32 DyT export, opset >= 17) is left untouched. Returns the converted model
    and a report: nodes per precision, Casts inserted, the nodes kept in fp32 by reason, the
    weights converted, and the graph's inputs and outputs.
    """
    check_source(model)
    return fp16_pass(named(model), dispatcher_names, "FP16")


def fp16_pass(m, dispatcher_names: Optional[list[str]], what: str
               ) -> tuple["onnx.ModelProto", dict[str, Any]]:
    """:func:`to_fp16` on ``m`` (a named copy, changed in place), which may hold Q/DQ."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    constants_to_initializers(m)
    g = m.graph
    types = elem_types(m)
    has_qdq = any(n.op_type in QDQ_OPS for n in g.node)
    scope = float_scope(float_view(m) if has_qdq else m, dispatcher_names)
    nodes = list(g.node)
    inits = {t.name: t for t in g.initializer}

    def is_float32(name: str) -> bool:
        return types.get(name) == FLOAT

    # 1. which nodes stay fp32, and why
    kept: dict[str, str] = {}
    for n in nodes:
        reason = scope.reasons.get(n.name)
        if reason in FP32_REASONS:
            kept[n.name] = reason
        elif n.op_type in FP32_OPS:
            kept[n.name] = FP32_OPS[n.op_type]
    for n in nodes:
        for o in n.output:
            if o and o not in types and n.op_type not in ("Constant",):
                raise GraphConversionError(f"the type of {o} ({n.op_type} {n.name}) cannot be "
                                           "inferred", "re-export the model")
    # a node making floats from no float input (Cast of a mask, ConstantOfShape) whose every
    # consumer is fp32 runs in fp32 too: no fp16 detour between it and them
    consumers: dict[str, list] = defaultdict(list)
    for n in nodes:
        for i, x in enumerate(n.input):
            if x:
                consumers[x].append((n, i))
    outputs = {o.name for o in g.output}
    for n in reversed(nodes):
        if n.name in kept:
            continue
        float_in = [x for i, x in enumerate(n.input) if x and is_float32(x)
                    and (n.op_type, i) not in ANY_TYPE_INPUTS]
        float_out = [o for o in n.output if o and is_float32(o)]
        users = [c for o in float_out for c, _ in consumers.get(o, [])]
        if (float_out and not float_in and users and not any(o in outputs for o in float_out)
                and all(c.name in kept for c in users)):
            kept[n.name] = "source"

    # 2. graph outputs produced in fp16 get a Cast back to their declared type
    renamed: dict[str, str] = {}
    for o in g.output:
        if o.type.tensor_type.elem_type == FLOAT:
            prod = next((n for n in nodes if o.name in n.output), None)
            if prod is not None and prod.name not in kept:
                renamed[o.name] = f"{o.name}__fp16"
    for n in nodes:
        for i, x in enumerate(n.input):
            if x in renamed:
                n.input[i] = renamed[x]
        for i, x in enumerate(n.output):
            if x in renamed:
                n.output[i] = renamed[x]
    for old, new in renamed.items():
        types[new] = types[old]

    # 3. walk in topological order; every float tensor gets the precision of its producer
    now: dict[str, int] = {}  # float tensor -> its type in the new graph
    for v in g.input:
        if is_float32(v.name):
            now[v.name] = FLOAT
    half_inits: dict[str, str] = {}
    new_inits: list = []
    casts: dict[tuple[str, int], str] = {}
    stats = Counter()
    out_nodes: list = []

    def constant_as(name: str, want: int) -> str:
        if want == FLOAT:
            return name
        if name not in half_inits:
            arr, clamped = _fp16_array(numpy_helper.to_array(inits[name]))
            stats["clamped_values"] += clamped
            half_inits[name] = f"{name}__fp16"
            new_inits.append(numpy_helper.from_array(arr, half_inits[name]))
        return half_inits[name]

    def cast(name: str, want: int) -> str:
        key = (name, want)
        if key not in casts:
            suffix = "fp16" if want == HALF else "fp32"
            casts[key] = f"{name}__to_{suffix}"
            out_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want,
                                              name=f"{name}__cast_{suffix}"))
            now[casts[key]] = want
            stats["casts"] += 1
        return casts[key]

    for n in nodes:
        want = FLOAT if n.name in kept else HALF
        for i, x in enumerate(n.input):
            if not x or (n.op_type, i) in ANY_TYPE_INPUTS:
                continue
            need = FLOAT if (n.op_type, i) in FLOAT32_INPUTS else want
            if x in inits:
                if inits[x].data_type == FLOAT:
                    n.input[i] = constant_as(x, need)
                continue
            have = now.get(x)
            if have is not None and have != need:
                n.input[i] = cast(x, need)
        if want == HALF:
            if n.op_type == "Cast" and attr(n, "to") == FLOAT:
                for a in n.attribute:
                    if a.name == "to":
                        a.i = HALF
            elif n.op_type == "ConstantOfShape" and any(is_float32(o) for o in n.output):
                value = attr(n, "value")
                arr = (numpy_helper.to_array(value) if value is not None
                       else np.zeros(1, np.float32))
                del n.attribute[:]
                n.attribute.append(helper.make_attribute(
                    "value", numpy_helper.from_array(_fp16_array(arr)[0], "value")))
            elif n.op_type in ("EyeLike", "RandomNormalLike", "RandomUniformLike"):
                for a in n.attribute:
                    if a.name == "dtype" and a.i == FLOAT:
                        a.i = HALF
        for o in n.output:
            if o and types.get(o) == FLOAT:
                now[o] = want
        out_nodes.append(n)
        stats["fp32_nodes" if want == FLOAT else "fp16_nodes"] += 1
    for old, new in renamed.items():
        out_nodes.append(helper.make_node("Cast", [new], [old], to=FLOAT,
                                          name=f"{old}__cast_output"))
        stats["casts"] += 1

    # 4. initializers: fp32 ones still used stay, fp16 copies added, unused fp32 ones dropped
    used = {x for n in out_nodes for x in n.input if x}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits + new_inits)
    del g.node[:]
    g.node.extend(out_nodes)
    del g.value_info[:]
    verify(m, what)
    problems = check_precisions(m, dispatcher_names=dispatcher_names)
    raise_on(problems, what)

    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, reason in kept.items():
        by_reason[reason].append(name)
    float_nodes = node_precisions(m)
    weights = Counter()
    for t in g.initializer:
        if t.data_type in (FLOAT, HALF):
            weights[type_name(t.data_type)] += int(np.prod(t.dims)) if t.dims else 1
    report = {
        "precision": "fp16",
        "nodes": dict(float_nodes),
        "casts_inserted": int(stats["casts"]),
        "kept_fp32": {k: sorted(v) for k, v in sorted(by_reason.items())},
        "kept_fp32_counts": {k: len(v) for k, v in sorted(by_reason.items())},
        "weights": {"fp16_values": int(weights["float16"]),
                    "fp32_values": int(weights["float"]),
                    "clamped_to_fp16_range": int(stats["clamped_values"])},
        "inputs": {v.name: type_name(v.type.tensor_type.elem_type) for v in g.input},
        "outputs": {v.name: type_name(v.type.tensor_type.elem_type) for v in g.output},
        "dispatchers": [{"name": d.name, "gate": d.gate_linear, "decision": d.decision}
                        for d in scope.dispatchers],
    }
    return m, report
