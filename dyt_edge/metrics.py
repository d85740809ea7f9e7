"""The metrics of reference vs target outputs (``dyt-edge validate``, and the parity of a
converted graph in :mod:`dyt_edge.calibration`): logit differences, top-1 agreement, flipped
gate decisions per dispatcher, accuracy, and a capacity export's overflow. Arrays in, plain
numbers out; ``docs/validate.md`` describes each metric."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .errors import ValidationAborted

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .manifest import Dispatch


def compare_outputs(r_logits: "np.ndarray", r_masks: Optional["np.ndarray"],
                    t_logits: "np.ndarray", t_masks: Optional["np.ndarray"],
                    labels: Optional["np.ndarray"], names: list[str]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(metrics, per-dispatcher rows, notes) for reference vs target outputs: logits ``[N, C]``,
    masks ``[N, L, P]`` (or None), labels ``[N]`` (or None), ``names`` of the dispatchers (the
    metrics are described in ``docs/validate.md``)."""
    import numpy as np

    notes: list[str] = []
    if t_logits.shape != r_logits.shape:
        raise ValidationAborted(f"the target's logits have shape {list(t_logits.shape)}, the "
                                f"reference's {list(r_logits.shape)}",
                                "the artifact does not match its recorded checkpoint: "
                                "re-export it")
    n, classes = r_logits.shape
    diff = np.abs(t_logits.astype(np.float64) - r_logits.astype(np.float64))
    per_image = diff.max(axis=1) if classes else np.zeros(n)
    agree = t_logits.argmax(axis=1) == r_logits.argmax(axis=1)
    metrics: dict[str, Any] = {
        "images": int(n), "classes": int(classes),
        "max_abs_diff": float(per_image.max()) if n else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "max_abs_diff_unflipped": None, "unflipped_images": int(n),
        "logit_scale": float(np.abs(r_logits).max()) if r_logits.size else 0.0,
        "top1_agreement_pct": 100.0 * float(agree.mean()) if n else 100.0,
        "top1_disagreements": int((~agree).sum()),
        "masks_compared": False, "decisions": None, "flips": None, "flip_pct": None,
        "images_with_flips": None, "reference_active_pct": None, "target_active_pct": None,
        "reference_accuracy_pct": None, "target_accuracy_pct": None,
        "accuracy_delta_points": None,
    }
    if not np.isfinite(t_logits).all():
        bad = int((~np.isfinite(t_logits)).any(axis=1).sum())
        notes.append(f"the target produced non-finite logits for {bad} image(s)")
        metrics["max_abs_diff"] = float("nan")
    layers: list[dict[str, Any]] = []
    flipped_images = np.zeros(n, bool)
    if r_masks is not None and t_masks is not None:
        if t_masks.shape != r_masks.shape:
            raise ValidationAborted(f"the target's masks have shape {list(t_masks.shape)}, the "
                                    f"reference's {list(r_masks.shape)}",
                                    "the artifact does not match its recorded checkpoint: "
                                    "re-export it")
        L = r_masks.shape[1]
        if len(names) != L:
            names = [f"dispatcher {i}" for i in range(L)]
        flips = t_masks != r_masks                                   # [N, L, P]
        flipped_images = flips.reshape(n, -1).any(axis=1)
        decisions = int(flips.size)
        per_layer_dec = n * r_masks.shape[2]
        for i, name in enumerate(names):
            f_i = flips[:, i]
            layers.append({
                "index": i, "name": name, "decisions": per_layer_dec,
                "flips": int(f_i.sum()),
                "flip_pct": 100.0 * float(f_i.mean()) if f_i.size else 0.0,
                "images_with_flips": int(f_i.any(axis=1).sum()),
                "reference_active_pct": 100.0 * float(r_masks[:, i].mean()) if n else 0.0,
                "target_active_pct": 100.0 * float(t_masks[:, i].mean()) if n else 0.0,
                "slots": None, "overflow_images": None})
        metrics.update({
            "masks_compared": True, "decisions": decisions, "flips": int(flips.sum()),
            "flip_pct": 100.0 * float(flips.mean()) if decisions else 0.0,
            "images_with_flips": int(flipped_images.sum()),
            "reference_active_pct": 100.0 * float(r_masks.mean()) if r_masks.size else 0.0,
            "target_active_pct": 100.0 * float(t_masks.mean()) if t_masks.size else 0.0})
    else:
        notes.append("the target does not expose dispatch masks: gate flips were not compared "
                     "(max diff is over every image)")
    keep = ~flipped_images
    metrics["unflipped_images"] = int(keep.sum())
    if keep.any():
        metrics["max_abs_diff_unflipped"] = float(per_image[keep].max())
        if not np.isfinite(t_logits[keep]).all():
            metrics["max_abs_diff_unflipped"] = float("nan")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.size and int(labels.max()) >= classes:
            notes.append(f"labels ignored: the data has labels up to {int(labels.max())}, the "
                         f"model {classes} classes")
        else:
            r_acc = 100.0 * float((r_logits.argmax(1) == labels).mean()) if n else 0.0
            t_acc = 100.0 * float((t_logits.argmax(1) == labels).mean()) if n else 0.0
            metrics.update({"reference_accuracy_pct": r_acc, "target_accuracy_pct": t_acc,
                            "accuracy_delta_points": t_acc - r_acc})
    return metrics, layers, notes


def overflow_counts(masks: "np.ndarray", slots: "np.ndarray") -> "np.ndarray":
    """Per image and dispatcher, how many active tokens a ``capacity`` export's ``slots`` (one
    per dispatcher) drop: ``masks`` are gate decisions ``[N, L, P]``, the result is ``[N, L]``.
    The numpy twin of :func:`dyt_edge.model.dispatch.capacity_overflow`, for readers of
    runtime outputs (no torch)."""
    import numpy as np

    return np.clip(masks.sum(axis=-1) - slots[None, :], 0, None)


def capacity_overflow(exact: tuple["np.ndarray", Optional["np.ndarray"]],
                       dispatch: "Dispatch", labels: Optional["np.ndarray"],
                       layers: list[dict[str, Any]], classes: int) -> dict[str, Any]:
    """A ``capacity`` export's overflow: how far the true (dense ``mask``-mode) active counts
    ``exact`` = (logits, masks) exceed the static slots ``dispatch.capacity_slots``, and the
    exact model's accuracy; fills the ``layers`` rows' ``slots`` / ``overflow_images``."""
    import numpy as np

    logits, masks = exact
    slots = np.asarray(dispatch.capacity_slots, dtype=np.int64)
    out: dict[str, Any] = {"capacity": dispatch.capacity, "slots": slots.tolist(),
                           "overflow_images": None, "overflow_pct": None,
                           "overflow_tokens": None, "exact_accuracy_pct": None}
    if masks is not None and masks.shape[1] == len(slots):
        over = overflow_counts(masks, slots)                          # [N, L]
        images = int((over.sum(axis=1) > 0).sum())
        out.update({"overflow_images": images,
                    "overflow_pct": 100.0 * images / max(len(masks), 1),
                    "overflow_tokens": int(over.sum())})
        for i, row in enumerate(layers):
            if i < len(slots):
                row["slots"] = int(slots[i])
                row["overflow_images"] = int((over[:, i] > 0).sum())
    if labels is not None and len(labels) and int(np.max(labels)) < classes:
        out["exact_accuracy_pct"] = 100.0 * float((logits.argmax(1) == labels).mean())
    return out


__all__ = ["capacity_overflow", "compare_outputs", "overflow_counts"]
