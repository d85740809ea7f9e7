"""A stand-in for the ``tensorrt`` module (:func:`fake_tensorrt`), and the engine record a build
writes (:func:`engine_record`)."""

from __future__ import annotations

import types

import numpy as np

from dyt_edge.exporters.tensorrt import plan as tplan
from dyt_edge.runtimes.tensorrt.gpus import DetectedGpu
from dyt_edge.runtimes.tensorrt.install import TensorRTInstall

from .cuda import FakeCuda
from .gpus import T4


def fake_network(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The made-up network the fake engine runs on images ``x`` [B, 3, 32, 32]: (logits [B, 5],
    masks [B, 2, 16]) with logits[b, k] = mean(x[b]) * (k + 1), masks[b, l, n] = x[b, 0, l, n] >
    0."""
    logits = x.mean(axis=(1, 2, 3))[:, None] * np.arange(1, 6, dtype=np.float32)
    return logits.astype(np.float32), x[:, 0, :2, :16] > 0


class _Enum:
    """Named constants, the way TensorRT's enums are read (``trt.MemoryPoolType.WORKSPACE``)."""

    def __init__(self, **values):
        self.__dict__.update(values)


def fake_tensorrt() -> types.ModuleType:
    """A stand-in for the ``tensorrt`` module that records (in ``calls``) the calls the build
    and the runtime make; its engine runs a made-up network on :class:`FakeCuda` memory. It
    checks call *wiring* (flags, profile shapes, workspace, timing cache, files, buffers); it
    is not TensorRT and says nothing about whether TensorRT accepts the graph."""
    import importlib.machinery

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec() callers
    trt.__version__ = "10.4.0"
    trt.calls = calls = []
    trt.NetworkDefinitionCreationFlag = _Enum(STRONGLY_TYPED=5)
    trt.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = _Enum(INPUT="INPUT", OUTPUT="OUTPUT")

    class ILogger:
        Severity = _Enum(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor("images", (-1, 3, 32, 32))

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            calls.append(("OnnxParser", type(network).__name__))
            logger.log(ILogger.Severity.WARNING, "fake: INT64 weights cast down")

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            import onnx

            onnx.checker.check_model(path)  # a real ONNX file was written there
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            self.cache = Cache(bytes(data))
            return self.cache

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"FAKE-ENGINE"

    class Context:
        """Runs :func:`fake_network` on the fake device memory of :class:`FakeCuda`."""

        def __init__(self, engine):
            self.engine, self.addresses, self.batch = engine, {}, None

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            lo, _, hi = engine_profile
            if not lo[0] <= shape[0] <= hi[0]:
                return False
            self.batch = shape[0]
            return True

        def get_tensor_shape(self, name):
            return (self.batch, *self.engine._row(name)[3][1:])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            mem = FakeCuda.current
            if mem.capturing is not None:
                if trt.data_dependent:  # what TensorRT does for DDS engines under capture
                    mem.capturing.append("invalidated")
                    return False
                mem.capturing.append(self._run)
                return True
            self._run()
            return True

        def _run(self):
            mem = FakeCuda.current
            b = self.batch
            x = mem.view(self.addresses["images"], np.float32, (b, 3, 32, 32))
            logits = mem.view(self.addresses["logits"], np.float32, (b, 5))
            masks = mem.view(self.addresses["masks"], np.bool_, (b, 2, 16))
            logits[:], masks[:] = fake_network(x)

    engine_profile = [(1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32)]

    class Engine:
        num_io_tensors = 3
        _io = (("images", "INPUT", "DataType.FLOAT", (-1, 3, 32, 32)),
               ("logits", "OUTPUT", "DataType.FLOAT", (-1, 5)),
               ("masks", "OUTPUT", "DataType.BOOL", (-1, 2, 16)))

        def create_execution_context(self):
            return Context(self)

        def get_tensor_profile_shape(self, name, index):
            return engine_profile

        def get_tensor_name(self, i):
            return self._io[i][0]

        def _row(self, name):
            return next(r for r in self._io if r[0] == name)

        def get_tensor_mode(self, name):
            return self._row(name)[1]

        def get_tensor_dtype(self, name):
            return self._row(name)[2]

        def get_tensor_shape(self, name):
            return self._row(name)[3]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize_cuda_engine", bytes(data)))
            return Engine()

    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, Parser, Runtime
    trt.nptype = lambda dtype: {"DataType.FLOAT": np.float32, "DataType.BOOL": np.bool_}[dtype]
    trt.data_dependent = False
    return trt


def engine_record(gpu: DetectedGpu = T4, version: str = "10.4.0") -> dict:
    """The record (``engine.json``) of an fp16 ``topk`` engine built on ``gpu`` with TensorRT
    ``version``, written by the real :func:`~dyt_edge.exporters.tensorrt.plan.engine_metadata`."""
    return tplan.engine_metadata(
        trt=TensorRTInstall(version, "tensorrt-cu12", 12), gpu=gpu, profile=gpu.profile,
        precision="fp16", batch=tplan.parse_batch("1:8:32"), input_name="images",
        chw=(3, 32, 32), dispatch={"mode": "topk"}, source_model={"file": "model.onnx",
                                                                  "sha256": "ab" * 32},
        onnx={"file": "model.onnx", "sha256": "cd" * 32},
        engine={"file": "model.engine", "bytes": 10, "sha256": "ef" * 32}, workspace_gib=4)
