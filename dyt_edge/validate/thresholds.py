"""The pass/fail bounds of ``dyt-edge validate``, per precision the target runs, and their
overrides (``--max-diff``, ``--min-agreement``, ``--max-flips``, ``--max-drop``). Why each
default is what it is: ``docs/validate.md``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Optional, Union

from ..errors import UsageError
from ..rounding import FACTOR as ROUNDING_FACTOR
from ..rounding import FLOOR as ROUNDING_FLOOR


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail bounds; ``None`` = reported, not checked. Rates are in percent."""

    max_diff: Optional[float] = None
    """Max abs logit difference on the images without a flipped gate (with
    ``max_diff_rounding`` set: the floor of that bound)."""
    max_diff_rounding: Optional[float] = None
    """The same bound as a multiple of PyTorch fp32's own error against float64, measured on
    the images where the target differs most (fp32's rule, :mod:`dyt_edge.rounding`); never
    below ``max_diff``."""
    max_diff_rel: Optional[float] = None
    """The same bound as a fraction of the logit scale (max |reference logit|), used when
    ``max_diff`` is None (reduced precisions: their error is relative)."""
    min_agreement: Optional[float] = None
    """Top-1 agreement, % of images (>=)."""
    max_flips: Optional[float] = None
    """Flipped gate decisions, % of all decisions (<=)."""
    max_drop: Optional[float] = None
    """Accuracy drop (reference - target), percentage points (<=)."""

    def checked(self) -> "Thresholds":
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
                raise UsageError(f"{flag} must be a number, got {v!r}")
            if f.name in ("max_diff", "max_diff_rel", "max_diff_rounding") and not v > 0:
                raise UsageError(f"{flag} must be positive, got {v:g}")
            if f.name in ("min_agreement", "max_flips") and not 0 <= v <= 100:
                raise UsageError(f"{flag} is a percentage in [0, 100], got {v:g}",
                                 "e.g. --min-agreement 99.5 for 99.5%")
            if f.name == "max_drop" and not -100 <= v <= 100:
                raise UsageError(f"{flag} is in accuracy points, in [-100, 100], got {v:g}")
        return self

    def merged(self, overrides: Optional[Union["Thresholds", Mapping[str, Any]]]
               ) -> tuple["Thresholds", list[str]]:
        """These thresholds with the non-None fields of ``overrides`` applied, and the names
        of the fields overridden."""
        if overrides is None:
            return self, []
        given = asdict(overrides) if isinstance(overrides, Thresholds) else dict(overrides)
        names = {f.name for f in fields(self)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise UsageError(f"unknown threshold(s): {', '.join(unknown)}",
                             f"choose from: {', '.join(sorted(names))}")
        changes: dict[str, Optional[float]] = {}
        for k, v in given.items():
            if v is None:
                continue
            try:
                changes[k] = float(v)
            except (TypeError, ValueError):
                raise UsageError(f"threshold {k} must be a number, got {v!r}") from None
        # One bound on the logit diff: an absolute override replaces a relative or
        # rounding-based default (and the other way round).
        if "max_diff" in changes and "max_diff_rel" not in changes:
            changes["max_diff_rel"] = None
            changes.setdefault("max_diff_rounding", None)
        elif "max_diff_rel" in changes and "max_diff" not in changes:
            changes["max_diff"] = None
            changes.setdefault("max_diff_rounding", None)
        return replace(self, **changes).checked(), sorted(k for k in changes
                                                          if changes[k] is not None)


PRECISION_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_diff=ROUNDING_FLOOR, max_diff_rounding=ROUNDING_FACTOR,
                       min_agreement=99.9, max_flips=0.1, max_drop=0.1),
    "fp16": Thresholds(max_diff_rel=0.02, min_agreement=99.5, max_flips=0.5, max_drop=0.5),
    "bf16": Thresholds(max_diff_rel=0.10, min_agreement=99.0, max_flips=2.0, max_drop=1.0),
    "int8": Thresholds(max_diff=None, min_agreement=98.0, max_flips=None, max_drop=1.0),
}
"""Default thresholds per precision (``docs/validate.md`` says why each value)."""


def default_thresholds(precision: str) -> Thresholds:
    return PRECISION_THRESHOLDS.get(precision, PRECISION_THRESHOLDS["fp32"])


__all__ = ["PRECISION_THRESHOLDS", "Thresholds", "default_thresholds"]
