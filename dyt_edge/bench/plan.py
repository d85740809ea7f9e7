"""The plan of a ``dyt-edge bench`` run: the batch sizes (``--batch``, or the artifact's static
batch), the checked settings, and the interleaved chunks each model is timed in."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from ..errors import UsageError

DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_DURATION = 5.0
DEFAULT_WARMUP = 1.0
DEFAULT_IMAGES = 256
CHUNK_S = 1.0
"""Target length of one interleaved chunk."""


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)`` (duplicates dropped, order kept); a usage error for
    anything but positive integers."""
    parts = [p.strip() for p in str(text).split(",")]
    values: list[int] = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise UsageError(f"--batch takes comma-separated batch sizes, got '{text}'",
                             "e.g. --batch 1,8,32") from None
        values.append(v)
    return check_batches(values)


def check_batches(batches: Sequence[int]) -> tuple[int, ...]:
    """``batches`` as positive integers, duplicates dropped (order kept); a usage error
    otherwise."""
    out: list[int] = []
    for b in batches:
        if isinstance(b, bool) or int(b) != b or int(b) <= 0:
            raise UsageError(f"batch sizes must be positive integers, got {b}",
                             "e.g. --batch 1,8,32")
        if int(b) not in out:
            out.append(int(b))
    if not out:
        raise UsageError("no batch sizes given", "e.g. --batch 1,8,32")
    return tuple(out)


def check_settings(duration: float, warmup: float, images: int, hint: str) -> None:
    """A usage error for a negative or non-finite duration or warmup, a non-positive image
    count or an unknown performance hint."""
    from ..runtimes import HINTS

    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0):
        raise UsageError(f"--duration must be a non-negative number of seconds, got {duration}")
    if not (isinstance(warmup, (int, float)) and math.isfinite(warmup) and warmup >= 0):
        raise UsageError(f"--warmup must be a non-negative number of seconds, got {warmup}")
    if int(images) <= 0:
        raise UsageError(f"--images must be positive, got {images}")
    if hint not in HINTS:
        from ..config import closest

        raise UsageError(f"unknown performance hint '{hint}'",
                         f"{closest(hint, HINTS)}choose one of: {', '.join(HINTS)}")


def resolve_batches(static: Optional[int], batches: Optional[Sequence[int]]) -> tuple[int, ...]:
    """The batch sizes to run: ``batches`` (checked), else :data:`DEFAULT_BATCHES`; a
    static-batch artifact (``static``: its batch, None for a dynamic one) runs its own batch
    only."""
    if batches is None:
        return (static,) if static is not None else DEFAULT_BATCHES
    checked = check_batches(batches)
    if static is not None:
        bad = [b for b in checked if b != static]
        if bad:
            raise UsageError(f"this artifact was exported with a static batch of {static}; it "
                             f"cannot run batch {bad[0]}",
                             f"pass --batch {static}, or re-export with --batch dynamic")
    return checked


def schedule(duration: float) -> tuple[int, float]:
    """``(rounds, seconds per chunk)`` for ``duration`` seconds per model and batch size."""
    rounds = max(2, math.ceil(duration / CHUNK_S - 1e-9))
    return rounds, duration / rounds


def interleave(models: Sequence[Any], rounds: int) -> list[tuple[int, Any]]:
    """The chunk order ABBA ABBA ... (each model first equally often): (round, model) pairs."""
    order = []
    for r in range(rounds):
        seq = list(models) if r % 2 == 0 else list(reversed(models))
        order += [(r, m) for m in seq]
    return order


__all__ = ["DEFAULT_BATCHES", "DEFAULT_DURATION", "DEFAULT_IMAGES", "DEFAULT_WARMUP",
           "check_batches", "check_settings", "interleave", "parse_batches", "resolve_batches",
           "schedule"]
