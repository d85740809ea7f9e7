"""What TensorRT would get wrong in a converted graph, and the converted graph against the
original on ONNX Runtime.

:func:`check_precisions` lists the problems (both converters raise on a non-empty list);
:func:`parity` runs both graphs through :class:`dyt_edge.runtimes.ort_runtime.OrtModel` and
compares them with the validation metrics (:func:`dyt_edge.metrics.compare_outputs`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Optional

from ..batches import run_in_batches
from .onnx_graph import (ANY_TYPE_INPUTS, MIN_OPSET, QDQ_OPS, QUANTIZED_OPS, attr, elem_types,
                         float_types, float_view, named, opset, type_name)
from .scope import MASKS_OUTPUT, onnx_float_scope

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx


_PATH_REASONS = ("gate", "index")
"""What :func:`check_precisions` holds to fp32 (independent of what the converter keeps)."""


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
    m = named(model)
    g = m.graph
    types = elem_types(m)
    floats = float_types()

    # graph I/O
    for v in g.input:
        if v.type.tensor_type.elem_type != FLOAT:
            problems.append(f"graph input {v.name} is "
                            f"{type_name(v.type.tensor_type.elem_type)}, not float32")
    for v in g.output:
        t = v.type.tensor_type.elem_type
        want = TensorProto.BOOL if v.name == MASKS_OUTPUT else FLOAT
        if t != want:
            problems.append(f"graph output {v.name} is {type_name(t)}, not "
                            f"{type_name(want)}")

    # Q/DQ nodes
    inits = {t.name: t for t in g.initializer}
    const = {n.output[0]: attr(n, "value") for n in g.node
             if n.op_type == "Constant" and n.output and attr(n, "value") is not None}

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
    qdq = [n for n in g.node if n.op_type in QDQ_OPS]
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
                problems.append(f"{what}: zero point is {type_name(zp_type)}, not int8")
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
    view = float_view(m) if qdq else m
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
    vtypes = elem_types(view) if qdq else types
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
            if not x or (n.op_type, i) in ANY_TYPE_INPUTS or x in checked:
                continue
            if bad(x):
                checked.add(x)
                problems.append(f"{x} (input of {n.op_type} {name}, {r}) is "
                                f"{type_name(vtypes.get(x))}, not float32")
        for x in n.output:
            if not x or x in checked or not bad(x):
                continue
            # a float value leaving the path (into token data) may take the data's type;
            # one that stays on it (read by the gate, index arithmetic, TopK) may not
            readers = vcons.get(x, [])
            if r == "gate" or n.op_type == "TopK" or any(c.name in on_path for c in readers):
                checked.add(x)
                problems.append(f"{x} (output of {n.op_type} {name}, {r}) is "
                                f"{type_name(vtypes.get(x))}, not float32")
    for n in view.graph.node:
        if n.op_type == "TopK" and len(n.output) > 1 and \
                vtypes.get(n.output[1]) != TensorProto.INT64:
            problems.append(f"TopK {n.name}: indices are {type_name(vtypes.get(n.output[1]))}")

    # LayerNorm
    lns = [n for n in view.graph.node if n.op_type == "LayerNormalization"]
    if not lns and opset(m) < MIN_OPSET:
        problems.append(f"opset {opset(m)} has no LayerNormalization op: TensorRT needs "
                        f"opset >= {MIN_OPSET} to run LayerNorm as one fp32 normalization")
    for n in lns:
        for x in (*n.input, *n.output[:1]):
            if x and vtypes.get(x) != FLOAT:
                problems.append(f"LayerNormalization {n.name}: {x} is "
                                f"{type_name(vtypes.get(x))}, not float32")

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


def run_onnx(model, images: "np.ndarray", *, batch: Optional[int] = None,
             threads: Optional[int] = None) -> tuple["np.ndarray", Optional["np.ndarray"]]:
    """(logits, masks) of ``model`` on ONNX Runtime's CPU provider. ``batch``: images per run
    (default: the model's static batch, else 16); a static-batch graph gets its last run padded
    with repeated images, whose outputs are dropped."""
    from ..runtimes.ort_runtime import OrtModel

    runner = OrtModel(model, threads=threads)

    def run(x: "np.ndarray"):
        values = runner.outputs(x)
        return values["logits"], values.get(MASKS_OUTPUT)

    try:
        return run_in_batches(run, images, batch=batch or 16, static=runner.static_batch)
    finally:
        runner.close()


def parity(original: "onnx.ModelProto", converted: "onnx.ModelProto", images: "np.ndarray", *,
           dispatcher_names: Optional[list[str]] = None, labels: Optional["np.ndarray"] = None,
           batch: Optional[int] = None, threads: Optional[int] = None) -> dict[str, Any]:
    """Converted vs original graph on ONNX Runtime (CPU), on the same images.

    Returns ``max_abs_diff``, ``mean_abs_diff``, ``max_abs_diff_unflipped`` (images where no gate
    decision flipped), ``logit_scale``, ``top1_agreement_pct``, ``flips`` / ``flip_pct`` and
    ``layers`` (per dispatcher: decisions, flips, active share on both), and with ``labels``
    the accuracy of both (the metrics of ``dyt-edge validate``,
    :func:`dyt_edge.metrics.compare_outputs`).
    """
    from ..metrics import compare_outputs

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
