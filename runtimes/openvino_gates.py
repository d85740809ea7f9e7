"""The gates of an exported DyT model inside OpenVINO: finding them, and keeping them f32 when
the rest of the model runs in bf16 / f16.

The exporter names every gate's nodes after its dispatcher (``blocks.3.mlp/gate/Sigmoid_0`` ...):
that name is how the gate Add (the bias: edited by validation and by the INT8 build) and the
gate MatMul are found again after OpenVINO's conversion.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .backends import import_openvino

_WALK_BACK = {"Squeeze", "Unsqueeze", "Reshape", "Convert"}


def gate_adds(model, dispatcher_names: list[str]) -> dict[str, Any]:
    """Dispatcher name -> the gate's bias Add in an OpenVINO model: found from the gate's
    Sigmoid (named ``<dispatcher>/gate/Sigmoid_0`` by the exporter), walking back through
    reshapes to an Add with a Constant input."""
    wanted = {f"{n}/gate/Sigmoid_0": n for n in dispatcher_names}
    found = {}
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name not in wanted or op.get_type_name() != "Sigmoid":
            continue
        node = op.input_value(0).get_node()
        for _ in range(6):
            kind = node.get_type_name()
            if kind == "Add":
                if any(v.get_node().get_type_name() == "Constant" for v in node.input_values()):
                    found[wanted[name]] = node
                break
            if kind not in _WALK_BACK:
                break
            node = node.input_value(0).get_node()
    return found


def gate_dispatchers(model) -> list[str]:
    """The dispatcher names of an OpenVINO model, from its gates' Sigmoids (named
    ``<dispatcher>/gate/Sigmoid_0`` by the exporter), in graph order."""
    suffix = "/gate/Sigmoid_0"
    return [op.get_friendly_name()[:-len(suffix)] for op in model.get_ordered_ops()
            if op.get_type_name() == "Sigmoid" and op.get_friendly_name().endswith(suffix)]


def _constant_value(output) -> Optional[np.ndarray]:
    """The value behind ``output`` when it is a Constant (possibly through a Convert)."""
    node = output.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data(), dtype=np.float32)


def gates_as_reductions(model, dispatcher_names: Optional[list[str]] = None) -> list[str]:
    """Rewrite every gate's ``MatMul(x, w)`` (one output column) as ``ReduceSum(x * w, -1)``,
    in place. Returns the dispatchers whose gate is f32 now (rewritten here, or found rewritten
    already: OpenVINO builds below f32 store their IR this way, so a server that compiles it
    keeps the gates f32 too).

    Why: under a bf16 (or f16) ``INFERENCE_PRECISION_HINT`` the CPU plugin runs every MatMul in
    the low precision, the gates' included, and a per-node "keep this precision" attribute does
    not survive its MatMul -> FullyConnected conversion (checked with OpenVINO 2026.4). Element-
    wise ops that feed only the graph's outputs (the ``masks``) stay f32: the plugin leaves the
    tail of the graph after its last MatMul in the original precision. As a Multiply and a
    ReduceSum the gate is such a tail, so its input, weights, sum, bias, Sigmoid and comparison
    run in f32. The arithmetic is the same dot product (summation order aside); f32 runs are
    unaffected in any way that matters (the export's rounding check judges them).
    """
    ov = import_openvino()
    from openvino import opset13 as ops  # after import_openvino: telemetry off

    names = dispatcher_names if dispatcher_names is not None else gate_dispatchers(model)
    done = []
    adds = gate_adds(model, names)
    for name, add in ((n, adds[n]) for n in names if n in adds):
        sources = [v.get_node() for v in add.input_values()]
        if any(n.get_friendly_name() == f"{name}/gate/GateReduceSum" for n in sources):
            done.append(name)  # rewritten already (a build keeps its gates f32 in the IR)
            continue
        matmul = next((n for n in sources if n.get_type_name() == "MatMul"), None)
        if matmul is None:
            continue
        attrs = matmul.get_attributes()
        w = _constant_value(matmul.input_value(1))
        if w is None or w.ndim != 2 or attrs.get("transpose_a"):
            continue
        if attrs.get("transpose_b"):
            w = w.T
        if w.shape[1] != 1:
            continue
        x = matmul.input_value(0)
        product = ops.multiply(x, ov.op.Constant(np.ascontiguousarray(w[:, 0])))
        logit = ops.reduce_sum(product, ops.constant(np.array([-1], np.int64)), keep_dims=True)
        product.set_friendly_name(f"{name}/gate/GateMultiply")
        logit.set_friendly_name(f"{name}/gate/GateReduceSum")
        for target in list(matmul.output(0).get_target_inputs()):
            target.replace_source_output(logit.output(0))
        done.append(name)
    if done:
        model.validate_nodes_and_infer_types()
    return done
