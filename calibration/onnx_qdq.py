"""ONNX -> explicit int8 QuantizeLinear / DequantizeLinear for TensorRT's strongly typed networks.

:func:`to_qdq_int8` puts symmetric int8 Q/DQ pairs (zero points 0, per-channel weights) on the
inputs and weights of every MatMul / Gemm / Conv outside the float scope (:mod:`.scope`: the
dispatch path, LayerNorm, Softmax, GELU, residual adds), calibrated on images with ONNX
Runtime's ``quantize_static``. The settings, and the calibration methods as measured on the
demo model, are in ``docs/calibration.md``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import DytEdgeError
from .onnx_fp16 import fp16_pass
from .onnx_graph import (QDQ_OPS, QUANTIZED_OPS, GraphConversionError, check_source, drop_dead,
                         float_scope, named, opset, raise_on, verify)
from .onnx_precision import check_precisions

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


QDQ_FP16_OPSET = 19
"""QuantizeLinear / DequantizeLinear take fp16 inputs and scales from opset 19."""


DEFAULT_PERCENTILE = 99.999


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
    types) or ``fp16``: then :func:`.onnx_fp16.fp16_pass` runs on the Q/DQ graph too (the dispatch
    path and LayerNorm stay fp32; Q/DQ scales become fp16, which needs opset 19, so the graph
    is marked opset 19). A strongly typed TensorRT network runs every unquantized layer at the
    graph's type, so ``fp16`` is the faster engine (ModelOpt's ``high_precision_dtype``).
    """
    import onnx

    from ..runtimes.backends import import_onnxruntime

    import_onnxruntime()  # telemetry off first; a missing ONNX Runtime names its install
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
    check_source(model)
    m = named(model)
    scope = float_scope(m, dispatcher_names, first_layer=first_layer_float,
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
    drop_dead(q)
    verify(q, "INT8 Q/DQ")
    problems = check_precisions(q, dispatcher_names=dispatcher_names)
    raise_on(problems, "INT8 Q/DQ")
    fp16_report = None
    if float_precision == "fp16":
        for o in q.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, QDQ_FP16_OPSET)
        q.ir_version = max(q.ir_version, 9)
        q, fp16_report = fp16_pass(q, dispatcher_names, "INT8 Q/DQ + FP16")

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
    qn = Counter(n.op_type for n in g.node if n.op_type in QDQ_OPS)
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
        "opset": opset(q),
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
        if n.op_type in QDQ_OPS or n.name in quantized:
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
