"""ONNX Runtime on the CPU: the artifact's ``model.onnx``.

* ``CPUExecutionProvider``, every graph optimisation on (``ORT_ENABLE_ALL``: nothing here
  overrides initializers, the one case that needs them off), ``intra_op_num_threads`` from
  ``threads`` (default: ONNX Runtime's, one per physical core), sequential execution.
* Precision is the model's: ONNX Runtime runs the graph's own types. ``fp32`` for a plain
  export; ``fp16`` / ``int8`` need an artifact built at that precision (``build.precision`` in
  the manifest: an FP16 graph, or explicit QuantizeLinear/DequantizeLinear pairs). The graph is
  inspected when loaded and the precision in effect reported from what it holds, so a manifest
  that disagrees with its graph is refused rather than believed.
* Any artifact whose manifest lists an ``onnx`` file runs (plain exports, ``--format openvino``
  exports, and builds that keep a converted ONNX beside their engine); one without (an OpenVINO
  IR build, a bare TensorRT engine) is refused, naming the export it came from.
* ``hint`` is accepted and recorded (ONNX Runtime has no latency/throughput modes); ``streams``
  is refused (an OpenVINO setting).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .base import (RunOutput, Runtime, RuntimeSetupError, RuntimeUnavailable, as_masks,
                   cpu_name, file_facts)

_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul",
        "QLinearConv", "MatMulInteger", "ConvInteger"}


class OrtRuntime(Runtime):
    target = "onnxruntime"
    kind = "onnx"
    precisions = ("fp32", "fp16", "int8")
    install = "pip install onnxruntime"

    @classmethod
    def import_backend(cls) -> Any:
        import dyt_edge.exporters  # noqa: F401  (telemetry off before onnxruntime is imported)

        try:
            import onnxruntime
        except ImportError as exc:
            raise RuntimeUnavailable("ONNX Runtime is not installed", cls.install) from exc
        return onnxruntime

    def check_artifact(self) -> None:
        files = self.artifact.manifest.get("files", {})
        if "onnx" in files:
            return
        build = self.artifact.manifest.get("build") or {}
        parent = build.get("parent")
        where = (f"pass the export it was built from ({(self.artifact.path / parent).resolve()})"
                 if parent else "pass an export directory (`dyt-edge export CKPT`)")
        what = (f"built for {build.get('target', '?')} at {build.get('precision', '?')}"
                if build else f"format {self.artifact.format}")
        holds = ", ".join(k for k in files
                          if not k.endswith(("_weights", "_metadata"))) or "nothing"
        raise RuntimeSetupError(
            f"artifact {self.artifact.path} has no ONNX model for --target onnxruntime "
            f"({what}; it holds: {holds})", where)

    def resolve_precision(self, requested: Optional[str]) -> str:
        built = (self.artifact.manifest.get("build") or {}).get("precision")
        model_precision = built if built in ("fp16", "int8") else "fp32"
        precision = requested or model_precision
        if precision not in self.precisions:
            raise RuntimeSetupError(f"{self.target} cannot run precision {precision}",
                                    f"choose one of: {', '.join(self.precisions)}")
        if precision != model_precision:
            if model_precision == "fp32":
                raise RuntimeSetupError(
                    f"{self.artifact.path} is not an {precision.upper()} model (ONNX Runtime "
                    "runs a graph at its own precision)",
                    f"run it as fp32, or pass an artifact built at {precision}")
            raise RuntimeSetupError(
                f"{self.artifact.path} is an {model_precision.upper()} model; ONNX Runtime runs "
                f"it as {model_precision}", "drop --precision, or pass the fp32 export")
        return precision

    def _load(self) -> None:
        ort = self.backend
        opts = self.options
        if opts.streams is not None:
            raise RuntimeSetupError("--target onnxruntime has no streams",
                                    "--streams applies to --target openvino; use --threads")
        if opts.device is not None and opts.device.lower() not in ("cpu", "cpuexecutionprovider"):
            raise RuntimeSetupError(f"--target onnxruntime runs on the CPU here, not "
                                    f"{opts.device!r}", "drop --device")
        self.path = self.model_file()
        self.graph_precision, self.graph_facts = self._inspect_graph()
        if self.graph_precision != self.precision:
            raise RuntimeSetupError(
                f"{self.path} holds a {self.graph_precision} graph ({self.graph_facts}), but its "
                f"manifest says {self.precision}", "re-create the artifact")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if opts.threads is not None:
            so.intra_op_num_threads = int(opts.threads)
        so.inter_op_num_threads = 1
        for key, value in opts.extra.get("session_config", {}).items():
            so.add_session_config_entry(str(key), str(value))
        try:
            self.session = ort.InferenceSession(str(self.path), so,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeSetupError(f"ONNX Runtime cannot load {self.path} ({first[:300]})",
                                    "re-export the model") from exc
        self.session_options = so
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.output_names:
            raise RuntimeSetupError(f"{self.path} has no 'logits' output "
                                    f"(outputs: {', '.join(self.output_names)})",
                                    "re-export the model with `dyt-edge export`")

    def _inspect_graph(self) -> tuple[str, str]:
        """The precision the graph itself runs at, from its ops and tensor types (weights are
        not loaded)."""
        import onnx

        proto = onnx.load(str(self.path), load_external_data=False)
        g = proto.graph
        qdq = sum(1 for n in g.node if n.op_type in _QDQ)
        f16 = onnx.TensorProto.FLOAT16
        half = sum(1 for t in g.initializer if t.data_type == f16)
        half += sum(1 for n in g.node if n.op_type == "Cast"
                    and any(a.name == "to" and a.i == f16 for a in n.attribute))
        if qdq:
            return "int8", f"{qdq} quantization nodes"
        if half:
            return "fp16", f"{half} fp16 tensors / casts"
        return "fp32", "no quantization nodes, no fp16 tensors"

    def run(self, images: np.ndarray) -> RunOutput:
        x = self.check_batch(images)
        values = dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))
        logits = np.asarray(values["logits"]).astype(np.float32, copy=False)
        masks = values.get("masks")
        return RunOutput(logits, None if masks is None else as_masks(masks))

    def prepare(self, images: np.ndarray):
        """The input bound once (IOBinding on CPU memory), outputs left in ONNX Runtime."""
        x = self.check_batch(images)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        session = self.session

        def call() -> None:
            session.run_with_iobinding(binding)

        call.keep_alive = (x, binding)  # type: ignore[attr-defined]
        return call

    def _describe(self) -> dict[str, Any]:
        ort = self.backend
        threads = self.session_options.intra_op_num_threads
        return {
            "backend": f"ONNX Runtime {ort.__version__}",
            "device": f"CPU ({cpu_name()})",
            "providers": self.session.get_providers(),
            "precision_in_effect": f"{self.graph_precision} ({self.graph_facts})",
            "threads": threads if threads > 0 else "default (one per physical core)",
            "streams": 1,
            "graph_optimization": "ORT_ENABLE_ALL",
            **file_facts(self.path),
        }

    def close(self) -> None:
        self.__dict__.pop("session", None)
