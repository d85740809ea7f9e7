"""Errors that reach the user as one clear line.

Every failure a user can cause (a bad path, a bad checkpoint, a bad flag) is raised as a
:class:`DytEdgeError` subclass carrying the problem and, where one exists, the fix. The CLI turns
them into ``error: <problem> (<fix>)`` on stderr and the class's exit code, without a traceback
unless ``--debug`` is given. Library users catch :class:`DytEdgeError`.
"""

from __future__ import annotations


class DytEdgeError(Exception):
    """Base class: a user-facing problem with an optional hint on how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(DytEdgeError):
    """A flag or argument the command cannot accept (Click's convention: exit code 2)."""

    exit_code = 2


class ConfigError(DytEdgeError):
    """A model configuration that cannot describe a valid DyT model."""


class CheckpointError(DytEdgeError):
    """A checkpoint that cannot be read, is unsafe, or does not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that tries to construct or call something outside the allow-list."""


class DataError(DytEdgeError):
    """A dataset that is missing, empty or unreadable."""


class ArtifactError(DytEdgeError):
    """An artifact (or a place to write one) that is missing, unreadable or not ours."""


class ValidationError(DytEdgeError):
    """An artifact could not be shown to compute the PyTorch model it was made from.

    Raised as is by export when the graph it wrote does not reproduce the model within
    tolerance; ``dyt-edge validate`` raises the subclasses. ``result`` holds the comparison
    behind the verdict, when there is one."""

    def __init__(self, message: str, hint: str | None = None, result=None) -> None:
        super().__init__(message, hint)
        self.result = result


class ChecksFailed(ValidationError):
    """``dyt-edge validate``: the artifact, run on its target, fails one or more checks against
    the PyTorch reference (``result`` is the validation report)."""


class ValidationAborted(ValidationError):
    """The comparison could not be carried out: a runtime failed on the images, or its outputs
    do not have the reference's shapes."""
