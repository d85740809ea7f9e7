"""What the model did on the images (:class:`Measurement`) and the numbers each figure shows
(the ``*_data`` functions: what the figures draw, and what the tests check rather than
pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..token_maps import class_label, dispatcher_columns, token_maps

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..config import DyTConfig


@dataclass
class Measurement:
    """What the model did on the images: everything the figures are drawn from."""

    source: str
    """The checkpoint file or artifact directory."""
    kind: str
    """``checkpoint`` or ``artifact``."""
    target: str
    """The runtime the masks came from (``pytorch`` for a checkpoint)."""
    config: "DyTConfig"
    data_name: str
    masks: "np.ndarray"
    """[N, L, P] bool: the dispatch decision of every dispatcher for every patch token."""
    predictions: "np.ndarray"
    """[N] int64: the argmax of the logits."""
    labels: Optional["np.ndarray"]
    class_names: Optional[list[str]]
    shown: list[int]
    """Indices (into the N images) of the images drawn in ``tokens.png``."""
    raw: "np.ndarray"
    """[len(shown), H, W, 3] float32 in [0, 1]: the shown images, un-normalised."""
    target_rate: Optional[float] = None
    """The activation rate the model was trained towards, when the checkpoint records it."""
    skipped: int = 0
    """Unreadable image files left out of the data."""
    dispatch: str = "pack"

    @property
    def dispatchers(self) -> list[str]:
        return self.config.dispatcher_names

    @property
    def samples(self) -> int:
        return int(self.masks.shape[0])

    @property
    def rates(self) -> list[float]:
        """Mean activation of every dispatcher over all images and patch tokens."""
        return [float(v) for v in self.masks.mean(axis=(0, 2), dtype="float64")]

    @property
    def per_image(self) -> "np.ndarray":
        """[N, L] float64: each image's activation per dispatcher."""
        return self.masks.mean(axis=2, dtype="float64")

    @property
    def mean(self) -> float:
        return float(self.masks.mean(dtype="float64"))

    @property
    def accuracy(self) -> Optional[float]:
        if self.labels is None:
            return None
        return float((self.predictions == self.labels).mean())

# -- the figures' numbers -------------------------------------------------------------------------

def activation_rates_data(m: Measurement) -> dict[str, Any]:
    """Per dispatcher: mean activation over the images (``rates``), per-image min / max, laid
    out per block (``by_block[block][site]``), with the overall mean and the target rate."""
    sites = list(m.config.dispatch_sites)
    rates = m.rates
    per_image = m.per_image
    return {
        "dispatchers": m.dispatchers,
        "sites": sites,
        "depth": m.config.depth,
        "rates": rates,
        "by_block": [rates[b * len(sites):(b + 1) * len(sites)] for b in range(m.config.depth)],
        "min": [float(v) for v in per_image.min(axis=0)],
        "max": [float(v) for v in per_image.max(axis=0)],
        "mean": m.mean,
        "target_rate": m.target_rate,
        "samples": m.samples,
        "title": _title(m),
    }


def tokens_data(m: Measurement) -> dict[str, Any]:
    """The shown images with their token maps (:func:`dyt_edge.token_maps.token_maps`)."""
    return token_maps(m.raw, m.masks, m.shown, m.predictions, m.labels, m.config,
                      m.class_names, title=_title(m))


def activation_map_data(m: Measurement) -> dict[str, Any]:
    """Per dispatcher, the share of images in which each patch position is active
    ([L, g, g])."""
    g = m.config.grid_size
    maps = m.masks.mean(axis=0, dtype="float64").reshape(len(m.dispatchers), g, g)
    return {"maps": maps, "columns": dispatcher_columns(m.config), "rates": m.rates,
            "title": _title(m)}


def activation_by_class_data(m: Measurement) -> Optional[dict[str, Any]]:
    """With labels: per class (present in the data) the mean activation of every dispatcher
    (``rates`` [C][L]), overall (``mean``) and the number of images (``counts``)."""
    import numpy as np

    if m.labels is None:
        return None
    per_image = m.per_image
    classes, rates, means, counts = [], [], [], []
    for c in sorted({int(v) for v in m.labels.tolist()}):
        sel = m.labels == c
        classes.append(class_label(m.class_names, c))
        rates.append([float(v) for v in per_image[sel].mean(axis=0)])
        means.append(float(m.masks[sel].mean(dtype="float64")))
        counts.append(int(sel.sum()))
    return {"classes": classes, "rates": rates, "mean": means, "counts": counts,
            "columns": dispatcher_columns(m.config), "overall": m.mean,
            "matrix": np.asarray(rates, dtype=np.float64), "title": _title(m)}


def figure_data(m: Measurement) -> dict[str, dict[str, Any]]:
    """Every figure's numbers, in the order the figures are written."""
    figures = {"activation_rates": activation_rates_data(m), "tokens": tokens_data(m),
               "activation_map": activation_map_data(m)}
    by_class = activation_by_class_data(m)
    if by_class is not None:
        figures["activation_by_class"] = by_class
    return figures


def _title(m: Measurement) -> str:
    name = Path(m.source).name or m.source
    where = m.target if m.kind == "artifact" else "pytorch"
    return (f"{name} ({m.config.variant}, {where}, {m.dispatch}) on {m.samples} images "
            f"of {m.data_name}")
