"""Graph simplification: onnxsim first, onnxslim as the fallback, and nothing is trusted blindly.

A simplified graph is kept only when

* its dispatchers use the same dispatch ops as before (TopK / GatherND / ScatterND / NonZero),
* every gate path is still fp32,
* ONNX Runtime gives the same outputs as the unsimplified graph (logits within ``atol``, masks
  equal) on a mixed batch, with the gates as they are and with every gate forced shut.

Simplifiers delete ``x + 0`` and merge equal initializers, which would lose the gate biases
that validation overrides by name. So before simplifying, every gate bias is set to a distinct
non-zero placeholder (nothing to delete or merge) and afterwards set back to its real value.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .graph_report import analyze
from .torch_onnx import pin_gate_initializers

TOOLS = ("onnxsim", "onnxslim")


@dataclass
class SimplifyResult:
    requested: bool
    tool: Optional[str] = None
    """The tool whose graph was kept (None: the unsimplified graph was kept)."""
    version: Optional[str] = None
    nodes_before: int = 0
    nodes_after: int = 0
    max_diff: Optional[float] = None
    """Largest logits difference to the unsimplified graph in the re-check."""
    attempts: list[dict] = field(default_factory=list)
    """Per tool tried: tool, ok, reason, seconds."""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.requested:
            return "skipped (--no-simplify)"
        if self.tool is None:
            why = "; ".join(f"{a['tool']}: {a['reason']}" for a in self.attempts)
            return f"kept the unsimplified graph ({why})"
        return (f"{self.tool} {self.version}: {self.nodes_before} -> {self.nodes_after} nodes, "
                f"outputs re-checked (max diff {self.max_diff:.2e})")


def _run_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim's own output check failed")
    return simplified


def _run_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


_RUNNERS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "onnxsim": _run_onnxsim,
    "onnxslim": _run_onnxslim,
}


def _version(tool: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(tool)
    except PackageNotFoundError:
        return "?"


def _set_biases(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> None:
    for t in model.graph.initializer:
        if t.name in values:
            arr = values[t.name].astype(np.float32).reshape(tuple(t.dims))
            t.CopyFrom(numpy_helper.from_array(arr, t.name))


def simplify(model: onnx.ModelProto, dispatcher_names: list[str], check_inputs: np.ndarray, *,
             atol: float = 1e-4, tools: tuple[str, ...] = TOOLS):
    """Simplify ``model``; return ``(graph to keep, SimplifyResult, runner)``.

    ``runner`` is the :class:`~dyt_edge.runtimes.ort_runtime.OrtModel` of the kept simplified
    graph (its serialised bytes and session are reused by validation and the writer), or None
    when the unsimplified graph is kept. ``model`` itself is left as it was.
    """
    from .torch_onnx import name_dispatch_nodes
    from ..runtimes.ort_runtime import OrtModel

    start = time.perf_counter()
    result = SimplifyResult(requested=True, nodes_before=len(model.graph.node))
    before = analyze(model, dispatcher_names)
    biases = {d.gate_bias: numpy_helper.to_array(_init(model, d.gate_bias)).copy()
              for d in before.dispatchers if d.gate_bias}
    placeholders = {name: np.full_like(v, 0.25 + 1e-3 * i)
                    for i, (name, v) in enumerate(biases.items())}
    reference = OrtModel(model)
    ref_outputs = reference.run(check_inputs)
    reference.close()
    del reference

    for tool in tools:
        t0 = time.perf_counter()
        attempt = {"tool": tool, "ok": False, "reason": "", "seconds": 0.0}
        result.attempts.append(attempt)
        runner = None
        try:
            _set_biases(model, placeholders)
            try:
                with contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    candidate = _RUNNERS[tool](model)
            finally:
                _set_biases(model, biases)
            if candidate is model:
                raise RuntimeError("returned its input")
            _set_biases(candidate, biases)
            del candidate.metadata_props[:]  # onnxsim records its own bookkeeping there
            pin_gate_initializers(candidate, dispatcher_names)
            name_dispatch_nodes(candidate, dispatcher_names)
            problem = _check_structure(candidate, before, dispatcher_names)
            diff = None
            if not problem:
                runner = OrtModel(candidate)
                problem, diff = _check_outputs(runner, check_inputs, ref_outputs, atol)
        except Exception as exc:  # noqa: BLE001 - a failing tool means: try the next one
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problem, diff = f"failed ({type(exc).__name__}: {first[:200]})", None
        attempt["seconds"] = round(time.perf_counter() - t0, 3)
        if problem:
            attempt["reason"] = problem
            if runner is not None:
                runner.close()
            continue
        attempt["ok"] = True
        attempt["reason"] = "kept"
        result.tool, result.version = tool, _version(tool)
        result.nodes_after = len(candidate.graph.node)
        result.max_diff = diff
        result.seconds = round(time.perf_counter() - start, 3)
        return candidate, result, runner
    result.nodes_after = result.nodes_before
    result.seconds = round(time.perf_counter() - start, 3)
    return model, result, None


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _check_structure(candidate, before, names) -> str:
    """Why ``candidate`` must not be kept, judged from the graph alone ('' when it may)."""
    after = analyze(candidate, names)
    if [d.ops for d in after.dispatchers] != [d.ops for d in before.dispatchers]:
        return f"changed the dispatch ops ({before.dispatch_ops} -> {after.dispatch_ops})"
    if before.gate_fp32 and not after.gate_fp32:
        return "the gate path is no longer fp32"
    lost = [d.name for d, b in zip(after.dispatchers, before.dispatchers)
            if b.gate_bias and not d.gate_bias]
    if lost:
        return f"folded the gate bias of {', '.join(lost)}"
    return ""


def _check_outputs(runner, inputs, ref_outputs, atol) -> tuple[str, float]:
    """Compare the simplified graph's outputs with the unsimplified graph's."""
    ref_logits, ref_masks = ref_outputs
    logits, masks = runner.run(inputs)
    diff = float(np.max(np.abs(logits - ref_logits))) if logits.size else 0.0
    if not diff <= atol:
        return f"outputs changed: max diff {diff:.3e} (atol {atol:g})", diff
    if masks.shape != ref_masks.shape or not np.array_equal(masks, ref_masks):
        return "outputs changed: gate decisions differ", diff
    return "", diff
