"""INT8 for OpenVINO with NNCF post-training quantization, the DyT dispatch path kept in float.

:func:`quantize` runs ``nncf.quantize`` (transformer model type, PERFORMANCE preset: symmetric
quantizers, zero points 0) with the float scope of :mod:`.scope` as ``ignored_scope``; with
``max_drop`` it runs ``nncf.quantize_with_accuracy_control`` instead, whose metric is top-1
accuracy on the labelled calibration images, measured with ``INFERENCE_PRECISION_HINT`` f32.

One repair after NNCF: its SmoothQuant step (on for transformers) does not honour the ignored
scope. It puts a per-channel scale in front of every MatMul, gate MatMuls included, and folds
the inverse into their weights; float-equivalent, but the gate's logits then move by rounding.
:func:`restore_float_nodes` puts every gate's original weights, bias and input back, so the
gate of the INT8 model is exactly the float gate. :func:`~.scope.quantizer_violations` then
checks that no quantizer touches the float scope.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..errors import DytEdgeError
from .data import CalibrationSet
from .scope import FloatScope, count_quantizers, openvino_float_scope, quantizer_violations

PRECISION_HINT = "f32"


class QuantizationError(DytEdgeError):
    """NNCF failed, or produced a model that breaks the float-scope contract."""


@dataclass
class QuantizeSettings:
    subset_size: int = 300
    preset: str = "performance"
    """``performance``: symmetric weights and activations (zero points 0, what TensorRT's
    explicit Q/DQ needs too); ``mixed``: asymmetric activations."""
    model_type: str = "transformer"
    smooth_quant: bool = True
    fast_bias_correction: bool = True
    first_layer_float: bool = False
    last_layer_float: bool = False
    float_attention: bool = False
    """Keep the attention core (``ScaledDotProductAttention``: ``softmax(q k^T) v``) unquantized:
    no quantizers on q, k, v; it then runs at the float parts' precision."""
    max_drop: Optional[float] = None
    """Accuracy control: the largest allowed top-1 drop, in percentage points (None: off)."""
    overflow_fix: str = "enable"
    """NNCF's ``overflow_fix`` (``enable`` / ``first_layer_only`` / ``disable``): weights in 7
    bits so that int8 MatMuls cannot saturate on CPUs without VNNI (AVX2 and AVX-512 without
    VNNI add pairs of u8 x s8 products in int16). The IR may be deployed on any CPU, so every
    layer gets it (``docs/backends.md``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"subset_size": self.subset_size, "preset": self.preset,
                "model_type": self.model_type, "smooth_quant": self.smooth_quant,
                "fast_bias_correction": self.fast_bias_correction,
                "first_layer_float": self.first_layer_float,
                "last_layer_float": self.last_layer_float, "overflow_fix": self.overflow_fix,
                "float_attention": self.float_attention}


@dataclass
class QuantizeResult:
    model: Any
    """The quantized ``openvino.Model``."""
    scope: FloatScope
    quantizers: int
    restored: list[str]
    accuracy_control: Optional[dict[str, Any]]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"ignored_scope": self.scope.summary(), "fake_quantize_nodes": self.quantizers,
                "restored_after_smooth_quant": self.restored,
                "accuracy_control": self.accuracy_control, "seconds": round(self.seconds, 2),
                "notes": self.notes}


def import_nncf():
    from ..runtimes.backends import import_openvino

    import_openvino()  # telemetry off before nncf imports openvino
    # nncf imports torch when present, whose cpp_extension logs "No CUDA runtime is found"
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError as exc:
        raise QuantizationError("NNCF is not installed", "pip install nncf") from exc
    return nncf


def top1_accuracy(compiled, items) -> tuple[float, list[float]]:
    """NNCF's validation_fn: (accuracy in [0, 1], correctness per item)."""
    from ..runtimes.openvino_runtime import outputs_by_name

    per_item = []
    correct = total = 0
    for item in items:
        images, labels = item[0], item[1]
        valid = np.asarray(item[2], bool) if len(item) > 2 else np.ones(len(labels), bool)
        logits = outputs_by_name(compiled(images))["logits"]
        hits = (np.asarray(logits).argmax(axis=1) == np.asarray(labels)).astype(np.float64)
        hits = hits[valid]
        per_item.append(float(hits.mean()) if len(hits) else 0.0)
        correct += int(hits.sum())
        total += len(hits)
    return (correct / total if total else 0.0), per_item


def quantize(float_model, calib: CalibrationSet, *, dispatcher_names: Optional[list[str]],
             settings: Optional[QuantizeSettings] = None, batch: Optional[int] = None,
             progress: Optional[Callable[[str], None]] = None) -> QuantizeResult:
    """INT8 copy of ``float_model`` (an ``openvino.Model``, left untouched)."""
    nncf = import_nncf()
    s = settings or QuantizeSettings()
    _quiet(nncf)
    model = float_model.clone()
    squeezed = squeeze_unit_gathers(model)
    scope = openvino_float_scope(model, dispatcher_names, first_layer=s.first_layer_float,
                                 last_layer=s.last_layer_float)
    if dispatcher_names is not None and len(scope.dispatchers) != len(dispatcher_names):
        raise QuantizationError(
            f"found {len(scope.dispatchers)} dispatchers in the OpenVINO model, the manifest "
            f"names {len(dispatcher_names)}", "re-export the model, and report it if it persists")
    missing = [d.name for d in scope.dispatchers if d.gate_linear is None]
    if missing:
        raise QuantizationError(f"the gate MatMul of {missing[0]} was not found in the "
                                "OpenVINO model; it cannot be kept in float",
                                "re-export the model, and report it if it persists")
    ignored = scope.nncf_ignored_scope()
    if s.float_attention:
        ignored = nncf.IgnoredScope(validate=ignored.validate, names=list(ignored.names) + [
            op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "ScaledDotProductAttention"])
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE,
              "mixed": nncf.QuantizationPreset.MIXED}[s.preset]
    model_type = nncf.ModelType.TRANSFORMER if s.model_type == "transformer" else None
    advanced = _advanced(s)
    subset = min(s.subset_size, len(calib.batches(batch)))
    t0 = time.perf_counter()
    ac_record = None
    try:
        if s.max_drop is None:
            dataset = nncf.Dataset(calib.batches(batch))
            if progress:
                progress(f"quantizing (NNCF, {subset} calibration images)")
            quantized = nncf.quantize(model, dataset, preset=preset, model_type=model_type,
                                      subset_size=subset, ignored_scope=ignored,
                                      fast_bias_correction=s.fast_bias_correction,
                                      advanced_parameters=advanced)
        else:
            items = calib.labelled_items(batch)
            calibration = nncf.Dataset(items, lambda item: item[0])
            validation = nncf.Dataset(items, lambda item: item[0])
            if progress:
                progress(f"quantizing with accuracy control (NNCF, max drop {s.max_drop:g} "
                         "points)")
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration, validation, validation_fn=top1_accuracy,
                max_drop=s.max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, preset=preset,
                model_type=model_type, subset_size=subset,
                ignored_scope=ignored,
                fast_bias_correction=s.fast_bias_correction,
                advanced_quantization_parameters=advanced)
    except DytEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - NNCF's own failures, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QuantizationError(f"NNCF quantization failed: {first[:300]}",
                                "re-run with --debug for the traceback") from exc
    restored = restore_float_nodes(quantized, float_model, scope)
    seconds = time.perf_counter() - t0
    problems = quantizer_violations(quantized, scope)
    if problems:
        raise QuantizationError(f"the INT8 model quantizes the float scope: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                   else ""), "report it, with the model's manifest")
    if s.max_drop is not None:
        items = calib.labelled_items(batch)
        from ..runtimes.openvino_runtime import OpenVinoModel

        acc_f, _ = top1_accuracy(OpenVinoModel(float_model, hint=PRECISION_HINT).compiled, items)
        acc_q, _ = top1_accuracy(OpenVinoModel(quantized, hint=PRECISION_HINT).compiled, items)
        drop = (acc_f - acc_q) * 100.0
        ac_record = {"max_drop": s.max_drop, "metric": "top-1 accuracy (%)",
                     "inference_precision": PRECISION_HINT, "images": len(calib),
                     "float": round(acc_f * 100.0, 3), "int8": round(acc_q * 100.0, 3),
                     "drop": round(drop, 3), "within_max_drop": drop <= s.max_drop + 1e-9}
    notes = []
    if squeezed:
        notes.append(f"{squeezed} Gather(index 0 of a size-1 axis) rewritten as Squeeze before "
                     "quantization (OpenVINO's low-precision transformations mis-shape the "
                     "Gather after a quantized MatMul)")
    if restored:
        notes.append(f"NNCF SmoothQuant rescaled {len(restored)} gate node(s); their float "
                     "weights and inputs were restored")
    return QuantizeResult(model=quantized, scope=scope, quantizers=count_quantizers(quantized),
                          restored=restored, accuracy_control=ac_record, seconds=seconds,
                          notes=notes)


def squeeze_unit_gathers(model) -> int:
    """Replace every ``Gather(x, 0, axis)`` with a scalar index on an axis of static size 1
    (``x[0]`` of a ``[1, M, C]`` tensor: the ``pack`` dispatch's packed row) by the equivalent
    ``Squeeze(x, axis)``, in place. OpenVINO's CPU low-precision transformations move a
    quantized MatMul's dequantization through such a Gather and lose the squeezed axis (the
    model then fails to compile); a Squeeze goes through them intact. Returns the count."""
    import openvino.opset13 as ops

    count = 0
    op = None
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "Gather" or op.get_input_size() < 3:
            continue
        idx, axis = op.input_value(1).get_node(), op.input_value(2).get_node()
        if idx.get_type_name() != "Constant" or axis.get_type_name() != "Constant":
            continue
        index, ax = idx.get_data(), axis.get_data()
        if index.ndim != 0 or int(index) != 0 or ax.size != 1:
            continue
        shape = op.input_value(0).get_partial_shape()
        if shape.rank.is_dynamic:
            continue
        a = int(ax.reshape(-1)[0]) % shape.rank.get_length()
        if not (shape[a].is_static and shape[a].get_length() == 1):
            continue
        if op.get_attributes().get("batch_dims", 0):
            continue
        squeeze = ops.squeeze(op.input_value(0), ops.constant(np.array([a], np.int64)))
        squeeze.set_friendly_name(op.get_friendly_name() + "/squeeze")
        for target in list(op.output(0).get_target_inputs()):
            target.replace_source_output(squeeze.output(0))
        count += 1
    del op  # drop the last reference to a replaced Gather (NNCF walks consumers)
    if count:
        model.validate_nodes_and_infer_types()
    return count


def _advanced(s: QuantizeSettings):
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       AdvancedSmoothQuantParameters,
                                                       OverflowFix)

    overflow = OverflowFix(s.overflow_fix)
    if s.smooth_quant:
        return AdvancedQuantizationParameters(overflow_fix=overflow)
    return AdvancedQuantizationParameters(
        overflow_fix=overflow,
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1))


def _quiet(nncf) -> None:
    """NNCF logs every ignored node at INFO; keep warnings."""
    try:
        nncf.set_log_level(logging.WARNING)
    except Exception:  # noqa: BLE001
        logging.getLogger("nncf").setLevel(logging.WARNING)


def restore_float_nodes(quantized, float_model, scope: FloatScope,
                        reasons: tuple[str, ...] = ("gate",)) -> list[str]:
    """Undo what NNCF changed on the float scope's nodes of ``reasons``: each one's constant
    inputs get the float model's values back, and an input fed by a SmoothQuant scale is
    reconnected to the scale's own input. Returns the names of the nodes that were changed."""
    from ..runtimes.backends import import_openvino

    ov = import_openvino()
    wanted = {n for n, r in scope.reasons.items() if r in reasons}
    originals = {op.get_friendly_name(): op for op in float_model.get_ops()
                 if op.get_friendly_name() in wanted}
    changed = []
    for op in quantized.get_ops():
        name = op.get_friendly_name()
        if name not in wanted or name not in originals:
            continue
        orig = originals[name]
        touched = False
        for port in range(op.get_input_size()):
            src = op.input_value(port).get_node()
            if src.get_type_name() == "Multiply" and "nncf_smooth_quant" in \
                    src.get_friendly_name():
                data = [v for v in src.input_values()
                        if v.get_node().get_type_name() != "Constant"]
                if len(data) == 1:
                    op.input(port).replace_source_output(data[0])
                    touched = True
            if port >= orig.get_input_size():
                continue
            o_src = orig.input_value(port).get_node()
            if o_src.get_type_name() != "Constant":
                continue
            q_src = op.input_value(port).get_node()
            want = o_src.get_data()
            if q_src.get_type_name() == "Constant" and q_src.get_output_element_type(0) == \
                    o_src.get_output_element_type(0) and np.array_equal(q_src.get_data(), want):
                continue
            const = ov.op.Constant(np.array(want, copy=True))
            const.set_friendly_name(o_src.get_friendly_name())
            op.input(port).replace_source_output(const.output(0))
            touched = True
        if touched:
            changed.append(name)
    if changed:
        quantized.validate_nodes_and_infer_types()
    return changed
