"""ONNX graphs with explicit precisions for TensorRT's strongly typed networks (issue #5).

TensorRT 10 and 11 share one build path: a *strongly typed* network parsed from an ONNX whose
every tensor already has the precision it should run at (TensorRT 11 removed the FP16 / INT8
builder flags and the implicit INT8 calibrator, per its release notes). This module produces
those graphs on the CPU, from the fp32 export, and checks them:

:func:`to_fp16`
    The graph in FP16, except what must stay fp32: the dispatch path (each gate's MatMul /
    Gemm, bias, Sigmoid and compare; the active counts, K, TopK and the index arithmetic) and
    LayerNormalization (opset >= 17, so TensorRT maps it onto its normalization layer). Graph
    inputs and outputs keep their types (``images`` and ``logits`` fp32, ``masks`` bool).
    Where an fp16 tensor meets an fp32 node (or the reverse) there is one explicit ``Cast``, so
    the precision of every tensor is written in the graph.
:func:`to_qdq_int8`
    Explicit ``QuantizeLinear`` / ``DequantizeLinear`` pairs on the inputs and weights of every
    MatMul / Gemm / Conv outside the float scope (:mod:`.scope`: the dispatch path, LayerNorm,
    Softmax, GELU, residual adds), symmetric, int8, zero points 0 (what TensorRT accepts),
    per-channel weights, calibrated on images.
:func:`check_precisions`
    What TensorRT would get wrong or refuse, as a list of problems (both converters raise on a
    non-empty list).
:func:`parity`
    Converted vs original, both on ONNX Runtime's CPU provider: logit difference, top-1
    agreement and flipped gate decisions per dispatcher.

Library choices
---------------
FP16 is a pass of its own (:func:`to_fp16`), not ``onnxconverter-common`` (nor ONNX Runtime's
fork of it, ``onnxruntime.transformers.float16``). Given the dispatch nodes as a block list,
both cast every blocked node's float inputs to fp32 and its float outputs back to fp16, one node
at a time: a chain of blocked nodes such as the gate (Gemm -> Reshape -> Sigmoid -> Greater)
then round-trips its logits through fp16 between every op (measured on the tiny export), which is
the very loss the gate must never suffer (in fp16, ``sigmoid(logit) > 0.5`` rounds tiny positive
logits to exactly 0.5 and skips their tokens; in fp32 it equals ``logit > 0``), and they
append their Casts at the end of the node list, which is not topologically sorted (the ONNX
checker refuses it; TensorRT's parser reads nodes in order). Here precision is decided per
node (an fp32 region and an fp16 region) and a Cast is inserted only where a tensor crosses
between them, once per tensor, in topological order.

INT8 uses ONNX Runtime's ``quantize_static`` (QDQ format; already a dependency) with
``ActivationSymmetric`` / ``WeightSymmetric``, int8 activations and weights, per-channel
weights, ``op_types_to_quantize`` MatMul / Gemm / Conv, the float scope as ``nodes_to_exclude``,
``OpTypesToExcludeOutputQuantization`` for the same ops (without it ONNX Runtime also quantizes
their *outputs*, which puts Q/DQ in front of Softmax, GELU, the residual adds and on the
``logits`` output), ``QuantizeBias`` off (TensorRT takes no int32 bias Q/DQ) and
``CalibStridedMinMax`` = 1 (ONNX Runtime's histogram calibrators stack every image's tensors
into one array, which fails on the data-dependent token counts of ``topk`` exports; one image
per collection merges histograms instead and bounds memory). Afterwards every DequantizeLinear
output that reaches a node other than a quantized MatMul / Gemm / Conv is routed back to the
float tensor (a guard: ONNX Runtime shares one Q/DQ pair between all consumers of a tensor).

Running the converted graphs on ONNX Runtime's CPU provider
-----------------------------------------------------------
Both run unchanged (``CPUExecutionProvider``, every optimisation on). The CPU provider has fp16
kernels for few ops: on the tiny export, onnxruntime 1.32 wrapped Conv, MatMul, Gemm, Add,
Mul, Div, Reshape, Transpose, Slice, GatherND and ScatterND in Casts of its own (its
InsertCastTransformer, at session creation) and expanded Softmax into fp32 elementwise ops.
So no node has to be kept fp32 for ONNX Runtime's sake, the file a
TensorRT build reads is the same one, and the CPU parity of an FP16 graph measures fp16
*storage* (every tensor rounded to fp16 between ops, weights in fp16) with fp32 arithmetic,
close to what TensorRT's fp16 GEMMs do (fp32 accumulation) but not bit-exact to it. Q/DQ graphs
run through ONNX Runtime's own Q/DQ handling (int8 kernels where it fuses the pattern, else
dequantize + float op); either way the numerics are those of the Q/DQ rounding, which is what
TensorRT's int8 kernels compute too (up to accumulation order and its int8 rounding of the
GEMM inputs, the same values).

Calibration: ``minmax`` (the largest |x| seen, per tensor) by default; ``percentile`` (ONNX
Runtime's histogram, ``percentile`` of |x|, default 99.999) and ``entropy`` are available. The
tensors quantized here are the MatMul inputs of a ViT: LayerNorm outputs, GELU outputs,
attention probabilities and outputs. Their large values are not rare noise to clip away:
LayerNorm's outliers sit in a few fixed channels (present in every token), so a percentile high
enough to keep them changes nothing and a lower one cuts real signal. Measured on the digits
demo model (topk export, 300 training images, 359 held-out images): percentile 99.999 matched
MinMax (top-1 agreement 100% both, max logit diff on unflipped images 0.44 vs 0.38 at a logit
scale of 7.9, gate decisions flipped 0.55% vs 0.57%) at twice the calibration time; 99.99 was
worse (0.78, agreement 99.7%) and 99.9 much worse (2.0, agreement 97.2%, accuracy -1.1
points); entropy was worst of the first three (1.80, agreement 99.7%). Per-channel weights are
on by default (per-tensor: 1.28, agreement 99.7%). Leaving attention's two activation x
activation MatMuls in float (``attention_matmuls=False``) halved the flipped decisions (0.27%)
and the logit error (0.29); both settings kept accuracy (94.99%, within 0.3 point).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import DytEdgeError
from .scope import MASKS_OUTPUT, FloatScope, onnx_float_scope

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx

MIN_OPSET = 17
"""LayerNormalization is an ONNX op from opset 17; TensorRT maps it onto its normalization
layer (below 17 LayerNorm is decomposed and overflows in FP16)."""
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
QDQ_FP16_OPSET = 19
"""QuantizeLinear / DequantizeLinear take fp16 inputs and scales from opset 19."""
DEFAULT_PERCENTILE = 99.999
FP32_REASONS = ("gate", "index")
"""Scope reasons whose nodes stay fp32 in the FP16 graph (plus TopK / NonZero and LayerNorm).
Nodes the scope keeps for ``dispatch`` because they *move token data* (GatherND / ScatterND /
Where on activations) follow the data's precision: moving values is exact in any type, and
their index inputs are integers whatever the precision."""
FP32_OPS = {"TopK": "dispatch", "NonZero": "dispatch", "LayerNormalization": "layernorm"}
# Inputs whose float type does not have to match the node's precision.
_ANY_TYPE_INPUTS = {("Shape", 0), ("Size", 0), ("Cast", 0), ("CastLike", 0)}
# Inputs that are float32 by definition whatever the node's precision.
_FLOAT32_INPUTS = {("Resize", 2)}
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_PATH_REASONS = ("gate", "index")
"""What :func:`check_precisions` holds to fp32 (independent of what the converter keeps)."""
_FP16_MAX = 65504.0


class GraphConversionError(DytEdgeError):
    """A graph that cannot be converted, or a conversion that broke the precision contract."""


# -- helpers --------------------------------------------------------------------------------------

def _onnx():
    import onnx

    return onnx


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _named(model):
    """A copy of ``model`` in which every node has a unique name (the scope matches names)."""
    m = copy.deepcopy(model)
    seen: set[str] = set()
    for i, n in enumerate(m.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}" if not n.name else f"{n.name}_{i}"
        seen.add(n.name)
    return m


def _elem_types(model) -> dict[str, int]:
    """Element type of every tensor: declared, initializers, and ONNX type inference."""
    onnx = _onnx()
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
            t = _attr(n, "value")
            if t is not None and n.output:
                types[n.output[0]] = t.data_type
    return types


def _float_types():
    from onnx import TensorProto

    return {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def _type_name(t: Optional[int]) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(t).lower() if t else "unknown"


def _check_source(model) -> None:
    """The input of a converter: an fp32 DyT export at opset >= 17, not yet converted."""
    from onnx import TensorProto

    opset = _opset(model)
    if opset < MIN_OPSET:
        raise GraphConversionError(
            f"the ONNX is at opset {opset}; TensorRT needs opset >= {MIN_OPSET} to keep "
            "LayerNorm one LayerNormalization op (below that it is decomposed and overflows in "
            "FP16)", f"re-export with `dyt-edge export --opset {MIN_OPSET}` or newer")
    g = model.graph
    if MASKS_OUTPUT not in {o.name for o in g.output}:
        raise GraphConversionError(
            f"the ONNX has no '{MASKS_OUTPUT}' output, so its dispatch path cannot be found",
            "pass a model exported by `dyt-edge export`")
    if any(n.op_type in _QDQ for n in g.node):
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


def _scope(model, dispatcher_names: Optional[list[str]], **options) -> FloatScope:
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


def _verify(model, what: str) -> None:
    """ONNX checker with strict type inference: every node's input types agree."""
    onnx = _onnx()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphConversionError(f"the {what} graph is not valid ONNX ({first[:300]})",
                                   "report it with the model") from None


def _raise_on(problems: list[str], what: str) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GraphConversionError(f"the {what} graph breaks the precision contract: "
                                   f"{problems[0]}{more}", "report it with the model")


def write_model(model, path: Union[str, Path]) -> int:
    """Write a converted graph atomically (one file; the models here stay under 2 GB)."""
    from ..artifacts import atomic_write_bytes

    return atomic_write_bytes(path, model.SerializeToString())


# -- FP16 -----------------------------------------------------------------------------------------

def _constants_to_initializers(model) -> None:
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
    _check_source(model)
    return _fp16_pass(_named(model), dispatcher_names, "FP16")


def _fp16_pass(m, dispatcher_names: Optional[list[str]], what: str
               ) -> tuple["onnx.ModelProto", dict[str, Any]]:
    """:func:`to_fp16` on ``m`` (a named copy, changed in place), which may hold Q/DQ."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    _constants_to_initializers(m)
    g = m.graph
    types = _elem_types(m)
    has_qdq = any(n.op_type in _QDQ for n in g.node)
    scope = _scope(_float_view(m) if has_qdq else m, dispatcher_names)
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
                    and (n.op_type, i) not in _ANY_TYPE_INPUTS]
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
            if not x or (n.op_type, i) in _ANY_TYPE_INPUTS:
                continue
            need = FLOAT if (n.op_type, i) in _FLOAT32_INPUTS else want
            if x in inits:
                if inits[x].data_type == FLOAT:
                    n.input[i] = constant_as(x, need)
                continue
            have = now.get(x)
            if have is not None and have != need:
                n.input[i] = cast(x, need)
        if want == HALF:
            if n.op_type == "Cast" and _attr(n, "to") == FLOAT:
                for a in n.attribute:
                    if a.name == "to":
                        a.i = HALF
            elif n.op_type == "ConstantOfShape" and any(is_float32(o) for o in n.output):
                value = _attr(n, "value")
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
    _verify(m, what)
    problems = check_precisions(m, dispatcher_names=dispatcher_names)
    _raise_on(problems, what)

    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, reason in kept.items():
        by_reason[reason].append(name)
    float_nodes = _node_precisions(m)
    weights = Counter()
    for t in g.initializer:
        if t.data_type in (FLOAT, HALF):
            weights[_type_name(t.data_type)] += int(np.prod(t.dims)) if t.dims else 1
    report = {
        "precision": "fp16",
        "nodes": dict(float_nodes),
        "casts_inserted": int(stats["casts"]),
        "kept_fp32": {k: sorted(v) for k, v in sorted(by_reason.items())},
        "kept_fp32_counts": {k: len(v) for k, v in sorted(by_reason.items())},
        "weights": {"fp16_values": int(weights["float16"]),
                    "fp32_values": int(weights["float"]),
                    "clamped_to_fp16_range": int(stats["clamped_values"])},
        "inputs": {v.name: _type_name(v.type.tensor_type.elem_type) for v in g.input},
        "outputs": {v.name: _type_name(v.type.tensor_type.elem_type) for v in g.output},
        "dispatchers": [{"name": d.name, "gate": d.gate_linear, "decision": d.decision}
                        for d in scope.dispatchers],
    }
    return m, report


def _node_precisions(model) -> Counter:
    """Nodes by the float type they compute in: ``fp16`` / ``fp32`` (a Cast counts as ``cast``,
    nodes without float tensors as ``integer``)."""
    from onnx import TensorProto

    types = _elem_types(model)
    counts: Counter = Counter()
    for n in model.graph.node:
        if n.op_type == "Cast":
            counts["cast"] += 1
            continue
        ts = {types.get(x) for x in (*n.input, *n.output) if x} & _float_types()
        if TensorProto.FLOAT16 in ts:
            counts["fp16"] += 1
        elif ts:
            counts["fp32"] += 1
        else:
            counts["integer"] += 1
    return counts


# -- INT8 (explicit Q/DQ) -------------------------------------------------------------------------

class _Reader:
    """ONNX Runtime calibration data reader over [N, 3, H, W] images (range-aware, for
    ``CalibStridedMinMax``)."""

    def __init__(self, name: str, items: list["np.ndarray"]):
        self.name = name
        self.items = items
        self.pos = 0
        self.end = len(items)

    def get_next(self):
        if self.pos >= self.end:
            return None
        self.pos += 1
        return {self.name: self.items[self.pos - 1]}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self.items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pos, self.end = start_index, min(end_index, len(self.items))

    def rewind(self) -> None:
        self.pos, self.end = 0, len(self.items)


def _image_items(model, images: "np.ndarray") -> tuple[str, list["np.ndarray"]]:
    """The images as model inputs: one per item for a dynamic batch, else items of exactly the
    static batch (the last one filled up from the start)."""
    import numpy as np

    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 3 or x.dtype != np.float32:
        raise GraphConversionError(f"calibration images must be float32 [N, 3, H, W], got "
                                   f"{x.dtype} {list(x.shape)}")
    if len(x) == 0:
        raise GraphConversionError("no calibration images")
    if not np.isfinite(x).all():
        raise GraphConversionError("the calibration images hold NaN or infinite values")
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    want = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(want) == 4 and any(w is not None and w != s for w, s in zip(want[1:], x.shape[1:])):
        raise GraphConversionError(f"calibration images are {list(x.shape[1:])}, the model "
                                   f"takes {want[1:]}", "preprocess them per the manifest")
    batch = want[0] if want and want[0] else None
    if not batch or batch == 1:
        return inp.name, [x[i:i + 1] for i in range(len(x))]
    items = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.resize(x, (batch - len(chunk), *x.shape[1:]))])
        items.append(np.ascontiguousarray(chunk))
    return inp.name, items


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer warns through the root logger and prints its histogram
    progress on stdout."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def to_qdq_int8(model: "onnx.ModelProto", images: "np.ndarray", *, per_channel: bool = True,
                method: str = "minmax", percentile: float = DEFAULT_PERCENTILE,
                dispatcher_names: Optional[list[str]] = None, first_layer_float: bool = False,
                last_layer_float: bool = False, attention_matmuls: bool = True,
                float_precision: str = "fp32") -> tuple["onnx.ModelProto", dict[str, Any]]:
    """The export with explicit int8 Q/DQ on MatMul / Gemm / Conv (see the module doc).

    ``images``: calibration images, float32 [N, 3, H, W], preprocessed per the manifest (see
    :func:`~.data.load_calibration`). ``method``: ``minmax`` (default), ``percentile`` or
    ``entropy``. ``first_layer_float`` / ``last_layer_float`` keep the patch embedding / the
    classifier head unquantized; ``attention_matmuls=False`` leaves the two activation x
    activation MatMuls of attention (Q.K^T, P.V) in float. ``model`` is left untouched.

    ``float_precision``: what the unquantized rest computes in. ``fp32`` (the export's own
    types) or ``fp16``: then :func:`to_fp16`'s pass runs on the Q/DQ graph too (the dispatch
    path and LayerNorm stay fp32; Q/DQ scales become fp16, which needs opset 19, so the graph
    is marked opset 19). A strongly typed TensorRT network runs every unquantized layer at the
    graph's type, so ``fp16`` is the faster engine (ModelOpt's ``high_precision_dtype``).
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if float_precision not in ("fp32", "fp16"):
        raise GraphConversionError(f"unknown float precision {float_precision!r}",
                                   "choose fp32 or fp16")
    if method not in CALIBRATION_METHODS:
        raise GraphConversionError(f"unknown calibration method {method!r}",
                                   f"choose one of: {', '.join(CALIBRATION_METHODS)}")
    if not 0 < percentile <= 100:
        raise GraphConversionError(f"the calibration percentile must be in (0, 100], got "
                                   f"{percentile}")
    _check_source(model)
    m = _named(model)
    scope = _scope(m, dispatcher_names, first_layer=first_layer_float,
                   last_layer=last_layer_float)
    name, items = _image_items(m, images)
    consts = {t.name for t in m.graph.initializer} | {
        o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    # activation x activation MatMuls (attention's Q.K^T and P.V); ONNX Runtime's QDQ
    # quantizer ignores its MatMulConstBOnly option, so they are excluded by name
    bmm = [n.name for n in m.graph.node if n.op_type == "MatMul"
           and not any(x in consts for x in n.input)]
    excluded = list(scope.reasons) + ([] if attention_matmuls else bmm)
    quantizable = [n.name for n in m.graph.node
                   if n.op_type in QUANTIZED_OPS and n.name not in excluded]
    calib = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
             "entropy": CalibrationMethod.Entropy}[method]
    extra = {
        "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        "CalibTensorRangeSymmetric": True, "CalibStridedMinMax": 1,
    }
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    with tempfile.TemporaryDirectory(prefix="dyt-edge-qdq-") as tmp:
        out = Path(tmp) / "int8.onnx"
        try:
            with _quiet():
                quantize_static(copy.deepcopy(m), str(out), _Reader(name, items),
                                quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(QUANTIZED_OPS),
                                per_channel=per_channel, reduce_range=False,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=excluded, calibrate_method=calib,
                                extra_options=extra)
        except DytEdgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GraphConversionError(f"ONNX Runtime's quantizer failed ({first[:300]})",
                                       "report it with the model") from exc
        q = onnx.load(str(out))
    rerouted = _reroute_float_consumers(q, set(quantizable))
    _drop_dead(q)
    _verify(q, "INT8 Q/DQ")
    problems = check_precisions(q, dispatcher_names=dispatcher_names)
    _raise_on(problems, "INT8 Q/DQ")
    fp16_report = None
    if float_precision == "fp16":
        for o in q.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, QDQ_FP16_OPSET)
        q.ir_version = max(q.ir_version, 9)
        q, fp16_report = _fp16_pass(q, dispatcher_names, "INT8 Q/DQ + FP16")

    g = q.graph
    producers = {o: n for n in g.node for o in n.output}
    covered, missing = [], []
    for n in g.node:
        if n.name not in quantizable:
            continue
        ins = [x for x in n.input[:2] if x]
        fed = [producers.get(x) is not None and producers[x].op_type == "DequantizeLinear"
               for x in ins]
        (covered if all(fed) else missing).append(n.name)
    qn = Counter(n.op_type for n in g.node if n.op_type in _QDQ)
    int8_weights = sum(1 for t in g.initializer if t.data_type == onnx.TensorProto.INT8
                       and len(t.dims) >= 2)
    report = {
        "precision": "int8",
        "format": "QDQ",
        "calibration": {"method": method, "percentile": percentile if method == "percentile"
                        else None, "images": int(len(images)), "items": len(items)},
        "per_channel": per_channel,
        "symmetric": True,
        "quantized_ops": list(QUANTIZED_OPS),
        "attention_matmuls": attention_matmuls,
        "attention_matmul_nodes": len(bmm),
        "quantized_nodes": len(covered),
        "quantizable_nodes": len(quantizable),
        "not_quantized": missing,
        "quantize_linear": int(qn["QuantizeLinear"]),
        "dequantize_linear": int(qn["DequantizeLinear"]),
        "int8_weights": int(int8_weights),
        "rerouted_to_float": rerouted,
        "float_precision": float_precision,
        "fp16": ({k: fp16_report[k] for k in ("nodes", "casts_inserted", "kept_fp32_counts")}
                 if fp16_report else None),
        "opset": _opset(q),
        "float_scope": scope.summary(),
        "float_scope_by_reason": scope.by_reason(),
    }
    return q, report


def _reroute_float_consumers(model, quantized: set[str]) -> list[str]:
    """Consumers of a DequantizeLinear output that are not quantized MatMul / Gemm / Conv nodes
    read the float tensor the QuantizeLinear quantized instead. Returns their names."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    moved = []
    for n in g.node:
        if n.op_type in _QDQ or n.name in quantized:
            continue
        for i, x in enumerate(n.input):
            dq = producers.get(x)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                n.input[i] = q.input[0]
                moved.append(n.name)
    return moved


def _drop_dead(model) -> None:
    """Remove Q/DQ nodes (and initializers) that no longer feed anything."""
    g = model.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {x for n in g.node for x in n.input if x} | outputs
        dead = [n for n in g.node if n.op_type in _QDQ and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {x for n in g.node for x in n.input if x}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


# -- checks ---------------------------------------------------------------------------------------

def _float_view(model):
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
                    shape[int(_attr(n, "axis", 1)) % x.ndim] = -1
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
            g.node.append(_identity(alias[o.name], o.name))
    return m


def _identity(src: str, dst: str):
    from onnx import helper

    return helper.make_node("Identity", [src], [dst], name=f"{dst}__identity")


def check_precisions(model: "onnx.ModelProto", *, dispatcher_names: Optional[list[str]] = None
                     ) -> list[str]:
    """Problems of a converted graph for TensorRT (empty when there are none):

    * a dispatch-path tensor that is not fp32: gate input / weight / bias / logits, the sigmoid
      output and the compare's inputs, TopK's scores (input and values output), and the float
      values the index arithmetic passes between dispatch nodes (TopK indices are int64);
    * LayerNormalization with a tensor that is not fp32 (or, below opset 17, no
      LayerNormalization at all);
    * a QuantizeLinear / DequantizeLinear without an int8 zero point of 0, with a scale that is
      not positive and finite, not fed by constants, quantizing a value of the dispatch path, or
      feeding anything but a MatMul / Gemm / Conv (so nothing of the float scope: LayerNorm,
      Softmax, GELU, residual adds, dispatch);
    * graph inputs / outputs not as exported (``images`` / ``logits`` fp32, ``masks`` bool).
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    FLOAT = TensorProto.FLOAT
    problems: list[str] = []
    m = _named(model)
    g = m.graph
    types = _elem_types(m)
    floats = _float_types()

    # graph I/O
    for v in g.input:
        if v.type.tensor_type.elem_type != FLOAT:
            problems.append(f"graph input {v.name} is "
                            f"{_type_name(v.type.tensor_type.elem_type)}, not float32")
    for v in g.output:
        t = v.type.tensor_type.elem_type
        want = TensorProto.BOOL if v.name == MASKS_OUTPUT else FLOAT
        if t != want:
            problems.append(f"graph output {v.name} is {_type_name(t)}, not "
                            f"{_type_name(want)}")

    # Q/DQ nodes
    inits = {t.name: t for t in g.initializer}
    const = {n.output[0]: _attr(n, "value") for n in g.node
             if n.op_type == "Constant" and n.output and _attr(n, "value") is not None}

    def value(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in const:
            return numpy_helper.to_array(const[name])
        return None

    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i, x in enumerate(n.input):
            if x:
                consumers[x].append((n, i))
    qdq = [n for n in g.node if n.op_type in _QDQ]
    for n in qdq:
        what = f"{n.op_type} {n.name}"
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"{what} has no zero point (TensorRT needs an explicit int8 zero "
                            "point of 0)")
        else:
            zp = value(n.input[2])
            zp_type = types.get(n.input[2])
            if zp is None:
                problems.append(f"{what}: its zero point {n.input[2]} is not a constant")
            elif zp_type != TensorProto.INT8:
                problems.append(f"{what}: zero point is {_type_name(zp_type)}, not int8")
            elif np.any(zp != 0):
                first = int(np.asarray(zp).flat[np.flatnonzero(zp)[0]])
                problems.append(f"{what}: zero point {first} is not 0 (TensorRT takes "
                                "symmetric quantization only)")
        scale = value(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            problems.append(f"{what}: its scale is not a constant")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            problems.append(f"{what}: scale not positive and finite "
                            f"(min {float(np.min(scale)):.3g})")
        if n.op_type == "DequantizeLinear":
            for c, _ in consumers.get(n.output[0], []):
                if c.op_type not in QUANTIZED_OPS:
                    problems.append(f"{what} feeds {c.op_type} {c.name} (Q/DQ belong on "
                                    "MatMul / Gemm / Conv inputs only)")
            if any(o.name == n.output[0] for o in g.output):
                problems.append(f"{what} produces the graph output {n.output[0]}")

    # the float scope, on the graph read without its Q/DQ
    view = _float_view(m) if qdq else m
    try:
        scope = onnx_float_scope(view, dispatcher_names)
    except Exception as exc:  # noqa: BLE001 - a graph the walker cannot read
        problems.append(f"the dispatch path cannot be traced ({type(exc).__name__}: {exc})")
        return problems
    if not scope.dispatchers:
        problems.append(f"no dispatcher found behind the '{MASKS_OUTPUT}' output")
    for d in scope.dispatchers:
        if d.gate_linear is None:
            problems.append(f"{d.name}: gate MatMul not found behind {d.decision}")
    reasons = scope.reasons
    vtypes = _elem_types(view) if qdq else types
    vnodes = {n.name: n for n in view.graph.node}
    vcons: dict[str, list] = defaultdict(list)
    for n in view.graph.node:
        for x in n.input:
            if x:
                vcons[x].append(n)

    def bad(name: str) -> bool:
        return vtypes.get(name) in floats and vtypes.get(name) != FLOAT

    on_path = {name for name, r in reasons.items() if r in _PATH_REASONS}
    on_path |= {n.name for n in view.graph.node if n.op_type in ("TopK", "NonZero")}
    checked: set[str] = set()
    for name in sorted(on_path, key=list(vnodes).index):
        n = vnodes[name]
        r = reasons.get(name, "dispatch")
        for i, x in enumerate(n.input):
            if not x or (n.op_type, i) in _ANY_TYPE_INPUTS or x in checked:
                continue
            if bad(x):
                checked.add(x)
                problems.append(f"{x} (input of {n.op_type} {name}, {r}) is "
                                f"{_type_name(vtypes.get(x))}, not float32")
        for x in n.output:
            if not x or x in checked or not bad(x):
                continue
            # a float value leaving the path (into token data) may take the data's type;
            # one that stays on it (read by the gate, index arithmetic, TopK) may not
            readers = vcons.get(x, [])
            if r == "gate" or n.op_type == "TopK" or any(c.name in on_path for c in readers):
                checked.add(x)
                problems.append(f"{x} (output of {n.op_type} {name}, {r}) is "
                                f"{_type_name(vtypes.get(x))}, not float32")
    for n in view.graph.node:
        if n.op_type == "TopK" and len(n.output) > 1 and \
                vtypes.get(n.output[1]) != TensorProto.INT64:
            problems.append(f"TopK {n.name}: indices are {_type_name(vtypes.get(n.output[1]))}")

    # LayerNorm
    lns = [n for n in view.graph.node if n.op_type == "LayerNormalization"]
    if not lns and _opset(m) < MIN_OPSET:
        problems.append(f"opset {_opset(m)} has no LayerNormalization op: TensorRT needs "
                        f"opset >= {MIN_OPSET} to run LayerNorm as one fp32 normalization")
    for n in lns:
        for x in (*n.input, *n.output[:1]):
            if x and vtypes.get(x) != FLOAT:
                problems.append(f"LayerNormalization {n.name}: {x} is "
                                f"{_type_name(vtypes.get(x))}, not float32")

    # Q/DQ and the dispatch path
    for n in qdq:
        if n.op_type != "QuantizeLinear":
            continue
        src = producers.get(n.input[0])
        while src is not None and src.op_type == "DequantizeLinear":  # chained Q/DQ
            src = producers.get(src.input[0])
        # gate and index values, and TopK's scores, are the dispatch path; the other nodes
        # kept for "dispatch" move token data (GatherND, ScatterND, Where, a Reshape to the
        # active count), whose values a MatMul may read quantized
        if src is not None and (reasons.get(src.name) in _PATH_REASONS
                                or src.op_type == "TopK"):
            problems.append(f"QuantizeLinear {n.name} quantizes {src.op_type} {src.name} "
                            f"({reasons[src.name]})")
        for c, _ in consumers.get(n.output[0], []):
            if c.op_type != "DequantizeLinear":
                problems.append(f"QuantizeLinear {n.name} feeds {c.op_type} {c.name}, not a "
                                "DequantizeLinear")
    for n in qdq:
        if n.op_type == "DequantizeLinear":
            for c, _ in consumers.get(n.output[0], []):
                if c.name in reasons:
                    problems.append(f"DequantizeLinear {n.name} feeds {c.op_type} {c.name} "
                                    f"({reasons[c.name]}, kept float)")
    return list(dict.fromkeys(problems))


# -- parity on ONNX Runtime -----------------------------------------------------------------------

def _session(model, threads: Optional[int]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GraphConversionError(f"ONNX Runtime cannot load the graph ({first[:300]})",
                                   "report it with the model") from exc


def run_onnx(model, images: "np.ndarray", *, batch: Optional[int] = None,
             threads: Optional[int] = None) -> tuple["np.ndarray", Optional["np.ndarray"]]:
    """(logits, masks) of ``model`` on ONNX Runtime's CPU provider. ``batch``: images per run
    (default: the model's static batch, else 16)."""
    import numpy as np

    sess = _session(model, threads)
    name = sess.get_inputs()[0].name
    static = sess.get_inputs()[0].shape[0]
    step = static if isinstance(static, int) and static > 0 else (batch or 16)
    x = np.asarray(images, dtype=np.float32)
    n = len(x)
    outs = [o.name for o in sess.get_outputs()]
    logits, masks = [], []
    for start in range(0, n, step):
        chunk = x[start:start + step]
        real = len(chunk)
        if isinstance(static, int) and static > 0 and real < static:
            chunk = np.concatenate([chunk, np.resize(x, (static - real, *x.shape[1:]))])
        values = dict(zip(outs, sess.run(None, {name: np.ascontiguousarray(chunk)})))
        logits.append(np.asarray(values["logits"], dtype=np.float32)[:real])
        if MASKS_OUTPUT in values:
            masks.append(np.asarray(values[MASKS_OUTPUT]).astype(bool)[:real])
    return (np.concatenate(logits),
            np.concatenate(masks) if masks and len(masks) == len(logits) else None)


def parity(original: "onnx.ModelProto", converted: "onnx.ModelProto", images: "np.ndarray", *,
           dispatcher_names: Optional[list[str]] = None, labels: Optional["np.ndarray"] = None,
           batch: Optional[int] = None, threads: Optional[int] = None) -> dict[str, Any]:
    """Converted vs original graph on ONNX Runtime (CPU), on the same images.

    Returns ``max_abs_diff``, ``mean_abs_diff``, ``max_abs_diff_unflipped`` (images where no gate
    decision flipped), ``logit_scale``, ``top1_agreement_pct``, ``flips`` / ``flip_pct`` and
    ``layers`` (per dispatcher: decisions, flips, active share on both), and with ``labels``
    the accuracy of both (the metrics of ``dyt-edge validate``, :func:`dyt_edge.validate.
    compare_outputs`).
    """
    from ..validate import compare_outputs

    r_logits, r_masks = run_onnx(original, images, batch=batch, threads=threads)
    t_logits, t_masks = run_onnx(converted, images, batch=batch, threads=threads)
    names = list(dispatcher_names or [])
    if r_masks is not None and len(names) != r_masks.shape[1]:
        names = [f"dispatcher.{i}" for i in range(r_masks.shape[1])]
    metrics, layers, notes = compare_outputs(r_logits, r_masks, t_logits, t_masks, labels,
                                             names)
    return {**metrics, "layers": layers, "notes": notes}


def summary(report: dict[str, Any]) -> str:
    """One line for a conversion report."""
    if report.get("precision") == "fp16":
        n = report["nodes"]
        kept = ", ".join(f"{k} {v}" for k, v in report["kept_fp32_counts"].items())
        return (f"FP16: {n.get('fp16', 0)} nodes compute in fp16, {n.get('fp32', 0)} in fp32, "
                f"{n.get('integer', 0)} on integers; kept out of fp16: {kept}; "
                f"{report['casts_inserted']} casts inserted")
    return (f"INT8 Q/DQ: {report['quantized_nodes']}/{report['quantizable_nodes']} MatMul/Gemm/"
            f"Conv quantized, {report['quantize_linear']} Q + {report['dequantize_linear']} DQ, "
            f"{report['calibration']['method']} calibration on "
            f"{report['calibration']['images']} images")


__all__ = ["CALIBRATION_METHODS", "GraphConversionError", "MIN_OPSET", "QUANTIZED_OPS",
           "check_precisions", "parity", "run_onnx", "summary", "to_fp16", "to_qdq_int8",
           "write_model"]
