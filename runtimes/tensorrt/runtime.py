"""TensorRT on an NVIDIA GPU: the artifact's ``model.engine`` (``dyt-edge build --target
tensorrt``).

* **Guards first.** The engine's record (``engine.json``, also the manifest's ``tensorrt``
  section) names the TensorRT version, GPU and compute capability it was built for; it is
  checked against this machine before anything is loaded (an engine only runs on the GPU model
  and TensorRT version that built it), and the engine file against its recorded sha256.
* **Execution**: one execution context, the batch set with ``set_input_shape`` (any batch of the
  engine's profile), device buffers allocated once for the profile's largest batch (addresses
  never change), pinned host buffers, and per call: H2D copy, ``execute_async_v3`` on a CUDA
  stream, D2H copies, one stream synchronisation. Outputs whose shape is data-dependent get an
  ``IOutputAllocator``; this project's engines have none (``logits`` [B, classes] and ``masks``
  [B, L, N] follow from the batch).
* **CUDA graphs** (``RuntimeOptions.extra["cuda_graph"] = True``): the enqueue of each batch
  size is captured once (after one plain enqueue, as TensorRT requires after a shape change)
  and replayed. Engines with data-dependent shapes inside (``topk`` / ``pack`` dispatch) cannot
  be captured: the runtime then says so in :meth:`describe` and runs without graphs
  (``capacity`` exports capture).
* **Timing, trtexec's way** (``docs/backends.md``): :meth:`prepare` times host latency,
  :meth:`gpu_compute_ms` the enqueue alone (CUDA events), :meth:`throughput` a busy stream.
* CUDA goes through ``cuda-python``'s driver API (:mod:`.cuda`: the pinned torch has no sm_70).

Backend options (``RuntimeOptions``): ``device`` ``cuda:N`` (default ``cuda:0``); ``extra``:
``cuda_graph`` (bool), ``allow_gpu_mismatch`` (bool: run on another GPU model of the *same*
compute capability with a warning; a different compute capability or TensorRT version is always
refused). ``streams`` / ``threads`` do not apply (refused / ignored); ``hint`` is recorded.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

import numpy as np

from ..base import RunOutput, Runtime, RuntimeSetupError, RuntimeUnavailable, as_masks, file_facts

INSTALL = ('pip install "dyt-edge[tensorrt]" (T4 and newer GPUs; for V100: '
           'pip install "dyt-edge[tensorrt-v100]", Python <= 3.12); it needs an NVIDIA GPU with '
           'CUDA')
_SYNC_EVERY = 8
"""Throughput mode: enqueues in flight before the host waits."""


class TensorRTRuntime(Runtime):
    target = "tensorrt"
    kind = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    install = INSTALL

    @classmethod
    def import_backend(cls) -> Any:
        try:
            import tensorrt
        except (ImportError, OSError) as exc:  # OSError: bindings without libnvinfer
            raise RuntimeUnavailable("TensorRT is not installed", cls.install) from exc
        return tensorrt

    def check_artifact(self) -> None:
        if "tensorrt" not in self.info.files:
            build = self.info.build
            src = self.artifact.path if not build else (
                self.artifact.parent_export or "EXPORT")
            raise RuntimeSetupError(
                f"artifact {self.artifact.path} has no TensorRT engine",
                f"build one on the GPU machine: dyt-edge build --target tensorrt {src} "
                "--gpu auto")

    def resolve_precision(self, requested: Optional[str]) -> str:
        built = self.info.built_precision or "fp32"
        precision = requested or built
        if precision not in self.precisions:
            raise RuntimeSetupError(f"{self.target} cannot run precision {precision}",
                                    f"choose one of: {', '.join(self.precisions)}")
        if precision != built:
            raise RuntimeSetupError(
                f"{self.artifact.path} is a {built} engine; a TensorRT engine runs at the "
                "precision it was built for",
                f"drop --precision, or build one: dyt-edge build --target tensorrt EXPORT "
                f"--precision {precision}")
        return precision

    # -- loading --------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The engine's record: ``engine.json`` beside it, else the manifest's section."""
        entry = self.info.files.get("tensorrt_metadata")
        if entry:
            path = self.artifact.path / entry.path
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RuntimeSetupError(f"cannot read the engine record {path} ({exc})",
                                        "re-create the artifact") from None
        meta = self.info.section("tensorrt")
        if not meta:
            raise RuntimeSetupError(f"{self.artifact.path} records no TensorRT engine metadata",
                                    "re-create the artifact with dyt-edge build")
        return dict(meta)

    def check_environment(self, meta: dict[str, Any]) -> tuple[Any, list[str]]:
        """The GPU this runtime would use, after checking the engine's record against it and
        the installed TensorRT; :class:`RuntimeSetupError` when they do not match."""
        from . import gpus
        from .engine_file import check_engine_metadata, rebuild_hint

        try:
            gpu = gpus.select_gpu(gpus.detect_gpus(), self.options.device)
        except gpus.TensorRTSetupError as exc:
            raise RuntimeSetupError(exc.message, exc.hint) from None
        version = str(getattr(self.backend, "__version__", "?"))
        problems, warnings = check_engine_metadata(
            meta, gpu, version,
            allow_gpu_model_mismatch=bool(self.options.extra.get("allow_gpu_mismatch")))
        if problems:
            raise RuntimeSetupError("cannot run this engine here: " + "; ".join(problems),
                                    rebuild_hint(self.artifact))
        return gpu, warnings

    def _load(self) -> None:
        from .cuda import Cuda, CudaError
        from .gpus import visible_index

        opts = self.options
        if opts.streams is not None:
            raise RuntimeSetupError("--target tensorrt runs one CUDA stream per runtime",
                                    "drop --streams (an OpenVINO setting)")
        self.path = self.model_file()
        self.meta = self.metadata()
        self.gpu, self.warnings = self.check_environment(self.meta)
        data = self.path.read_bytes()
        want = (self.meta.get("engine") or {}).get("sha256")
        if want:
            import hashlib

            got = hashlib.sha256(data).hexdigest()
            if got != want:
                raise RuntimeSetupError(f"{self.path} does not match its record (sha256 "
                                        f"{got[:12]}..., recorded {want[:12]}...)",
                                        "re-create the artifact")
        try:
            self.cuda = Cuda(visible_index(opts.device))
        except CudaError as exc:
            raise RuntimeSetupError(exc.message, exc.hint) from None
        try:
            self._open(data)
        except CudaError as exc:
            self.close()
            raise RuntimeSetupError(exc.message, exc.hint) from None
        except BaseException:
            self.close()
            raise

    def _open(self, data: bytes) -> None:
        from .engine_file import make_logger

        opts = self.options
        trt = self.backend
        self.log: list[str] = []
        self.logger = make_logger(trt, self.log)
        self.trt_runtime = trt.Runtime(self.logger)
        self.engine = self.trt_runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            first = next((m for m in self.log if m.startswith("error")), "no message")
            raise RuntimeSetupError(f"TensorRT cannot load {self.path} ({first[:300]})",
                                    "rebuild the engine on this machine")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        if len(self.inputs) != 1 or "logits" not in self.outputs:
            raise RuntimeSetupError(f"{self.path} has inputs {self.inputs} and outputs "
                                    f"{self.outputs}; expected one image input and 'logits'",
                                    "rebuild it from a dyt-edge export")
        self.input_name = self.inputs[0]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
                       for n in self.names}
        declared = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))
        if declared[0] >= 0:  # a static-batch engine: no profile
            self.batch_range = (declared[0], declared[0])
        else:
            lo, _, hi = (tuple(int(d) for d in s)
                         for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
            self.batch_range = (lo[0], hi[0])
        self.device_buffers: dict[str, tuple[int, int]] = {}
        self.host_buffers: dict[str, tuple[int, np.ndarray]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.allocator = None
        self.bound: Optional[int] = None
        self.want_graphs = bool(opts.extra.get("cuda_graph", False))
        self.graphs: dict[int, Any] = {}
        self.graph_note = "off (RuntimeOptions.extra['cuda_graph'] = True turns them on)"
        self._allocate(self.batch_range[1])

    def _allocate(self, batch: int) -> None:
        """Device and pinned host buffers for ``batch`` images (the profile's largest), so
        addresses stay fixed for every smaller batch (and for captured graphs)."""
        self._set_shape(batch)
        for name in self.names:
            shape = self.shapes[name]
            if any(d < 0 for d in shape):
                self._output_allocator().names.add(name)
                continue
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self.device_buffers[name] = (self.cuda.alloc(nbytes), nbytes)
            self.host_buffers[name] = self.cuda.host_alloc(nbytes)
        for name, (ptr, _) in self.device_buffers.items():
            self.context.set_tensor_address(name, ptr)
        self.bound = None

    def _output_allocator(self) -> Any:
        if self.allocator is None:
            self.allocator = _make_output_allocator(self.backend, self.cuda)
            self.want_graphs = False
            self.graph_note = "off: the engine has data-dependent outputs"
        return self.allocator

    def _set_shape(self, batch: int) -> None:
        chw = tuple(int(d) for d in self.engine.get_tensor_shape(self.input_name))[1:]
        if not self.context.set_input_shape(self.input_name, (batch, *chw)):
            raise RuntimeSetupError(f"the engine does not take a batch of {batch}",
                                    f"its profile covers batches {self.batch_range[0]} to "
                                    f"{self.batch_range[1]}")
        self.shapes = {n: tuple(int(d) for d in self.context.get_tensor_shape(n))
                       for n in self.names}

    def _bind(self, batch: int) -> None:
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise RuntimeSetupError(
                f"batch {batch} is outside the engine's optimization profile ({lo} to {hi})",
                f"use batches of {lo} to {hi}, or rebuild with --batch covering {batch}")
        if self.bound != batch:
            self._set_shape(batch)
            if self.allocator is not None:
                for name in self.allocator.names:
                    self.context.set_output_allocator(name, self.allocator)
            self.bound = batch

    # -- one inference ------------------------------------------------------------------------
    def _nbytes(self, name: str) -> int:
        return int(np.prod(self.shapes[name])) * self.dtypes[name].itemsize

    def _host_view(self, name: str) -> np.ndarray:
        _, raw = self.host_buffers[name]
        return raw[:self._nbytes(name)].view(self.dtypes[name]).reshape(self.shapes[name])

    def _stage_input(self, x: np.ndarray) -> None:
        np.copyto(self._host_view(self.input_name), x, casting="same_kind")

    def _h2d(self) -> None:
        ptr, _ = self.device_buffers[self.input_name]
        host, _ = self.host_buffers[self.input_name]
        self.cuda.h2d(ptr, host, self._nbytes(self.input_name), self.stream)

    def _d2h(self) -> None:
        for name in self.outputs:
            if name in self.device_buffers:
                ptr, _ = self.device_buffers[name]
                host, _ = self.host_buffers[name]
                self.cuda.d2h(host, ptr, self._nbytes(name), self.stream)

    def _execute(self) -> None:
        """The enqueue of the bound batch: a captured graph when enabled and capturable."""
        from .cuda import handle

        if self.want_graphs:
            graph = self.graphs.get(self.bound) or self._capture()
            if graph is not None:
                self.cuda.launch(graph[1], self.stream)
                return
        if not self.context.execute_async_v3(handle(self.stream)):
            first = next((m for m in reversed(self.log) if m.startswith("error")), "no message")
            raise RuntimeSetupError(f"TensorRT execution failed ({first[:300]})")

    def _capture(self) -> Optional[tuple[Any, Any]]:
        from .cuda import CudaError, handle

        stream = handle(self.stream)
        self.context.execute_async_v3(stream)  # flush deferred shape updates first
        self.cuda.sync(self.stream)
        graph = None
        try:
            self.cuda.begin_capture(self.stream)
            try:
                ok = self.context.execute_async_v3(stream)
            finally:
                graph = self.cuda.end_capture(self.stream)  # always leave capture mode
            if not ok:
                raise CudaError("the enqueue failed while capturing")
            exec_ = self.cuda.instantiate(graph)
        except CudaError as exc:
            if graph is not None:
                self.cuda.destroy_graph(graph=graph)
            self.want_graphs = False
            mode = (self.meta.get("dispatch") or {}).get("mode", "?")
            self.graph_note = (f"requested, not capturable ({exc.message}); the {mode} engine "
                               "runs without CUDA graphs (data-dependent shapes cannot be "
                               "captured: use a capacity export)")
            return None
        self.graphs[self.bound] = (graph, exec_)
        self.graph_note = "on (one captured graph per batch size)"
        return self.graphs[self.bound]

    def _outputs(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self.outputs:
            if name in self.host_buffers:
                out[name] = np.array(self._host_view(name))
            else:  # data-dependent output: copy what the allocator got, now its shape is known
                out[name] = self.allocator.fetch(name, self.dtypes[name], self.stream)
        return out

    def run(self, images: np.ndarray) -> RunOutput:
        """Logits and masks for any batch: one outside the engine's profile is run in chunks
        of its largest batch (and a batch below its smallest padded with copies)."""
        x = self.check_batch(images)
        lo, hi = self.batch_range
        if x.shape[0] > hi:
            parts = [self.run(x[i:i + hi]) for i in range(0, x.shape[0], hi)]
            masks = [p.masks for p in parts]
            return RunOutput(np.concatenate([p.logits for p in parts]),
                             None if any(m is None for m in masks) else np.concatenate(masks))
        if x.shape[0] < lo:
            n = x.shape[0]
            out = self.run(np.concatenate([x, np.resize(x, (lo - n, *x.shape[1:]))]))
            return RunOutput(out.logits[:n], None if out.masks is None else out.masks[:n])
        return self._run(x)

    def _run(self, x: np.ndarray) -> RunOutput:
        self.cuda.make_current()
        self._bind(x.shape[0])
        self._stage_input(x)
        self._h2d()
        self._execute()
        self._d2h()
        self.cuda.sync(self.stream)
        values = self._outputs()
        logits = np.asarray(values["logits"]).astype(np.float32, copy=False)
        masks = values.get("masks")
        return RunOutput(logits, None if masks is None else as_masks(masks))

    # -- timing hooks (bench) -------------------------------------------------------------------
    def prepare(self, images: np.ndarray) -> Callable[[], Any]:
        """One synchronous inference with the input staged once in pinned memory: H2D, GPU
        compute, D2H, stream sync — trtexec's host *latency*."""
        x = self.check_batch(images)
        self.cuda.make_current()
        self._bind(x.shape[0])
        self._stage_input(x)
        batch = x.shape[0]

        def call() -> None:
            if self.bound != batch:
                self._bind(batch)
                self._stage_input(x)
            self._h2d()
            self._execute()
            self._d2h()
            self.cuda.sync(self.stream)

        return call

    def throughput(self, images: np.ndarray, duration_s: float) -> tuple[int, float]:
        """Inferences back to back on the stream (H2D, compute, D2H each), the host waiting
        only every few: trtexec's throughput (inferences / host wall time)."""
        call = self.prepare(images)
        call()  # warm: shapes bound, graph captured when enabled
        n, t0 = 0, time.perf_counter()
        while True:
            for _ in range(_SYNC_EVERY):
                self._h2d()
                self._execute()
                self._d2h()
            self.cuda.sync(self.stream)
            n += _SYNC_EVERY
            elapsed = time.perf_counter() - t0
            if elapsed >= duration_s:
                return n, elapsed

    def gpu_compute_ms(self, images: np.ndarray, iterations: int = 100, warmup: int = 10
                       ) -> list[float]:
        """GPU time of the enqueue alone, per inference, in ms (CUDA events around it:
        trtexec's "GPU Compute Time"); no copies are timed."""
        call = self.prepare(images)
        call()
        start, end = self.cuda.event(), self.cuda.event()
        times = []
        try:
            for i in range(int(warmup) + int(iterations)):
                self.cuda.record(start, self.stream)
                self._execute()
                self.cuda.record(end, self.stream)
                ms = self.cuda.elapsed_ms(start, end)
                if i >= warmup:
                    times.append(ms)
        finally:
            self.cuda.destroy_event(start)
            self.cuda.destroy_event(end)
        return times

    def _describe(self) -> dict[str, Any]:
        meta = self.meta
        g = self.gpu
        prof = meta.get("profile") or {}
        return {
            "backend": f"TensorRT {getattr(self.backend, '__version__', '?')}",
            "device": f"{g.name} (compute capability {g.cc}, cuda:{g.index})",
            "precision_in_effect": f"{meta.get('precision')} (strongly typed engine built from "
                                   f"the {meta.get('precision')} graph; input "
                                   f"{self.dtypes[self.input_name].name})",
            "engine_built_for": f"{meta['gpu']['name']} ({meta['gpu']['compute_capability']}), "
                                f"TensorRT {meta['tensorrt']['version']}",
            "profile": (f"{prof.get('input')}: min {prof.get('min')}, opt {prof.get('opt')}, "
                        f"max {prof.get('max')}"),
            "dispatch": (meta.get("dispatch") or {}).get("mode"),
            "cuda_graph": self.graph_note,
            "streams": 1,
            "timing": {
                "latency": "prepare(): H2D + GPU compute + D2H + stream sync, input staged "
                           "once in pinned memory (trtexec 'Latency')",
                "gpu_compute": "gpu_compute_ms(): CUDA events around the enqueue only "
                               "(trtexec 'GPU Compute Time')",
                "throughput": f"throughput(): back-to-back inferences on one stream, host sync "
                              f"every {_SYNC_EVERY} (trtexec 'Throughput')",
            },
            "warnings": list(self.warnings),
            **file_facts(self.path),
        }

    def close(self) -> None:
        cuda = self.__dict__.get("cuda")
        if cuda is None:
            return
        try:
            cuda.make_current()
            for graph, exec_ in self.__dict__.get("graphs", {}).values():
                cuda.destroy_graph(graph=graph, graph_exec=exec_)
            self.__dict__.pop("context", None)
            self.__dict__.pop("engine", None)
            self.__dict__.pop("trt_runtime", None)
            for ptr, _ in self.__dict__.get("device_buffers", {}).values():
                cuda.free(ptr)
            for ptr, _ in self.__dict__.get("host_buffers", {}).values():
                cuda.host_free(ptr)
            if self.__dict__.get("allocator") is not None:
                self.allocator.free()
            if "stream" in self.__dict__:
                cuda.destroy_stream(self.stream)
        finally:
            self.__dict__.pop("cuda", None)
            self.device_buffers, self.host_buffers, self.graphs = {}, {}, {}
            cuda.close()


def _make_output_allocator(trt: Any, cuda: Any) -> Any:
    """An ``IOutputAllocator`` for data-dependent outputs: device memory grown on demand, the
    shape TensorRT reports kept for the copy back."""

    class _OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.names: set[str] = set()
            self.buffers: dict[str, tuple[int, int]] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int,
                              alignment: int) -> int:
            ptr, have = self.buffers.get(tensor_name, (0, 0))
            if size > have:
                cuda.free(ptr)
                ptr, have = cuda.alloc(max(int(size), 1)), max(int(size), 1)
                self.buffers[tensor_name] = (ptr, have)
            return ptr

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int,
                                    alignment: int, stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def fetch(self, name: str, dtype: np.dtype, stream: Any) -> np.ndarray:
            shape = self.shapes.get(name, (0,))
            out = np.empty(shape, dtype=dtype)
            if out.nbytes:
                cuda.sync(stream)
                cuda.check(cuda.drv.cuMemcpyDtoH(out.ctypes.data, self.buffers[name][0],
                                                 out.nbytes), "cuMemcpyDtoH")
            return out

        def free(self) -> None:
            for ptr, _ in self.buffers.values():
                cuda.free(ptr)
            self.buffers.clear()

    return _OutputAllocator()
