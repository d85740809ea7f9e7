"""Where the figures go and writing them: the output directory (checked before any work),
every figure drawn by :mod:`dyt_edge.plots`, then ``activation.json``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..artifacts import (DEFAULT_ROOT, ArtifactError, PathLike, default_output_dir,
                         existing_ancestor, utc_now)
from ..report_files import write_report
from ..errors import UsageError
from ..reports import report_header
from .measurement import Measurement, figure_data
from .sources import Source

FIGURES_DIR = "figures"
FIGURE_FILES = {
    "activation_rates": "activation_rates.png",
    "tokens": "tokens.png",
    "activation_map": "activation_map.png",
    "activation_by_class": "activation_by_class.png",
}
DATA_FILE = "activation.json"
KIND = "visualize"
SCHEMA_VERSION = 1
"""Version of ``activation.json`` (1: the first with the common header of ``docs/reports.md``)."""


@dataclass
class VisualizeResult:
    """What :func:`write_figures` wrote, and the numbers behind it."""

    measurement: Measurement
    output: Path
    paths: list[Path]
    """Every file written (figures and ``activation.json``), in writing order."""
    figures: dict[str, dict[str, Any]]
    """Figure name -> the numbers it shows (see the ``*_data`` functions)."""
    notes: list[str] = field(default_factory=list)
    """What the user should know (an artifact picked automatically, ...)."""
    created: str = ""

    def summary(self) -> dict[str, Any]:
        """JSON-able: the measured activation per dispatcher, per class, and where it came
        from (what ``activation.json`` holds, ``docs/visualize.md``)."""
        m = self.measurement
        rates = self.figures["activation_rates"]
        out: dict[str, Any] = {
            **report_header(KIND, SCHEMA_VERSION, self.created),
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


def default_figures_dir(src: Source, root: PathLike = DEFAULT_ROOT) -> Path:
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
    probe = existing_ancestor(t, "pass -o with a directory path")
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


def write_figures(m: Measurement, out: PathLike, *, notes: Optional[list[str]] = None
                  ) -> VisualizeResult:
    """Draw every figure of ``m`` into ``out`` (created), then ``activation.json``."""
    from .. import plots

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
    result = VisualizeResult(m, out, paths, figures, list(notes or []), created=utc_now())
    result.paths.append(write_report(out / DATA_FILE, result.summary(), hint=None))
    return result
