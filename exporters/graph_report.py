"""What an exported DyT graph contains, read from the ONNX alone (no torch).

:func:`find_dispatchers` locates every token dispatcher by data flow, not by names (so it works
on simplified or renamed graphs): the ``masks`` output is a concatenation of one decision tensor
per dispatcher, in ``DyTConfig.dispatcher_names`` order; from each decision the gate is followed
back (``Greater <- Sigmoid <- Add(bias) <- MatMul(weight)``) and the dispatch forward (the TopK
fed by the gate's scores, or the NonZero fed by its mask, then every GatherND / ScatterND /
Gather whose *indices* derive from them).

:func:`analyze` adds the op census, the fp32 check of every gate path and a TensorRT
compatibility check (facts from the TensorRT ONNX parser's operator documentation, TensorRT
10.0-10.15 and 11.x, restated at :data:`TENSORRT_OPSETS`), and returns a :class:`GraphReport`
that is stored in the manifest
and rendered by :func:`render`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

import onnx
from onnx import TensorProto, numpy_helper

FLOAT = TensorProto.FLOAT
MASKS_OUTPUT = "masks"

# The decision tensors reach the `masks` output through these (stack = Unsqueeze + Concat).
_MASK_PASS = {"Concat", "Unsqueeze", "Cast", "Identity"}
# Gate path, walked backwards from a decision to the gate's MatMul.
_GATE_OPS = {"Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Sigmoid", "Squeeze",
             "Reshape", "Add", "Cast", "Identity", "Flatten"}
# Ops that carry gate scores / masks / token indices unchanged in meaning (forward walks).
_SCORE_PASS = {"Concat", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}
_INDEX_PASS = {"Concat", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten",
               "Expand", "Transpose", "Slice", "Tile"}
# Ops whose input 1 is a set of indices.
_INDEX_CONSUMERS = {"GatherND", "ScatterND", "Gather", "GatherElements", "ScatterElements"}
DISPATCH_OPS = ("TopK", "GatherND", "ScatterND", "NonZero", "Gather", "GatherElements",
                "ScatterElements")

# TensorRT facts (onnx-tensorrt's docs/operators.md for TensorRT 10.x / 11.x): TensorRT 10.0 /
# 10.1 parse opsets 9-20, 10.15+ and 11.x up to 24; TopK needs K < 3840 and sorted=1; ScatterND
# parses with reduction=none only; NonZero as a network output needs an output allocator.
TENSORRT_OPSETS = (("TensorRT 10.0 / 10.1", 9, 20), ("TensorRT 10.15+ / 11.x", 9, 24))
TENSORRT_TOPK_MAX_K = 3840  # K must be < 3840
TENSORRT_UNSUPPORTED_OPS = frozenset({
    "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
    "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul",
    "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
    "SequenceErase", "SequenceInsert", "SequenceLength", "SoftmaxCrossEntropyLoss",
    "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer",
    "Unique",
})


@dataclass
class Dispatcher:
    """One token dispatcher as found in the graph."""

    row: int
    """Row of the ``masks`` output (index into ``DyTConfig.dispatcher_names``)."""
    name: str
    mode: str
    """``topk`` (TopK, data-dependent K), ``capacity`` (TopK, static K), ``pack`` (NonZero), or
    ``dense`` (no dispatch ops: ``mask`` / ``complete`` exports)."""
    ops: dict[str, int]
    """Dispatch ops it uses: TopK / GatherND / ScatterND / NonZero / Gather ... -> count."""
    k: Optional[int]
    """Static K of its TopK (capacity) or None."""
    k_bound: Optional[int]
    """Largest K the TopK can take (the static K, or the token axis for a data-dependent K)."""
    topk_sorted: Optional[bool]
    gate_bias: Optional[str]
    """Name of the gate-bias initializer (None when not found, e.g. folded away)."""
    gate_weight: Optional[str]
    gate_fp32: bool
    gate_types: dict[str, str]
    """Gate-path tensor -> element type, for the tensors that were checked."""
    nodes: list[str] = field(default_factory=list)
    """Node names of its gate and dispatch ops."""


@dataclass
class TensorRTCheck:
    target: str
    ok: bool
    issues: list[str]


@dataclass
class GraphReport:
    opset: int
    ir_version: int
    nodes: int
    initializer_bytes: int
    op_census: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dispatchers: list[Dispatcher]
    gate_fp32: bool
    dispatch_ops: dict[str, int]
    """Totals over dispatchers."""
    tensorrt: list[TensorRTCheck]
    notes: list[str]
    deployment: dict[str, str] = field(default_factory=dict)
    """Per target (``onnxruntime``, ``openvino``, ``tensorrt``): what this graph's dispatch
    does there and why (:func:`deployment_notes`)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def modes(self) -> set[str]:
        return {d.mode for d in self.dispatchers}


# -- graph helpers ------------------------------------------------------------------------------

class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for n in self.nodes:
            for o in n.output:
                self.producer[o] = n
            for i, name in enumerate(n.input):
                if name:
                    self.consumers[name].append((n, i))
        self.initializers = {t.name: t for t in g.initializer}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list] = {}
        for v in (*g.input, *g.output, *g.value_info):
            tt = v.type.tensor_type
            if tt.elem_type:
                self.types[v.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else
                                       (d.dim_param or None) for d in tt.shape.dim]
        for t in g.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)
        self.outputs = [o.name for o in g.output]

    def constant(self, name: str):
        """The value of an initializer or Constant node output, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def type_name(self, name: str) -> str:
        t = self.types.get(name)
        return TensorProto.DataType.Name(t) if t else "unknown"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _mask_decisions(g: _Graph) -> list[str]:
    """The per-dispatcher decision tensors feeding the ``masks`` output, in row order."""
    if MASKS_OUTPUT not in g.outputs:
        return []

    def leaves(value: str) -> list[str]:
        node = g.producer.get(value)
        if node is None or node.op_type not in _MASK_PASS:
            return [value]
        if node.op_type == "Concat":
            return [leaf for i in node.input for leaf in leaves(i)]
        return leaves(node.input[0])

    return leaves(MASKS_OUTPUT)


def _gate_path(g: _Graph, decision: str) -> tuple[list[onnx.NodeProto], Optional[str],
                                                   Optional[str], Optional[str]]:
    """Walk back from a decision to the gate MatMul: (nodes, logit value, bias, weight)."""
    nodes: list[onnx.NodeProto] = []
    bias = weight = logit = None
    value = decision
    for _ in range(16):
        node = g.producer.get(value)
        if node is None:
            break
        if node.op_type in ("MatMul", "Gemm"):
            nodes.append(node)
            consts = [i for i in node.input[:2] if g.is_constant(i)]
            weight = consts[0] if consts else None
            if node.op_type == "Gemm" and len(node.input) > 2 and g.is_constant(node.input[2]):
                bias = bias or node.input[2]
            break
        if node.op_type not in _GATE_OPS:
            break
        nodes.append(node)
        if node.op_type == "Sigmoid" or (logit is None and node.op_type in
                                         ("Greater", "GreaterOrEqual", "Less", "LessOrEqual")
                                         and not any(n.op_type == "Sigmoid" for n in nodes)):
            logit = node.input[0]
        dynamic = [i for i in node.input if i and not g.is_constant(i)]
        if node.op_type == "Add":
            consts = [i for i in node.input if g.is_constant(i)]
            if consts:
                bias = consts[0]
        if not dynamic:
            break
        value = dynamic[0]
    return nodes, logit, bias, weight


def _forward(g: _Graph, starts: Iterable[str], passthrough: set[str]
             ) -> tuple[set[str], list[tuple[onnx.NodeProto, int]]]:
    """Values reachable from ``starts`` through ``passthrough`` ops, and every (node, input
    index) consuming one of them."""
    seen: set[str] = set()
    uses: list[tuple[onnx.NodeProto, int]] = []
    stack = list(starts)
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        for node, idx in g.consumers.get(v, []):
            uses.append((node, idx))
            if node.op_type in passthrough:
                stack.extend(o for o in node.output if o)
    return seen, uses


def find_dispatchers(model: onnx.ModelProto, names: Optional[list[str]] = None
                     ) -> list[Dispatcher]:
    """Every dispatcher of an exported DyT graph, in ``masks`` row order (see module doc).

    ``names`` (``DyTConfig.dispatcher_names``) label the rows; without them rows are
    ``dispatcher.<row>``.
    """
    return [d for d, _ in _find(_Graph(model), names)]


def locate(model: onnx.ModelProto, names: Optional[list[str]] = None
           ) -> list[tuple[Dispatcher, list[onnx.NodeProto]]]:
    """Like :func:`find_dispatchers`, with each dispatcher's gate and dispatch nodes (the
    NodeProtos of ``model``, for in-place edits)."""
    return _find(_Graph(model), names)


def _find(g: _Graph, names: Optional[list[str]]
          ) -> list[tuple[Dispatcher, list[onnx.NodeProto]]]:
    found = []
    for row, decision in enumerate(_mask_decisions(g)):
        name = names[row] if names and row < len(names) else f"dispatcher.{row}"
        gate_nodes, logit, bias, weight = _gate_path(g, decision)
        ops: Counter = Counter()
        dispatch_nodes: list[onnx.NodeProto] = []
        k = k_bound = None
        topk_sorted = None
        # TopK fed by the gate's scores (CLS + logits concatenated), NonZero fed by its mask.
        score_vals, score_uses = _forward(g, [logit] if logit else [], _SCORE_PASS)
        _, mask_uses = _forward(g, [decision], _SCORE_PASS)
        index_roots = []
        for node, idx in score_uses:
            if node.op_type == "TopK" and idx == 0 and node not in dispatch_nodes:
                dispatch_nodes.append(node)
                ops["TopK"] += 1
                index_roots.append(node.output[1])
                kv = g.constant(node.input[1])
                axis = int(_attr(node, "axis", -1))
                shape = g.shapes.get(node.input[0]) or []
                axis_len = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
                if kv is not None:
                    k = int(kv.reshape(-1)[0])
                    k_bound = k
                else:
                    k_bound = axis_len if isinstance(axis_len, int) else None
                topk_sorted = bool(_attr(node, "sorted", 1))
        for node, idx in mask_uses:
            if node.op_type == "NonZero" and node not in dispatch_nodes:
                dispatch_nodes.append(node)
                ops["NonZero"] += 1
                index_roots.append(node.output[0])
        _, index_uses = _forward(g, index_roots, _INDEX_PASS)
        for node, idx in index_uses:
            if node.op_type in _INDEX_CONSUMERS and idx == 1 and node not in dispatch_nodes:
                dispatch_nodes.append(node)
                ops[node.op_type] += 1
        if ops.get("NonZero"):
            mode = "pack"
        elif ops.get("TopK"):
            mode = "capacity" if k is not None else "topk"
        else:
            mode = "dense"
        # fp32 gate path: every float tensor between the gate MatMul and the decision, and the
        # TopK scores.
        checked: dict[str, str] = {}
        for node in gate_nodes:
            for v in list(node.input) + list(node.output):
                if not v or v == decision:
                    continue
                if node.op_type in ("Reshape", "Squeeze") and v in node.input[1:]:
                    continue
                checked[v] = g.type_name(v)
        for node in dispatch_nodes:
            if node.op_type == "TopK":
                checked[node.input[0]] = g.type_name(node.input[0])
        gate_fp32 = bool(gate_nodes) and all(t == "FLOAT" for t in checked.values())
        all_nodes = [*reversed(gate_nodes), *dispatch_nodes]
        found.append((Dispatcher(
            row=row, name=name, mode=mode, ops=dict(sorted(ops.items())), k=k, k_bound=k_bound,
            topk_sorted=topk_sorted,
            gate_bias=bias if bias in g.initializers else None,
            gate_weight=weight if weight in g.initializers else None,
            gate_fp32=gate_fp32, gate_types=checked,
            nodes=[n.name for n in all_nodes]), all_nodes))
    return found


# -- the report ---------------------------------------------------------------------------------

def _io(values, g: _Graph) -> list[dict[str, Any]]:
    return [{"name": v.name, "dtype": g.type_name(v.name).lower(),
             "shape": g.shapes.get(v.name, [])} for v in values]


def analyze(model: onnx.ModelProto, names: Optional[list[str]] = None) -> GraphReport:
    """Op census, dispatchers, gate precision and TensorRT compatibility of a DyT graph."""
    g = _Graph(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    census = dict(sorted(Counter(n.op_type for n in g.nodes).items(),
                         key=lambda kv: (-kv[1], kv[0])))
    dispatchers = [d for d, _ in _find(g, names)]
    notes: list[str] = []
    if MASKS_OUTPUT not in g.outputs:
        notes.append("no 'masks' output: dispatchers cannot be located")
    elif names is not None and len(dispatchers) != len(names):
        notes.append(f"found {len(dispatchers)} dispatchers in 'masks', expected {len(names)}")
    missing_bias = [d.name for d in dispatchers if d.gate_bias is None]
    if missing_bias:
        notes.append(f"gate bias not found as an initializer for {', '.join(missing_bias)}")
    totals: Counter = Counter()
    for d in dispatchers:
        totals.update(d.ops)
    init_bytes = sum(_tensor_bytes(t) for t in model.graph.initializer)
    report = GraphReport(
        opset=opset, ir_version=model.ir_version, nodes=len(g.nodes),
        initializer_bytes=init_bytes, op_census=census,
        inputs=_io(model.graph.input, g), outputs=_io(model.graph.output, g),
        dispatchers=dispatchers,
        gate_fp32=bool(dispatchers) and all(d.gate_fp32 for d in dispatchers),
        dispatch_ops=dict(sorted(totals.items())),
        tensorrt=_tensorrt_checks(g, opset, census, dispatchers),
        notes=notes, deployment=deployment_notes({d.mode for d in dispatchers}))
    return report


def deployment_notes(modes: set[str]) -> dict[str, str]:
    """What a graph whose dispatchers run ``modes`` (``pack``, ``topk``, ``capacity``,
    ``dense``) gets on each target, and why."""
    cpu = []
    trt = []
    if "pack" in modes:
        cpu.append("dispatchers pack the batch's active tokens into one matrix (NonZero / "
                   "GatherND / ScatterND): a batch costs its mean activation at every batch "
                   "size (an attention sub-block's LayerNorm and projections run on the packed "
                   "rows, its core padded per image to the busiest image)")
        trt.append("NonZero (TensorRT >= 8.5) gives the batch's active-token count M at run "
                   "time: exact, a batch costs its mean; M is a data-dependent shape (no CUDA "
                   "graphs)")
    if "topk" in modes:
        cpu.append("dispatchers gather per image (TopK, K = the batch's busiest image, padding "
                   "masked): a batch costs its busiest image")
        trt.append("TopK with a data-dependent K (TensorRT >= 8.6, K < 3840, sorted): exact, a "
                   "data-dependent shape (no CUDA graphs); a batch costs its busiest image")
    if "capacity" in modes:
        cpu.append("static K per layer (TopK with a constant K): a fixed cost; tokens beyond "
                   "the capacity are dropped (validate counts them)")
        trt.append("static K: static shapes, kernels for the exact shapes, CUDA graphs "
                   "possible; tokens beyond the capacity are dropped")
    if not modes - {"dense"}:
        cpu.append("no token skipping: every token is computed")
        trt.append("no token skipping: static shapes")
    if modes & {"pack", "topk"}:
        trt.append("for static shapes export --dispatch capacity --capacity C")
    cpu_text = "; ".join(cpu)
    return {"onnxruntime": cpu_text,
            "openvino": cpu_text + ("; the CPU plugin runs NonZero / TopK / GatherND / ScatterND "
                                    "with dynamic shapes, INT8 keeps the whole dispatch path "
                                    "float" if modes - {"dense"} else ""),
            "tensorrt": "; ".join(trt)}


def _tensor_bytes(t: TensorProto) -> int:
    if t.raw_data:
        return len(t.raw_data)
    n = 1
    for d in t.dims:
        n *= d
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # noqa: BLE001 - exotic types: count elements
        size = 1
    return n * size


def _tensorrt_checks(g: _Graph, opset: int, census: dict[str, int],
                     dispatchers: list[Dispatcher]) -> list[TensorRTCheck]:
    common: list[str] = []
    for node in g.nodes:
        if node.op_type == "TopK":
            if not _attr(node, "sorted", 1):
                common.append(f"TopK {node.name}: sorted=0 (TensorRT needs sorted=1)")
            kv = g.constant(node.input[1])
            if kv is not None and int(kv.reshape(-1)[0]) >= TENSORRT_TOPK_MAX_K:
                common.append(f"TopK {node.name}: K={int(kv.reshape(-1)[0])} "
                              f"(TensorRT needs K < {TENSORRT_TOPK_MAX_K})")
        if node.op_type == "ScatterND":
            red = _attr(node, "reduction", b"none")
            red = red.decode() if isinstance(red, bytes) else str(red)
            if red != "none":
                common.append(f"ScatterND {node.name}: reduction={red} (TensorRT parses "
                              "reduction=none only; use ScatterElements)")
        if node.op_type == "NonZero" and any(o in g.outputs for o in node.output):
            common.append(f"NonZero {node.name} is a network output: TensorRT needs an output "
                          "allocator for its data-dependent shape")
    for d in dispatchers:
        if d.k is None and d.ops.get("TopK"):
            if d.k_bound is None:
                common.append(f"{d.name}: TopK K is data-dependent with an unknown bound")
            elif d.k_bound >= TENSORRT_TOPK_MAX_K:
                common.append(f"{d.name}: TopK K can reach {d.k_bound} "
                              f"(TensorRT needs K < {TENSORRT_TOPK_MAX_K})")
    lacking = sorted(op for op in census if op in TENSORRT_UNSUPPORTED_OPS)
    if lacking:
        common.append(f"ops the TensorRT ONNX parser lacks: {', '.join(lacking)}")
    checks = []
    for target, lo, hi in TENSORRT_OPSETS:
        issues = list(common)
        if not lo <= opset <= hi:
            issues.insert(0, f"opset {opset} outside the {lo}-{hi} it parses")
        checks.append(TensorRTCheck(target=target, ok=not issues, issues=issues))
    return checks


def dispatch_summary(report: GraphReport | dict[str, Any]) -> str:
    """One line: which dispatch ops the graph uses, e.g. 'TopK x3, GatherND x6, ScatterND x3'."""
    ops = report.dispatch_ops if isinstance(report, GraphReport) else report["dispatch_ops"]
    return ", ".join(f"{op} x{n}" for op, n in ops.items()) or "none (dense)"


def render(report: GraphReport | dict[str, Any], console=None) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    r = report.to_dict() if isinstance(report, GraphReport) else report
    console = console or Console()
    table = Table(title="Dispatchers in the graph", title_justify="left")
    for col in ("dispatcher", "mode", "dispatch ops", "K", "gate fp32", "bias init"):
        table.add_column(col)
    for d in r["dispatchers"]:
        k = (str(d["k"]) if d["k"] is not None else
             f"batch max (<= {d['k_bound']})" if d["ops"].get("TopK") else "-")
        ops = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in d["ops"].items()) or "-"
        table.add_row(d["name"], d["mode"], ops, k, "yes" if d["gate_fp32"] else "[red]NO[/]",
                      "yes" if d["gate_bias"] else "[yellow]not found[/]")
    console.print(table)
    census = ", ".join(f"{op} {n}" for op, n in r["op_census"].items())
    console.print(f"[bold]ops[/] ({r['nodes']} nodes, opset {r['opset']}): {census}")
    trt = Table(title="TensorRT compatibility (ONNX parser)", title_justify="left")
    trt.add_column("target")
    trt.add_column("status")
    trt.add_column("issues")
    for c in r["tensorrt"]:
        trt.add_row(c["target"], "[green]ok[/]" if c["ok"] else "[red]no[/]",
                    "; ".join(c["issues"]) or "-")
    console.print(trt)
    for target, text in (r.get("deployment") or {}).items():
        console.print(f"[bold]on {target}[/]: {text}")
    for note in r["notes"]:
        console.print(f"[yellow]note:[/] {note}")
