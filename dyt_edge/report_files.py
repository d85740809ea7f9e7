"""A report on disk: the ``--json`` path checked before any work is done, then the report
written atomically (:func:`dyt_edge.artifacts.atomic_write_bytes`) in the one layout of
:func:`dyt_edge.reports.to_json`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .artifacts import ArtifactError, atomic_write_bytes
from .errors import UsageError
from .reports import to_json


def check_json_path(path: Union[str, Path], example: str = "report.json") -> Path:
    """Refuse, before any work is done, a ``--json`` path that cannot be written (a directory,
    or under something that is not a writable directory); creates its missing parents."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"--json {p} is a directory", f"pass a file path, e.g. {p / example}")
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


def write_report(path: Union[str, Path], payload: Mapping[str, Any], *,
                 hint: Optional[str] = "pass --json with a writable path") -> Path:
    """Write ``payload`` (:func:`to_json`) to ``path`` atomically, creating missing parents; an
    ``OSError`` becomes a one-line :class:`~dyt_edge.artifacts.ArtifactError` with ``hint``."""
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(p, to_json(payload).encode("utf-8"))
    except OSError as exc:
        raise ArtifactError(f"cannot write {p}: {exc.strerror or exc}", hint) from None
    return p


__all__ = ["check_json_path", "write_report"]
