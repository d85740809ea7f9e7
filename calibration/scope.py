"""Which nodes of a DyT graph stay in float when the rest is quantized to INT8.

The float scope is derived from the graph's data flow, not from node names, so it works on the
exported ONNX, on the OpenVINO IR converted from it (where ONNX ops are renamed, split or fused:
``Gemm`` -> ``MatMul`` + ``Add``, ``LayerNormalization`` -> ``MVN`` (+ ``Multiply`` / ``Add``),
``ScatterND`` -> ``ScatterNDUpdate``, the erf GELU -> ``Gelu``), and on simplified graphs. One
walker serves both through a small graph view (:func:`openvino_view`, :func:`onnx_view`): NNCF's
OpenVINO ``IgnoredScope`` (this issue) and the ONNX Q/DQ scope for TensorRT (issue #5) are the
same analysis.

Reasons a node is kept in float (each node gets the first that applies):

``gate``        every dispatcher's gate: the gate MatMul / Gemm (weights and input stay fp32),
                its bias Add, reshapes, Sigmoid and the compare that makes the decision. Found
                by walking back from each decision that feeds the ``masks`` output.
``dispatch``    TopK, GatherND / Gather / GatherElements, ScatterND / ScatterElements, NonZero
                driven by a gate, and the ops where the dispatch touches token data (masking a
                sub-block's output, the attention key mask).
``index``       the arithmetic between them: active counts (Cast, ReduceSum), K (ReduceMax,
                Clip), index tensors (Range, Expand, Unsqueeze, Concat, ...), and the shape
                arithmetic (from Shape / ShapeOf) that feeds them.
``layernorm``   LayerNormalization / MVN and its affine Multiply / Add.
``softmax``     Softmax (a ScaledDotProductAttention computes its softmax in float whatever its
                inputs; it is not listed).
``gelu``        Gelu, or the erf pattern ``x * 0.5 * (1 + erf(x / sqrt 2))``.
``residual``    Adds of two activations (the residual stream).
``first_layer`` / ``last_layer`` (optional) the patch embedding and the classifier head.

NNCF never puts a quantizer on the inputs of an ignored node (and leaves its weights alone), so
ignoring the gate MatMul keeps the gate's input, weight and logits in fp32, and ignoring the
dispatch ops keeps quantizers off the index path. :func:`quantizer_violations` checks a
quantized OpenVINO model afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

REASONS = ("gate", "dispatch", "index", "layernorm", "softmax", "gelu", "residual",
           "first_layer", "last_layer")
MASKS_OUTPUT = "masks"
LOGITS_OUTPUT = "logits"

# OpenVINO op types -> the ONNX spelling the walker uses.
_CANONICAL = {
    "ScatterNDUpdate": "ScatterND", "ScatterElementsUpdate": "ScatterElements",
    "ScatterUpdate": "Scatter", "Convert": "Cast", "ShapeOf": "Shape", "Broadcast": "Expand",
    "Multiply": "Mul", "Subtract": "Sub", "Divide": "Div", "Clamp": "Clip", "Select": "Where",
    "Power": "Pow", "SoftMax": "Softmax", "LogSoftmax": "LogSoftmax", "Parameter": "Input",
    "Result": "Output", "Convolution": "Conv", "MVN": "MVN", "Gelu": "Gelu",
    "ScaledDotProductAttention": "SDPA", "FakeQuantize": "FakeQuantize",
}
_DECISION_PASS = {"Concat", "Unsqueeze", "Cast", "Identity", "Reshape", "Squeeze"}
_GATE_OPS = {"Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Sigmoid", "Squeeze",
             "Unsqueeze", "Reshape", "Add", "Cast", "Identity", "Flatten", "Transpose"}
_COMPARE = {"Greater", "GreaterOrEqual", "Less", "LessOrEqual"}
DISPATCH_TYPES = {"TopK", "GatherND", "ScatterND", "NonZero", "Gather", "GatherElements",
                  "ScatterElements", "Scatter"}
_LINEAR = {"MatMul", "Gemm"}
_GELU_CHAIN = {"Add", "Mul", "Div"}


@dataclass
class GraphView:
    """A graph reduced to what the walker needs. Node ids are positions in topological order."""

    names: list[str]
    types: list[str]
    """Canonical (ONNX-spelled) op types."""
    inputs: list[list[Optional[int]]]
    """Per node, per input port: the producing node id (None: a graph input or a weight)."""
    const: list[bool]
    """True for constants (Constant nodes, initializers)."""
    integral: list[bool]
    """True when every output of the node is an integer or boolean tensor."""
    outputs: dict[str, int]
    """Graph output name -> producing node id."""
    consumers: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cons: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for n, ins in enumerate(self.inputs):
            for port, p in enumerate(ins):
                if p is not None:
                    cons[p].append((n, port))
        self.consumers = dict(cons)

    def __len__(self) -> int:
        return len(self.names)

    def dynamic_inputs(self, n: int) -> list[int]:
        """Producers of ``n``'s non-constant inputs."""
        return [p for p in self.inputs[n] if p is not None and not self.const[p]]

    def has_const_input(self, n: int) -> bool:
        return any(p is None or self.const[p] for p in self.inputs[n])


@dataclass
class Dispatch:
    """One dispatcher as the walker found it."""

    name: str
    decision: str
    """Name of the compare node whose output is the decision."""
    gate_linear: Optional[str]
    """Name of the gate's MatMul / Gemm (or, stored as ``ReduceSum(x * w)``, its Multiply)."""


@dataclass
class FloatScope:
    """Nodes kept in float, by reason."""

    reasons: dict[str, str]
    """Node name -> reason."""
    dispatchers: list[Dispatch]
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.reasons)

    def by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {r: [] for r in REASONS}
        for name, reason in self.reasons.items():
            out.setdefault(reason, []).append(name)
        return {k: v for k, v in out.items() if v}

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.by_reason().items()}

    def summary(self) -> dict[str, Any]:
        """What the manifest records."""
        return {"nodes": len(self.reasons), "by_reason": self.counts(),
                "dispatchers": len(self.dispatchers),
                "gate_linear": [d.gate_linear for d in self.dispatchers], "notes": self.notes}

    def nncf_ignored_scope(self, validate: bool = True):
        """An ``nncf.IgnoredScope`` naming every node of the scope."""
        import nncf

        return nncf.IgnoredScope(names=self.names, validate=validate)


# -- graph views ----------------------------------------------------------------------------------

def openvino_view(model) -> GraphView:
    """A view of an ``openvino.Model`` (friendly names, the names NNCF matches)."""
    ops = list(model.get_ordered_ops())
    index = {id_(op): i for i, op in enumerate(ops)}
    names, types, inputs, const, integral = [], [], [], [], []
    outputs: dict[str, int] = {}
    for op in ops:
        t = op.get_type_name()
        names.append(op.get_friendly_name())
        types.append(_CANONICAL.get(t, t))
        ins = []
        for v in op.input_values():
            ins.append(index.get(id_(v.get_node())))
        inputs.append(ins)
        const.append(t == "Constant")
        n_out = op.get_output_size()
        integral.append(n_out > 0 and all(
            op.get_output_element_type(i).is_integral() for i in range(n_out)))
        if t == "Result":
            src = op.input_value(0)
            for tensor_name in src.get_names():
                outputs[tensor_name] = index[id_(src.get_node())]
    return GraphView(names, types, inputs, const, integral, outputs)


def id_(op) -> int:
    """A stable identity for an OpenVINO node (Python wrappers differ between calls)."""
    return op.get_instance_id() if hasattr(op, "get_instance_id") else hash(op)


def onnx_view(model) -> GraphView:
    """A view of an ``onnx.ModelProto`` (node names, as NNCF's ONNX backend and ONNX Runtime's
    quantizer name them). Element types come from ONNX shape inference."""
    import onnx
    from onnx import TensorProto

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to what the graph declares
        inferred = model
    g = inferred.graph
    elem: dict[str, int] = {}
    for v in (*g.input, *g.output, *g.value_info):
        if v.type.tensor_type.elem_type:
            elem[v.name] = v.type.tensor_type.elem_type
    inits = {t.name for t in g.initializer}
    for t in g.initializer:
        elem[t.name] = t.data_type
    int_types = {TensorProto.BOOL, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32,
                 TensorProto.INT64, TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32,
                 TensorProto.UINT64}
    nodes = list(g.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    names, types, inputs, const, integral = [], [], [], [], []
    for i, n in enumerate(nodes):
        names.append(n.name or f"{n.op_type}_{i}")
        types.append(n.op_type)
        inputs.append([None if (x in inits or x not in producer) else producer[x]
                       for x in n.input if x])
        const.append(n.op_type == "Constant")
        outs = [o for o in n.output if o]
        integral.append(bool(outs) and all(elem.get(o) in int_types for o in outs))
    outputs = {o.name: producer[o.name] for o in g.output if o.name in producer}
    return GraphView(names, types, inputs, const, integral, outputs)


# -- the walk -------------------------------------------------------------------------------------

def _decisions(view: GraphView) -> list[int]:
    """Per-dispatcher decision nodes feeding ``masks``, in row order."""
    if MASKS_OUTPUT not in view.outputs:
        return []

    def leaves(n: int) -> list[int]:
        if view.types[n] not in _DECISION_PASS:
            return [n]
        dyn = view.dynamic_inputs(n)
        if view.types[n] == "Concat":
            return [leaf for p in dyn for leaf in leaves(p)]
        return leaves(dyn[0]) if dyn else [n]

    return leaves(view.outputs[MASKS_OUTPUT])


def _gate_nodes(view: GraphView, decision: int) -> tuple[list[int], Optional[int]]:
    """The gate path from a decision back to (and including) the gate MatMul / Gemm."""
    nodes: list[int] = []
    n: Optional[int] = decision
    for _ in range(24):
        if n is None:
            break
        t = view.types[n]
        if t in _LINEAR:
            nodes.append(n)
            return nodes, n
        if t == "ReduceSum":  # the gate stored as ReduceSum(x * w) (an f32-gated OpenVINO build)
            dyn = view.dynamic_inputs(n)
            if len(dyn) == 1 and view.types[dyn[0]] == "Mul" and \
                    len(view.dynamic_inputs(dyn[0])) == 1:
                nodes.extend((n, dyn[0]))
                return nodes, dyn[0]
            break
        if t not in _GATE_OPS:
            break
        nodes.append(n)
        dyn = view.dynamic_inputs(n)
        if t == "Add" and len(dyn) != 1:
            break  # an Add of two activations is not the gate's bias
        n = dyn[0] if dyn else None
    return nodes, None


def _shape_derived(view: GraphView) -> set[int]:
    """Nodes that compute only from tensor shapes and constants (Shape and what follows it)."""
    derived: set[int] = set()
    for n in range(len(view)):
        if view.types[n] == "Shape":
            derived.add(n)
            continue
        if view.const[n] or not view.integral[n]:
            continue
        dyn = view.dynamic_inputs(n)
        if dyn and all(p in derived for p in dyn):
            derived.add(n)
    return derived


def float_scope(view: GraphView, dispatcher_names: Optional[list[str]] = None, *,
                layernorm: bool = True, softmax: bool = True, gelu: bool = True,
                residual: bool = True, first_layer: bool = False,
                last_layer: bool = False) -> FloatScope:
    """The float scope of a DyT graph (see the module doc for the reasons)."""
    reasons: dict[int, str] = {}
    notes: list[str] = []

    def keep(n: int, reason: str) -> None:
        if not view.const[n] and view.types[n] not in ("Input", "Output"):
            reasons.setdefault(n, reason)

    # 1. gates, from each decision back to its MatMul
    dispatchers: list[Dispatch] = []
    tainted: set[int] = set()
    decisions = _decisions(view)
    for row, d in enumerate(decisions):
        nodes, linear = _gate_nodes(view, d)
        if view.types[d] not in _COMPARE:
            notes.append(f"masks row {row}: decision made by {view.types[d]} "
                         f"{view.names[d]}, not a compare")
        if linear is None:
            notes.append(f"masks row {row}: gate MatMul not found behind {view.names[d]}")
        for n in nodes:
            keep(n, "gate")
        tainted.update(nodes)
        name = (dispatcher_names[row] if dispatcher_names and row < len(dispatcher_names)
                else f"dispatcher.{row}")
        dispatchers.append(Dispatch(name, view.names[d],
                                    view.names[linear] if linear is not None else None))
    if dispatcher_names is not None and len(decisions) != len(dispatcher_names):
        notes.append(f"found {len(decisions)} dispatchers in the graph, the manifest names "
                     f"{len(dispatcher_names)}")

    # 2. forward from the gates: pure functions of gate outputs (and shapes) are dispatch
    #    arithmetic; an op mixing them with token data is where dispatch touches data.
    shapes = _shape_derived(view)
    gate_linears = {n for n in tainted if view.types[n] in _LINEAR}
    for n in range(len(view)):
        if n in tainted or view.const[n]:
            continue
        dyn = view.dynamic_inputs(n)
        if not any(p in tainted for p in dyn):
            continue
        if any(p in gate_linears for p in dyn) and view.types[n] not in _GATE_OPS:
            continue  # a MatMul output used elsewhere: not ours
        data = [p for p in dyn if p not in tainted and p not in shapes]
        t = view.types[n]
        keep(n, "dispatch" if ((t in DISPATCH_TYPES and t != "Gather") or data) else "index")
        if not data:
            tainted.add(n)

    # 3. the shape arithmetic feeding the dispatch ops (Range over the batch, Expand, ...)
    stack = [n for n in reasons]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for p in view.dynamic_inputs(n):
            if p in shapes and view.types[p] != "Shape":
                keep(p, "index")
                stack.append(p)

    # 4. LayerNorm, Softmax, GELU, residual adds
    for n in range(len(view)):
        t = view.types[n]
        if layernorm and t in ("LayerNormalization", "MVN"):
            keep(n, "layernorm")
            if t == "MVN":  # the affine part OpenVINO leaves behind: MVN -> Mul(g) -> Add(b)
                m = n
                for want in ("Mul", "Add"):
                    nxt = [c for c, _ in view.consumers.get(m, [])
                           if view.types[c] == want and view.has_const_input(c)]
                    if len(nxt) != 1 or len(view.consumers.get(m, [])) != 1:
                        break
                    m = nxt[0]
                    keep(m, "layernorm")
        elif softmax and t in ("Softmax", "LogSoftmax"):
            keep(n, "softmax")
        elif gelu and t == "Gelu":
            keep(n, "gelu")
        elif gelu and t == "Erf":
            for n2 in _erf_gelu(view, n):
                keep(n2, "gelu")
    if residual:
        for n in range(len(view)):
            if view.types[n] == "Add" and not view.integral[n]:
                dyn = view.dynamic_inputs(n)
                if len(dyn) == 2 and not view.has_const_input(n) and not any(
                        view.integral[p] for p in dyn):
                    keep(n, "residual")
    if first_layer:
        for n in range(len(view)):
            if view.types[n] in ("Conv", "MatMul", "Gemm") and any(
                    p is not None and view.types[p] == "Input" for p in view.inputs[n]):
                keep(n, "first_layer")
    if last_layer and LOGITS_OUTPUT in view.outputs:
        n = view.outputs[LOGITS_OUTPUT]
        for _ in range(4):
            if view.types[n] in _LINEAR:
                keep(n, "last_layer")
                break
            dyn = view.dynamic_inputs(n)
            if len(dyn) != 1:
                break
            n = dyn[0]
    if view.types.count("SDPA"):
        notes.append(f"{view.types.count('SDPA')} ScaledDotProductAttention ops compute their "
                     "softmax in float (their Q/K/V inputs may be quantized)")
    ordered = sorted(reasons)
    return FloatScope({view.names[n]: reasons[n] for n in ordered}, dispatchers, notes)


def _erf_gelu(view: GraphView, erf: int) -> list[int]:
    """The nodes of ``x * 0.5 * (1 + erf(x / sqrt(2)))`` around an Erf node."""
    out = [erf]
    for p in view.dynamic_inputs(erf):
        if view.types[p] in ("Div", "Mul") and view.has_const_input(p):
            out.append(p)
    n = erf
    for _ in range(3):
        nxt = [c for c, _ in view.consumers.get(n, []) if view.types[c] in _GELU_CHAIN]
        if len(nxt) != 1:
            break
        n = nxt[0]
        out.append(n)
    return out


# -- convenience ----------------------------------------------------------------------------------

def openvino_float_scope(model, dispatcher_names: Optional[list[str]] = None,
                         **options: bool) -> FloatScope:
    return float_scope(openvino_view(model), dispatcher_names, **options)


def onnx_float_scope(model, dispatcher_names: Optional[list[str]] = None,
                     **options: bool) -> FloatScope:
    return float_scope(onnx_view(model), dispatcher_names, **options)


def quantizer_violations(model, scope: FloatScope) -> list[str]:
    """Quantizers (FakeQuantize) of a quantized OpenVINO model that touch the float scope:
    one feeding a node of the scope (or any LayerNorm / Softmax / GELU), or one quantizing a
    value computed by the gate. Also SmoothQuant scales inserted in front of a scope node.
    Empty when the model is clean."""
    problems = []
    names = set(scope.reasons)
    gate_like = {n for n, r in scope.reasons.items() if r in ("gate", "index")}
    float_types = {"MVN", "Softmax", "SoftMax", "LogSoftmax", "Gelu"}
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        smooth = t == "Multiply" and "nncf_smooth_quant" in op.get_friendly_name()
        if t != "FakeQuantize" and not smooth:
            continue
        src = op.input_value(0).get_node()
        if src.get_friendly_name() in gate_like:
            problems.append(f"{op.get_friendly_name()} quantizes the output of "
                            f"{src.get_friendly_name()} ({scope.reasons[src.get_friendly_name()]})")
        for target in op.output(0).get_target_inputs():
            node = target.get_node()
            fname = node.get_friendly_name()
            if fname in names or node.get_type_name() in float_types:
                why = scope.reasons.get(fname, node.get_type_name())
                problems.append(f"{op.get_friendly_name()} feeds {fname} ({why})")
    return problems


def count_quantizers(model) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def describe(scope: FloatScope) -> str:
    """One line: 'gate 12, dispatch 12, index 40, layernorm 7, ...'."""
    return ", ".join(f"{k} {v}" for k, v in scope.counts().items()) or "empty"


__all__ = ["REASONS", "Dispatch", "FloatScope", "GraphView", "count_quantizers", "describe",
           "float_scope", "onnx_float_scope", "onnx_view", "openvino_float_scope",
           "openvino_view", "quantizer_violations"]
