"""Errors of the exporters (user-facing, one line each: see :mod:`dyt_edge.errors`).

Export's own check of the graph it wrote raises :class:`dyt_edge.errors.ValidationError`, the
base of the validation errors, re-exported here."""

from __future__ import annotations

from dyt_edge.errors import DytEdgeError, ValidationError


class ExportError(DytEdgeError):
    """The model could not be exported, simplified or converted."""


__all__ = ["ExportError", "ValidationError"]
