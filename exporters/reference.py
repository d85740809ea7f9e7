"""The PyTorch side of export validation: the model's logits, masks and raw gate logits, in
fp32 and in float64, with every gate bias forced open or shut on demand.

The model runs through :class:`dyt_edge.runtimes.torch_runtime.TorchRuntime`, like every other
PyTorch run in dyt-edge; this module adds what only validation needs: forced gate biases
(:func:`forced_gates`), the gate logits recorded as they are computed
(:func:`recorded_gate_logits`), results memoised per case, and fp32's own rounding error
against float64 (:meth:`TorchReference.rounding`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from dyt_edge.rounding import RoundingScale, combine, rounding_scale


class TorchReference:
    """The PyTorch model as the reference: logits, masks and the raw gate logits, in fp32 and
    (:meth:`run64`) in float64, run through :class:`dyt_edge.runtimes.torch_runtime.TorchRuntime`.

    Results are memoised per (images, gate bias, mode), so validating a second runtime on the
    same cases (OpenVINO after ONNX Runtime) does not run the model again. The float64 copy of
    the model is made on first use and shared."""

    def __init__(self, model) -> None:
        self.model = model
        self.mode = model.dispatch_mode
        self.capacity = model.capacity
        self._memo: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._runtimes: dict[tuple, Any] = {}

    def run(self, images: np.ndarray, gate_bias: Optional[float] = None,
            mode: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._memoised(images, gate_bias, mode or self.mode, float64=False)

    def run64(self, images: np.ndarray, gate_bias: Optional[float] = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model evaluated in float64, in the exported dispatch mode (the rounding
        reference: the same computation without fp32's rounding): float64 logits, masks and
        gate logits."""
        return self._memoised(images, gate_bias, self.mode, float64=True)

    def rounding(self, cases: Iterable[Any]) -> RoundingScale:
        """PyTorch fp32's own error against float64 over ``cases`` (every image; gate-logit
        error only on the unforced cases, whose gate logits are not +-1e4)."""
        scales = []
        for case in cases:
            l32, m32, g32 = self.run(case.images, case.gate_bias)
            l64, m64, g64 = self.run64(case.images, case.gate_bias)
            forced = case.gate_bias is not None
            scales.append(rounding_scale(l32, l64, m32, m64, None if forced else g32,
                                         None if forced else g64))
        return combine(scales)

    def _memoised(self, images: np.ndarray, gate_bias: Optional[float], mode: str,
                  float64: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import hashlib

        images = np.ascontiguousarray(images, dtype=np.float32)
        key = (hashlib.sha1(images.tobytes()).hexdigest(), images.shape, gate_bias, mode,
               float64, self.model.dispatch_mode, self.model.capacity)
        if key not in self._memo:
            self._memo[key] = self._run(images, gate_bias, mode, float64)
        return self._memo[key]

    def _runtime(self, mode: str, float64: bool) -> Any:
        """The PyTorch runtime of the model in ``mode`` (fp32, or a float64 copy), kept."""
        from ..precisions import REFERENCE
        from ..runtimes.base import RuntimeOptions
        from ..runtimes.torch_runtime import TorchRuntime

        key = (mode, float64, self.model.dispatch_mode, self.model.capacity)
        if key not in self._runtimes:
            options = RuntimeOptions(precision=REFERENCE if float64 else "fp32", dispatch=mode)
            self._runtimes[key] = TorchRuntime.from_model(self.model, options=options)
        return self._runtimes[key]

    def _run(self, images: np.ndarray, gate_bias: Optional[float], mode: str,
             float64: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        runtime = self._runtime(mode, float64)
        with forced_gates(runtime.model, gate_bias), \
                recorded_gate_logits(runtime.model) as gates:
            out = runtime.run(images)
        dtype = np.float64 if float64 else np.float32
        gate = (torch.stack(gates, dim=1).numpy().astype(dtype) if gates
                else np.zeros(out.masks.shape, dtype))
        return out.logits.astype(dtype, copy=False), out.masks, gate


@contextlib.contextmanager
def forced_gates(model, value: Optional[float]) -> Iterator[None]:
    """Temporarily set every gate bias of a PyTorch DyT model to ``value`` (None: no change)."""
    if value is None:
        yield
        return
    import torch

    selects = model.token_selects
    saved = [ts.mlp_head.bias.detach().clone() for ts in selects]
    try:
        with torch.no_grad():
            for ts in selects:
                ts.mlp_head.bias.fill_(value)
        yield
    finally:
        with torch.no_grad():
            for ts, b in zip(selects, saved):
                ts.mlp_head.bias.copy_(b)


@contextlib.contextmanager
def recorded_gate_logits(model) -> Iterator[list]:
    """Record each gate's fp32 logits [B, P] in call order (= ``masks`` row order)."""
    records: list = []
    selects = model.token_selects
    for ts in selects:
        original = ts.logits

        def wrapper(x, _original=original):
            out = _original(x)
            records.append(out.detach())
            return out

        ts.logits = wrapper  # instance attribute shadows the method
    try:
        yield records
    finally:
        for ts in selects:
            ts.__dict__.pop("logits", None)


__all__ = ["TorchReference", "forced_gates", "recorded_gate_logits"]
