"""Precision names: one spelling each, and the aliases every command accepts.

``fp32`` / ``fp16`` / ``bf16`` / ``int8`` are the deployment precisions (``int8`` is a property
of a *built*, quantized artifact; the others are how a runtime executes a float model).
``fp64`` is not a deployment precision: it is the PyTorch reference in float64, the yardstick
of fp32's own rounding (:mod:`dyt_edge.rounding`), and only the PyTorch runtime runs it.
"""

from __future__ import annotations

from .errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
REFERENCE = "fp64"
ALIASES = {"f32": "fp32", "float32": "fp32", "fp32": "fp32",
           "f16": "fp16", "float16": "fp16", "half": "fp16", "fp16": "fp16",
           "bf16": "bf16", "bfloat16": "bf16",
           "int8": "int8", "i8": "int8", "u8": "int8",
           "fp64": REFERENCE, "float64": REFERENCE, "f64": REFERENCE}
"""Every accepted spelling (lower case) -> its name."""


def canonical_precision(value: str) -> str:
    """``fp32`` / ``fp16`` / ``bf16`` / ``int8`` / ``fp64`` for any accepted spelling; a
    one-line :class:`UsageError` naming the choices otherwise. Whether a target can run or
    build that precision is the target's to say."""
    key = str(value).strip().lower()
    if key not in ALIASES:
        from .config import closest

        raise UsageError(f"unknown precision '{value}'",
                         f"{closest(key, PRECISIONS)}choose one of: {', '.join(PRECISIONS)}")
    return ALIASES[key]
