"""``dyt-edge visualize``: pictures of what the dispatchers do on real images.

``visualize(source, data, output, images=6, samples=512, target="pytorch") -> VisualizeResult``

``source`` is a checkpoint (``.pth`` / ``.pt`` / ``.safetensors``, loaded with
:func:`dyt_edge.checkpoint.load_model`, run in ``topk`` dispatch) or an artifact directory (run
on ``target`` through :func:`dyt_edge.runtimes.open_runtime`; ``pytorch`` is the checkpoint the
artifact records, in the artifact's dispatch mode). The model runs over up to ``samples``
images of ``data`` (the held-out split for ``digits``), and the per-layer dispatch masks it
returns are drawn as PNGs (matplotlib, Agg, no display) in ``output``
(default ``<artifact>/figures/``, or ``dyt-edge-out/figures/<checkpoint stem>/``):

``activation_rates.png``
    the activation rate of every dispatcher (share of patch tokens it sends through its
    sub-block), mean over the images, one bar per layer (two per block for ``attn_mlp``), with
    the overall mean and the training target rate r where the checkpoint records it;
``tokens.png``
    ``images`` images (one of each class first, when the data has labels), each with its active
    patch tokens highlighted per layer (skipped ones dimmed) and that layer's activation;
``activation_map.png``
    per layer, how often each patch position is active (mean over the images);
``activation_by_class.png``
    with labels: the mean activation of every dispatcher per class;
``activation.json``
    the numbers behind the figures (:meth:`VisualizeResult.summary`).

Every file is written under a temporary name and renamed into place. The numbers each figure
shows are in :attr:`VisualizeResult.figures` (what the tests check, rather than pixels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .artifacts import (DEFAULT_ROOT, MANIFEST_NAME, Artifact, ArtifactError, atomic_write_bytes,
                        default_output_dir, load_artifact, resolve_artifact)
from .errors import CheckpointError, DataError, DytEdgeError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .config import DyTConfig, Preprocessing

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_IMAGES = 6
DEFAULT_SAMPLES = 512
DEFAULT_BATCH = 32
FIGURES_DIR = "figures"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
_ARTIFACT_FILES = (".onnx", ".xml", ".bin", ".engine", ".plan")

FIGURE_FILES = {
    "activation_rates": "activation_rates.png",
    "tokens": "tokens.png",
    "activation_map": "activation_map.png",
    "activation_by_class": "activation_by_class.png",
}
DATA_FILE = "activation.json"


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


@dataclass
class VisualizeResult:
    measurement: Measurement
    output: Path
    paths: list[Path]
    """Every file written (figures and ``activation.json``), in writing order."""
    figures: dict[str, dict[str, Any]]
    """Figure name -> the numbers it shows (see the ``*_data`` functions)."""
    notes: list[str] = field(default_factory=list)
    """What the user should know (an artifact picked automatically, ...)."""

    def summary(self) -> dict[str, Any]:
        """JSON-able: the measured activation per dispatcher, per class, and where it came
        from (what ``activation.json`` holds)."""
        m = self.measurement
        rates = self.figures["activation_rates"]
        out: dict[str, Any] = {
            "source": m.source, "kind": m.kind, "target": m.target, "dispatch": m.dispatch,
            "data": m.data_name, "samples": m.samples, "skipped": m.skipped,
            "variant": m.config.variant, "dispatchers": m.dispatchers,
            "activation_mean": rates["mean"],
            "activation_per_dispatcher": rates["rates"],
            "activation_min_per_dispatcher": rates["min"],
            "activation_max_per_dispatcher": rates["max"],
            "target_rate": m.target_rate, "accuracy": m.accuracy,
            "shown": m.shown,
            "figures": {name: str(p) for name, p in zip(self.figures, self.paths)},
        }
        if "activation_by_class" in self.figures:
            c = self.figures["activation_by_class"]
            out["activation_by_class"] = {
                name: {"images": n, "mean": mean, "per_dispatcher": row}
                for name, n, mean, row in zip(c["classes"], c["counts"], c["mean"], c["rates"])}
        return out


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
    """The shown images (un-normalised, [n, H, W, 3]), their masks as patch grids
    ([n, L, g, g]) and each image's activation per dispatcher ([n, L])."""
    import numpy as np

    g = m.config.grid_size
    idx = np.asarray(m.shown, dtype=np.int64)
    masks = m.masks[idx].reshape(len(idx), len(m.dispatchers), g, g)
    rows = []
    for i in m.shown:
        label = None
        if m.labels is not None:
            label = _class_name(m, int(m.labels[i]))
        rows.append({"index": int(i), "label": label,
                     "prediction": _class_name(m, int(m.predictions[i]))})
    return {
        "images": m.raw,
        "masks": masks,
        "rates": m.per_image[idx] if len(idx) else np.zeros((0, len(m.dispatchers))),
        "columns": _column_names(m),
        "rows": rows,
        "patch_size": m.config.patch_size,
        "title": _title(m),
    }


def activation_map_data(m: Measurement) -> dict[str, Any]:
    """Per dispatcher, the share of images in which each patch position is active
    ([L, g, g])."""
    g = m.config.grid_size
    maps = m.masks.mean(axis=0, dtype="float64").reshape(len(m.dispatchers), g, g)
    return {"maps": maps, "columns": _column_names(m), "rates": m.rates, "title": _title(m)}


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
        classes.append(_class_name(m, c))
        rates.append([float(v) for v in per_image[sel].mean(axis=0)])
        means.append(float(m.masks[sel].mean(dtype="float64")))
        counts.append(int(sel.sum()))
    return {"classes": classes, "rates": rates, "mean": means, "counts": counts,
            "columns": _column_names(m), "overall": m.mean,
            "matrix": np.asarray(rates, dtype=np.float64), "title": _title(m)}


def figure_data(m: Measurement) -> dict[str, dict[str, Any]]:
    """Every figure's numbers, in the order the figures are written."""
    figures = {"activation_rates": activation_rates_data(m), "tokens": tokens_data(m),
               "activation_map": activation_map_data(m)}
    by_class = activation_by_class_data(m)
    if by_class is not None:
        figures["activation_by_class"] = by_class
    return figures


def _class_name(m: Measurement, c: int) -> str:
    if m.class_names is not None and 0 <= c < len(m.class_names):
        return m.class_names[c]
    return str(c)


def _column_names(m: Measurement) -> list[str]:
    """``L3`` (one dispatcher per block) or ``L3 attn`` / ``L3 mlp``."""
    sites = m.config.dispatch_sites
    if len(sites) == 1:
        return [f"L{b}" for b in range(m.config.depth)]
    return [f"L{b} {s}" for b in range(m.config.depth) for s in sites]


def _title(m: Measurement) -> str:
    name = Path(m.source).name or m.source
    where = m.target if m.kind == "artifact" else "pytorch"
    return (f"{name} ({m.config.variant}, {where}, {m.dispatch}) on {m.samples} images "
            f"of {m.data_name}")


# -- choosing the images to show ------------------------------------------------------------------

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


# -- sources --------------------------------------------------------------------------------------

@dataclass
class _Source:
    kind: str
    path: Path
    artifact: Optional[Artifact] = None
    picked: bool = False


def resolve_source(source: Optional[PathLike], root: PathLike = DEFAULT_ROOT) -> _Source:
    """A checkpoint file or an artifact (directory, or a file inside one); None: the most
    recent export under ``root``."""
    if source is None:
        art, picked = resolve_artifact(None, root=root)
        return _Source("artifact", art.path, art, picked)
    p = Path(source).expanduser()
    hint = ("pass a checkpoint (.pth, .pt, .safetensors) or an artifact directory written by "
            "`dyt-edge export`")
    if not p.exists():
        raise UsageError(f"{p} does not exist", hint)
    if p.is_dir():
        if not (p / MANIFEST_NAME).is_file():
            raise UsageError(f"{p} is neither a checkpoint nor an artifact directory (it holds "
                             f"no {MANIFEST_NAME})", hint)
        art = load_artifact(p)
        return _Source("artifact", art.path, art)
    if p.name == MANIFEST_NAME or (p.suffix.lower() in _ARTIFACT_FILES
                                   and (p.parent / MANIFEST_NAME).is_file()):
        art = load_artifact(p)
        return _Source("artifact", art.path, art)
    if p.suffix.lower() in _ARTIFACT_FILES:
        raise UsageError(f"{p} is a model file without a {MANIFEST_NAME} beside it", hint)
    return _Source("checkpoint", p)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a .safetensors file (header only), empty for anything else."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a safetensors file: no metadata
        return {}


def training_record(src: _Source) -> dict[str, Any]:
    """What ``dyt-edge train`` recorded about the model (its config: ``data``,
    ``target_rate``, ...), or {}."""
    if src.artifact is not None:
        training = (src.artifact.manifest.get("source") or {}).get("training") or {}
        return dict(training.get("config") or {})
    meta = _safetensors_metadata(src.path)
    try:
        record = json.loads(meta["dyt_edge.training"])
    except (KeyError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _target_rate(training: dict[str, Any]) -> Optional[float]:
    try:
        r = float(training["target_rate"])
    except (KeyError, TypeError, ValueError):
        return None
    return r if 0.0 < r <= 1.0 else None


# -- output ---------------------------------------------------------------------------------------

def default_figures_dir(src: _Source, root: PathLike = DEFAULT_ROOT) -> Path:
    """``<artifact>/figures/``, or ``dyt-edge-out/figures/<checkpoint stem>/`` for a checkpoint
    (not ``dyt-edge-out/<stem>/figures/``: a non-artifact ``dyt-edge-out/<stem>/`` would make
    ``dyt-edge export`` refuse its default output directory)."""
    if src.kind == "artifact":
        return src.path / FIGURES_DIR
    return Path(root) / FIGURES_DIR / default_output_dir(src.path, root).name


def check_figures_dir(target: PathLike) -> Path:
    """Refuse, before any work, an output directory that cannot be created or written."""
    t = Path(target).expanduser()
    if t.suffix.lower() in (".png", ".json"):
        raise UsageError(f"-o {t} looks like a file name; -o takes a directory",
                         f"pass -o {t.with_suffix('')} (the figures are written inside it)")
    if t.exists() and not t.is_dir():
        raise ArtifactError(f"output path {t} exists and is not a directory",
                            "pass -o with a directory path")
    probe = t
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ArtifactError(f"cannot create {t}: {probe} is a file",
                            "pass -o with a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ArtifactError(f"output directory {t} is not writable ({probe} denies writing)",
                            "pass -o with a directory you can write to")
    return t


def _make_dir(t: Path) -> None:
    try:
        t.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create {t}: {exc.strerror or exc}",
                            "pass -o with a directory you can write to") from None


# -- running the model ----------------------------------------------------------------------------

Runner = Callable[["np.ndarray"], tuple["np.ndarray", Optional["np.ndarray"]]]


def _checkpoint_runner(path: Path, overrides: dict[str, Any]
                       ) -> tuple[Runner, "DyTConfig", Optional[list[str]]]:
    """(run, config, the class names the checkpoint records)."""
    import numpy as np
    import torch

    from .checkpoint import read_checkpoint
    from .model import build_model

    try:
        loaded = read_checkpoint(path, **overrides)
    except CheckpointError as exc:
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            raise
        raise CheckpointError(f"{path} is neither a DyT checkpoint nor an artifact directory: "
                              f"{exc.message}",
                              "pass a checkpoint (.pth, .pt, .safetensors) or an artifact "
                              "directory written by `dyt-edge export`") from None
    model = build_model(loaded.config, init_weights=False)
    model.load_state_dict(loaded.state_dict, strict=True)
    model.float().eval()

    def run(x: "np.ndarray"):
        with torch.inference_mode():
            logits, masks = model(torch.from_numpy(x), return_masks=True)
        return logits.float().numpy(), masks.numpy().astype(np.bool_)

    return run, model.config, loaded.class_names


def _artifact_runner(art: Artifact, target: str) -> tuple[Runner, Any]:
    from . import exporters  # noqa: F401 - disables telemetry before any backend is imported
    from .runtimes import open_runtime

    runtime = open_runtime(target, art)

    def run(x: "np.ndarray"):
        out = runtime.run(x)
        return out.logits, out.masks

    return run, runtime


def _run_all(run: Runner, images: "np.ndarray", batch: int, static: Optional[int],
             progress: Optional[Callable[[int], None]]) -> tuple["np.ndarray", "np.ndarray"]:
    import numpy as np

    step = static or batch
    logits, masks = [], []
    for start in range(0, len(images), step):
        x = images[start:start + step]
        n = len(x)
        if static and n < static:  # a static-batch artifact: pad with the last image
            x = np.concatenate([x, np.repeat(x[-1:], static - n, axis=0)])
        out_logits, out_masks = run(np.ascontiguousarray(x, dtype=np.float32))
        if out_masks is None:
            raise DytEdgeError("this target returns no dispatch masks for this artifact",
                               "use --target pytorch (the recorded checkpoint)")
        logits.append(np.asarray(out_logits)[:n])
        masks.append(np.asarray(out_masks)[:n] != 0)
        if progress:
            progress(n)
    return np.concatenate(logits), np.concatenate(masks)


def _load_data(spec: str, pre: "Preprocessing", samples: int, config: "DyTConfig"):
    from .data import load_images

    split = "test" if spec == "digits" else None  # digits: the held-out split
    imageset = load_images(spec, pre, split=split, limit=samples)
    if len(imageset) == 0:
        raise DataError(f"no images in {spec}")
    h, w = imageset.images.shape[-2:]
    if (h, w) != (config.img_size, config.img_size):
        raise DataError(f"the data's images are {h}x{w} px after preprocessing, the model "
                        f"takes {config.img_size} px",
                        "check the preprocessing recorded with the model")
    return imageset


# -- the command ----------------------------------------------------------------------------------

def visualize(source: Optional[PathLike], data: Optional[str] = None,
              output: Optional[PathLike] = None, *, images: int = DEFAULT_IMAGES,
              samples: int = DEFAULT_SAMPLES, target: str = "pytorch",
              batch_size: int = DEFAULT_BATCH, overrides: Optional[dict[str, Any]] = None,
              root: PathLike = DEFAULT_ROOT,
              progress: Optional[Callable[[int], None]] = None,
              on_start: Optional[Callable[[int], None]] = None) -> VisualizeResult:
    """Measure the dispatchers of ``source`` on ``data`` and write the figures.

    ``progress(n)`` is called after every batch of ``n`` images; ``on_start(total)`` once the
    data is loaded. Returns the measurement, the numbers of every figure and the paths
    written.
    """
    import numpy as np

    from . import artifacts
    from .config import DyTConfig, check_choice
    from .data import default_data
    from .runtimes import TARGETS

    if images <= 0:
        raise UsageError(f"--images must be positive, got {images}")
    if samples <= 0:
        raise UsageError(f"--samples must be positive, got {samples}")
    if batch_size <= 0:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    try:
        check_choice("target", target, TARGETS)
    except DytEdgeError as exc:
        raise UsageError(exc.message, exc.hint) from None

    src = resolve_source(source, root)
    notes = []
    if src.picked:
        notes.append(f"using the most recent export: {src.artifact.summary()}")
    if src.kind == "checkpoint" and target != "pytorch":
        raise UsageError(f"--target {target} runs an exported artifact, and {src.path} is a "
                         "checkpoint",
                         f"export it first with `dyt-edge export {src.path}` and pass the "
                         "artifact directory, or drop --target")
    if src.kind == "artifact" and overrides:
        raise UsageError("checkpoint overrides (--adapter-scale, ...) apply to a checkpoint; "
                         "an artifact records its model", "drop them")
    out = check_figures_dir(output if output is not None else default_figures_dir(src, root))

    training = training_record(src)
    runtime = None
    if src.kind == "artifact":
        manifest = src.artifact.manifest
        config = DyTConfig.from_dict(manifest["model"])
        pre = artifacts.preprocessing_of(manifest)
        spec = default_data(manifest, data, purpose="visualize")
        imageset = _load_data(spec, pre, samples, config)  # before the (slower) runtime
        run, runtime = _artifact_runner(src.artifact, target)
        static = runtime.static_batch
        dispatch = getattr(runtime, "mode", None) or (manifest.get("dispatch") or {}).get(
            "mode", "?")
        checkpoint_names = None
    else:
        run, config, checkpoint_names = _checkpoint_runner(src.path, dict(overrides or {}))
        pre = config.preprocessing
        pseudo = {"source": {"training": {"data": training.get("data")}},
                  "model": config.to_dict()}
        spec = default_data(pseudo, data, purpose="visualize")
        imageset = _load_data(spec, pre, samples, config)
        static = None
        dispatch = "pack"

    try:
        if on_start:
            on_start(len(imageset))
        logits, masks = _run_all(run, imageset.images.numpy(), batch_size, static, progress)
    finally:
        if runtime is not None:
            runtime.close()

    expected = (len(imageset), config.num_dispatchers, config.num_patches)
    if masks.shape != expected:
        raise DytEdgeError(f"the masks have shape {list(masks.shape)}, expected "
                           f"{list(expected)}", "re-export the artifact")
    labels = imageset.labels.numpy() if imageset.labels is not None else None
    # Name classes (and group images) by the model's class names where the artifact or the
    # checkpoint records them, the data's labels matched to them by name.
    from .class_names import match_class_names

    model_names = (src.artifact.manifest.get("class_names") if src.kind == "artifact"
                   else checkpoint_names)
    match = match_class_names(model_names, imageset.class_names, labels, config.num_classes)
    notes.extend(match.notes)
    class_names = match.names or imageset.class_names
    if match.groups is not None:
        labels = np.asarray(match.groups)
    shown = choose_shown(len(imageset), images, labels)
    raw = imageset.raw(pre)[shown].clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
    m = Measurement(
        source=str(src.path), kind=src.kind,
        target=target if src.kind == "artifact" else "pytorch", config=config,
        data_name=imageset.name, masks=masks,
        predictions=np.asarray(logits).argmax(axis=-1).astype(np.int64), labels=labels,
        class_names=class_names, shown=shown, raw=np.ascontiguousarray(raw),
        target_rate=_target_rate(training), skipped=imageset.skipped, dispatch=str(dispatch))
    return write_figures(m, out, notes=notes)


def write_figures(m: Measurement, out: PathLike, *, notes: Optional[list[str]] = None
                  ) -> VisualizeResult:
    """Draw every figure of ``m`` into ``out`` (created), then ``activation.json``."""
    from . import plots

    out = check_figures_dir(out)
    _make_dir(out)
    figures = figure_data(m)
    drawers = {"activation_rates": plots.plot_activation_rates, "tokens": plots.plot_tokens,
               "activation_map": plots.plot_activation_map,
               "activation_by_class": plots.plot_activation_by_class}
    paths = []
    try:
        for name, numbers in figures.items():
            paths.append(drawers[name](numbers, out / FIGURE_FILES[name]))
    except OSError as exc:
        raise ArtifactError(f"cannot write figures to {out}: {exc.strerror or exc}",
                            "pass -o with a directory you can write to") from None
    result = VisualizeResult(m, out, paths, figures, list(notes or []))
    text = json.dumps(result.summary(), indent=2) + "\n"
    try:
        atomic_write_bytes(out / DATA_FILE, text.encode("utf-8"))
    except OSError as exc:
        raise ArtifactError(f"cannot write {out / DATA_FILE}: {exc.strerror or exc}") from None
    result.paths.append(out / DATA_FILE)
    return result
