"""``dyt-edge validate``: does an artifact, run on a target runtime, still compute the model?

:func:`validate_artifact` runs the same real images through the artifact on a target runtime
and through the PyTorch model rebuilt from the checkpoint the artifact records, compares them
(:mod:`dyt_edge.metrics`) and checks the differences against per-precision thresholds; the
:class:`ValidationReport` it returns holds the verdict. The method, the metrics and why each
threshold is what it is: ``docs/validate.md``; the JSON report: ``docs/reports.md``.

Modules: :mod:`.inputs` (the target, the artifact, the images), :mod:`.run` (running and
comparing), :mod:`.thresholds` (the bounds per precision), :mod:`.checks` (metrics against
bounds), :mod:`.report` (the report and its JSON).
"""

from ..metrics import compare_outputs
from .checks import Check, describe_check, format_value, make_checks
from .inputs import (DEFAULT_SAMPLES, VALIDATION_TARGETS, check_target, load_validation_data,
                     pick_artifact)
from .report import SCHEMA_VERSION, ValidationReport, write_json
from .run import DEFAULT_BATCH, validate_artifact
from .thresholds import PRECISION_THRESHOLDS, Thresholds, default_thresholds

__all__ = ["Check", "DEFAULT_BATCH", "DEFAULT_SAMPLES", "PRECISION_THRESHOLDS", "SCHEMA_VERSION",
           "Thresholds", "VALIDATION_TARGETS", "ValidationReport", "check_target",
           "compare_outputs", "default_thresholds", "describe_check", "format_value",
           "load_validation_data", "make_checks", "pick_artifact", "validate_artifact",
           "write_json"]
