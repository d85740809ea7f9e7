"""Token maps: which patch tokens each dispatcher keeps on a few images.

:func:`token_maps` gathers the numbers (the images, their masks as patch grids, each image's
activation per dispatcher, labels and predictions); two renderers draw them:
:func:`dyt_edge.plots.plot_tokens` as a PNG (``dyt-edge visualize``) and :func:`ascii_token_maps`
as text (``dyt-edge train`` after a digits run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .config import DyTConfig

SHADES = " .:-=+*#%@"
"""Text brightness ramp, dark to bright: one character per patch."""


def choose_shown(n: int, count: int, labels: Optional["np.ndarray"]) -> list[int]:
    """``count`` indices out of ``n``: with labels, the first image of each class in class
    order, then the second of each, ...; without, the first ``count``."""
    count = min(count, n)
    if labels is None:
        return list(range(count))
    queues: dict[int, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        queues.setdefault(int(c), []).append(i)
    order = [queues[c] for c in sorted(queues)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for q in order:
            if depth < len(q) and len(chosen) < count:
                chosen.append(q[depth])
        depth += 1
    return chosen


def dispatcher_columns(config: "DyTConfig") -> list[str]:
    """A short name per dispatcher, in mask order: ``L3`` (one dispatcher per block) or
    ``L3 attn`` / ``L3 mlp``."""
    sites = config.dispatch_sites
    if len(sites) == 1:
        return [f"L{b}" for b in range(config.depth)]
    return [f"L{b} {s}" for b in range(config.depth) for s in sites]


def class_label(class_names: Optional[Sequence[str]], c: int) -> str:
    """Class ``c``'s name where ``class_names`` has one, else the number."""
    if class_names is not None and 0 <= c < len(class_names):
        return class_names[c]
    return str(c)


def shown_images(raw: Any, shown: Sequence[int]) -> "np.ndarray":
    """The ``shown`` images of ``raw`` ([N, 3, H, W] in [0, 1], un-normalised; a tensor or an
    array) as [len(shown), H, W, 3] float32, clipped to [0, 1]."""
    import numpy as np

    picked = np.asarray(raw)[np.asarray(shown, dtype=np.int64)]
    return np.ascontiguousarray(np.clip(picked, 0.0, 1.0).transpose(0, 2, 3, 1),
                                dtype=np.float32)


def token_maps(images: "np.ndarray", masks: "np.ndarray", shown: Sequence[int],
               predictions: "np.ndarray", labels: Optional["np.ndarray"], config: "DyTConfig",
               class_names: Optional[Sequence[str]] = None, title: str = "") -> dict[str, Any]:
    """The numbers a token-map picture shows.

    ``images``: the shown images ([len(shown), H, W, 3], :func:`shown_images`); ``masks``
    ([N, L, P] bool), ``predictions`` and ``labels`` ([N]) cover all N images, ``shown`` indexes
    them. Returns ``images``, ``masks`` as patch grids ([n, L, g, g]), ``rates`` (each image's
    activation per dispatcher, [n, L]), ``columns`` (the dispatchers' names), ``rows`` (per image:
    ``index``, ``label``, ``prediction``), ``patch_size`` and ``title``.
    """
    import numpy as np

    g = config.grid_size
    idx = np.asarray(shown, dtype=np.int64)
    picked = np.asarray(masks)[idx]
    layers = picked.shape[1]
    rows = [{"index": int(i),
             "label": None if labels is None else class_label(class_names, int(labels[i])),
             "prediction": class_label(class_names, int(predictions[i]))} for i in shown]
    return {
        "images": images,
        "masks": picked.reshape(len(idx), layers, g, g),
        "rates": (picked.mean(axis=2, dtype="float64") if len(idx)
                  else np.zeros((0, layers))),
        "columns": dispatcher_columns(config),
        "rows": rows,
        "patch_size": config.patch_size,
        "title": title,
    }


def ascii_token_maps(data: Mapping[str, Any]) -> str:
    """:func:`token_maps`' numbers as text: per image a line with its label, prediction and
    activation, then the image (one character per patch, by brightness) next to each
    dispatcher's token map (``#`` active: the token runs the sub-block; ``.`` skipped)."""
    import numpy as np

    images = np.asarray(data["images"], dtype=np.float64)
    masks = np.asarray(data["masks"], dtype=bool)
    n, layers, g = masks.shape[0], masks.shape[1], masks.shape[2]
    p = int(data["patch_size"])
    bright = images.mean(axis=-1).reshape(n, g, p, g, p).mean(axis=(2, 4))  # [n, g, g]
    heads = ["image", *data["columns"]]
    width = max(g, max(len(h) for h in heads))
    top = len(SHADES) - 1
    lines = []
    for i, row in enumerate(data["rows"]):
        label = f"label {row['label']}" if row.get("label") is not None else f"#{row['index']}"
        lines.append(f"{label}, predicted {row['prediction']}, "
                     f"{float(masks[i].mean()):.0%} of patch tokens active")
        lines.append("  ".join(h.ljust(width) for h in heads).rstrip())
        for r in range(g):
            cells = ["".join(SHADES[min(top, int(v * len(SHADES)))]
                             for v in bright[i, r]).ljust(width)]
            cells += ["".join("#" if v else "." for v in masks[i, d, r]).ljust(width)
                      for d in range(layers)]
            lines.append("  ".join(cells).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
