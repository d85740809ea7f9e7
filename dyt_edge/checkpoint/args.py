"""The ``args`` the published DyT training code saves with its checkpoints.

They are an ``argparse.Namespace`` holding an ``easydict.EasyDict`` (``tuning_config``), read
as inert stand-ins by :mod:`~dyt_edge.checkpoint.safe_pickle`. This module turns them into
plain JSON-able data, looks values up by dotted key, and says where the values the state_dict
cannot hold are kept.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import CheckpointError
from . import safe_pickle

# Where the published code's args keep what the state_dict cannot say, in lookup order. The
# model is built from `tuning_config`, so it wins over the top-level copies.
SCALE_KEYS = ("tuning_config.ffn_adapter_scalar", "ffn_adapter_scalar", "scale")
LAYERNORM_KEYS = ("tuning_config.ffn_adapter_layernorm_option", "ffn_adapter_layernorm_option")
HEADS_KEYS = ("num_heads", "tuning_config.num_heads")

SCALE_HINT = "pass --adapter-scale S (1.0 for the VTAB recipe, 0.1 for the image recipes)"


def _lookup(args: Optional[Mapping[str, Any]], dotted: str) -> tuple[bool, Any]:
    """(found, value) of ``args[a][b]`` for ``dotted`` ``a.b``; None counts as not found."""
    node: Any = args
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return node is not None, node


def _listed(keys: tuple[str, ...]) -> str:
    """``keys`` as the user reads them in a message: ``args.a, args.b.c``."""
    return ", ".join(f"args.{key}" for key in keys)


def _parse_scale(value: Any, key: str, where: str) -> Union[float, str]:
    """The adapter scale ``args.<key>`` holds: a number, or ``learnable``."""
    if isinstance(value, str):
        text = value.strip()
        if "learnable" in text.lower():
            return "learnable"
        try:
            number = float(text)
        except ValueError:
            number = math.nan
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number):
        raise CheckpointError(f"{where}: args.{key} = {value!r} is not an adapter scale",
                              SCALE_HINT)
    return number


def _plain(obj: Any, _depth: int = 0, _active: Optional[set[int]] = None) -> Any:
    """The checkpoint's args (stand-ins, dicts, tensors, ...) as JSON-able data."""
    active = set() if _active is None else _active
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if _depth > 32 or id(obj) in active:
        return "..."
    active.add(id(obj))
    try:
        if isinstance(obj, (safe_pickle.ArgsNamespace,)) or (
                hasattr(obj, "__dict__") and type(obj).__name__ == "Namespace"):
            return {str(k): _plain(v, _depth + 1, active) for k, v in vars(obj).items()}
        if isinstance(obj, Mapping):
            out = {str(k): _plain(v, _depth + 1, active) for k, v in obj.items()}
            extra = getattr(obj, "__dict__", None)  # an EasyDict's attribute mirror
            if isinstance(extra, dict):
                for k, v in extra.items():
                    out.setdefault(str(k), _plain(v, _depth + 1, active))
            return out
        if isinstance(obj, (list, tuple)):
            return [_plain(v, _depth + 1, active) for v in obj]
        if isinstance(obj, (set, frozenset)):
            return sorted((_plain(v, _depth + 1, active) for v in obj), key=repr)
        if isinstance(obj, torch.Tensor):
            if obj.numel() == 1 and not obj.is_meta:
                return _plain(obj.item(), _depth + 1, active)
            return f"tensor{list(obj.shape)}"
        if isinstance(obj, (bytes, bytearray)):
            return bytes(obj).decode("utf-8", "replace")
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        return str(obj)
    finally:
        active.discard(id(obj))
