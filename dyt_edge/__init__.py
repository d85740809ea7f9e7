"""dyt-edge: deployment toolchain for DyT (Dynamic Tuning) vision transformers.

The top-level names are imported lazily, so ``import dyt_edge`` (and the CLI's ``--help``) does
not pay for torch until a model is actually needed.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .config import DyTConfig, Preprocessing
from .errors import CheckpointError, ConfigError, DataError, DytEdgeError, UsageError

_LAZY = {
    "build_model": "dyt_edge.model",
    "DyTVisionTransformer": "dyt_edge.model",
    "load_model": "dyt_edge.checkpoint",
    "save_model": "dyt_edge.checkpoint",
    "infer_config": "dyt_edge.checkpoint",
    "model_flops": "dyt_edge.flops",
    "train": "dyt_edge.train",
}

__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DyTConfig",
    "DytEdgeError",
    "Preprocessing",
    "UsageError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dyt_edge' has no attribute {name!r}")
