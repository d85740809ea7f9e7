"""``dyt-edge validate``: does an artifact, run on a target runtime, still compute the model?

``validate_artifact(artifact, target, ...) -> ValidationReport`` runs the same real images
through

* the **reference**: the PyTorch model rebuilt from the checkpoint the artifact records (its
  SHA-256 checked), in the artifact's dispatch mode (``capacity`` with its capacity), fp32
  (``dyt_edge.runtimes`` target ``pytorch``);
* the **target**: the artifact on ``onnxruntime``, ``openvino`` or ``tensorrt`` at the precision
  asked for (default: the artifact's built precision, else fp32),

and compares them. The images are DATA (``--data``; ``digits`` by default for the demo model
only, on its held-out ``test`` split; any other data is used whole: pass held-out images),
preprocessed per the artifact's manifest, at most ``samples`` of them chosen deterministically
(the same hash-ordered subset on every run). Unreadable files are skipped and counted; the run
stops with an error when more than half of the files could not be read.

Metrics
-------
* ``max_abs_diff`` / ``mean_abs_diff``: logits, target vs reference, over every image.
* ``max_abs_diff_unflipped``: the same over the images where the target flipped no gate
  decision. A flipped gate legitimately changes an image's logits (a token is or is not sent
  through its sub-block), so this number isolates the numerics; it is the one checked.
* ``top1_agreement_pct``: images whose top-1 class is the same on both.
* dispatch agreement, from the ``masks`` outputs ``[B, L, N]``: gate decisions the target
  flipped, in total, as a share of all decisions (``flip_pct``), per dispatcher (``layers``),
  and the number of images with at least one flip.
* ``capacity`` exports: the images whose *true* active count (the dense ``mask``-mode reference
  run on the same images) exceeds a dispatcher's static slots ``dispatch.capacity_slots``: these
  images lose tokens in the deployed model. Reported per dispatcher; not a pass/fail check (it is
  a property of the chosen capacity, shared by reference and target).
* with labels: accuracy of reference and target (and, for capacity exports, of the exact dense
  model), and ``accuracy_delta_points`` = target - reference, in percentage points.
* with labels, per class (``classes``): images, both accuracies and top-1 agreement, named by
  the artifact's class names, else the data's, else the index. The data's labels are matched to
  the model's classes by name first (:func:`dyt_edge.class_names.match_class_names`): the same
  names in another order (or some of them) are mapped onto the model's order; names that are not
  the model's mean the labels may not correspond, so no accuracy is computed against them (the
  rows then group the data's own classes) and a note says so.

Verdict
-------
Each check is listed with its value, threshold and result; the run passes when none fails. A
threshold of ``None`` means "reported, not checked". Defaults per precision the target runs:

=========  ======================  ===============  ==============  ==============
precision  max logit diff on       top-1 agreement  gate decisions  accuracy drop
           images with no flip     (>=, % images)   flipped (<=,    (<=, points)
           (<=)                                     % decisions)
=========  ======================  ===============  ==============  ==============
fp32       4 x PyTorch fp32's own  99.9             0.1             0.1
           error, at least 1e-4
fp16       2% of the logit scale   99.5             0.5             0.5
bf16       10% of the logit scale  99               2               1
int8       reported                98               reported        1
=========  ======================  ===============  ==============  ==============

The *logit scale* is the largest absolute reference logit on the data (reduced-precision error
is relative to the magnitudes involved, so a fixed number would be too strict for one model and
meaningless for another).

Why these values:

* **fp32** is the same computation in a different kernel library; only summation order
  differs. How much that moves the logits is a property of the model: ~1e-6 for the 4-block
  digits model, up to ~1e-3 for a 12-block ViT-B/16 with trained-model scales (logits ~8). So
  the bound is judged by the model's own rounding, the rule export validation uses too
  (:mod:`dyt_edge.rounding`): the PyTorch reference also runs in float64 on the
  :data:`ROUNDING_IMAGES` images where the target differs most from PyTorch fp32, and the
  target may differ from PyTorch fp32 by 4x PyTorch fp32's own error against float64 there,
  and by at least 1e-4. A real defect (a wrong op, a lost token, a wrong scale) moves logits by
  far more. A gate only flips at a rounding tie, so flips must be rare (0.1%) and the top-1
  class may not change (99.9%: with fewer than 1000 images, not one disagreement); nor may
  accuracy (0.1 point).
* **bf16** keeps 8 significant bits (~4e-3 relative per op). Measured on the digits demo model
  (4 blocks) with OpenVINO bf16 on 359 held-out images: max diff 0.136 at a logit scale of 7.9
  (1.7%) on the images with no flip, 0.12% of gate decisions flipped (in 25% of the images),
  top-1 agreement 100%, accuracy unchanged. Deeper models accumulate more error, hence 10% of
  the scale and 2% flips (both several times the measurement); what a user ships on is agreement
  (99%) and accuracy (at most 1 point lost).
* **fp16** keeps 11 bits, 8x finer than bf16: the bf16 bounds scaled down (2% of the scale,
  0.5% flips), with 99.5% agreement and 0.5 point.
* **int8** is a different model (quantized weights and activations): its logit error and gate
  flips say little on their own and are reported; what matters, and what the project's INT8
  target is, is top-1 agreement >= 98% and an accuracy drop <= 1 point.

Every threshold is overridable (``--max-diff``, ``--min-agreement``, ``--max-flips``,
``--max-drop``; :class:`Thresholds`). An override turns a "reported" metric into a check.

JSON (``--json PATH``, :meth:`ValidationReport.to_dict`), schema 1
-----------------------------------------------------------------
::

    {
      "schema": 1, "kind": "dyt-edge.validate", "dyt_edge_version": str, "created": ISO-8601,
      "passed": bool, "verdict": "passed" | "failed", "failed_checks": [check id, ...],
      "artifact": {"path", "picked" (chosen as the most recent), "format", "variant",
                   "dispatch" {mode, capacity, capacity_slots, dispatchers}, "build" | null},
      "target": Runtime.describe() of the target (target, precision, backend, device, ...),
      "reference": Runtime.describe() of the PyTorch reference,
      "precision": the precision the target ran at,
      "data": {"spec", "name", "split" | null, "images" (used), "skipped" (unreadable),
               "requested" (samples), "labelled", "seed"},
      "batch": int,
      "thresholds": {"precision": the defaults' precision, "max_diff" (absolute; the floor
                     when "max_diff_rounding" is set), "max_diff_rounding" (multiple of
                     PyTorch fp32's own error vs float64),
                     "max_diff_rel" (fraction of the logit scale), "min_agreement_pct",
                     "max_flip_pct", "max_drop_points" (each a number or null = reported),
                     "overridden": [names]},
      "metrics": {"images", "classes", "max_abs_diff", "mean_abs_diff",
                  "max_abs_diff_unflipped" | null, "unflipped_images", "logit_scale"
                  (max |reference logit|), "top1_agreement_pct", "top1_disagreements",
                  "masks_compared" (bool), "decisions", "flips", "flip_pct",
                  "images_with_flips", "reference_active_pct", "target_active_pct",
                  "reference_accuracy_pct" | null, "target_accuracy_pct" | null,
                  "accuracy_delta_points" | null (target - reference),
                  "rounding" | null (fp32: {"logits": PyTorch fp32's max error vs float64,
                  "images" measured, "excluded" (a gate decision differs from float64),
                  "target_vs_float64" | null: the target's own max error there})},
      "layers": [{"index", "name", "decisions", "flips", "flip_pct", "images_with_flips",
                  "reference_active_pct", "target_active_pct",
                  "slots" | null, "overflow_images" | null}, ...],
      "capacity": null | {"capacity", "slots" [per dispatcher], "overflow_images",
                          "overflow_pct" (of images), "overflow_tokens",
                          "exact_accuracy_pct" | null},
      "classes": null (no labels) | {"relation": "same" | "reordered" | "subset" |
                     "different" | "model only" | "data only" | "unnamed" | "out of range",
                     "names_from": "artifact" | "data" | "index",
                     "accuracy": bool (labels fit for accuracy),
                     "rows": [{"index", "name", "images", "reference_accuracy_pct" | null,
                               "target_accuracy_pct" | null, "top1_agreement_pct"}, ...]
                              (by class index)},
      "checks": [{"id": "max_diff" | "top1_agreement" | "gate_flips" | "accuracy_drop",
                  "name", "value" | null, "threshold" | null, "op": "<=" | ">=", "unit",
                  "status": "pass" | "fail" | "info" | "n/a", "detail"}, ...],
      "notes": [str], "seconds": float
    }

Numbers that could not be measured (no image without a flip, no labels, no masks) are null.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from .errors import DataError, DytEdgeError, UsageError
from .rounding import FACTOR as ROUNDING_FACTOR
from .rounding import FLOOR as ROUNDING_FLOOR

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .artifacts import Artifact

SCHEMA_VERSION = 1
DEFAULT_SAMPLES = 512
ROUNDING_IMAGES = 16
"""Images the float64 reference runs on (those where the target differs most)."""
DEFAULT_BATCH = 32
DATA_SEED = 0
"""Seed of the digits hold-out split and of the deterministic subset (0: the split the demo
model was trained against)."""
MIN_READABLE = 0.5
"""Stop when fewer than this share of the data's files could be read."""
VALIDATION_TARGETS = ("onnxruntime", "openvino", "tensorrt")
TARGET_KINDS = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}
"""Which artifact kind the most recent export is looked for, per target."""

Progress = Optional[Callable[[str], None]]


class ValidationFailed(DytEdgeError):
    """The target's outputs do not match the reference within the thresholds (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: Optional[str] = None,
                 report: Optional["ValidationReport"] = None) -> None:
        super().__init__(message, hint)
        self.report = report


class ValidateError(DytEdgeError):
    """Validation could not be carried out (a runtime failed, outputs that do not fit)."""


# -- thresholds ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    """Pass/fail bounds; ``None`` = reported, not checked. Rates are in percent."""

    max_diff: Optional[float] = None
    """Max abs logit difference on the images without a flipped gate (with
    ``max_diff_rounding`` set: the floor of that bound)."""
    max_diff_rounding: Optional[float] = None
    """The same bound as a multiple of PyTorch fp32's own error against float64, measured on
    the images where the target differs most (fp32's rule, :mod:`dyt_edge.rounding`); never
    below ``max_diff``."""
    max_diff_rel: Optional[float] = None
    """The same bound as a fraction of the logit scale (max |reference logit|), used when
    ``max_diff`` is None (reduced precisions: their error is relative)."""
    min_agreement: Optional[float] = None
    """Top-1 agreement, % of images (>=)."""
    max_flips: Optional[float] = None
    """Flipped gate decisions, % of all decisions (<=)."""
    max_drop: Optional[float] = None
    """Accuracy drop (reference - target), percentage points (<=)."""

    def checked(self) -> "Thresholds":
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
                raise UsageError(f"{flag} must be a number, got {v!r}")
            if f.name in ("max_diff", "max_diff_rel", "max_diff_rounding") and not v > 0:
                raise UsageError(f"{flag} must be positive, got {v:g}")
            if f.name in ("min_agreement", "max_flips") and not 0 <= v <= 100:
                raise UsageError(f"{flag} is a percentage in [0, 100], got {v:g}",
                                 "e.g. --min-agreement 99.5 for 99.5%")
            if f.name == "max_drop" and not -100 <= v <= 100:
                raise UsageError(f"{flag} is in accuracy points, in [-100, 100], got {v:g}")
        return self

    def merged(self, overrides: Optional[Union["Thresholds", Mapping[str, Any]]]
               ) -> tuple["Thresholds", list[str]]:
        """These thresholds with the non-None fields of ``overrides`` applied, and the names
        of the fields overridden."""
        if overrides is None:
            return self, []
        given = asdict(overrides) if isinstance(overrides, Thresholds) else dict(overrides)
        names = {f.name for f in fields(self)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise UsageError(f"unknown threshold(s): {', '.join(unknown)}",
                             f"choose from: {', '.join(sorted(names))}")
        changes: dict[str, Optional[float]] = {}
        for k, v in given.items():
            if v is None:
                continue
            try:
                changes[k] = float(v)
            except (TypeError, ValueError):
                raise UsageError(f"threshold {k} must be a number, got {v!r}") from None
        # One bound on the logit diff: an absolute override replaces a relative or
        # rounding-based default (and the other way round).
        if "max_diff" in changes and "max_diff_rel" not in changes:
            changes["max_diff_rel"] = None
            changes.setdefault("max_diff_rounding", None)
        elif "max_diff_rel" in changes and "max_diff" not in changes:
            changes["max_diff"] = None
            changes.setdefault("max_diff_rounding", None)
        return replace(self, **changes).checked(), sorted(k for k in changes
                                                          if changes[k] is not None)


PRECISION_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(max_diff=ROUNDING_FLOOR, max_diff_rounding=ROUNDING_FACTOR,
                       min_agreement=99.9, max_flips=0.1, max_drop=0.1),
    "fp16": Thresholds(max_diff_rel=0.02, min_agreement=99.5, max_flips=0.5, max_drop=0.5),
    "bf16": Thresholds(max_diff_rel=0.10, min_agreement=99.0, max_flips=2.0, max_drop=1.0),
    "int8": Thresholds(max_diff=None, min_agreement=98.0, max_flips=None, max_drop=1.0),
}
"""Default thresholds per precision (see the module docstring for why)."""


def default_thresholds(precision: str) -> Thresholds:
    return PRECISION_THRESHOLDS.get(precision, PRECISION_THRESHOLDS["fp32"])


# -- the report ---------------------------------------------------------------------------------

@dataclass
class Check:
    id: str
    name: str
    value: Optional[float]
    threshold: Optional[float]
    op: str
    unit: str
    status: str
    """``pass``, ``fail``, ``info`` (no threshold: reported only) or ``n/a`` (not measurable)."""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class ValidationReport:
    artifact: dict[str, Any]
    target: dict[str, Any]
    reference: dict[str, Any]
    precision: str
    data: dict[str, Any]
    batch: int
    thresholds: dict[str, Any]
    metrics: dict[str, Any]
    layers: list[dict[str, Any]]
    capacity: Optional[dict[str, Any]]
    checks: list[Check]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    created: str = ""
    classes: Optional[dict[str, Any]] = None
    """Per-class rows and how the data's labels were matched (None without labels)."""

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        from ._version import __version__

        return {
            "schema": SCHEMA_VERSION, "kind": "dyt-edge.validate",
            "dyt_edge_version": __version__, "created": self.created,
            "passed": self.passed, "verdict": "passed" if self.passed else "failed",
            "failed_checks": [c.id for c in self.failed_checks],
            "artifact": self.artifact, "target": self.target, "reference": self.reference,
            "precision": self.precision, "data": self.data, "batch": self.batch,
            "thresholds": self.thresholds, "metrics": self.metrics, "layers": self.layers,
            "capacity": self.capacity, "classes": self.classes,
            "checks": [asdict(c) for c in self.checks],
            "notes": list(self.notes), "seconds": self.seconds,
        }

    def summary(self, verdict: bool = True) -> str:
        """One line: the verdict and the failing checks (or the headline numbers)."""
        head = (f"{self.target.get('target')} {self.precision} vs PyTorch on "
                f"{self.data.get('images')} images")
        if self.passed:
            m = self.metrics
            parts = [f"top-1 agreement {m['top1_agreement_pct']:.2f}%"]
            if m.get("flips") is not None:
                parts.append(f"{m['flips']} gate flip(s)")
            if m.get("accuracy_delta_points") is not None:
                parts.append(f"accuracy delta {m['accuracy_delta_points']:+.2f} pt")
            return ("passed: " if verdict else "") + f"{head}: " + ", ".join(parts)
        return (("failed: " if verdict else "") + f"{head}: "
                + "; ".join(describe_check(c) for c in self.failed_checks))

    def raise_if_failed(self) -> None:
        if self.passed:
            return
        failed = self.failed_checks
        more = len(failed) - 1
        raise ValidationFailed(
            f"validation on {self.target.get('target')} {self.precision} failed: "
            f"{describe_check(failed[0])}"
            + (f" (+{more} more failed check{'s' if more > 1 else ''})" if more > 0 else ""),
            "the report above lists every check; override thresholds with --max-diff, "
            "--min-agreement, --max-flips or --max-drop", report=self)


def format_value(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.3g}%" if abs(value) < 1 else f"{value:.2f}%"
    if unit == "points":
        return f"{value:+.2f} pt"
    return f"{value:.2e}"


def describe_check(c: Check) -> str:
    """``top-1 agreement 97.30% (>= 99.90%)``."""
    return (f"{c.name} {format_value(c.value, c.unit)} "
            f"({c.op} {format_value(c.threshold, c.unit).lstrip('+')})")


def write_json(report: ValidationReport, path: Union[str, Path]) -> Path:
    """Write ``report.to_dict()`` to ``path`` atomically."""
    from .artifacts import atomic_write_bytes

    p = check_json_path(path)
    text = json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n"
    atomic_write_bytes(p, text.encode("utf-8"))
    return p


def check_json_path(path: Union[str, Path]) -> Path:
    """Refuse, before any work is done, a ``--json`` path that cannot be written."""
    import os

    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"--json {p} is a directory", "pass a file path, e.g. validate.json")
    parent = p.parent
    probe = parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write --json {p}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write --json {p}: {probe} is not writable")
    parent.mkdir(parents=True, exist_ok=True)
    return p


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# -- choosing the artifact and the data ---------------------------------------------------------

def check_target(target: Optional[str]) -> str:
    from .config import closest

    if target is None:
        raise UsageError("--target is required",
                         f"choose one of: {', '.join(VALIDATION_TARGETS)}")
    t = str(target).strip().lower()
    if t == "pytorch":
        raise UsageError("--target pytorch is the reference validate compares against",
                         f"choose one of: {', '.join(VALIDATION_TARGETS)}")
    if t not in VALIDATION_TARGETS:
        raise UsageError(f"unknown target '{target}'",
                         f"{closest(t, VALIDATION_TARGETS)}choose one of: "
                         f"{', '.join(VALIDATION_TARGETS)}")
    return t


def pick_artifact(path: Optional[Union[str, Path]], target: str) -> tuple["Artifact", bool]:
    """The artifact at ``path``; without one, the most recent export holding the model the
    target runs (else the most recent of any kind, which the runtime then refuses with the
    command that makes the right one). Returns ``(artifact, picked)``."""
    from .artifacts import ArtifactError, find_latest_artifact, load_artifact

    if path is not None:
        return load_artifact(path), False
    kind = TARGET_KINDS.get(target)
    if kind is not None:
        try:
            return find_latest_artifact(kind=kind), True
        except ArtifactError:
            pass
    return find_latest_artifact(), True


def load_validation_data(manifest: dict[str, Any], data: Optional[str], samples: int):
    """(ImageSet, data record) for ``data`` (default: digits for the demo model)."""
    from . import artifacts
    from .data import DEMO_DATA, data_name, default_data, load_images

    spec = default_data(manifest, data, purpose="validation")
    pre = artifacts.preprocessing_of(manifest)
    split = "test" if spec == DEMO_DATA else None
    try:
        images = load_images(spec, pre, split=split, limit=samples, seed=DATA_SEED)
    except OSError as exc:
        raise DataError(f"cannot read {spec}: {exc.strerror or exc}",
                        "check the path and its permissions") from None
    n, skipped = len(images), int(images.skipped)
    if n == 0:
        raise DataError(f"no images to validate on in {spec}")
    if skipped and n < MIN_READABLE * (n + skipped):
        raise DataError(f"only {n} of {n + skipped} image files in {spec} could be read "
                        f"({skipped} corrupt or unreadable)",
                        "fix or remove the broken files; validation needs most of them")
    record = {"spec": spec, "name": data_name(spec), "split": split, "images": n,
              "skipped": skipped, "requested": samples, "labelled": images.labels is not None,
              "seed": DATA_SEED, "default": data is None}
    return images, record


# -- running ------------------------------------------------------------------------------------

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
    from .runtimes import open_runtime

    try:
        return open_runtime(target, artifact, options)
    except DytEdgeError as exc:
        raise _one_line(exc) from None


def _run_all(runtime: Any, images: "np.ndarray", batch: int, what: str,
             progress: Progress) -> tuple["np.ndarray", Optional["np.ndarray"]]:
    """Logits [N, C] and masks [N, L, P] (or None) of ``runtime`` on ``images`` in batches;
    a static-batch artifact's last batch is padded (the padding's outputs dropped)."""
    import numpy as np

    n = len(images)
    logits, masks = [], []
    static = runtime.static_batch
    for start in range(0, n, batch):
        x = images[start:start + batch]
        b = len(x)
        if static is not None and b < static:
            x = np.concatenate([x, np.repeat(x[-1:], static - b, axis=0)])
        try:
            out = runtime.run(x)
        except DytEdgeError as exc:
            raise _one_line(exc) from None
        except Exception as exc:  # noqa: BLE001 - a backend's own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValidateError(f"{what} failed on images {start}..{start + b - 1}: "
                                f"{type(exc).__name__}: {first[:300]}",
                                "re-run with --debug for the traceback") from exc
        logits.append(np.asarray(out.logits, dtype=np.float32)[:b])
        masks.append(None if out.masks is None else np.asarray(out.masks, dtype=bool)[:b])
        if progress is not None:
            progress(f"{what}: {min(start + b, n)}/{n} images")
    all_masks = None if any(m is None for m in masks) else np.concatenate(masks)
    return np.concatenate(logits), all_masks


def validate_artifact(artifact: Union["Artifact", str, Path, None], target: str, *,
                      precision: Optional[str] = None, data: Optional[str] = None,
                      samples: int = DEFAULT_SAMPLES, batch: Optional[int] = DEFAULT_BATCH,
                      thresholds: Optional[Union[Thresholds, Mapping[str, Any]]] = None,
                      progress: Progress = None) -> ValidationReport:
    """Validate ``artifact`` on ``target`` against the PyTorch reference (see module doc).

    ``artifact``: an :class:`~dyt_edge.artifacts.Artifact`, a path, or None (the most recent
    export; ``report.artifact["picked"]`` says so). ``thresholds`` override the precision's
    defaults field by field (a :class:`Thresholds` or a dict; None fields keep the default).
    ``progress(message)`` is called as the work goes on. Returns the report whether it passed
    or not (:meth:`ValidationReport.raise_if_failed` turns a failure into an error); raises a
    :class:`~dyt_edge.errors.DytEdgeError` when validation cannot be carried out.
    """
    import numbers

    import numpy as np

    from .artifacts import Artifact, load_artifact, utc_now
    from .runtimes import RuntimeOptions, canonical_precision

    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    # 1. flags (cheap, before anything is loaded)
    target = check_target(target)
    if precision is not None:
        precision = canonical_precision(precision)
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
    if isinstance(artifact, Artifact):
        art, picked = artifact, False
    elif artifact is None:
        art, picked = pick_artifact(None, target)
    else:
        art, picked = load_artifact(artifact), False
    manifest = art.manifest
    notes: list[str] = []
    from .data import default_data

    default_data(manifest, data, purpose="validation")  # "--data is required" before loading
    say(f"opening {target}")
    tgt = _open(target, art, RuntimeOptions(precision=precision))
    runtimes = [tgt]
    try:
        # 3. the data, then the reference
        say("loading data")
        image_set, data_record = load_validation_data(manifest, data, samples)
        say("rebuilding the PyTorch reference")
        ref = _open("pytorch", art, RuntimeOptions(precision="fp32"))
        runtimes.append(ref)
        images = np.ascontiguousarray(image_set.images.numpy(), dtype=np.float32)
        labels = None if image_set.labels is None else image_set.labels.numpy()
        from .class_names import match_artifact_classes

        match = match_artifact_classes(manifest, image_set.class_names, labels)
        labels = match.labels
        static = tgt.static_batch
        if static is not None and batch != static:
            notes.append(f"the artifact has a static batch of {static}: ran batches of "
                         f"{static} (not {batch})")
            batch = static
        # 4. run
        r_logits, r_masks = _run_all(ref, images, batch, "PyTorch reference", progress)
        t_logits, t_masks = _run_all(tgt, images, batch, target, progress)
        dispatch = dict(manifest.get("dispatch") or {})
        exact = None
        if dispatch.get("mode") == "capacity" and dispatch.get("capacity_slots"):
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
    names = list(dispatch.get("dispatchers") or [])
    metrics, layers, more_notes = compare_outputs(r_logits, r_masks, t_logits, t_masks,
                                                  labels, names)
    metrics["rounding"] = rounding
    notes += more_notes
    classes = _per_class(r_logits, t_logits, match, notes)
    capacity = None
    if exact is not None:
        capacity = _capacity_overflow(exact, dispatch, labels, layers, metrics["classes"])
        if capacity["overflow_images"]:
            notes.append(
                f"capacity {dispatch.get('capacity'):g}: {capacity['overflow_images']} of "
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
                  "variant": manifest.get("variant"), "dispatch": dispatch,
                  "build": manifest.get("build")},
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
    from .class_names import per_class_validation

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

    from .rounding import rounding_scale, same_decisions
    from .runtimes import RuntimeOptions

    diff = np.abs(t_logits.astype(np.float64) - r_logits.astype(np.float64)).max(axis=1)
    keep = np.isfinite(diff)
    if r_masks is not None and t_masks is not None:
        keep &= same_decisions(r_masks, t_masks)
    candidates = np.nonzero(keep)[0]
    if not len(candidates):
        return None
    chosen = np.sort(candidates[np.argsort(-diff[candidates], kind="stable")][:ROUNDING_IMAGES])
    ref64 = _reference_variant(ref, art, RuntimeOptions(precision="fp64"))
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
    from .runtimes import RuntimeOptions

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


def compare_outputs(r_logits: "np.ndarray", r_masks: Optional["np.ndarray"],
                    t_logits: "np.ndarray", t_masks: Optional["np.ndarray"],
                    labels: Optional["np.ndarray"], names: list[str]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """(metrics, per-dispatcher rows, notes) for reference vs target outputs."""
    import numpy as np

    notes: list[str] = []
    if t_logits.shape != r_logits.shape:
        raise ValidateError(f"the target's logits have shape {list(t_logits.shape)}, the "
                            f"reference's {list(r_logits.shape)}",
                            "the artifact does not match its recorded checkpoint: re-export it")
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
            raise ValidateError(f"the target's masks have shape {list(t_masks.shape)}, the "
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


def _capacity_overflow(exact: tuple["np.ndarray", Optional["np.ndarray"]],
                       dispatch: dict[str, Any], labels: Optional["np.ndarray"],
                       layers: list[dict[str, Any]], classes: int) -> dict[str, Any]:
    """Overflow of the true (dense) active counts over the static slots; fills the layers'
    ``slots`` / ``overflow_images``."""
    import numpy as np

    logits, masks = exact
    slots = np.asarray(dispatch["capacity_slots"], dtype=np.int64)
    out: dict[str, Any] = {"capacity": dispatch.get("capacity"), "slots": slots.tolist(),
                           "overflow_images": None, "overflow_pct": None,
                           "overflow_tokens": None, "exact_accuracy_pct": None}
    if masks is not None and masks.shape[1] == len(slots):
        counts = masks.sum(axis=2)                                    # [N, L]
        over = np.clip(counts - slots[None, :], 0, None)
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


def make_checks(metrics: dict[str, Any], limits: Thresholds) -> list[Check]:
    def check(id_: str, name: str, value: Optional[float], threshold: Optional[float],
              op: str, unit: str, missing: str) -> Check:
        if value is None:
            return Check(id_, name, None, threshold, op, unit, "n/a", missing)
        if threshold is None:
            return Check(id_, name, value, None, op, unit, "info", "reported, not checked")
        ok = value <= threshold if op == "<=" else value >= threshold  # NaN fails
        return Check(id_, name, value, threshold, op, unit, "pass" if ok else "fail")

    m = metrics
    drop = (None if m["accuracy_delta_points"] is None
            else 0.0 - m["accuracy_delta_points"] + 0.0)  # no "-0.00"
    diff_limit, diff_note = limits.max_diff, ""
    rounding = m.get("rounding")
    if limits.max_diff_rounding is not None and rounding and rounding.get("images"):
        from .rounding import RoundingScale

        scale = RoundingScale.from_dict(rounding)
        floor = limits.max_diff or 0.0
        diff_limit = scale.tolerance(floor, limits.max_diff_rounding)
        diff_note = scale.explain(floor, limits.max_diff_rounding)
        if rounding.get("target_vs_float64") is not None:
            diff_note += f"; the target's own error vs float64 {rounding['target_vs_float64']:.1e}"
    elif limits.max_diff_rounding is not None:
        diff_note = "the floor: no image to measure PyTorch fp32's rounding on"
    if diff_limit is None and limits.max_diff_rel is not None:
        diff_limit = limits.max_diff_rel * m["logit_scale"]
        diff_note = (f"{100 * limits.max_diff_rel:g}% of the logit scale "
                     f"{m['logit_scale']:.3g}")
        if not diff_limit > 0:  # every reference logit 0: nothing to scale by
            diff_limit = None
    checks = [
        check("max_diff", "max logit diff (no flipped gate)", m["max_abs_diff_unflipped"],
              diff_limit, "<=", "abs", "every image has a flipped gate"),
        check("top1_agreement", "top-1 agreement", m["top1_agreement_pct"],
              limits.min_agreement, ">=", "%", "no images"),
        check("gate_flips", "gate decisions flipped", m["flip_pct"], limits.max_flips, "<=",
              "%", "the target exposes no dispatch masks"),
        check("accuracy_drop", "accuracy drop", drop, limits.max_drop, "<=", "points",
              "no usable labels"),
    ]
    if checks[0].status != "n/a" and m["max_abs_diff_unflipped"] is not None:
        checks[0].detail = "; ".join(x for x in (
            checks[0].detail, diff_note, f"over {m['unflipped_images']} of {m['images']} images")
            if x)
    if checks[2].value is not None:
        checks[2].detail = (checks[2].detail + "; " if checks[2].detail else "") + \
            f"{m['flips']} of {m['decisions']}, in {m['images_with_flips']} image(s)"
    if checks[3].value is not None:
        checks[3].detail = (checks[3].detail + "; " if checks[3].detail else "") + \
            (f"reference {m['reference_accuracy_pct']:.2f}%, target "
             f"{m['target_accuracy_pct']:.2f}%")
    return checks


__all__ = ["Check", "DEFAULT_BATCH", "DEFAULT_SAMPLES", "PRECISION_THRESHOLDS", "Thresholds",
           "VALIDATION_TARGETS", "ValidateError", "ValidationFailed", "ValidationReport",
           "compare_outputs", "default_thresholds", "make_checks", "pick_artifact",
           "validate_artifact", "write_json"]
