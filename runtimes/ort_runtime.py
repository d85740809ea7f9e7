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

:class:`OrtModel` is the same session setup on a graph that is not (yet) an artifact: the
exporter's validation and simplification, TensorRT conversion parity and the benchmark scripts
run ONNX through it.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .backends import ONNXRUNTIME_INSTALL
from .base import RunOutput, Runtime, RuntimeSetupError, as_masks, cpu_name, file_facts

def session_options(ort: Any, *, threads: Optional[int] = None, optimize: bool = True,
                    config: Optional[dict[str, Any]] = None) -> Any:
    """The one ONNX Runtime session setup: quiet, sequential, one inter-op thread, every graph
    optimisation on unless ``optimize`` is False, ``threads`` intra-op threads (default: ONNX
    Runtime's, one per physical core), ``config`` extra session config entries."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        so.add_session_config_entry(str(key), str(value))
    return so


def outputs_by_name(names: list[str], values: list[Any]) -> dict[str, np.ndarray]:
    return {n: np.asarray(v) for n, v in zip(names, values)}


class OrtModel:
    """ONNX Runtime on the CPU for a graph given as a ModelProto, serialised bytes or a path.

    ``overrides`` (initializer name -> value) give a session where those initializers are
    replaced (``SessionOptions.add_initializer``). Such sessions run with graph optimisations
    off: ONNX Runtime 1.32 fuses the gate's MatMul + Add at every optimisation level above
    ``ORT_DISABLE_ALL`` before the override applies, and then silently ignores it. Sessions
    without overrides run the fully optimised graph users get. One session is kept per set of
    overrides. A graph ONNX Runtime cannot load raises :class:`RuntimeSetupError`.
    """

    def __init__(self, model: Any, *, threads: Optional[int] = None,
                 config: Optional[dict[str, Any]] = None) -> None:
        from .backends import import_onnxruntime

        self._ort = ort = import_onnxruntime()
        proto = model if hasattr(model, "SerializeToString") else None
        if proto is not None:
            self._model: Any = proto.SerializeToString()
        else:
            self._model = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
        self._dims = ({t.name: tuple(t.dims) for t in proto.graph.initializer}
                      if proto is not None else {})
        self._threads = threads
        self._config = config
        self._sessions: dict[tuple, Any] = {}
        self._keep: list[Any] = []
        self.name = f"ONNX Runtime {ort.__version__} CPU"

    @property
    def serialized(self) -> bytes:
        """The graph as serialised bytes (reads the file when built from a path)."""
        if isinstance(self._model, bytes):
            return self._model
        from pathlib import Path

        return Path(self._model).read_bytes()

    def session(self, overrides: Optional[dict[str, float]] = None) -> Any:
        key = tuple(sorted((overrides or {}).items()))
        if key not in self._sessions:
            ort = self._ort
            so = session_options(ort, threads=self._threads, optimize=not key,
                                 config=self._config)
            for name, value in key:
                arr = np.full(self._dims.get(name, (1,)), value, np.float32)
                ortvalue = ort.OrtValue.ortvalue_from_numpy(arr)
                self._keep.append((arr, ortvalue))  # must outlive the session
                so.add_initializer(name, ortvalue)
            try:
                self._sessions[key] = ort.InferenceSession(
                    self._model, so, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                where = self._model if isinstance(self._model, str) else "the graph"
                raise RuntimeSetupError(f"ONNX Runtime cannot load {where} ({first[:300]})",
                                        "re-export the model") from exc
        return self._sessions[key]

    @property
    def input_name(self) -> str:
        return self.session().get_inputs()[0].name

    @property
    def static_batch(self) -> Optional[int]:
        """The graph's fixed batch size, None when it is dynamic."""
        dim = self.session().get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) and dim > 0 else None

    def output_names(self) -> list[str]:
        return [o.name for o in self.session().get_outputs()]

    def outputs(self, images: np.ndarray, overrides: Optional[dict[str, float]] = None
                ) -> dict[str, np.ndarray]:
        """Every output of one run, by name."""
        sess = self.session(overrides)
        x = np.ascontiguousarray(images, dtype=np.float32)
        return outputs_by_name([o.name for o in sess.get_outputs()],
                               sess.run(None, {sess.get_inputs()[0].name: x}))

    def run(self, images: np.ndarray, overrides: Optional[dict[str, float]] = None
            ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(logits, masks) of one run; masks None when the graph has no ``masks`` output."""
        values = self.outputs(images, overrides)
        masks = values.get("masks")
        return values["logits"], None if masks is None else as_masks(masks)

    def close(self) -> None:
        self._sessions.clear()
        self._keep.clear()


_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul",
        "QLinearConv", "MatMulInteger", "ConvInteger"}


class OrtRuntime(Runtime):
    target = "onnxruntime"
    kind = "onnx"
    precisions = ("fp32", "fp16", "int8")
    install = ONNXRUNTIME_INSTALL

    @classmethod
    def import_backend(cls) -> Any:
        from .backends import import_onnxruntime

        return import_onnxruntime()

    def check_artifact(self) -> None:
        files = self.info.files
        if "onnx" in files:
            return
        build = self.info.build
        parent = self.artifact.parent_export
        where = (f"pass the export it was built from ({parent})"
                 if parent else "pass an export directory (`dyt-edge export CKPT`)")
        what = (f"built for {build.target} at {build.precision}"
                if build else f"format {self.artifact.format}")
        holds = ", ".join(k for k in files
                          if not k.endswith(("_weights", "_metadata"))) or "nothing"
        raise RuntimeSetupError(
            f"artifact {self.artifact.path} has no ONNX model for --target onnxruntime "
            f"({what}; it holds: {holds})", where)

    def resolve_precision(self, requested: Optional[str]) -> str:
        built = self.info.built_precision
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
        self.runner = OrtModel(self.path, threads=opts.threads,
                               config=opts.extra.get("session_config"))
        self.session = self.runner.session()
        self.input_name = self.runner.input_name
        self.output_names = self.runner.output_names()
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
        threads = self.options.threads
        return {
            "backend": f"ONNX Runtime {ort.__version__}",
            "device": f"CPU ({cpu_name()})",
            "providers": self.session.get_providers(),
            "precision_in_effect": f"{self.graph_precision} ({self.graph_facts})",
            "threads": threads or "default (one per physical core)",
            "streams": 1,
            "graph_optimization": "ORT_ENABLE_ALL",
            **file_facts(self.path),
        }

    def close(self) -> None:
        if "runner" in self.__dict__:
            self.runner.close()
        self.__dict__.pop("session", None)
