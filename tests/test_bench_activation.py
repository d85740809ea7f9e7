"""The activation arithmetic of `dyt-edge bench` (:mod:`dyt_edge.bench.activation`): what each
dispatch mode computes per batch, and the note that recommends ``pack``."""

from __future__ import annotations

import numpy as np
import pytest

from dyt_edge.artifacts import new_manifest
from dyt_edge.bench import batch_max_rates, computed_rates, padding_notes
from dyt_edge.manifest import Manifest


def test_batch_max_rates_is_what_data_dependent_k_computes():
    rates = np.array([[0.0, 0.0], [1.0, 0.5], [0.5, 0.25], [0.0, 0.0]])
    # batches of 2: maxima [1, .5] and [.5, .25] -> mean [.75, .375]
    assert batch_max_rates(rates, 2) == (pytest.approx([0.75, 0.375]), 2)
    assert batch_max_rates(rates, 1) == (pytest.approx([0.375, 0.1875]), 4)  # the mean
    assert batch_max_rates(rates, 3) == (pytest.approx([1.0, 0.5]), 1)      # partial dropped
    assert batch_max_rates(rates, 8) == (pytest.approx([1.0, 0.5]), 1)      # fewer than B


class MaskRuntime:
    """Masks [B, 1, 4] whose first ``image value`` patches are active; ``masks=False``: none."""

    def __init__(self, masks: bool = True):
        self.masks = masks
        self.batches: list[int] = []

    def run(self, x):
        from dyt_edge.runtimes import RunOutput

        self.batches.append(len(x))
        masks = np.arange(4)[None, None, :] < x[:, :1, 0, :1] if self.masks else None
        return RunOutput(np.zeros((len(x), 2), np.float32), masks)


def test_measure_activation_runs_whole_batches_and_keeps_the_real_images():
    from dyt_edge.bench import measure_activation

    images = np.arange(5, dtype=np.float32)[:, None, None, None]  # image i: i active patches
    runtime = MaskRuntime()
    rates = measure_activation(runtime, images, 2)
    assert runtime.batches == [2, 2, 2]  # the last batch filled up
    np.testing.assert_allclose(rates[:, 0], [0, 0.25, 0.5, 0.75, 1.0])
    assert measure_activation(MaskRuntime(masks=False), images, 2) is None


def _activation(dispatch, names, mean, batch_max):
    return {"dispatch": dispatch, "dispatchers": names, "mean": mean,
            "batch_max": {str(b): {"mean": v} for b, v in batch_max.items()}}


def test_padding_note_recommends_pack_only_where_topk_pays_the_batch_maximum():
    mlp = ["blocks.0.mlp", "blocks.1.mlp"]
    busy = _activation("topk", mlp, 0.47, {1: 0.47, 32: 0.98})
    [note] = padding_notes(busy)
    assert "98% of the tokens at batch 32" in note and "47%" in note
    assert "--dispatch pack" in note
    # pack computes the mean already; close to the mean at batch 32 there is nothing to say
    assert padding_notes(_activation("pack", mlp, 0.47, {1: 0.47, 32: 0.47})) == []
    assert padding_notes(_activation("topk", mlp, 0.47, {1: 0.47, 32: 0.52})) == []
    # batch 1 is never padded; attention-only dispatch has no packed form; no masks, no note
    assert padding_notes(_activation("topk", mlp, 0.3, {1: 0.9})) == []
    assert padding_notes(_activation("topk", ["blocks.0.attn"], 0.3, {32: 0.9})) == []
    assert padding_notes(None) == []


def test_each_mode_is_charged_what_it_computes():
    per_image = np.array([[1.0, 0.5], [0.0, 0.5], [0.5, 0.5], [0.5, 0.0]])
    manifest = Manifest.from_dict(new_manifest(dispatch={"capacity_slots": [3, 3]},
                                               model={"img_size": 32, "patch_size": 8}))
    assert computed_rates("pack", per_image, 2, manifest)[0] == pytest.approx([0.5, 0.375])
    assert computed_rates("topk", per_image, 2, manifest)[0] == pytest.approx([0.75, 0.5])
    assert computed_rates("capacity", per_image, 2, manifest)[0] == pytest.approx([3 / 16] * 2)
    assert computed_rates("complete", per_image, 2, manifest)[0] == [1.0, 1.0]
