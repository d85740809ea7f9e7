"""``dyt-edge build --target openvino``: OpenVINO IR at fp32 / bf16 / fp16, or NNCF INT8.

The float IR is the export's ``model.xml`` when it has one with f32 weights, otherwise it is
converted from ``model.onnx`` exactly as the exporter does (:func:`.ir.convert_exported`). fp16
stores the MatMul weights outside the float scope as f16 (:func:`compress_weights_f16`); INT8 is
:func:`dyt_edge.calibration.openvino_int8.quantize`. Every build is compiled and run once
before it is kept (INT8: compared with the float IR on the calibration images).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..._version import __version__
from ...artifacts import file_sha256
from ...runtimes.openvino_runtime import HINT_TYPES
from ..builder import Builder, BuildContext, BuildError, BuildOutput

_CHECK_BATCH = 64
SMOOTH_QUANT_MIN_AGREEMENT = 0.99
"""``--smooth-quant auto``: below this top-1 agreement with the float IR on the calibration
images, the INT8 build is quantized again with SmoothQuant."""


class OpenVinoBuilder(Builder):
    """OpenVINO IR at fp32 / bf16 / fp16 (weights f32, f32, f16) or NNCF INT8.

    The float IR is the export's ``model.xml`` when it has one with f32 weights, otherwise it is
    converted from ``model.onnx`` exactly as the exporter does (placeholder gate biases, since
    OpenVINO's converter drops ``x + 0``, then the real ones put back). fp16 keeps the gate
    weights f32 (the DyT contract: the gate path is fp32). Runtimes apply the
    ``INFERENCE_PRECISION_HINT`` recorded as ``build.inference_precision``.
    """

    target = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")
    own_flags = {"accuracy_control": "--accuracy-control", "smooth_quant": "--smooth-quant",
                 "float_attention": "--float-attention", "float_parts": "--float-parts"}

    def build(self, ctx: BuildContext, staging: Path) -> BuildOutput:
        import tempfile

        from ...runtimes.backends import import_openvino

        ov = import_openvino()
        precision = ctx.options.precision
        notes: list[str] = []
        parts = self._float_parts(ctx) if precision == "int8" else precision
        hint = HINT_TYPES[parts]
        with tempfile.TemporaryDirectory(prefix="dyt-edge-build-") as tmp:
            with ctx.stage("float IR"):
                float_model, source_ir = self._float_model(ctx, Path(tmp), ov)
            record: dict[str, Any] = {"source_ir": source_ir, "inference_precision": hint}
            xml = staging / "model.xml"
            if precision == "int8":
                record.update(self._int8(ctx, float_model, xml, ov, notes, parts))
            else:
                with ctx.stage("write"):
                    self._mark(float_model, ctx, precision, hint)
                    record["weights"] = "f16" if precision == "fp16" else "f32"
                    if precision == "fp16":
                        record["fp16_weights"] = self._compress_fp16(float_model, ctx, ov)
                    record["f32_gates"] = self._bake_f32_gates(float_model, ctx, hint)
                    ov.save_model(float_model, str(xml), compress_to_fp16=False)
                with ctx.stage("check"):
                    record["check"] = self._smoke(ctx, xml)
        record["tools"] = {"dyt_edge": __version__, "openvino": ov.get_version().split("-")[0]}
        if precision == "int8":
            import nncf

            record["tools"]["nncf"] = nncf.__version__
        sections = {"openvino": {"compress_to_fp16": precision == "fp16",
                                 "inference_precision": hint,
                                 "weights": record["weights"]}}
        return BuildOutput(files={"openvino": "model.xml", "openvino_weights": "model.bin"},
                           format="openvino", record=record, sections=sections, notes=notes)

    # -- the float IR -------------------------------------------------------------------------
    def _float_model(self, ctx: BuildContext, tmp: Path, ov) -> tuple[Any, str]:
        core = ov.Core()
        info = ctx.source.info
        entry = info.files.get("openvino")
        exported_f32 = not info.section("openvino").get("compress_to_fp16", False)
        if entry and exported_f32:
            xml = ctx.source.path / entry.path
            if xml.is_file() and (not entry.sha256 or file_sha256(xml) == entry.sha256):
                return core.read_model(str(xml)), f"export {entry.path}"
        return core.read_model(str(self._convert(ctx, tmp))), f"converted from {ctx.onnx_path.name}"

    def _convert(self, ctx: BuildContext, tmp: Path) -> Path:
        """ONNX -> IR as the exporter does it."""
        import onnx

        from ..graph_report import analyze
        from .ir import convert_exported

        ctx.say(f"converting {ctx.onnx_path.name} to OpenVINO IR")
        proto = onnx.load(str(ctx.onnx_path))
        report = analyze(proto, ctx.dispatcher_names)
        xml = tmp / "float.xml"
        convert_exported(proto, report, xml,
                         metadata={p.key: p.value for p in proto.metadata_props},
                         dispatcher_names=ctx.dispatcher_names)
        return xml

    def _float_parts(self, ctx: BuildContext) -> str:
        """INT8: the precision of the parts left float (``--float-parts``; ``auto``: bf16 where
        this machine's CPU has it, else fp32)."""
        asked = ctx.options.float_parts or "auto"
        if asked != "auto":
            return asked
        from ...runtimes.openvino_runtime import device_capabilities

        return "bf16" if "BF16" in device_capabilities() else "fp32"

    def _bake_f32_gates(self, model, ctx: BuildContext, hint: str) -> list[str]:
        """Below f32, store every gate as Multiply + ReduceSum
        (:func:`dyt_edge.runtimes.openvino_gates.gates_as_reductions`), so the gates stay f32
        wherever the IR is compiled, in a model server too. Returns the dispatchers rewritten."""
        if hint == "f32":
            return []
        from ...runtimes.openvino_gates import gates_as_reductions

        return gates_as_reductions(model, ctx.dispatcher_names)

    def _mark(self, model, ctx: BuildContext, precision: str, hint: str) -> None:
        from .ir import RT_INFO_SECTION

        for key, value in (("build.target", "openvino"), ("build.precision", precision),
                           ("build.inference_precision", hint),
                           ("build.source_model.sha256", ctx.onnx_sha256)):
            model.set_rt_info(str(value), [RT_INFO_SECTION, f"dyt_edge.{key}"])

    # -- fp16 ---------------------------------------------------------------------------------
    def _compress_fp16(self, model, ctx: BuildContext, ov) -> dict[str, int]:
        """Every MatMul / Convolution weight outside the float scope stored as f16 (a Constant
        f16 -> Convert f32 pair, what ``compress_to_fp16`` writes); the gates, LayerNorm and
        biases keep f32. (OpenVINO's own ``compress_to_fp16`` keeps most weights of these
        graphs in f32 by its heuristics, so the compression is done here, explicitly.)"""
        from ...calibration.scope import openvino_float_scope

        scope = openvino_float_scope(model, ctx.dispatcher_names)
        return compress_weights_f16(model, set(scope.reasons), ov)

    # -- int8 ---------------------------------------------------------------------------------
    def _int8(self, ctx: BuildContext, float_model, xml: Path, ov, notes: list[str],
              parts: str) -> dict[str, Any]:
        """NNCF INT8 with the settings of ``--smooth-quant`` / ``--float-attention`` /
        ``--float-parts``. SmoothQuant ``auto`` quantizes without it first (faster on these
        graphs: it puts a scale in front of every MatMul) and again with it when the result's
        top-1 agreement with the float IR is below :data:`SMOOTH_QUANT_MIN_AGREEMENT`, keeping
        the one that agrees more."""
        from ...calibration.openvino_int8 import QuantizeSettings

        opts = ctx.options
        hint = HINT_TYPES[parts]
        mode = opts.smooth_quant or "auto"
        float_attention = (opts.float_attention if opts.float_attention is not None
                           else hint != "f32")
        settings = QuantizeSettings(subset_size=len(ctx.calibration), max_drop=opts.max_drop,
                                    smooth_quant=mode == "on", float_attention=float_attention)
        result, check, gates = self._quantize_and_check(ctx, float_model, settings, xml, ov,
                                                        hint)
        tried = {"on" if settings.smooth_quant else "off": check.get("top1_agreement")}
        if (mode == "auto" and check.get("top1_agreement") is not None
                and check["top1_agreement"] < SMOOTH_QUANT_MIN_AGREEMENT):
            ctx.say(f"INT8 without SmoothQuant agrees {check['top1_agreement']:.1%} with the "
                    "float IR; quantizing again with SmoothQuant")
            first = (result, check, gates, settings)
            settings = replace(settings, smooth_quant=True)
            alt = xml.with_name("model-smoothquant.xml")
            result, check, gates = self._quantize_and_check(ctx, float_model, settings, alt,
                                                            ov, hint)
            tried["on"] = check.get("top1_agreement")
            if check["top1_agreement"] > first[1]["top1_agreement"]:
                alt.replace(xml)
                alt.with_suffix(".bin").replace(xml.with_suffix(".bin"))
            else:
                alt.unlink()
                alt.with_suffix(".bin").unlink()
                result, check, gates, settings = first
            notes.append(f"--smooth-quant auto: top-1 agreement with the float IR "
                         f"{tried['off']:.2%} without SmoothQuant, {tried['on']:.2%} with it; "
                         f"kept {'with' if settings.smooth_quant else 'without'}")
        notes.extend(result.notes)
        calib = ctx.calibration
        calibration = {**calib.record(), "size": calib.requested, "images": len(calib),
                       "ignored_scope": result.scope.summary(),
                       "quantization": {**settings.to_dict(), "smooth_quant_mode": mode,
                                        "smooth_quant_agreement": tried,
                                        "fake_quantize_nodes": result.quantizers,
                                        "restored_after_smooth_quant": result.restored,
                                        "seconds": round(result.seconds, 2)},
                       "accuracy_control": result.accuracy_control}
        calibration.pop("requested", None)
        return {"weights": "int8", "float_parts": parts,
                "f32_gates": gates, "calibration": calibration, "check": check}

    def _quantize_and_check(self, ctx: BuildContext, float_model, settings, xml: Path, ov,
                            hint: str) -> tuple[Any, dict[str, Any], list[str]]:
        """Quantize with ``settings``, store the IR at ``xml`` (gates baked f32 below an f32
        ``hint``) and compare it with the float IR. Returns the quantization result, the
        comparison and the gates baked f32."""
        from ...calibration.openvino_int8 import quantize

        with ctx.stage("quantize"):
            result = quantize(float_model, ctx.calibration, dispatcher_names=ctx.dispatcher_names,
                              settings=settings, batch=ctx.static_batch, progress=ctx.progress)
        with ctx.stage("write"):
            self._mark(result.model, ctx, "int8", hint)
            gates = self._bake_f32_gates(result.model, ctx, hint)
            ov.save_model(result.model, str(xml), compress_to_fp16=False)
        with ctx.stage("check"):
            check = self._agreement(ctx, float_model, xml, ov)
        return result, check, gates

    def _agreement(self, ctx: BuildContext, float_model, xml: Path, ov) -> dict[str, Any]:
        """The saved INT8 IR against the float IR on the calibration images, both compiled at
        f32: top-1 agreement and per-dispatcher gate-decision agreement."""
        import numpy as np

        from ...runtimes.openvino_runtime import OpenVinoModel

        ctx.say("checking INT8 against the float IR")
        core = ov.Core()
        ref = OpenVinoModel(float_model, hint="f32", core=core)
        got = OpenVinoModel(xml, hint="f32", core=core)
        images = ctx.calibration.images
        batch = ctx.static_batch or _CHECK_BATCH
        n = len(images) if ctx.static_batch is None else (len(images) // batch) * batch
        if n == 0:
            return {"images": 0, "note": "fewer calibration images than the static batch"}
        agree = 0
        mask_same = None
        mask_total = 0
        for start in range(0, n, batch):
            x = np.ascontiguousarray(images[start:start + batch])
            a, b = ref.outputs(x), got.outputs(x)
            agree += int((a["logits"].argmax(1) == b["logits"].argmax(1)).sum())
            if "masks" in a and "masks" in b:
                same = (a["masks"].astype(bool) == b["masks"].astype(bool)).sum(axis=(0, 2))
                mask_same = same if mask_same is None else mask_same + same
                mask_total += a["masks"].shape[0] * a["masks"].shape[2]
        out: dict[str, Any] = {"images": n, "reference": "float IR, f32",
                               "top1_agreement": round(agree / n, 5)}
        if mask_same is not None and mask_total:
            per = [round(float(v) / mask_total, 5) for v in mask_same]
            out["mask_agreement"] = dict(zip(ctx.dispatcher_names or
                                             [f"dispatcher.{i}" for i in range(len(per))], per))
            out["mask_agreement_mean"] = round(sum(per) / len(per), 5)
        return out

    def _smoke(self, ctx: BuildContext, xml: Path) -> dict[str, Any]:
        """The saved IR compiles (f32) and runs on a few generated images."""
        import numpy as np

        from ...runtimes.openvino_runtime import OpenVinoModel

        size = ctx.source.info.img_size
        n = ctx.static_batch or 2
        x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
        out = OpenVinoModel(xml, hint="f32").outputs(x)
        logits = np.asarray(out["logits"])
        if logits.shape[0] != n or not np.isfinite(logits).all():
            raise BuildError(f"the built IR gives logits of shape {list(logits.shape)}"
                             + ("" if np.isfinite(logits).all() else " with non-finite values"),
                             "re-run with --debug, and report it")
        return {"images": n, "runs": True, "reference": None}


def compress_weights_f16(model, keep: set[str], ov) -> dict[str, int]:
    """Replace the f32 weight Constant of every MatMul / Convolution not named in ``keep`` by
    Constant(f16) -> Convert(f32). Returns counts of compressed and kept weights."""
    import numpy as np
    import openvino.opset13 as ops

    compressed = kept = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        port = 1
        src = op.input_value(port).get_node()
        if src.get_type_name() != "Constant" or src.get_output_element_type(0) != ov.Type.f32:
            continue
        if op.get_friendly_name() in keep:
            kept += 1
            continue
        data = src.get_data()
        if not np.all(np.isfinite(data.astype(np.float16))):
            kept += 1  # out of fp16 range: leave it f32
            continue
        c16 = ov.op.Constant(np.ascontiguousarray(data, dtype=np.float16))
        c16.set_friendly_name(src.get_friendly_name() + "_compressed")
        conv = ops.convert(c16, ov.Type.f32)
        conv.set_friendly_name(src.get_friendly_name())
        conv.get_rt_info()["decompression"] = ""
        op.input(port).replace_source_output(conv.output(0))
        compressed += 1
    model.validate_nodes_and_infer_types()
    return {"compressed": compressed, "kept_f32": kept}
