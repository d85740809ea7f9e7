"""The metrics of reference vs target outputs (:mod:`dyt_edge.metrics`), on synthetic arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dyt_edge.errors import ValidationAborted, ValidationError
from dyt_edge.manifest import Dispatch
from dyt_edge.metrics import capacity_overflow, compare_outputs


def test_compare_outputs_counts_flips_per_layer_and_isolates_numerics():
    r_logits = np.zeros((4, 3), np.float32)
    r_logits[:, 0] = 1.0
    t_logits = r_logits.copy()
    t_logits[1] += 0.5                     # image 1: a flipped gate moved its logits
    t_logits[2] += 2e-4                    # image 2: numerics only
    r_masks = np.zeros((4, 2, 5), bool)
    t_masks = r_masks.copy()
    t_masks[1, 1, [0, 3]] = True           # two flips in layer 1, image 1
    labels = np.array([0, 0, 1, 0])
    m, layers, notes = compare_outputs(r_logits, r_masks, t_logits, t_masks, labels,
                                       ["a", "b"])
    assert m["flips"] == 2 and m["images_with_flips"] == 1 and m["decisions"] == 40
    assert m["flip_pct"] == pytest.approx(5.0)
    assert [row["flips"] for row in layers] == [0, 2] and layers[1]["images_with_flips"] == 1
    assert [row["name"] for row in layers] == ["a", "b"]
    assert m["max_abs_diff"] == pytest.approx(0.5)
    assert m["max_abs_diff_unflipped"] == pytest.approx(2e-4, rel=1e-3)
    assert m["unflipped_images"] == 3 and m["top1_agreement_pct"] == 100
    assert m["reference_accuracy_pct"] == 75 and m["accuracy_delta_points"] == 0
    assert m["logit_scale"] == 1.0 and notes == []


def test_non_finite_logits_are_noted_and_make_the_diff_nan():
    r_logits = np.ones((2, 3), np.float32)
    t_logits = r_logits.copy()
    t_logits[0, 1] = np.nan
    masks = np.zeros((2, 1, 4), bool)
    m, _, notes = compare_outputs(r_logits, masks, t_logits, masks, None, ["a"])
    assert math.isnan(m["max_abs_diff"]) and math.isnan(m["max_abs_diff_unflipped"])
    assert any("non-finite logits for 1 image" in n for n in notes)
    assert m["reference_accuracy_pct"] is None  # no labels


def test_without_masks_the_diff_is_over_every_image():
    r_logits = np.eye(3, dtype=np.float32)
    m, layers, notes = compare_outputs(r_logits, None, r_logits + 1e-3, None, None, [])
    assert layers == [] and not m["masks_compared"] and m["flips"] is None
    assert m["max_abs_diff_unflipped"] == pytest.approx(1e-3, rel=1e-3)
    assert any("does not expose dispatch masks" in n for n in notes)


def test_outputs_of_another_shape_abort_the_comparison():
    r = np.zeros((2, 3), np.float32)
    with pytest.raises(ValidationAborted, match=r"logits have shape \[2, 4\]") as info:
        compare_outputs(r, None, np.zeros((2, 4), np.float32), None, None, [])
    assert isinstance(info.value, ValidationError) and "re-export it" in str(info.value)
    masks = np.zeros((2, 1, 4), bool)
    with pytest.raises(ValidationAborted, match="masks have shape"):
        compare_outputs(r, masks, r, np.zeros((2, 2, 4), bool), None, ["a"])


def test_labels_beyond_the_model_classes_are_ignored():
    r = np.eye(3, dtype=np.float32)
    m, _, notes = compare_outputs(r, None, r, None, np.array([0, 1, 7]), [])
    assert m["reference_accuracy_pct"] is None
    assert any("labels ignored" in n and "up to 7" in n for n in notes)


def test_capacity_overflow_counts_images_and_tokens_over_the_slots():
    masks = np.zeros((3, 2, 4), bool)
    masks[0, 0, :3] = True                 # image 0: 3 active in layer 0 (2 slots)
    masks[1, 1, :] = True                  # image 1: 4 active in layer 1 (3 slots)
    logits = np.eye(3, dtype=np.float32)
    layers = [{"slots": None, "overflow_images": None} for _ in range(2)]
    out = capacity_overflow((logits, masks), Dispatch("capacity", 0.5, (2, 3)),
                            np.array([0, 1, 0]), layers, classes=3)
    assert out["slots"] == [2, 3] and out["capacity"] == 0.5
    assert out["overflow_images"] == 2 and out["overflow_tokens"] == 2
    assert out["overflow_pct"] == pytest.approx(200 / 3)
    assert [row["slots"] for row in layers] == [2, 3]
    assert [row["overflow_images"] for row in layers] == [1, 1]
    assert out["exact_accuracy_pct"] == pytest.approx(200 / 3)
