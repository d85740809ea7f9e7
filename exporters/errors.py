"""Errors of the exporters (user-facing, one line each: see :mod:`dyt_edge.errors`)."""

from __future__ import annotations

from dyt_edge.errors import DytEdgeError


class ExportError(DytEdgeError):
    """The model could not be exported, simplified or converted."""


class ValidationError(DytEdgeError):
    """The exported graph does not reproduce the PyTorch model within tolerance.

    ``result`` holds the full comparison (every case, every failure)."""

    def __init__(self, message: str, hint: str | None = None, result=None) -> None:
        super().__init__(message, hint)
        self.result = result
