"""Running a model over many images a batch at a time: the one loop behind ``validate``,
``visualize``, ``bench``'s activation and the ONNX parity check."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

BatchRun = Callable[["np.ndarray"], tuple["np.ndarray", Optional["np.ndarray"]]]
"""A float32 batch -> (its logits, its masks; None where the model returns none)."""


def run_in_batches(run: BatchRun, images: "np.ndarray", *, batch: int,
                   static: Optional[int] = None,
                   on_batch: Optional[Callable[[int, int], None]] = None
                   ) -> tuple["np.ndarray", Optional["np.ndarray"]]:
    """Logits ``[N, C]`` and masks (bool; None when any batch has none) of ``run`` on
    ``images``, in order. Logits keep the runner's float type: float32 from a deployment
    runtime, float64 from the PyTorch reference at ``fp64`` (the yardstick of fp32's rounding
    must not be rounded to fp32 on the way).

    The images run ``batch`` at a time, or ``static`` at a time for a model with that fixed
    batch: its last, short batch is padded by repeating its last image (a repeated image is no
    busier than itself, so ``topk`` dispatch selects the same tokens) and the padding's outputs
    are dropped. ``on_batch(start, stop)`` is called after each batch with the range of images
    it held.
    """
    import numpy as np

    step = static or batch
    logits, masks = [], []
    for start in range(0, len(images), step):
        x = images[start:start + step]
        real = len(x)
        if static and real < static:
            x = np.concatenate([x, np.repeat(x[-1:], static - real, axis=0)])
        out_logits, out_masks = run(np.ascontiguousarray(x, dtype=np.float32))
        out_logits = np.asarray(out_logits)
        if out_logits.dtype != np.float64:
            out_logits = out_logits.astype(np.float32, copy=False)
        logits.append(out_logits[:real])
        masks.append(None if out_masks is None else np.asarray(out_masks)[:real] != 0)
        if on_batch is not None:
            on_batch(start, start + real)
    all_masks = None if any(m is None for m in masks) else np.concatenate(masks)
    return np.concatenate(logits), all_masks


__all__ = ["BatchRun", "run_in_batches"]
