"""The verdict of ``dyt-edge validate``: each metric against its threshold, as a
:class:`Check` (value, threshold, status), and how a check reads in one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..rounding import RoundingScale
from .thresholds import Thresholds


@dataclass
class Check:
    """One metric against its threshold."""

    id: str
    name: str
    value: Optional[float]
    threshold: Optional[float]
    op: str
    unit: str
    status: str
    """``pass``, ``fail``, ``info`` (no threshold: reported only) or ``n/a`` (not measurable)."""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def make_checks(metrics: dict[str, Any], limits: Thresholds) -> list[Check]:
    """The four checks (max logit diff, top-1 agreement, gate flips, accuracy drop) of
    ``metrics`` (:func:`dyt_edge.metrics.compare_outputs`, with ``rounding`` at fp32) against
    ``limits``."""

    def check(id_: str, name: str, value: Optional[float], threshold: Optional[float],
              op: str, unit: str, missing: str) -> Check:
        if value is None:
            return Check(id_, name, None, threshold, op, unit, "n/a", missing)
        if threshold is None:
            return Check(id_, name, value, None, op, unit, "info", "reported, not checked")
        ok = value <= threshold if op == "<=" else value >= threshold  # NaN fails
        return Check(id_, name, value, threshold, op, unit, "pass" if ok else "fail")

    m = metrics
    drop = (None if m["accuracy_delta_points"] is None
            else 0.0 - m["accuracy_delta_points"] + 0.0)  # no "-0.00"
    diff_limit, diff_note = limits.max_diff, ""
    rounding = m.get("rounding")
    if limits.max_diff_rounding is not None and rounding and rounding.get("images"):

        scale = RoundingScale.from_dict(rounding)
        floor = limits.max_diff or 0.0
        diff_limit = scale.tolerance(floor, limits.max_diff_rounding)
        diff_note = scale.explain(floor, limits.max_diff_rounding)
        if rounding.get("target_vs_float64") is not None:
            diff_note += f"; the target's own error vs float64 {rounding['target_vs_float64']:.1e}"
    elif limits.max_diff_rounding is not None:
        diff_note = "the floor: no image to measure PyTorch fp32's rounding on"
    if diff_limit is None and limits.max_diff_rel is not None:
        diff_limit = limits.max_diff_rel * m["logit_scale"]
        diff_note = (f"{100 * limits.max_diff_rel:g}% of the logit scale "
                     f"{m['logit_scale']:.3g}")
        if not diff_limit > 0:  # every reference logit 0: nothing to scale by
            diff_limit = None
    checks = [
        check("max_diff", "max logit diff (no flipped gate)", m["max_abs_diff_unflipped"],
              diff_limit, "<=", "abs", "every image has a flipped gate"),
        check("top1_agreement", "top-1 agreement", m["top1_agreement_pct"],
              limits.min_agreement, ">=", "%", "no images"),
        check("gate_flips", "gate decisions flipped", m["flip_pct"], limits.max_flips, "<=",
              "%", "the target exposes no dispatch masks"),
        check("accuracy_drop", "accuracy drop", drop, limits.max_drop, "<=", "points",
              "no usable labels"),
    ]
    if checks[0].status != "n/a" and m["max_abs_diff_unflipped"] is not None:
        checks[0].detail = "; ".join(x for x in (
            checks[0].detail, diff_note, f"over {m['unflipped_images']} of {m['images']} images")
            if x)
    if checks[2].value is not None:
        checks[2].detail = (checks[2].detail + "; " if checks[2].detail else "") + \
            f"{m['flips']} of {m['decisions']}, in {m['images_with_flips']} image(s)"
    if checks[3].value is not None:
        checks[3].detail = (checks[3].detail + "; " if checks[3].detail else "") + \
            (f"reference {m['reference_accuracy_pct']:.2f}%, target "
             f"{m['target_accuracy_pct']:.2f}%")
    return checks


def format_value(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.3g}%" if abs(value) < 1 else f"{value:.2f}%"
    if unit == "points":
        return f"{value:+.2f} pt"
    return f"{value:.2e}"


def describe_check(c: Check) -> str:
    """``top-1 agreement 97.30% (>= 99.90%)``."""
    return (f"{c.name} {format_value(c.value, c.unit)} "
            f"({c.op} {format_value(c.threshold, c.unit).lstrip('+')})")


__all__ = ["Check", "describe_check", "format_value", "make_checks"]
