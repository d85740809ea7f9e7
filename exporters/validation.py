"""Validation at export: the exported graph against the PyTorch model, the way Optimum does it.

Checks run in a fixed order (output names, shapes and dtypes, then values) over a set of cases,
every failure is collected, and :meth:`ValidationResult.raise_if_failed` raises one
:class:`~dyt_edge.exporters.errors.ValidationError` reading ``max diff X (atol Y)``.

Cases (all fp32):

``batch 1`` and ``batch N (mixed counts)``
    generated images: noise at several scales, flat and smooth images, so the images of one
    batch activate different numbers of tokens (the counts seen are recorded).
``no patch token active`` / ``all patch tokens active``
    the same image with every gate bias overridden to -1e4 / +1e4, in the runtime
    (``SessionOptions.add_initializer`` for ONNX Runtime, a replaced Constant for OpenVINO) and
    in PyTorch alike. On a real checkpoint no input can be chosen to do this.

Each case is compared with the PyTorch model in the exported dispatch mode (logits within the
tolerance, gate decisions exactly) and with the dense ``mask`` mode, the exact reference
(``capacity`` exports: on the images whose active counts fit the capacity; the overflow is
counted from the ``masks`` output).

The tolerance is judged by the model's own rounding (:mod:`dyt_edge.rounding`): the PyTorch
model also runs every case in float64 (in the exported mode), and the logits may differ from
PyTorch fp32 by ``max(atol, 4 x e_ref)``, ``e_ref`` being PyTorch fp32's own largest error
against float64 on these images. ``atol`` (``--atol``, 1e-4) is the floor. The exported graph's
own error against float64 is reported beside it. A gate decision may legitimately flip when its
logit is a rounding error away from 0 (``|logit| <= max(1e-3, 4 x fp32's error on the gate
logits)``): such an image is reported as a near tie and left out of the value comparison; any
other flip is a failure.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from dyt_edge.data import generated_images
from dyt_edge.metrics import overflow_counts
from dyt_edge.rounding import (FLOOR, TIE_FLOOR, RoundingScale, same_decisions)

from .errors import ValidationError
from .reference import TorchReference

DEFAULT_ATOL = FLOOR
"""The floor of the logit tolerance (``--atol``); the tolerance itself follows the model's
rounding."""
TIE_ATOL = TIE_FLOOR
GATE_FORCE = 1e4
LARGE_BATCH = 8
OUTPUTS = (("logits", np.float32), ("masks", np.bool_))


class Runner(Protocol):
    name: str

    def run(self, images: np.ndarray, overrides: Optional[dict[str, float]] = None
            ) -> tuple[np.ndarray, np.ndarray]: ...


# -- results ------------------------------------------------------------------------------------

@dataclass
class CaseResult:
    name: str
    batch: int
    gate_bias: Optional[float]
    """The value every gate bias was forced to, or None."""
    max_diff: Optional[float] = None
    """Logits vs PyTorch in the exported dispatch mode (compared images)."""
    max_diff_vs_mask: Optional[float] = None
    """Logits vs PyTorch's dense `mask` mode (images within capacity)."""
    max_diff_vs_float64: Optional[float] = None
    """Logits vs the model in float64: the exported graph's own error."""
    reference_error: Optional[float] = None
    """PyTorch fp32 (exported mode) vs float64 on this case: PyTorch's own error."""
    mask_mismatches: int = 0
    """Gate decisions that differ from PyTorch."""
    near_ties: int = 0
    """Of those, decisions that flipped at |logit| <= tie_atol (their images are left out)."""
    decisions: int = 0
    excluded_images: list[int] = field(default_factory=list)
    active_per_image: list[int] = field(default_factory=list)
    """Active patch decisions per image, summed over dispatchers (from the runtime's masks)."""
    overflow_images: int = 0
    """capacity: images where some dispatcher had more active tokens than slots."""
    overflow_tokens: int = 0
    """capacity: active patch tokens that did not fit, summed over images and dispatchers."""
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    skipped: Optional[str] = None
    """Why the case was not run (it then neither passes nor fails)."""


@dataclass
class ValidationResult:
    runtime: str
    reference: str
    atol: float
    """The logit tolerance applied: ``max(atol_floor, factor x rounding.logits)``."""
    passed: bool
    max_diff: float
    max_diff_vs_mask: Optional[float]
    cases: list[CaseResult]
    failures: list[str]
    notes: list[str]
    seconds: float = 0.0
    atol_floor: float = DEFAULT_ATOL
    tie_atol: float = TIE_ATOL
    rounding: Optional[dict[str, Any]] = None
    """:meth:`RoundingScale.to_dict`: PyTorch fp32's own error against float64."""
    max_diff_vs_float64: Optional[float] = None
    """The exported graph's largest error against float64."""

    @property
    def tolerance_source(self) -> str:
        if not self.rounding:
            return f"the floor {self.atol_floor:g}"
        return RoundingScale.from_dict(self.rounding).explain(self.atol_floor,
                                                              self.rounding["factor"])

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        ran = [c for c in self.cases if not c.skipped]
        images = sum(c.batch for c in ran)
        head = "passed" if self.passed else "FAILED"
        text = (f"{head}: max diff {self.max_diff:.2e} (atol {self.atol:.2g}: "
                f"{self.tolerance_source}) vs {self.reference} on {self.runtime}, "
                f"{len(ran)} cases, {images} images")
        if self.max_diff_vs_mask is not None:
            text += f"; vs dense mask mode {self.max_diff_vs_mask:.2e}"
        if self.max_diff_vs_float64 is not None:
            text += f"; exported graph vs float64 {self.max_diff_vs_float64:.2e}"
        ties = sum(c.near_ties for c in self.cases)
        if ties:
            text += f"; {ties} gate decision(s) flipped at a rounding tie"
        overflow = sum(c.overflow_images for c in self.cases)
        if any(c.overflow_tokens for c in self.cases) or "capacity" in self.reference:
            text += f"; capacity overflow in {overflow} image(s)"
        return text

    def raise_if_failed(self) -> None:
        if self.passed:
            return
        worst = self.failures[0] if self.failures else "unknown failure"
        diff_failures = [f for f in self.failures if "max diff" in f]
        if diff_failures:
            worst = diff_failures[0]
        more = len(self.failures) - 1
        raise ValidationError(
            f"validation on {self.runtime} failed: {worst}"
            + (f" (+{more} more failure{'s' if more > 1 else ''})" if more > 0 else ""),
            "the manifest of a --no-validate export shows what was exported; re-run with "
            "--debug for details", result=self)


# -- inputs -------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    images: np.ndarray
    gate_bias: Optional[float] = None


def make_cases(config, *, static_batch: Optional[int] = None, large_batch: int = LARGE_BATCH,
               seed: int = 0) -> list[Case]:
    """The standard cases (see module doc); every case has ``static_batch`` images when the
    graph's batch is static."""
    c, s = config.in_chans, config.img_size

    def imgs(n: int, offset: int) -> np.ndarray:
        return generated_images(n, c, s, seed=seed + offset)

    if static_batch is not None:
        n = static_batch
        cases = [Case(f"batch {n}" + (" (mixed counts)" if n > 1 else ""), imgs(n, 1))]
    else:
        cases = [Case("batch 1", imgs(1, 0)),
                 Case(f"batch {large_batch} (mixed counts)", imgs(large_batch, 1))]
        n = 1  # every image of a forced case activates the same tokens: one is enough
    cases.append(Case("no patch token active", imgs(n, 2), -GATE_FORCE))
    cases.append(Case("all patch tokens active", imgs(n, 3), GATE_FORCE))
    return cases


# -- the comparison -----------------------------------------------------------------------------

def validate(runner: Runner, model, *, gate_biases: Optional[list[Optional[str]]],
             atol: float = DEFAULT_ATOL, tie_atol: float = TIE_ATOL,
             static_batch: Optional[int] = None, large_batch: int = LARGE_BATCH,
             seed: int = 0, cases: Optional[list[Case]] = None,
             reference: Optional[TorchReference] = None,
             rounding: Optional[RoundingScale] = None) -> ValidationResult:
    """Compare ``runner`` (the exported graph) with the PyTorch ``model`` (see module doc).

    ``gate_biases`` are the runtime's names of the gate-bias initializers in ``masks`` row
    order (None entries / None: not overridable; the forced-gate cases are then skipped and a
    note says so). ``reference`` may be shared between validations of the same model.
    ``atol`` / ``tie_atol`` are the floors of the tolerances; ``rounding`` (default: measured
    on the cases) is PyTorch fp32's own error, which sets them above the floors.
    """
    start = time.perf_counter()
    cfg = model.config
    names = cfg.dispatcher_names
    ref = reference if reference is not None else TorchReference(model)
    mode = ref.mode
    slots = np.asarray(model.capacity_slots()) if mode == "capacity" else None
    notes: list[str] = []
    failures: list[str] = []
    cases = cases if cases is not None else make_cases(
        cfg, static_batch=static_batch, large_batch=large_batch, seed=seed)
    overridable = bool(gate_biases) and all(gate_biases) and len(gate_biases) == len(names)
    runnable = [c for c in cases if c.gate_bias is None or overridable]
    if rounding is None:
        rounding = ref.rounding(runnable)
    floor = atol
    atol = rounding.tolerance(floor)
    tie_atol = rounding.tie_tolerance(tie_atol)
    atol_text = f"{atol:.2g} = {rounding.explain(floor)}" if atol > floor else f"{atol:g}"
    if rounding.excluded:
        notes.append(f"{rounding.excluded} image(s) left out of PyTorch's rounding error: a gate "
                     "decision differs between fp32 and float64 there (a logit within rounding "
                     "of 0)")
    results: list[CaseResult] = []
    for case in cases:
        res = CaseResult(name=case.name, batch=len(case.images), gate_bias=case.gate_bias)
        results.append(res)
        overrides = None
        if case.gate_bias is not None:
            if not overridable:
                res.skipped = "the gate biases are not overridable initializers in this graph"
                notes.append(f"'{case.name}' skipped: gate biases not found as initializers "
                             "(folded by simplification?)")
                continue
            overrides = {n: case.gate_bias for n in gate_biases}  # type: ignore[union-attr]
        try:
            logits, masks = runner.run(case.images, overrides)
        except Exception as exc:  # noqa: BLE001 - a runtime error is a validation failure
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            res.failures.append(f"{case.name}: the runtime failed ({type(exc).__name__}: "
                                f"{first[:200]})")
            res.passed = False
            failures.extend(res.failures)
            continue
        r_logits, r_masks, r_gate = ref.run(case.images, case.gate_bias)
        # 1. shapes and dtypes
        shape_ok = True
        for (out_name, dtype), got, want in zip(OUTPUTS, (logits, masks), (r_logits, r_masks)):
            if got.shape != want.shape or got.dtype != dtype:
                res.failures.append(f"{case.name}: output '{out_name}' is {got.dtype}"
                                    f"{list(got.shape)}, expected {np.dtype(dtype)}"
                                    f"{list(want.shape)}")
                shape_ok = False
        if not shape_ok:
            res.passed = False
            failures.extend(res.failures)
            continue
        # 2. gate decisions, then values
        res.decisions = int(masks.size)
        if case.gate_bias is not None and masks.size:
            forced = masks.all() if case.gate_bias > 0 else not masks.any()
            if not forced:
                res.failures.append(
                    f"{case.name}: forcing every gate bias to {case.gate_bias:g} had no effect in "
                    f"the runtime ({int(masks.sum())} of {masks.size} decisions active)")
        res.active_per_image = [int(v) for v in masks.reshape(len(masks), -1).sum(axis=1)]
        skip_vs_mask: set[int] = set()
        if slots is not None:
            over = overflow_counts(masks, slots)                             # [B, L]
            res.overflow_tokens = int(over.sum())
            overflowed = np.nonzero(over.sum(axis=1) > 0)[0]
            res.overflow_images = int(len(overflowed))
            skip_vs_mask = set(int(i) for i in overflowed)
        diff, mism, ties, excluded, fails = _compare(
            case.name, f"PyTorch ({mode})", logits, masks, r_logits, r_masks, r_gate, names,
            atol, tie_atol, atol_text=atol_text)
        res.max_diff, res.mask_mismatches, res.near_ties = diff, mism, ties
        res.excluded_images = excluded
        res.failures.extend(fails)
        compare_dense = mode in ("topk", "pack", "capacity") or (
            mode == "complete" and case.gate_bias is not None and case.gate_bias > 0)
        if compare_dense:
            d_logits, d_masks, d_gate = ref.run(case.images, case.gate_bias, mode="mask")
            diff2, _, _, _, fails2 = _compare(
                case.name, "PyTorch (mask, the dense reference)", logits, masks, d_logits,
                d_masks, d_gate, names, atol, tie_atol, skip=skip_vs_mask | set(excluded),
                check_masks=mode != "complete", atol_text=atol_text)
            res.max_diff_vs_mask = diff2
            res.failures.extend(fails2)
        res.max_diff_vs_float64, res.reference_error = _float64_errors(
            ref, case, logits, masks, r_logits, r_masks, skip_vs_mask)
        res.passed = not res.failures
        failures.extend(res.failures)
    mixed = [c for c in results if "mixed" in c.name and c.active_per_image]
    for c in mixed:
        if len(set(c.active_per_image)) < 2:
            notes.append(f"'{c.name}': every image activated the same number of tokens "
                         f"({c.active_per_image[0]}); the mixed-count path was not exercised")
    compared = [c.max_diff for c in results if c.max_diff is not None]
    dense = [c.max_diff_vs_mask for c in results if c.max_diff_vs_mask is not None]
    own = [c.max_diff_vs_float64 for c in results if c.max_diff_vs_float64 is not None]
    return ValidationResult(
        runtime=getattr(runner, "name", type(runner).__name__),
        reference=f"PyTorch ({mode}"
        + (f", capacity {ref.capacity:g}" if mode == "capacity" else "") + ")",
        atol=atol, passed=not failures,
        max_diff=float(max(compared)) if compared else float("nan"),
        max_diff_vs_mask=float(max(dense)) if dense else None,
        cases=results, failures=failures, notes=notes,
        seconds=round(time.perf_counter() - start, 3), atol_floor=floor, tie_atol=tie_atol,
        rounding=rounding.to_dict(floor), max_diff_vs_float64=float(max(own)) if own else None)


def _float64_errors(ref: TorchReference, case: Case, logits, masks, r_logits, r_masks,
                    skip: set[int]) -> tuple[Optional[float], Optional[float]]:
    """(the runtime's, PyTorch fp32's) largest logit error against float64 on this case, each
    over the images whose gate decisions equal float64's (and that fit a capacity)."""
    l64, m64, _ = ref.run64(case.images, case.gate_bias)

    def error(got, got_masks) -> Optional[float]:
        same = same_decisions(got_masks, m64)
        for b in skip:
            same[b] = False
        if not same.any():
            return None
        return float(np.abs(got[same].astype(np.float64) - l64[same]).max())

    return error(logits, masks), error(r_logits, r_masks)


def _compare(case: str, against: str, logits, masks, r_logits, r_masks, r_gate, names,
             atol: float, tie_atol: float, skip: Optional[set[int]] = None,
             check_masks: bool = True, atol_text: Optional[str] = None):
    """(max diff or None when no image was compared, differing decisions, near-tie decisions,
    excluded images, failures)."""
    skip = set(skip or ())
    failures: list[str] = []
    excluded: list[int] = []
    ties = 0
    differ = masks != r_masks
    mismatches = int(differ.sum()) if check_masks else 0
    if check_masks and mismatches:
        for b in range(len(masks)):
            if b in skip or not differ[b].any():
                continue
            first = int(np.nonzero(differ[b].any(axis=-1))[0][0])
            margin = float(np.abs(r_gate[b, first][differ[b, first]]).max())
            if margin <= tie_atol:
                excluded.append(b)
                ties += int(differ[b, first].sum())
            else:
                failures.append(
                    f"{case}: {int(differ[b].sum())} gate decision(s) of image {b} differ from "
                    f"{against}, first at {names[first]} (|logit| {margin:.2e} > tie "
                    f"{tie_atol:.2g})")
    keep = [b for b in range(len(logits)) if b not in skip and b not in excluded]
    if not keep:  # nothing comparable (e.g. every image overflowed the capacity)
        return None, mismatches, ties, excluded, failures
    diff = float(np.max(np.abs(logits[keep].astype(np.float64) - r_logits[keep])))
    if not diff <= atol:  # NaN fails too
        failures.append(f"{case}: max diff {diff:.3e} (atol {atol_text or format(atol, 'g')}) "
                        f"vs {against}")
    return diff, mismatches, ties, excluded, failures


__all__ = ["Case", "CaseResult", "DEFAULT_ATOL", "RoundingScale", "TIE_ATOL", "ValidationResult",
           "generated_images", "make_cases", "validate"]
