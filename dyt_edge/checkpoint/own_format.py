"""The project's own checkpoint format: one ``.safetensors`` file that carries its config.

Its metadata holds ``format=dyt-edge``, ``format_version`` (:data:`FORMAT_VERSION`), ``config``
(:meth:`DyTConfig.to_dict` as JSON) and ``dyt_edge_version``, plus the caller's own keys (such
as the class names, :data:`dyt_edge.class_names.METADATA_KEY`, and the training record that
``dyt-edge train`` writes, :func:`training_metadata`). A file is recognised by this metadata, not
by its suffix. This module writes the format (:func:`save_model`) and reads the config, class
names and training record back from its metadata.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .._version import __version__
from ..class_names import METADATA_KEY, parse_metadata
from ..config import DyTConfig
from ..errors import CheckpointError, ConfigError
from ..model import DyTVisionTransformer
from .reading import PathLike

FORMAT = "dyt-edge"
FORMAT_VERSION = 1
TRAINING_KEY = "dyt_edge.training"
"""Metadata key of the training run's config (``TrainConfig.to_dict()`` as JSON)."""
TRAINING_RESULT_KEY = "dyt_edge.training_result"
"""Metadata key of the training run's result summary (JSON)."""


def save_model(model: DyTVisionTransformer, path: PathLike, *,
               metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``model`` as one dyt-edge ``.safetensors`` file; return its path.

    The file is written under a temporary name in the same directory and renamed on success,
    so a failure never leaves a half-written file behind.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    if not isinstance(config, DyTConfig):
        raise ConfigError("save_model needs a DyT model with a .config, got "
                          f"{type(model).__name__}")
    path = Path(path).expanduser()
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config.to_dict(), sort_keys=True),
            "dyt_edge_version": __version__}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"checkpoint metadata must map strings to strings, got "
                              f"{key!r}: {type(value).__name__}")
        if key in meta:
            raise ConfigError(f"checkpoint metadata key '{key}' is reserved",
                              f"use another name than {', '.join(sorted(meta))}")
        meta[key] = value

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t

    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a directory",
                              "pass a file name such as model.safetensors")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}",
                              "check that the directory is writable and has space") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _stored_config(meta: Mapping[str, str], where: str) -> DyTConfig:
    """The config a dyt-edge file's metadata records, checked."""
    version = meta.get("format_version", "")
    if not version.isdigit():
        raise CheckpointError(f"{where} has no valid format_version in its dyt-edge metadata",
                              "the file was edited by hand; write it again with save_model")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} is dyt-edge format version {version}; this dyt-edge "
            f"({__version__}) reads version {FORMAT_VERSION}", "upgrade dyt-edge")
    if int(version) < 1:
        raise CheckpointError(f"{where} has an unknown dyt-edge format version {version}",
                              "write it again with save_model")
    try:
        data = json.loads(meta["config"])
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{where} has no readable model config in its metadata ({exc})",
                              "the file was edited by hand; write it again with save_model"
                              ) from None
    try:
        return DyTConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", exc.hint) from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an invalid model config in its metadata ({exc})",
                              "write it again with save_model") from None


def _stored_class_names(meta: Mapping[str, str], config: DyTConfig,
                        where: str) -> Optional[list[str]]:
    """The class names a dyt-edge file's metadata records (None when it records none)."""
    if METADATA_KEY not in meta:
        return None
    try:
        names = parse_metadata(meta[METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{where} has unreadable class names in its metadata ({exc})",
                              "the file was edited by hand; write it again with save_model, "
                              "or pass --class-names FILE") from None
    if len(names) != config.num_classes or len(set(names)) != len(names):
        raise CheckpointError(f"{where} records {len(names)} class names "
                              f"({len(set(names))} distinct) for {config.num_classes} classes",
                              "the file was edited by hand; pass --class-names FILE")
    return names


def training_metadata(config: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, str]:
    """The metadata entries that record a training run: its config and its result summary."""
    return {TRAINING_KEY: json.dumps(dict(config), sort_keys=True),
            TRAINING_RESULT_KEY: json.dumps(dict(result), sort_keys=True)}


def training_record(metadata: Mapping[str, str]) -> Optional[dict[str, Any]]:
    """The training run a checkpoint's metadata records: ``{'config': ..., 'result': ...
    (when recorded), 'data': the config's data}``; None when it records none, or none that is
    readable (the file was not written by ``dyt-edge train``, or was edited)."""
    if TRAINING_KEY not in metadata:
        return None
    try:
        record = {"config": json.loads(metadata[TRAINING_KEY])}
        if TRAINING_RESULT_KEY in metadata:
            record["result"] = json.loads(metadata[TRAINING_RESULT_KEY])
    except ValueError:
        return None
    if not isinstance(record["config"], dict):
        return None
    record["data"] = record["config"].get("data")
    return record
