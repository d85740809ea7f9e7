"""Running ``dyt-edge validate``: the same images through the target runtime and the PyTorch
reference rebuilt from the artifact's checkpoint (also dense, for a capacity export's overflow,
and in float64 at fp32, for PyTorch's own rounding), then the comparison and the checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from ..batches import run_in_batches
from ..errors import DytEdgeError, UsageError, ValidationAborted
from ..metrics import capacity_overflow, compare_outputs
from ..precisions import REFERENCE
from ..progress import Progress
from .checks import make_checks
from .inputs import DEFAULT_SAMPLES, check_target, load_validation_data, pick_artifact
from .report import ValidationReport
from .thresholds import Thresholds, default_thresholds

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..artifacts import Artifact

DEFAULT_BATCH = 32
ROUNDING_IMAGES = 16
"""Images the float64 reference runs on (those where the target differs most)."""

def _one_line(exc: DytEdgeError) -> DytEdgeError:
    """The same error with any newlines in its message / hint folded (the CLI prints one
    line)."""
    def fold(s: Optional[str]) -> Optional[str]:
        return " ".join(s.split()) if s else s

    exc.message = fold(exc.message) or ""
    exc.hint = fold(exc.hint)
    exc.args = (exc.message,)
    return exc


def _open(target: str, artifact: "Artifact", options) -> Any:
    from ..runtimes import open_runtime

    try:
        return open_runtime(target, artifact, options)
    except DytEdgeError as exc:
        raise _one_line(exc) from None


def _run_all(runtime: Any, images: "np.ndarray", batch: int, what: str,
             progress: Progress) -> tuple["np.ndarray", Optional["np.ndarray"]]:
    """Logits [N, C] and masks [N, L, P] (or None) of ``runtime`` on ``images`` in batches;
    a static-batch artifact's last batch is padded (the padding's outputs dropped)."""
    n = len(images)
    done = 0

    def run(x: "np.ndarray"):
        try:
            out = runtime.run(x)
        except DytEdgeError as exc:
            raise _one_line(exc) from None
        except Exception as exc:  # noqa: BLE001 - a backend's own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            last = done + min(len(x), n - done) - 1  # the padding comes after the images
            raise ValidationAborted(f"{what} failed on images {done}..{last}: "
                                    f"{type(exc).__name__}: {first[:300]}",
                                    "re-run with --debug for the traceback") from exc
        return out.logits, out.masks

    def finished(start: int, stop: int) -> None:
        nonlocal done
        done = stop
        if progress is not None:
            progress(f"{what}: {stop}/{n} images")

    return run_in_batches(run, images, batch=batch, static=runtime.static_batch,
                          on_batch=finished)


def validate_artifact(artifact: Union["Artifact", str, Path, None], target: str, *,
                      precision: Optional[str] = None, data: Optional[str] = None,
                      samples: int = DEFAULT_SAMPLES, batch: Optional[int] = DEFAULT_BATCH,
                      thresholds: Optional[Union[Thresholds, Mapping[str, Any]]] = None,
                      progress: Progress = None, device: Optional[str] = None,
                      float_parts: Optional[str] = None) -> ValidationReport:
    """Validate ``artifact`` on ``target`` against the PyTorch reference (``docs/validate.md``).

    ``artifact``: an :class:`~dyt_edge.artifacts.Artifact`, a path, or None (the most recent
    export; ``report.artifact["picked"]`` says so). ``thresholds`` override the precision's
    defaults field by field (a :class:`Thresholds` or a dict; None fields keep the default).
    ``device`` is the target runtime's device (``RuntimeOptions.device``: ``cuda:N`` for
    ``pytorch`` on a GPU or ``tensorrt``, an OpenVINO device name; default: the runtime's); the
    reference always runs in fp32 on the CPU.
    ``progress(message)`` is called as the work goes on. Returns the report whether it passed
    or not (:meth:`ValidationReport.raise_if_failed` turns a failure into an error); raises a
    :class:`~dyt_edge.errors.DytEdgeError` when validation cannot be carried out.
    """
    import numbers

    import numpy as np

    from ..artifacts import Artifact, utc_now
    from ..runtimes import RuntimeOptions, canonical_precision, float_parts_extra

    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    # 1. flags (cheap, before anything is loaded)
    if precision is not None:
        precision = canonical_precision(precision)
    target = check_target(target, device, precision)
    extra = float_parts_extra(target, float_parts)
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples <= 0:
        raise UsageError(f"--samples must be a positive integer, got {samples}")
    samples = int(samples)
    batch = DEFAULT_BATCH if batch is None else batch
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch <= 0:
        raise UsageError(f"--batch must be a positive integer, got {batch}")
    batch = int(batch)
    if thresholds is not None:
        Thresholds().merged(thresholds)  # unknown names / bad values fail now
    # 2. the artifact and the runtimes
    art, picked = ((artifact, False) if isinstance(artifact, Artifact)
                   else pick_artifact(artifact, target))
    info = art.info
    notes: list[str] = []
    from ..data import default_data, is_demo_model

    # "--data is required" before loading
    default_data(data, demo=is_demo_model(info), purpose="validation")
    say(f"opening {target}")
    tgt = _open(target, art, RuntimeOptions(precision=precision, device=device, extra=extra))
    runtimes = [tgt]
    try:
        # 3. the data, then the reference
        say("loading data")
        image_set, data_record = load_validation_data(info, data, samples)
        say("rebuilding the PyTorch reference")
        ref = _open("pytorch", art, RuntimeOptions(precision="fp32"))
        runtimes.append(ref)
        images = np.ascontiguousarray(image_set.images.numpy(), dtype=np.float32)
        labels = None if image_set.labels is None else image_set.labels.numpy()
        from ..class_names import match_artifact_classes

        match = match_artifact_classes(info, image_set.class_names, labels)
        labels = match.labels
        static = tgt.static_batch
        if static is not None and batch != static:
            notes.append(f"the artifact has a static batch of {static}: ran batches of "
                         f"{static} (not {batch})")
            batch = static
        # 4. run
        r_logits, r_masks = _run_all(ref, images, batch, "PyTorch reference", progress)
        t_logits, t_masks = _run_all(tgt, images, batch, target, progress)
        dispatch = info.dispatch
        exact = None
        if dispatch.mode == "capacity" and dispatch.capacity_slots:
            say("dense mask-mode reference (capacity overflow)")
            dense = _dense_reference(ref, art)
            runtimes.append(dense)
            exact = _run_all(dense, images, batch, "PyTorch dense reference", progress)
        target_info = tgt.describe()
        reference_info = ref.describe()
        run_precision = tgt.precision
        limits, overridden = default_thresholds(run_precision).merged(thresholds)
        rounding = None
        if limits.max_diff_rounding is not None:
            say("float64 reference (PyTorch fp32's own rounding)")
            rounding = _measure_rounding(ref, art, images, batch, r_logits, r_masks, t_logits,
                                         t_masks, runtimes, progress)
    finally:
        for rt in reversed(runtimes):
            try:
                rt.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                pass

    # 5. compare
    names = list(dispatch.dispatchers)
    metrics, layers, more_notes = compare_outputs(r_logits, r_masks, t_logits, t_masks,
                                                  labels, names)
    metrics["rounding"] = rounding
    notes += more_notes
    classes = _per_class(r_logits, t_logits, match, notes)
    capacity = None
    if exact is not None:
        capacity = capacity_overflow(exact, dispatch, labels, layers, metrics["classes"])
        if capacity["overflow_images"]:
            notes.append(
                f"capacity {dispatch.capacity:g}: {capacity['overflow_images']} of "
                f"{metrics['images']} images ({capacity['overflow_pct']:.1f}%) have more active "
                "tokens than slots in some dispatcher and lose tokens in this artifact (a larger "
                "--capacity at export avoids it)")
    if image_set.skipped:
        notes.append(f"{image_set.skipped} unreadable image file(s) skipped")
    if samples > data_record["images"] + data_record["skipped"]:
        notes.append(f"the data holds {data_record['images']} images"
                     + (f" in its '{data_record['split']}' split" if data_record["split"] else "")
                     + f", fewer than --samples {samples}")
    checks = make_checks(metrics, limits)
    return ValidationReport(
        artifact={"path": str(art.path), "picked": picked, "format": art.format,
                  "variant": info.variant, "dispatch": dispatch.to_dict(),
                  "build": dict(info.build.record) if info.build else None},
        target=target_info, reference=reference_info, precision=run_precision,
        data=data_record, batch=batch,
        thresholds={"precision": run_precision, "max_diff": limits.max_diff,
                    "max_diff_rounding": limits.max_diff_rounding,
                    "max_diff_rel": limits.max_diff_rel,
                    "min_agreement_pct": limits.min_agreement,
                    "max_flip_pct": limits.max_flips, "max_drop_points": limits.max_drop,
                    "overridden": overridden},
        metrics=metrics, layers=layers, capacity=capacity, checks=checks, notes=notes,
        seconds=round(time.perf_counter() - start, 3), created=utc_now(), classes=classes)


def _per_class(r_logits: "np.ndarray", t_logits: "np.ndarray", match: Any,
               notes: list[str]) -> Optional[dict[str, Any]]:
    """The report's ``classes`` section (None without labels); the match's notes are added."""
    from ..class_names import per_class_validation

    notes.extend(match.notes)
    if match.groups is None:
        return None
    return {**match.to_dict(), "rows": per_class_validation(r_logits, t_logits, match)}


def _measure_rounding(ref: Any, art: "Artifact", images: "np.ndarray", batch: int,
                      r_logits: "np.ndarray", r_masks: Optional["np.ndarray"],
                      t_logits: "np.ndarray", t_masks: Optional["np.ndarray"],
                      runtimes: list, progress: Progress) -> Optional[dict[str, Any]]:
    """PyTorch fp32's own error against float64 (:mod:`dyt_edge.rounding`), measured on the (up
    to :data:`ROUNDING_IMAGES`) images where the target differs most from PyTorch fp32 and no
    gate flipped: the largest difference is judged against the rounding of the same images.
    Also the target's own error against float64 there. None when no image qualifies."""
    import numpy as np

    from ..rounding import rounding_scale, same_decisions
    from ..runtimes import RuntimeOptions

    diff = np.abs(t_logits.astype(np.float64) - r_logits.astype(np.float64)).max(axis=1)
    keep = np.isfinite(diff)
    if r_masks is not None and t_masks is not None:
        keep &= same_decisions(r_masks, t_masks)
    candidates = np.nonzero(keep)[0]
    if not len(candidates):
        return None
    chosen = np.sort(candidates[np.argsort(-diff[candidates], kind="stable")][:ROUNDING_IMAGES])
    ref64 = _reference_variant(ref, art, RuntimeOptions(precision=REFERENCE))
    runtimes.append(ref64)
    l64, m64 = _run_all(ref64, images[chosen], batch, "PyTorch float64", progress)
    scale = rounding_scale(r_logits[chosen], l64,
                           None if r_masks is None else r_masks[chosen], m64)
    same = np.ones(len(chosen), bool)
    if m64 is not None and t_masks is not None:
        same = same_decisions(t_masks[chosen], m64)
    own = (float(np.abs(t_logits[chosen][same].astype(np.float64) - l64[same]).max())
           if same.any() else None)
    return {"logits": scale.logits, "images": scale.images, "excluded": scale.excluded,
            "target_vs_float64": own}


def _dense_reference(ref: Any, art: "Artifact") -> Any:
    """The reference model in dense ``mask`` mode (the model's true gate decisions)."""
    from ..runtimes import RuntimeOptions

    return _reference_variant(ref, art, RuntimeOptions(precision="fp32", dispatch="mask"))


def _reference_variant(ref: Any, art: "Artifact", options: Any) -> Any:
    """The PyTorch reference with other ``options`` (dispatch mode, precision), sharing the
    already loaded model where the runtime allows it."""
    from_model = getattr(type(ref), "from_model", None)
    model = getattr(ref, "model", None)
    if from_model is not None and model is not None:
        try:
            return from_model(model, art, options)
        except DytEdgeError as exc:
            raise _one_line(exc) from None
    return _open("pytorch", art, options)


__all__ = ["DEFAULT_BATCH", "ROUNDING_IMAGES", "validate_artifact"]
