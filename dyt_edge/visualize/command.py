"""``dyt-edge visualize``: measure the dispatchers of a checkpoint or an artifact on real
images and write the figures (see docs/visualize.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from ..artifacts import DEFAULT_ROOT, PathLike
from ..config import DEFAULT_DISPATCH
from ..errors import DataError, DytEdgeError, UsageError
from ..token_maps import choose_shown, shown_images
from .measurement import Measurement
from .output import VisualizeResult, check_figures_dir, default_figures_dir, write_figures
from .runners import artifact_runner, checkpoint_runner, run_all
from .sources import resolve_source, target_rate, training_record

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DyTConfig, Preprocessing
    from ..data import ImageSet

DEFAULT_IMAGES = 6
DEFAULT_SAMPLES = 512
DEFAULT_BATCH = 32


def _load_data(spec: str, pre: "Preprocessing", samples: int, config: "DyTConfig"
               ) -> "ImageSet":
    """Up to ``samples`` images of ``spec`` (digits: the held-out split), checked to fit the
    model."""
    from ..data import DEMO_DATA, load_images

    split = "test" if spec == DEMO_DATA else None  # digits: the held-out split
    imageset = load_images(spec, pre, split=split, limit=samples)
    if len(imageset) == 0:
        raise DataError(f"no images in {spec}")
    h, w = imageset.images.shape[-2:]
    if (h, w) != (config.img_size, config.img_size):
        raise DataError(f"the data's images are {h}x{w} px after preprocessing, the model "
                        f"takes {config.img_size} px",
                        "check the preprocessing recorded with the model")
    return imageset


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

    from ..class_names import match_class_names
    from ..config import check_choice
    from ..data import default_data, is_demo_model, trained_on_digits
    from ..runtimes import TARGETS

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
        info = src.artifact.info
        config = info.config()
        pre = info.preprocessing()
        spec = default_data(data, demo=is_demo_model(info), purpose="visualize")
        imageset = _load_data(spec, pre, samples, config)  # before the (slower) runtime
        run, runtime = artifact_runner(src.artifact, target)
        static = runtime.static_batch
        dispatch = getattr(runtime, "mode", None) or info.dispatch.mode
        model_names = info.class_names
    else:
        run, config, model_names = checkpoint_runner(src.path, dict(overrides or {}))
        pre = config.preprocessing
        demo = trained_on_digits(config.to_dict(), training.get("data"))
        spec = default_data(data, demo=demo, purpose="visualize")
        imageset = _load_data(spec, pre, samples, config)
        static = None
        dispatch = DEFAULT_DISPATCH  # a checkpoint runs in the model's default mode

    try:
        if on_start:
            on_start(len(imageset))
        logits, masks = run_all(run, imageset.images.numpy(), batch_size, static, progress)
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
    match = match_class_names(model_names, imageset.class_names, labels, config.num_classes)
    notes.extend(match.notes)
    class_names = match.names or imageset.class_names
    if match.groups is not None:
        labels = np.asarray(match.groups)
    shown = choose_shown(len(imageset), images, labels)
    m = Measurement(
        source=str(src.path), kind=src.kind,
        target=target if src.kind == "artifact" else "pytorch", config=config,
        data_name=imageset.name, masks=masks,
        predictions=np.asarray(logits).argmax(axis=-1).astype(np.int64), labels=labels,
        class_names=class_names, shown=shown, raw=shown_images(imageset.raw(pre), shown),
        target_rate=target_rate(training), skipped=imageset.skipped, dispatch=str(dispatch))
    return write_figures(m, out, notes=notes)
