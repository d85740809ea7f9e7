"""What ``dyt-edge bench`` measured: one model at one batch size (:class:`Measurement`), both
models at one batch size (:class:`BatchResult`) and the whole run (:class:`BenchResult`, whose
``to_dict()`` is the JSON report of ``docs/reports.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..reports import SCHEMA_PREFIX, report_header
from .stats import LatencyStats, ratios

KIND = "bench"
SCHEMA = SCHEMA_PREFIX + KIND
SCHEMA_VERSION = 1
"""Version of the JSON report."""


@dataclass
class Measurement:
    """One model at one batch size."""

    batch: int
    latency: LatencyStats
    iterations: int
    """Inferences behind the throughput."""
    wall_s: float

    @property
    def images(self) -> int:
        return self.iterations * self.batch

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def ms_per_image(self) -> float:
        return 1e3 / self.images_per_s if self.images_per_s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"images_per_s": self.images_per_s, "ms_per_image": self.ms_per_image,
                "iterations": self.iterations, "images": self.images, "wall_s": self.wall_s,
                "latency_ms": self.latency.to_dict()}


@dataclass
class BatchResult:
    """The DyT artifact and (with the baseline) the complete model at one batch size."""

    batch: int
    dyt: Measurement
    complete: Optional[Measurement] = None
    flops_ratio: Optional[float] = None
    batch_max_activation: Optional[float] = None
    computed_gflops: Optional[float] = None

    @property
    def speedup(self) -> Optional[float]:
        return ratios(self.dyt.images_per_s,
                      self.complete.images_per_s if self.complete else None, self.flops_ratio)[0]

    @property
    def efficiency(self) -> Optional[float]:
        return ratios(self.dyt.images_per_s,
                      self.complete.images_per_s if self.complete else None, self.flops_ratio)[1]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "dyt": self.dyt.to_dict(),
                "complete": self.complete.to_dict() if self.complete else None,
                "speedup": self.speedup, "flops_ratio": self.flops_ratio,
                "efficiency": self.efficiency,
                "batch_max_activation": self.batch_max_activation,
                "computed_gflops": self.computed_gflops}


@dataclass
class BenchResult:
    """Everything ``bench`` measured; :meth:`to_dict` is the JSON report (``docs/reports.md``)."""

    artifact: dict[str, Any]
    target: str
    precision: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    runtime: dict[str, Any]
    results: list[BatchResult]
    baseline: Optional[dict[str, Any]] = None
    activation: Optional[dict[str, Any]] = None
    flops: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)
    created: str = ""

    def result(self, batch: int) -> BatchResult:
        return next(r for r in self.results if r.batch == batch)

    def to_dict(self) -> dict[str, Any]:
        return {**report_header(KIND, SCHEMA_VERSION, self.created),
                "artifact": self.artifact, "target": self.target, "precision": self.precision,
                "settings": self.settings, "machine": self.machine, "runtime": self.runtime,
                "baseline": self.baseline, "activation": self.activation, "flops": self.flops,
                "results": [r.to_dict() for r in self.results], "notes": list(self.notes)}


__all__ = ["BatchResult", "BenchResult", "KIND", "Measurement", "SCHEMA", "SCHEMA_VERSION"]
