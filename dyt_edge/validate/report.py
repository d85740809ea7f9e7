"""The report of ``dyt-edge validate``: what was compared, the metrics, the checks, and the
verdict; its JSON (``docs/reports.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ChecksFailed
from ..report_files import write_report
from ..reports import report_header
from .checks import Check, describe_check

KIND = "validate"
SCHEMA_VERSION = 2
"""Version of the JSON report (2: the common header of ``docs/reports.md``)."""


@dataclass
class ValidationReport:
    """What ``dyt-edge validate`` measured and the checks that give its verdict."""

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
        """The JSON report (``docs/reports.md``)."""
        return {
            **report_header(KIND, SCHEMA_VERSION, self.created),
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
        raise ChecksFailed(
            f"validation on {self.target.get('target')} {self.precision} failed: "
            f"{describe_check(failed[0])}"
            + (f" (+{more} more failed check{'s' if more > 1 else ''})" if more > 0 else ""),
            "the report above lists every check; override thresholds with --max-diff, "
            "--min-agreement, --max-flips or --max-drop", result=self)


def write_json(report: ValidationReport, path: Union[str, Path]) -> Path:
    """Write ``report.to_dict()`` to ``path`` atomically."""
    return write_report(path, report.to_dict())


__all__ = ["KIND", "SCHEMA_VERSION", "ValidationReport", "write_json"]
