"""fp32 parity judged by the model's own rounding, not by a bare absolute tolerance.

A deep network in fp32 is not exactly itself: every kernel library sums in its own order, and
the errors grow with depth, with the magnitudes in the residual stream and with how peaked
attention is. Measured with torch 2.14: a 4-block width-64 model is ~1e-6 away from float64 on
its logits, a 12-block ViT-B/16 with trained-model scales 2e-5 to 1e-3 depending on the image
(logits up to ~8). A fixed ``atol`` of 1e-4 therefore rejects correct ViT-B exports, and one
loose enough for ViT-B hides real defects in small models.

The rule used wherever fp32 results are compared with PyTorch (``export``'s validation and
simplification check, ``validate`` at fp32):

    tolerance = max(floor, FACTOR x e_ref)
    e_ref     = max |PyTorch fp32 - the same model in float64|   (logits)

and the target passes when ``max |target - PyTorch fp32| <= tolerance``. ``e_ref`` is measured
on the images compared (export: all of them; ``validate``: the images where the target differs
most from PyTorch fp32, so that the largest difference is judged against the rounding of the
same images). Images whose gate decisions differ between fp32 and float64 (a gate logit within
rounding of 0) are left out of ``e_ref``: a flipped decision is not rounding of the logits.

``FACTOR`` is 4: on a synthetic ViT-B/16 with trained-model scales (:mod:`dyt_edge.synthetic`),
ONNX Runtime 1.32 and OpenVINO 2026.4 f32 exports (``topk`` and ``pack``) were 1.1-1.5x
PyTorch fp32's own error away from PyTorch fp32 over 24 images, and their own error against
float64 was 0.6-1.5x PyTorch's. A real graph defect (a wrong adapter scale, a token dropped
or duplicated, a wrong head count, a gate reading the wrong stream) moves logits by far more
than 4x rounding (the tests inject each one and check it is caught).

Gate decisions get the same treatment: a decision may flip only where the gate logit is
within ``max(TIE_FLOOR, FACTOR x e_gate)`` of 0, ``e_gate`` being fp32's own error on the gate
logits.

Torch-free: callers pass arrays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

FACTOR = 4.0
"""How many times PyTorch fp32's own rounding error a target may differ from PyTorch fp32."""
FLOOR = 1e-4
"""The smallest logit tolerance (small models round far below it)."""
TIE_FLOOR = 1e-3
"""The smallest |gate logit| at which a flipped decision is a rounding tie."""


@dataclass(frozen=True)
class RoundingScale:
    """How far PyTorch fp32 is from the same model evaluated in float64, on some images."""

    logits: float
    """max |fp32 - float64| on the logits (0 when no image could be measured)."""
    gates: Optional[float]
    """max |fp32 - float64| on the gate logits (None when not measured)."""
    images: int
    """Images measured."""
    excluded: int = 0
    """Images left out: a gate decision differed between fp32 and float64."""

    def tolerance(self, floor: float = FLOOR, factor: float = FACTOR) -> float:
        return max(float(floor), factor * self.logits)

    def tie_tolerance(self, floor: float = TIE_FLOOR, factor: float = FACTOR) -> float:
        return max(float(floor), factor * (self.gates or 0.0))

    def explain(self, floor: float = FLOOR, factor: float = FACTOR) -> str:
        """Where the tolerance comes from: ``4 x PyTorch fp32's own error 3.7e-04 vs float64``
        or ``the floor; PyTorch fp32's own error is 2.1e-06``."""
        own = (f"PyTorch fp32's own error {self.logits:.1e} vs float64 on {self.images} "
               f"image{'s' if self.images != 1 else ''}")
        if self.images == 0:
            return "the floor (no image to measure PyTorch fp32's rounding on)"
        if factor * self.logits > floor:
            return f"{factor:g} x {own}"
        return f"the floor {floor:g}; {own}"

    def to_dict(self, floor: float = FLOOR, factor: float = FACTOR) -> dict[str, Any]:
        d = asdict(self)
        d.update(factor=factor, floor=floor, tolerance=self.tolerance(floor, factor))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RoundingScale":
        """The scale a :meth:`to_dict` record (or any mapping with ``logits`` and ``images``)
        describes."""
        return cls(float(d["logits"]), d.get("gates"), int(d["images"]),
                   int(d.get("excluded", 0)))


def same_decisions(masks_a: "np.ndarray", masks_b: "np.ndarray") -> "np.ndarray":
    """[N] bool: the images whose gate decisions (``[N, L, P]`` masks) are all equal."""
    import numpy as np

    a, b = np.asarray(masks_a), np.asarray(masks_b)
    return ~(a != b).reshape(len(a), -1).any(axis=1)


def rounding_scale(logits32: "np.ndarray", logits64: "np.ndarray",
                   masks32: Optional["np.ndarray"] = None, masks64: Optional["np.ndarray"] = None,
                   gates32: Optional["np.ndarray"] = None,
                   gates64: Optional["np.ndarray"] = None) -> RoundingScale:
    """:class:`RoundingScale` of fp32 outputs against float64 outputs of the same images
    (``[N, classes]`` logits, optional ``[N, L, P]`` masks and gate logits)."""
    import numpy as np

    l32 = np.asarray(logits32, dtype=np.float64)
    l64 = np.asarray(logits64, dtype=np.float64)
    n = len(l32)
    keep = np.ones(n, bool)
    if masks32 is not None and masks64 is not None:
        keep = same_decisions(masks32, masks64)
    finite = np.isfinite(l32).all(axis=1) & np.isfinite(l64).all(axis=1) if n else keep
    keep &= finite
    logits = float(np.abs(l32[keep] - l64[keep]).max()) if keep.any() and l32.size else 0.0
    gates = None
    if gates32 is not None and gates64 is not None and n:
        g32 = np.asarray(gates32, dtype=np.float64)[keep]
        g64 = np.asarray(gates64, dtype=np.float64)[keep]
        if g32.size:
            gates = float(np.abs(g32 - g64).max())
            if not math.isfinite(gates):
                gates = None
    return RoundingScale(logits=logits, gates=gates, images=int(keep.sum()),
                         excluded=int(n - keep.sum()))


def combine(scales: list[RoundingScale]) -> RoundingScale:
    """One scale over several sets of images (the largest errors)."""
    measured = [s for s in scales if s.images]
    gates = [s.gates for s in scales if s.gates is not None]
    return RoundingScale(logits=max((s.logits for s in measured), default=0.0),
                         gates=max(gates) if gates else None,
                         images=sum(s.images for s in scales),
                         excluded=sum(s.excluded for s in scales))


__all__ = ["FACTOR", "FLOOR", "RoundingScale", "TIE_FLOOR", "combine", "rounding_scale",
           "same_decisions"]
