"""PyTorch DyT model -> ONNX, with dispatch that really skips work.

The model is exported with the ``torch.export``-based exporter (``dynamo=True``), so the
dispatch modes' data-dependent shapes stay symbolic: ``topk`` becomes TopK with K = the batch
maximum of active tokens, GatherND and ScatterND; ``pack`` NonZero; ``capacity`` a TopK with a
static K. (The legacy tracer would freeze K into a constant.) The graph has one input
``images`` [batch, 3, H, W] and two outputs, ``logits`` [batch, classes] and ``masks``
[batch, dispatchers, patches] (bool: the gate decisions, so that downstream tools can see what
was skipped and how often a capacity overflowed).

After export the graph is tidied for the tools that read it (:func:`tidy_graph`): the batch axis
is named ``batch``; every gate gets its own bias initializer named after the checkpoint key
(``blocks.3.mlp_token_select.mlp_head.bias``: the exporter's optimiser merges equal
initializers, and validation overrides these one by one), gate and dispatch nodes get readable
names, and the exporter's per-node stack traces (local file paths) are dropped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Optional

import onnx
import torch
from onnx import numpy_helper

from dyt_edge.errors import DytEdgeError
from dyt_edge.model.layers import export_form

from .errors import ExportError
from .graph_report import locate

INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "masks")
MAX_DYNAMIC_BATCH = 4096
"""Upper bound given to torch.export for the batch dimension (the ONNX axis is unbounded)."""
_KEEP_NODE_METADATA = ("pkg.torch.onnx.name_scopes",)


def export_onnx(model: torch.nn.Module, *, opset: int, batch: Optional[int] = None,
                example: Optional[torch.Tensor] = None) -> tuple[onnx.ModelProto, list[str]]:
    """Export ``model`` (a DyT ViT, already in the wanted dispatch mode) to an ONNX ModelProto.

    ``batch`` None exports a dynamic batch axis, an int a static one. Returns the model and the
    exporter's warnings worth passing on. Raises :class:`ExportError`.
    """
    cfg = model.config
    n = batch if batch is not None else 2  # batch 1 would be specialised by torch.export
    if example is None:
        g = torch.Generator().manual_seed(0)
        example = torch.randn(n, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    dynamic_shapes = None
    if batch is None:
        dim = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
        dynamic_shapes = {"x": {0: dim}, "return_masks": None}
    was_training = model.training
    model.eval()
    notes: list[str] = []
    log_stream = io.StringIO()
    handler = logging.StreamHandler(log_stream)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    try:
        for lg in loggers:
            lg.addHandler(handler)
            lg.propagate = False
        with warnings.catch_warnings(record=True) as caught, torch.no_grad(), \
                contextlib.redirect_stdout(io.StringIO()), export_form(model):
            warnings.simplefilter("always")
            program = torch.onnx.export(
                model, (example,), kwargs={"return_masks": True}, dynamo=True,
                dynamic_shapes=dynamic_shapes, opset_version=opset, external_data=False,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), verbose=False,
                optimize=True)
        proto = program.model_proto
    except DytEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one line each
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}: {first[:300]})",
                          "re-run with --debug for the traceback, and report it") from exc
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
            lg.propagate = True
        model.train(was_training)
    for w in caught:
        text = str(w.message)
        if "dynamic axes will not be renamed" in text or issubclass(w.category,
                                                                    DeprecationWarning):
            continue
        notes.append(text.strip().splitlines()[0][:300])
    for line in log_stream.getvalue().splitlines():
        if "version" in line.lower() and line.strip():
            notes.append(line.strip()[:300])
    actual = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual != opset:
        raise ExportError(f"the exporter produced opset {actual}, not the requested {opset}",
                          f"pass --opset {actual}" if actual else None)
    return proto, notes


def tidy_graph(proto: onnx.ModelProto, dispatcher_names: list[str],
               batch: Optional[int] = None) -> onnx.ModelProto:
    """Name the batch axis, give every gate its own named bias/weight initializers, name the
    gate and dispatch nodes, and drop per-node stack traces. In place; returns ``proto``."""
    graph = proto.graph
    if batch is None:
        _rename_batch_symbol(graph)
    for node in graph.node:
        keep = [p for p in node.metadata_props if p.key in _KEEP_NODE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    pin_gate_initializers(proto, dispatcher_names)
    name_dispatch_nodes(proto, dispatcher_names)
    return proto


def gate_bias_name(dispatcher: str) -> str:
    """``blocks.3.mlp`` -> ``blocks.3.mlp_token_select.mlp_head.bias`` (the checkpoint key)."""
    block, site = dispatcher.rsplit(".", 1)
    return f"{block}.{site}_token_select.mlp_head.bias"


def pin_gate_initializers(proto: onnx.ModelProto, dispatcher_names: list[str]) -> int:
    """Give every gate a private bias initializer named :func:`gate_bias_name` (and its weight
    ``...mlp_head.weight_t``), undoing the optimiser's merging of equal initializers.

    Returns how many gate biases were pinned. Gates whose bias is not an initializer (folded by
    a simplifier) are left alone; the graph report says so.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    pinned = 0
    for d, d_nodes in locate(proto, dispatcher_names):
        bias_name = gate_bias_name(d.name)
        weight_name = bias_name[:-len("bias")] + "weight_t"
        for old, new in ((d.gate_bias, bias_name), (d.gate_weight, weight_name)):
            if old is None:
                continue
            if old != new:
                tensor = inits.get(new)
                if tensor is None:  # (else: a stale private copy, overwritten below)
                    tensor = graph.initializer.add()
                    inits[new] = tensor
                tensor.CopyFrom(inits[old])
                tensor.name = new
                for node in d_nodes:
                    for i, name in enumerate(node.input):
                        if name == old:
                            node.input[i] = new
            pinned += new == bias_name
    _drop_unused_initializers(proto)
    return pinned


def _drop_unused_initializers(proto: onnx.ModelProto) -> None:
    graph = proto.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def name_dispatch_nodes(proto: onnx.ModelProto, dispatcher_names: list[str]) -> None:
    """``blocks.3.mlp/gate/Sigmoid``, ``blocks.3.mlp/dispatch/TopK``, ... (unique names)."""
    taken = {n.name for n in proto.graph.node}
    for d, d_nodes in locate(proto, dispatcher_names):
        counts: dict[str, int] = {}
        for node in d_nodes:
            if node.name.startswith(d.name + "/"):
                continue
            part = "dispatch" if node.op_type in ("TopK", "GatherND", "ScatterND", "NonZero",
                                                  "Gather", "GatherElements",
                                                  "ScatterElements") else "gate"
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            new = f"{d.name}/{part}/{node.op_type}_{counts[node.op_type] - 1}"
            if new in taken:
                continue
            taken.discard(node.name)
            node.name = new
            taken.add(new)


def _rename_batch_symbol(graph: onnx.GraphProto) -> None:
    inp = next((i for i in graph.input if i.name == INPUT_NAME), None)
    if inp is None:
        return
    dim0 = inp.type.tensor_type.shape.dim[0]
    old = dim0.dim_param
    if not old or old == "batch":
        return
    for v in (*graph.input, *graph.output, *graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = "batch"


def set_initializer(proto: onnx.ModelProto, name: str, value) -> None:
    """Replace an initializer's value (same dtype and shape)."""
    for t in proto.graph.initializer:
        if t.name == name:
            arr = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(value.astype(arr.dtype).reshape(arr.shape), name))
            return
    raise KeyError(name)
