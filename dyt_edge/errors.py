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
