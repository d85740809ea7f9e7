"""OpenVINO on the CPU: the artifact's ``model.xml`` / ``model.bin``.

Compile settings, all explicit:

* ``INFERENCE_PRECISION_HINT`` is always set: ``f32`` (fp32), ``bf16``, ``f16`` (fp16). Never
  OpenVINO's silent default, which is bf16 on CPUs that have it and moves logits by ~1e-2 and
  flips gate decisions. An INT8 IR (``build.precision`` int8: NNCF inserted FakeQuantize ops)
  runs its quantized MatMuls in int8 whatever the hint; the hint governs the parts left in float
  (LayerNorm, Softmax, GELU, the dispatch path): the precision its build recorded
  (``build.inference_precision``, from ``build --float-parts``; f32 where none is recorded, and
  f32 on a device without the recorded one), or the one
  ``RuntimeOptions.extra["inference_precision"]`` names (``fp32`` / ``bf16`` / ``fp16``).
* Before compiling, the device's ``OPTIMIZATION_CAPABILITIES`` (FP32, BF16, FP16, INT8, ...)
  must list the precision asked for, else a :class:`RuntimeSetupError` names the CPU
  (``FULL_DEVICE_NAME``) and the precisions it does have.
* Under a bf16 / f16 hint the gates are kept f32: each gate's one-column MatMul is rewritten
  as a Multiply and a ReduceSum before compiling
  (:func:`dyt_edge.runtimes.openvino_gates.gates_as_reductions`: the CPU plugin runs every
  MatMul at the hint's precision and keeps no per-node exception through its FullyConnected
  conversion, but leaves elementwise ops that feed only the outputs in f32).
  ``extra["f32_gates"] = False`` compiles the IR as it is (the comparison the benchmarks make).
  :meth:`describe` reports ``gate_path``.
* ``PERFORMANCE_HINT`` LATENCY / THROUGHPUT from ``hint``; ``NUM_STREAMS`` from ``streams``
  and ``INFERENCE_NUM_THREADS`` from ``threads`` (unset: the hint decides).
  ``extra["config"]`` passes further compile properties through.
* After compiling, ``INFERENCE_PRECISION_HINT``, ``NUM_STREAMS``, ``INFERENCE_NUM_THREADS``,
  ``PERFORMANCE_HINT`` and ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` are read back and reported by
  :meth:`describe`; a precision (or stream count) other than the one asked for is an error.

Timing hooks: :meth:`OpenVinoRuntime.prepare` binds the input to one infer request
(``start_async`` + ``wait``: no input copy, no output conversion); :meth:`throughput` keeps
``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` requests in flight on an ``AsyncInferQueue`` (what
``benchmark_app`` does in throughput mode).

:class:`OpenVinoModel` compiles a model that is not (yet) an artifact (an ``openvino.Model`` or
an IR path) the same explicit way: the exporter's validation, the INT8 builder's checks and the
benchmark scripts run OpenVINO through it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .backends import OPENVINO_INSTALL
from .base import (RunOutput, Runtime, RuntimeSetupError, as_masks, canonical_precision,
                   file_facts)

HINT_TYPES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
"""Our precision -> OpenVINO ``INFERENCE_PRECISION_HINT``."""
CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}
"""Our precision -> the ``OPTIMIZATION_CAPABILITIES`` entry a device must list."""
_OURS = {v: k for k, v in HINT_TYPES.items()}
_PERF_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def device_capabilities(core: Any = None, device: str = "CPU") -> list[str]:
    """The device's ``OPTIMIZATION_CAPABILITIES`` (``FP32``, ``BF16``, ``FP16``, ``INT8``, ...)."""
    if core is None:
        from .backends import import_openvino

        core = import_openvino().Core()
    return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]


def hint_of(compiled: Any) -> str:
    """The ``INFERENCE_PRECISION_HINT`` a compiled model runs at (``f32``, ``bf16``, ...)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def outputs_by_name(result: Any) -> dict[str, np.ndarray]:
    """An infer result (port -> value) by output name."""
    out = {}
    for port, value in result.items():
        for name in port.get_names():
            out[name] = np.asarray(value)
    return out


class OpenVinoModel:
    """An OpenVINO model (``openvino.Model`` or IR path) compiled on ``device`` with
    ``INFERENCE_PRECISION_HINT`` = ``hint`` set explicitly (OpenVINO's own default is bf16 on
    CPUs that have it) and checked after compiling.

    ``variant(key, edit)`` compiles a variant of the model: ``edit`` changes a fresh copy (read
    again from the IR, or cloned) before compiling; one compiled model is kept per ``key``.
    """

    def __init__(self, model: Any, *, hint: str = "f32", device: str = "CPU",
                 config: Optional[dict[str, Any]] = None, core: Any = None,
                 f32_gates: bool = True) -> None:
        from .backends import import_openvino

        self.ov = import_openvino()
        self.core = core or self.ov.Core()
        self._source = model
        self.hint = hint
        self.device = device
        self.config = {"INFERENCE_PRECISION_HINT": hint, **(config or {})}
        self._compiled: dict[Any, Any] = {}
        self.f32_gates = f32_gates and hint != "f32"
        """Rewrite the gates to stay f32 before compiling (see :class:`OpenVinoRuntime`)."""
        self.name = f"OpenVINO {self.ov.get_version().split('-')[0]} {device} {hint}"

    def read(self) -> Any:
        """A fresh copy of the model."""
        if isinstance(self._source, (str, Path)):
            return self.core.read_model(str(self._source))
        return self._source.clone()

    def variant(self, key: Any = None, edit: Optional[Callable[[Any], None]] = None) -> Any:
        if key not in self._compiled:
            model = self._source if edit is None and not self.f32_gates and not isinstance(
                self._source, (str, Path)) else self.read()
            if edit is not None:
                edit(model)
            if self.f32_gates:
                from .openvino_gates import gates_as_reductions

                gates_as_reductions(model)
            compiled = self.core.compile_model(model, self.device, self.config)
            got = hint_of(compiled)
            if got != self.hint:
                raise RuntimeSetupError(f"OpenVINO compiled the model at {got}, not the "
                                        f"{self.hint} asked for", "choose another precision")
            self._compiled[key] = compiled
        return self._compiled[key]

    @property
    def compiled(self) -> Any:
        return self.variant()

    def outputs(self, images: np.ndarray, key: Any = None,
                edit: Optional[Callable[[Any], None]] = None) -> dict[str, np.ndarray]:
        """Every output of one run, by name."""
        return outputs_by_name(self.variant(key, edit)(np.ascontiguousarray(images,
                                                                            dtype=np.float32)))

    def run(self, images: np.ndarray, key: Any = None,
            edit: Optional[Callable[[Any], None]] = None
            ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(logits, masks) of one run; masks None when the model has no ``masks`` output."""
        values = self.outputs(images, key, edit)
        masks = values.get("masks")
        return values["logits"], None if masks is None else as_masks(masks)

    def close(self) -> None:
        self._compiled.clear()


class OpenVinoRuntime(Runtime):
    target = "openvino"
    kind = "openvino"
    precisions = ("fp32", "bf16", "fp16", "int8")
    install = OPENVINO_INSTALL
    float_parts_note: Optional[str] = None
    """INT8: why the float parts do not run at the build's recorded precision (None: they do)."""

    @classmethod
    def import_backend(cls) -> Any:
        from .backends import import_openvino

        return import_openvino()

    def check_artifact(self) -> None:
        if "openvino" in self.info.files:
            return
        build = self.info.build
        path = self.artifact.path
        if build is not None and build.target != "openvino":
            raise RuntimeSetupError(
                f"artifact {path} is a {build.target} build and has no OpenVINO IR",
                f"pass the export it was built from, e.g. `dyt-edge build --target openvino "
                f"{self.artifact.parent_export or 'EXPORT'}`")
        raise RuntimeSetupError(
            f"artifact {path} has no OpenVINO IR",
            f"run `dyt-edge build --target openvino {path}` or export with --format openvino")

    # -- loading --------------------------------------------------------------------------------
    def _hint_precision(self) -> str:
        """The ``INFERENCE_PRECISION_HINT`` value to set (``f32`` / ``bf16`` / ``f16``).

        INT8: ``extra["inference_precision"]`` when given (the device must have it); else the
        float-parts precision the build recorded (``build.inference_precision``; f32 for builds
        that record none), falling back to f32, with :attr:`float_parts_note` saying so, on a
        device that lacks it: the INT8 part is the artifact's, the float parts' precision a
        speed choice, and f32 is the more exact one."""
        self.float_parts_note = None
        asked = self.options.extra.get("inference_precision")
        if self.precision != "int8":
            if asked:
                raise RuntimeSetupError(
                    f"float parts apply to INT8 artifacts; {self.artifact.path} runs "
                    f"{self.precision} throughout", "drop --float-parts, or choose --precision")
            return HINT_TYPES[self.precision]
        if asked:
            float_part = canonical_precision(asked)
            if float_part not in HINT_TYPES:
                raise RuntimeSetupError(f"inference_precision {asked} is not a float precision",
                                        "choose fp32, bf16 or fp16 for the non-quantized parts")
            return HINT_TYPES[float_part]
        build = self.info.build
        recorded = (build.record.get("inference_precision") if build else None) or "f32"
        if recorded not in _OURS:
            raise RuntimeSetupError(f"the manifest of {self.artifact.path} records float parts "
                                    f"at '{recorded}', which is not an OpenVINO precision",
                                    "re-create the artifact with dyt-edge build")
        if CAPABILITY[_OURS[recorded]] not in self.capabilities:
            self.float_parts_note = (f"the artifact's float parts are {recorded}, which "
                                     f"{self.device} lacks: they run f32")
            return "f32"
        return recorded

    def _load(self) -> None:
        ov = self.backend
        opts = self.options
        self.core = core = ov.Core()
        self.device = device = opts.device or "CPU"
        available = list(core.available_devices)
        if device.split(".")[0].split(":")[0] not in {d.split(".")[0] for d in available}:
            raise RuntimeSetupError(f"OpenVINO has no device {device!r} here",
                                    f"available: {', '.join(available) or 'none'}")
        self.device_name = str(core.get_property(device, "FULL_DEVICE_NAME")).strip()
        self.capabilities = device_capabilities(core, device)
        hint = self._hint_precision()
        needed = {CAPABILITY[self.precision]}
        needed.add(CAPABILITY[_OURS[hint]])
        missing = sorted(needed - set(self.capabilities))
        if missing:
            have = [p for p in self.precisions if CAPABILITY[p] in self.capabilities]
            raise RuntimeSetupError(
                f"{device} '{self.device_name}' cannot run {self.precision}"
                + (f" (with {hint} for the float parts)" if self.precision == "int8" else "")
                + f": OpenVINO reports its capabilities as {', '.join(self.capabilities)}",
                f"choose one of: {', '.join(have) or 'none'}")

        self.xml = self.model_file("openvino")
        self.bin = (self.model_file("openvino_weights") if "openvino_weights" in self.info.files
                    else self.xml.with_suffix(".bin"))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint,
                                  "PERFORMANCE_HINT": _PERF_HINTS[opts.hint]}
        if opts.streams is not None:
            config["NUM_STREAMS"] = str(int(opts.streams))
        if opts.threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(opts.threads)
        config.update(opts.extra.get("config", {}))
        self.config = config
        try:
            model = core.read_model(str(self.xml))
            self.f32_gates = self._keep_gates_f32(model, hint)
            self.compiled = core.compile_model(model, device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for everything
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeSetupError(f"OpenVINO cannot compile {self.xml} for {device} "
                                    f"({first[:300]})", "re-create the artifact") from exc

        self.in_effect = self._read_back()
        if self.in_effect["inference_precision"] != hint:
            raise RuntimeSetupError(
                f"OpenVINO compiled {self.xml} at {self.in_effect['inference_precision']}, not "
                f"the {hint} asked for, on {device} '{self.device_name}'",
                "choose another --precision")
        if opts.streams is not None and self.in_effect["streams"] != int(opts.streams):
            raise RuntimeSetupError(f"OpenVINO runs {self.in_effect['streams']} streams, not "
                                    f"the {opts.streams} asked for", "choose another --streams")

        self._ports: dict[str, int] = {}
        for i, port in enumerate(self.compiled.outputs):
            for name in port.get_names():
                self._ports.setdefault(name, i)
        if "logits" not in self._ports:
            raise RuntimeSetupError(f"{self.xml} has no 'logits' output",
                                    "re-export the model with `dyt-edge export`")
        self._request = self.compiled.create_infer_request()

    def _keep_gates_f32(self, model: Any, hint: str) -> Optional[list[str]]:
        """The gates rewritten to stay f32 (None: not asked for, the hint is f32 already)."""
        if hint == "f32" or not self.options.extra.get("f32_gates", True):
            return None
        from .openvino_gates import gates_as_reductions

        return gates_as_reductions(model, list(self.info.dispatch.dispatchers) or None)

    def _read_back(self) -> dict[str, Any]:
        c = self.compiled

        def prop(name: str) -> Any:
            try:
                return c.get_property(name)
            except Exception:  # noqa: BLE001 - a property this device does not report
                return None

        try:
            precision = hint_of(c)
        except Exception:  # noqa: BLE001 - a property this device does not report
            precision = "None"
        streams = prop("NUM_STREAMS")
        hint = prop("PERFORMANCE_HINT")
        return {
            "inference_precision": precision,
            "streams": int(streams) if streams is not None else None,
            "threads": prop("INFERENCE_NUM_THREADS"),
            "performance_hint": getattr(hint, "name", str(hint)),
            "optimal_requests": int(prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1),
            "execution_devices": [str(d) for d in (prop("EXECUTION_DEVICES") or [])],
        }

    # -- running --------------------------------------------------------------------------------
    def run(self, images: np.ndarray) -> RunOutput:
        x = self.check_batch(images)
        result = self._request.infer({0: x})  # outputs copied (share_outputs=False)
        logits = np.asarray(result[self._ports["logits"]], dtype=np.float32)
        masks = result[self._ports["masks"]] if "masks" in self._ports else None
        return RunOutput(logits, None if masks is None else as_masks(masks))

    def prepare(self, images: np.ndarray):
        """A bound infer request: the input set once (shared memory), ``start_async`` +
        ``wait`` per call (outputs stay in the request)."""
        ov = self.backend
        x = self.check_batch(images)
        request = self.compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))

        def call() -> None:
            request.start_async()
            request.wait()

        call.keep_alive = (x, request)  # type: ignore[attr-defined]
        return call

    def throughput(self, images: np.ndarray, duration_s: float) -> tuple[int, float]:
        """``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` requests on an ``AsyncInferQueue``, every one
        bound to ``images``, kept busy for ``duration_s``; returns (inferences completed, wall
        seconds until the last one finished)."""
        ov = self.backend
        x = self.check_batch(images)
        tensor = ov.Tensor(x, shared_memory=True)
        jobs = max(1, int(self.in_effect["optimal_requests"]))
        queue = ov.AsyncInferQueue(self.compiled, jobs)
        for request in queue:
            request.set_input_tensor(tensor)
        started = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < duration_s or started == 0:
            queue.start_async()  # waits for an idle request when all are busy
            started += 1
        queue.wait_all()
        return started, time.perf_counter() - t0

    def _describe(self) -> dict[str, Any]:
        ov = self.backend
        e = self.in_effect
        return {
            "backend": f"OpenVINO {ov.get_version().split('-')[0]}",
            "device": f"{self.device} ({self.device_name})",
            "capabilities": list(self.capabilities),
            "precision_in_effect": (_OURS.get(e["inference_precision"], e["inference_precision"])
                                    if self.precision != "int8" else
                                    f"int8 (float parts {e['inference_precision']}"
                                    + (f"; {self.float_parts_note})" if self.float_parts_note
                                       else ")")),
            "inference_precision_hint": e["inference_precision"],
            "gate_path": self._gate_path(),
            "performance_hint": e["performance_hint"],
            "threads": e["threads"],
            "streams": e["streams"],
            "optimal_requests": e["optimal_requests"],
            "execution_devices": e["execution_devices"],
            **file_facts(self.xml, self.bin),
        }

    def _gate_path(self) -> str:
        hint = self.in_effect["inference_precision"]
        if self.f32_gates is None:
            return hint
        if not self.f32_gates:
            return f"{hint} (no gate found to keep f32)"
        return (f"f32 ({len(self.f32_gates)} gate(s) as Multiply + ReduceSum beside the {hint} "
                "MatMuls)")

    def close(self) -> None:
        for name in ("_request", "compiled", "core"):
            self.__dict__.pop(name, None)
