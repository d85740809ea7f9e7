"""Figures (PNG, matplotlib's Agg canvas: no display, no pyplot state).

Each ``plot_*`` function takes the plain numbers it draws (dicts of lists / numpy arrays, built
by :mod:`dyt_edge.visualize` or read from a bench JSON) and a path, writes the PNG atomically
(rendered in memory, then written under a temporary name and renamed) and returns the path.

* :func:`plot_activation_rates`, :func:`plot_tokens`, :func:`plot_activation_map`,
  :func:`plot_activation_by_class`: ``dyt-edge visualize``;
* :func:`plot_bench`: ``dyt-edge bench --plot`` (throughput and speedup per batch size).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

from .artifacts import atomic_write_bytes
from .errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure

SITE_COLORS = {"attn": "#4C72B0", "mlp": "#DD8452", "layer": "#55A868"}
DYT_COLOR = "#DD8452"
COMPLETE_COLOR = "#8C8C8C"
ACTIVE_TINT = (1.0, 0.62, 0.0)
"""Active patch tokens: the image mixed with a little orange."""
SKIPPED_TINT = (0.10, 0.12, 0.22)
"""Skipped patch tokens: the image dimmed towards dark slate."""
DPI = 100


# -- plumbing -------------------------------------------------------------------------------------

def _figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def save_figure(fig: "Figure", path: Union[str, Path]) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _legend_below(ax: Any, entries: int) -> None:
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15),
              ncols=max(1, min(entries, 4)), frameon=False)


def _grid(ax: Any) -> None:
    """Light horizontal grid lines behind the bars."""
    ax.yaxis.grid(True, color="#e0e0e0", linewidth=0.6)
    ax.set_axisbelow(True)


def _fraction_axis(ax: Any, top: float = 1.05) -> None:
    ax.set_ylim(0.0, top)
    _grid(ax)


def _batch_axes(ax: Any, x: Any, batches: list, ylabel: str, margin: float) -> None:
    """The x axis of one bar group per batch size, the y label, the grid."""
    ax.set_xticks(x, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    _grid(ax)
    ax.margins(y=margin)


# -- visualize: activation rates ------------------------------------------------------------------

def plot_activation_rates(data: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Bars of each dispatcher's activation rate per layer (two bars per block when a block has
    two dispatchers), whiskers spanning the per-image min..max, the overall mean as a solid
    line and the target rate r (when known) as a dashed one.

    ``data``: ``sites``, ``depth``, ``by_block`` [depth][sites], ``min`` / ``max`` (per
    dispatcher, mask order), ``mean``, ``target_rate`` (or None), ``title``.
    """
    import numpy as np

    sites = list(data["sites"])
    depth = int(data["depth"])
    by_block = np.asarray(data["by_block"], dtype=np.float64).reshape(depth, len(sites))
    lo = np.asarray(data.get("min", by_block.reshape(-1)), dtype=np.float64).reshape(depth, -1)
    hi = np.asarray(data.get("max", by_block.reshape(-1)), dtype=np.float64).reshape(depth, -1)
    bars_total = depth * len(sites)
    fig = _figure(max(6.0, 0.45 * bars_total + 2.5), 4.2)
    ax = fig.add_subplot()
    x = np.arange(depth)
    width = 0.8 / len(sites)
    for j, site in enumerate(sites):
        vals = by_block[:, j]
        err = np.stack([np.clip(vals - lo[:, j], 0, None), np.clip(hi[:, j] - vals, 0, None)])
        bars = ax.bar(x - 0.4 + width * (j + 0.5), vals, width * 0.92,
                      color=SITE_COLORS.get(site, f"C{j}"), label=f"{site} dispatcher",
                      yerr=err, error_kw={"ecolor": "#555555", "elinewidth": 0.8,
                                          "capsize": 2 if bars_total <= 32 else 0})
        if bars_total <= 24:
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=7, padding=1)
    mean = float(data["mean"])
    ax.axhline(mean, color="black", linewidth=1.0, label=f"mean {mean:.3f}")
    target = data.get("target_rate")
    if target is not None:
        ax.axhline(float(target), color="#C44E52", linestyle="--", linewidth=1.2,
                   label=f"target r = {float(target):g}")
    ax.set_xticks(x, [str(b) for b in range(depth)])
    ax.set_xlim(-0.6, depth - 0.4)
    ax.set_xlabel("layer (block)")
    ax.set_ylabel("activation rate (share of patch tokens kept)")
    _fraction_axis(ax, 1.1)
    _legend_below(ax, len(sites) + 2)
    ax.set_title(f"Activation rate per layer, whiskers: per-image range\n{data.get('title', '')}",
                 fontsize=9)
    return save_figure(fig, path)


# -- visualize: tokens ----------------------------------------------------------------------------

def highlight_tokens(image: "np.ndarray", mask: "np.ndarray", patch: int) -> "np.ndarray":
    """``image`` [H, W, 3] in [0, 1] with the patches of ``mask`` [g, g] (True = active)
    tinted orange and the others dimmed; [H, W, 3] float32."""
    import numpy as np

    img = np.asarray(image, dtype=np.float32)
    big = np.repeat(np.repeat(np.asarray(mask, dtype=bool), patch, axis=0), patch, axis=1)
    h, w = img.shape[:2]
    if big.shape[0] < h or big.shape[1] < w:  # an image larger than the grid: pad as skipped
        big = np.pad(big, ((0, max(0, h - big.shape[0])), (0, max(0, w - big.shape[1]))))
    big = big[:h, :w, None]
    active = 0.7 * img + 0.3 * np.asarray(ACTIVE_TINT, dtype=np.float32)
    skipped = 0.25 * img + 0.75 * np.asarray(SKIPPED_TINT, dtype=np.float32)
    return np.clip(np.where(big, active, skipped), 0.0, 1.0).astype(np.float32)


def _row_label(row: Mapping[str, Any]) -> str:
    text = f"#{row['index']}"
    if row.get("label") is not None:
        text += f"\nclass {row['label']}"
    if row.get("prediction") is not None:
        text += f"\npred {row['prediction']}"
    return text


def plot_tokens(data: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """One row per image: the image, then per dispatcher the image with its active patch
    tokens highlighted (skipped ones dimmed), labelled with that image's activation.

    ``data``: ``images`` [n, H, W, 3] in [0, 1], ``masks`` [n, L, g, g] bool, ``rates`` [n, L],
    ``columns`` (L names), ``rows`` (per image: ``index``, ``label``, ``prediction``),
    ``patch_size``, ``title``.
    """
    import numpy as np

    images = np.asarray(data["images"], dtype=np.float32)
    masks = np.asarray(data["masks"], dtype=bool)
    rates = np.asarray(data["rates"], dtype=np.float64)
    n, layers = masks.shape[:2]
    columns = list(data["columns"])
    rows = list(data.get("rows") or [{"index": i} for i in range(n)])
    cell = 1.35
    fig = _figure(cell * (layers + 1) + 0.6, cell * max(n, 1) + 1.1)
    axes = fig.subplots(max(n, 1), layers + 1, squeeze=False)
    for r in range(n):
        ax = axes[r, 0]
        ax.imshow(images[r], interpolation="nearest")
        ax.set_ylabel(_row_label(rows[r]), fontsize=7, rotation=0, ha="right", va="center",
                      labelpad=4)
        if r == 0:
            ax.set_title("image", fontsize=8)
        for c in range(layers):
            ax = axes[r, c + 1]
            ax.imshow(highlight_tokens(images[r], masks[r, c], int(data["patch_size"])),
                      interpolation="nearest")
            ax.set_xlabel(f"{rates[r, c]:.0%}", fontsize=7, labelpad=1)
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Active patch tokens per layer (bright: kept, dark: skipped; below: share "
                 f"kept)\n{data.get('title', '')}", fontsize=9)
    fig.subplots_adjust(wspace=0.06, hspace=0.28)
    return save_figure(fig, path)


# -- visualize: where tokens are kept, and by class -----------------------------------------------

def plot_activation_map(data: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Per dispatcher, a heatmap of how often each patch position is active.

    ``data``: ``maps`` [L, g, g] in [0, 1], ``columns``, ``rates`` (per dispatcher), ``title``.
    """
    import numpy as np

    maps = np.asarray(data["maps"], dtype=np.float64)
    layers = maps.shape[0]
    ncols = min(layers, 8)
    nrows = math.ceil(layers / ncols)
    fig = _figure(1.6 * ncols + 1.2, 1.75 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= layers:
            ax.set_visible(False)
            continue
        image = ax.imshow(maps[i], vmin=0.0, vmax=1.0, cmap="magma", interpolation="nearest")
        ax.set_title(f"{data['columns'][i]}: {float(data['rates'][i]):.2f}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="share of images active")
    fig.suptitle(f"How often each patch position is kept\n{data.get('title', '')}", fontsize=9)
    return save_figure(fig, path)


def plot_activation_by_class(data: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """A classes x dispatchers heatmap of the mean activation.

    ``data``: ``classes``, ``counts``, ``mean`` (per class), ``rates`` [C][L], ``columns``,
    ``title``.
    """
    import numpy as np

    matrix = np.asarray(data["rates"], dtype=np.float64)
    n_cls, layers = matrix.shape
    fig = _figure(max(5.0, 0.55 * layers + 3.0), max(2.5, 0.32 * n_cls + 1.6))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(layers), list(data["columns"]), rotation=90 if layers > 12 else 0,
                  fontsize=7)
    ax.set_yticks(range(n_cls), [f"{c} (n={n}, {m:.2f})" for c, n, m in
                                 zip(data["classes"], data["counts"], data["mean"])], fontsize=7)
    if n_cls * layers <= 240:
        for i in range(n_cls):
            for j in range(layers):
                v = matrix[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if v > 0.6 else "white")
    ax.set_xlabel("dispatcher")
    ax.set_ylabel("class (images, mean activation)")
    fig.colorbar(image, ax=ax, label="activation rate")
    ax.set_title(f"Activation rate by class\n{data.get('title', '')}", fontsize=9)
    return save_figure(fig, path)


# -- bench ----------------------------------------------------------------------------------------

def _get(d: Any, *paths: str) -> Any:
    """The first of ``paths`` (dotted) present in ``d`` and not None."""
    for p in paths:
        cur = d
        for key in p.split("."):
            if not isinstance(cur, Mapping) or key not in cur:
                cur = None
                break
            cur = cur[key]
        if cur is not None:
            return cur
    return None


def _num(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


_THROUGHPUT_KEYS = ("images_per_s", "throughput", "throughput_img_s", "img_s", "fps")


def _throughput(entry: Any) -> Optional[float]:
    if isinstance(entry, Mapping):
        return _num(_get(entry, *_THROUGHPUT_KEYS))
    return _num(entry)


def _entries(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    batches = _get(result, "results", "batches", "per_batch")
    if isinstance(batches, Mapping):  # {"1": {...}, "8": {...}}
        items = []
        for key, entry in batches.items():
            entry = dict(entry) if isinstance(entry, Mapping) else {}
            entry.setdefault("batch", key)
            items.append(entry)
        return items
    if isinstance(batches, Sequence) and not isinstance(batches, (str, bytes)):
        return [dict(e) for e in batches if isinstance(e, Mapping)]
    return []


def bench_series(result: Mapping[str, Any]) -> dict[str, Any]:
    """One bench result (JSON) as plain series per batch size: ``label`` (target and
    precision), ``batch``, ``dyt`` and ``complete`` throughput (img/s; None where not
    measured), ``speedup`` (given, else dyt / complete) and ``flops_ratio``."""
    target = _get(result, "target", "runtime.target", "describe.target")
    precision = _get(result, "precision", "runtime.precision", "describe.precision")
    label = " ".join(str(v) for v in (target, precision) if v) or "bench"
    overall_ratio = _num(_get(result, "flops_ratio", "flops.ratio"))
    rows = []
    for e in _entries(result):
        batch = _get(e, "batch", "batch_size")
        try:
            batch = int(batch)
        except (TypeError, ValueError):
            continue
        dyt = _throughput(_get(e, "dyt", "model", "throughput"))
        complete = _throughput(_get(e, "complete", "baseline"))
        speedup = _num(_get(e, "speedup"))
        if speedup is None and dyt and complete:
            speedup = dyt / complete
        ratio = _num(_get(e, "flops_ratio", "flops.ratio"))
        rows.append((batch, dyt, complete, speedup, ratio if ratio is not None else overall_ratio))
    rows.sort(key=lambda r: r[0])
    return {"label": label, "batch": [r[0] for r in rows], "dyt": [r[1] for r in rows],
            "complete": [r[2] for r in rows], "speedup": [r[3] for r in rows],
            "flops_ratio": [r[4] for r in rows]}


def _bench_paths(out: Union[str, Path]) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix.lower() == ".png":
        stem = out.with_suffix("")
        return (stem.with_name(f"{stem.name}-throughput.png"),
                stem.with_name(f"{stem.name}-speedup.png"))
    return out / "bench_throughput.png", out / "bench_speedup.png"


def plot_bench(result: Union[Mapping[str, Any], Iterable[Mapping[str, Any]]],
               out: Union[str, Path]) -> list[Path]:
    """Chart a bench result (or several: one per target / precision) per batch size:
    throughput of DyT and the complete model, and DyT's speedup with the FLOPs ratio (the
    speedup a dispatch that costs nothing would reach).

    ``result`` is the JSON ``dyt-edge bench`` writes (:mod:`dyt_edge.bench`: ``target``,
    ``precision``, ``results[].batch``, ``results[].dyt.images_per_s``,
    ``results[].complete.images_per_s``, ``results[].speedup``, ``results[].flops_ratio``),
    or a list of them. ``out`` is a directory (``bench_throughput.png`` and
    ``bench_speedup.png`` are written in it, created if needed) or a ``.png`` name whose stem
    prefixes both files. Without a baseline (no speedup anywhere) only the throughput chart
    is written. Returns the paths written.
    """
    import numpy as np

    results = [result] if isinstance(result, Mapping) else list(result)
    series = [bench_series(r) for r in results]
    series = [s for s in series if s["batch"]]
    if not series:
        raise UsageError("the bench result holds no batch sizes to plot",
                         "pass the JSON `dyt-edge bench` wrote")
    tp_path, sp_path = _bench_paths(out)
    tp_path.parent.mkdir(parents=True, exist_ok=True)
    batches = sorted({b for s in series for b in s["batch"]})
    x = np.arange(len(batches))
    n = len(series)
    has_complete = any(v is not None for s in series for v in s["complete"])
    per_group = n * (2 if has_complete else 1)
    width = 0.8 / per_group

    def values(s: Mapping[str, Any], key: str) -> np.ndarray:
        lookup = dict(zip(s["batch"], s[key]))
        return np.asarray([np.nan if lookup.get(b) is None else lookup[b] for b in batches],
                          dtype=np.float64)

    # throughput
    fig = _figure(max(6.0, 0.5 * per_group * len(batches) + 2.5), 4.2)
    ax = fig.add_subplot()
    slot = 0
    for i, s in enumerate(series):
        color = f"C{i}" if n > 1 else DYT_COLOR
        name = f"{s['label']} " if n > 1 else ""
        bars = ax.bar(x - 0.4 + width * (slot + 0.5), values(s, "dyt"), width * 0.92,
                      color=color, label=f"{name}DyT")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        slot += 1
        if has_complete:
            bars = ax.bar(x - 0.4 + width * (slot + 0.5), values(s, "complete"), width * 0.92,
                          color=color if n > 1 else COMPLETE_COLOR, alpha=0.45 if n > 1 else 1.0,
                          hatch="//" if n > 1 else None, label=f"{name}complete")
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
            slot += 1
    _batch_axes(ax, x, batches, "throughput (img/s)", 0.15)
    _legend_below(ax, per_group if n > 1 else 2)
    title = series[0]["label"] if n == 1 else ", ".join(s["label"] for s in series)
    ax.set_title(f"Throughput per batch size: DyT vs the complete model\n{title}", fontsize=9)
    paths = [save_figure(fig, tp_path)]
    if not any(v is not None for s in series for v in s["speedup"]):
        return paths  # --no-baseline: nothing to compare against

    # speedup
    fig = _figure(max(6.0, 0.5 * n * len(batches) + 2.5), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / n
    for i, s in enumerate(series):
        color = f"C{i}" if n > 1 else DYT_COLOR
        pos = x - 0.4 + width * (i + 0.5)
        sp = values(s, "speedup")
        bars = ax.bar(pos, sp, width * 0.92, color=color,
                      label=f"{s['label']} speedup" if n > 1 else "speedup")
        ratio = values(s, "flops_ratio")
        ax.bar_label(bars, labels=[
            "" if not np.isfinite(v) else (f"{v:.2f}x" + (f"\n({v / r:.0%})" if np.isfinite(r)
                                                            and r > 0 else ""))
            for v, r in zip(sp, ratio)], fontsize=7, padding=1)
        ok = np.isfinite(ratio)
        if ok.any():  # a dashed tick over each bar: the speedup a free dispatch would reach
            ax.hlines(ratio[ok], pos[ok] - width * 0.5, pos[ok] + width * 0.5,
                      colors="#C44E52" if n == 1 else "black", linestyles="--", linewidth=1.4,
                      zorder=3, label="FLOPs ratio" if i == 0 else None)
    ax.axhline(1.0, color="black", linewidth=0.8)
    _batch_axes(ax, x, batches, "speedup over complete (x)", 0.2)
    ax.set_ylim(bottom=0.0)
    _legend_below(ax, n + 1)
    ax.set_title(f"Speedup per batch size (in brackets: share of the FLOPs ratio reached)\n"
                 f"{title}", fontsize=9)
    paths.append(save_figure(fig, sp_path))
    return paths
