"""The JSON dyt-edge writes: one header and one encoder.

Every report starts with :func:`report_header` (``schema`` ``dyt-edge.<kind>``,
``schema_version``, ``dyt_edge_version``, ``created``); the reports and their fields are
described in ``docs/reports.md``. :func:`json_default` is the ``default`` hook of every
``json.dumps`` that may meet numpy values, paths or dataclasses, and :func:`to_json` the one
layout. Writing a report to disk: :mod:`dyt_edge.report_files`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from ._version import __version__

SCHEMA_PREFIX = "dyt-edge."


def report_header(kind: str, schema_version: int, created: str) -> dict[str, Any]:
    """The keys every dyt-edge report starts with: ``{"schema": "dyt-edge.<kind>",
    "schema_version": N, "dyt_edge_version": ..., "created": ISO-8601 UTC}``."""
    return {"schema": SCHEMA_PREFIX + kind, "schema_version": int(schema_version),
            "dyt_edge_version": __version__, "created": created}


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: paths as strings, sets as lists, numpy (and
    torch) scalars and arrays as numbers and lists, dataclasses and objects with ``to_dict()``
    as objects; anything else is a ``TypeError`` (a bug, not something to write as text)."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def to_json(payload: Mapping[str, Any]) -> str:
    """``payload`` as dyt-edge writes JSON: indented by 2, :func:`json_default`, one final
    newline."""
    return json.dumps(payload, indent=2, default=json_default) + "\n"


__all__ = ["SCHEMA_PREFIX", "json_default", "report_header", "to_json"]
