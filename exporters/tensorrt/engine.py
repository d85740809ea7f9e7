"""The TensorRT calls of the build, kept thin (everything decided before them is in
:mod:`.plan` and :mod:`dyt_edge.runtimes.tensorrt.install`, tested without TensorRT).

One code path for TensorRT 10.x and 11.x: a **strongly typed** network (``create_network`` with
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: required for explicit precisions on 10.x,
always on and accepted-but-ignored on 11.x) parsed from an ONNX whose precisions are explicit
(fp32 export, FP16-typed graph, or int8 Q/DQ pairs), one optimization profile for every dynamic
input, the workspace pool limit, and a timing cache loaded before and saved after the build. No
weak-typing builder flag (``BuilderFlag.FP16`` / ``INT8``, removed in 11.x) and no calibrator
(removed in 11.x) is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ...errors import DytEdgeError
from ...runtimes.tensorrt.engine_file import make_logger


class EngineBuildError(DytEdgeError):
    """TensorRT could not parse the ONNX or build the engine."""


@dataclass
class BuiltEngine:
    engine: bytes
    timing_cache: Optional[bytes]
    io: list[dict[str, Any]]
    log: list[str] = field(default_factory=list)
    """TensorRT's warnings and errors during the build."""


def _first_error(log: Sequence[str]) -> str:
    errors = [m for m in log if m.startswith(("error", "internal error"))]
    return (errors or list(log) or ["no message"])[0][:400]


def build_engine(trt: Any, onnx_path: Path, *, input_shapes: dict[str, dict[str, tuple]],
                 workspace_bytes: int, timing_cache: Optional[bytes] = None) -> BuiltEngine:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine.

    ``input_shapes``: input name -> {"min", "opt", "max"} shapes, for the dynamic inputs (an
    input with a dynamic dimension and no entry is an error: every dynamic input needs a
    profile). ``timing_cache``: a serialized timing cache to start from (``b""`` or None: a new
    one); the updated cache comes back in :attr:`BuiltEngine.timing_cache`.
    """
    log: list[str] = []
    logger = make_logger(trt, log)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}: "
            f"{(errors or [_first_error(log)])[0][:400]}",
            "see the TensorRT compatibility table of `--dry-run`; report it with the model")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    profile = builder.create_optimization_profile()
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            dynamic.append(tensor.name)
            if tensor.name not in input_shapes:
                raise EngineBuildError(f"input {tensor.name} has dynamic shape {shape} and no "
                                       "optimization profile", "report it with the model")
            s = input_shapes[tensor.name]
            profile.set_shape(tensor.name, s["min"], s["opt"], s["max"])
    if dynamic:
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build the engine ({_first_error(log)})",
                               "try a larger --workspace, or report it with the model")
    new_cache = config.get_timing_cache()
    cache_bytes = bytes(new_cache.serialize()) if new_cache is not None else None
    return BuiltEngine(engine=bytes(serialized), timing_cache=cache_bytes,
                       io=engine_io(trt, bytes(serialized), logger), log=log)


def engine_io(trt: Any, engine_bytes: bytes, logger: Any) -> list[dict[str, Any]]:
    """Deserialize the engine (it must load) and list its I/O tensors."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError("the built engine does not deserialize",
                               "report it with the model")
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        out.append({"name": name,
                    "mode": "input" if mode == trt.TensorIOMode.INPUT else "output",
                    "dtype": str(engine.get_tensor_dtype(name)).split(".")[-1].lower(),
                    "shape": [int(d) for d in engine.get_tensor_shape(name)]})
    return out
