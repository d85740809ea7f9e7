"""The verdict of `dyt-edge validate` (:mod:`dyt_edge.validate.checks`) and its thresholds
(:mod:`dyt_edge.validate.thresholds`), on hand-made metrics."""

from __future__ import annotations

import pytest

from dyt_edge.errors import UsageError
from dyt_edge.validate import PRECISION_THRESHOLDS, Thresholds, describe_check, make_checks


def metrics(**changes):
    """Metrics as :func:`dyt_edge.metrics.compare_outputs` returns them: 4 images, one with a
    flipped gate (2 of 40 decisions), 2e-4 of logit difference on the others, logit scale 1,
    accuracy unchanged."""
    m = {"images": 4, "unflipped_images": 3, "max_abs_diff_unflipped": 2e-4, "logit_scale": 1.0,
         "top1_agreement_pct": 100.0, "flips": 2, "decisions": 40, "flip_pct": 5.0,
         "images_with_flips": 1, "reference_accuracy_pct": 75.0, "target_accuracy_pct": 75.0,
         "accuracy_delta_points": 0.0, "rounding": None}
    m.update(changes)
    return m


def checks_of(m, precision="fp32"):
    return {c.id: c for c in make_checks(m, PRECISION_THRESHOLDS[precision])}


def test_fp32_bound_is_the_floor_without_a_rounding_measurement():
    checks = checks_of(metrics())
    assert checks["max_diff"].status == "fail"
    assert checks["max_diff"].threshold == pytest.approx(1e-4)
    assert checks["gate_flips"].status == "fail"        # 5% > 0.1%
    assert "2 of 40, in 1 image(s)" in checks["gate_flips"].detail


def test_fp32_bound_is_four_times_pytorchs_own_rounding():
    rounding = {"logits": 1e-4, "images": 3, "excluded": 0, "target_vs_float64": 5e-5}
    checks = checks_of(metrics(rounding=rounding))
    assert checks["max_diff"].status == "pass"          # 2e-4 <= 4e-4
    assert checks["max_diff"].threshold == pytest.approx(4e-4)
    assert "4 x PyTorch fp32's own error 1.0e-04" in checks["max_diff"].detail
    assert checks_of(metrics(rounding={**rounding, "logits": 4e-5}))["max_diff"].failed


def test_reduced_precisions_scale_with_the_logits_and_int8_reports_only():
    bf16 = checks_of(metrics(), "bf16")
    assert bf16["max_diff"].threshold == pytest.approx(0.1)  # 10% of the logit scale (1)
    int8 = checks_of(metrics(), "int8")
    assert int8["gate_flips"].status == "info" and int8["max_diff"].status == "info"


def test_non_finite_diff_fails_and_missing_labels_are_not_applicable():
    checks = checks_of(metrics(max_abs_diff_unflipped=float("nan"), accuracy_delta_points=None,
                               reference_accuracy_pct=None, target_accuracy_pct=None))
    assert checks["max_diff"].status == "fail"
    assert checks["accuracy_drop"].status == "n/a"


def test_a_failed_check_reads_in_one_line():
    agreement = checks_of(metrics(top1_agreement_pct=97.3))["top1_agreement"]
    assert describe_check(agreement) == "top-1 agreement 97.30% (>= 99.90%)"


def test_threshold_overrides_merge():
    base = PRECISION_THRESHOLDS["bf16"]
    merged, names = base.merged({"max_diff": 0.5, "min_agreement": None})
    assert merged.max_diff == 0.5 and merged.max_diff_rel is None and names == ["max_diff"]
    assert merged.min_agreement == base.min_agreement
    merged, names = PRECISION_THRESHOLDS["int8"].merged(Thresholds(max_flips=3))
    assert merged.max_flips == 3 and names == ["max_flips"]
    with pytest.raises(UsageError, match="unknown threshold"):
        base.merged({"max_speed": 1})
