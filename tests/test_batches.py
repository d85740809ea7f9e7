"""dyt_edge.batches: the batch loop shared by validate, visualize, bench and the ONNX parity
check."""

from __future__ import annotations

import numpy as np
import pytest

from dyt_edge.batches import run_in_batches


def images(n: int) -> np.ndarray:
    """``n`` 1x2x2 images, image i filled with the value i."""
    return np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)


class Recorder:
    """A model whose logits are each image's value (twice) and whose masks are value > 2; it
    keeps every batch it was given."""

    def __init__(self, masks: bool = True):
        self.masks = masks
        self.batches: list[np.ndarray] = []

    def __call__(self, x: np.ndarray):
        self.batches.append(x.copy())
        values = x[:, 0, 0, 0]
        logits = np.stack([values, values], axis=1)
        masks = (values > 2)[:, None, None].astype(np.uint8) if self.masks else None
        return logits, masks


def test_batches_in_order():
    run = Recorder()
    logits, masks = run_in_batches(run, images(7), batch=3)
    assert [len(b) for b in run.batches] == [3, 3, 1]  # dynamic: the last batch is short
    assert logits.dtype == np.float32
    assert logits[:, 0].tolist() == list(range(7))
    assert masks.dtype == bool
    assert masks[:, 0, 0].tolist() == [False, False, False, True, True, True, True]


def test_static_batch_pads_the_last_batch_with_its_last_image():
    run = Recorder()
    logits, masks = run_in_batches(run, images(5), batch=8, static=4)
    assert [len(b) for b in run.batches] == [4, 4]  # the static batch wins over ``batch``
    assert run.batches[1][:, 0, 0, 0].tolist() == [4, 4, 4, 4]
    assert logits[:, 0].tolist() == [0, 1, 2, 3, 4]  # the padding's outputs are dropped
    assert masks.shape == (5, 1, 1)


def test_runs_get_contiguous_float32():
    seen = []

    def run(x):
        seen.append((x.dtype, x.flags.c_contiguous))
        return np.zeros((len(x), 2)), None

    run_in_batches(run, images(4).astype(np.float64)[:, :, ::-1], batch=2)
    assert seen == [(np.float32, True)] * 2


def test_no_masks_passed_through():
    logits, masks = run_in_batches(Recorder(masks=False), images(5), batch=2)
    assert masks is None
    assert logits.shape == (5, 2)


def test_on_batch_gets_each_range():
    ranges = []
    run_in_batches(Recorder(), images(5), batch=2, static=2,
                   on_batch=lambda start, stop: ranges.append((start, stop)))
    assert ranges == [(0, 2), (2, 4), (4, 5)]


def test_errors_of_run_propagate():
    def run(x):
        raise RuntimeError("backend down")

    with pytest.raises(RuntimeError, match="backend down"):
        run_in_batches(run, images(3), batch=2)


def test_float64_logits_stay_float64():
    """The float64 reference is the yardstick of fp32's rounding: never rounded to fp32."""
    logits, _ = run_in_batches(lambda x: (x[:, 0, 0, :1].astype(np.float64) / 3, None),
                               images(3), batch=2)
    assert logits.dtype == np.float64 and logits[1, 0] == 1 / 3
