"""What ``dyt-edge visualize`` runs: a checkpoint file or an artifact directory, and what
``dyt-edge train`` recorded about the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..artifacts import (DEFAULT_ROOT, MANIFEST_NAME, MODEL_FILE_SUFFIXES, Artifact, PathLike,
                         load_artifact, resolve_artifact)
from ..errors import UsageError


@dataclass
class Source:
    """A resolved source: ``kind`` is ``checkpoint`` or ``artifact`` (then ``artifact`` holds
    it); ``picked``: the most recent export, chosen because none was named."""

    kind: str
    path: Path
    artifact: Optional[Artifact] = None
    picked: bool = False


def resolve_source(source: Optional[PathLike], root: PathLike = DEFAULT_ROOT) -> Source:
    """A checkpoint file or an artifact (directory, or a file inside one); None: the most
    recent export under ``root``."""
    if source is None:
        art, picked = resolve_artifact(None, root=root)
        return Source("artifact", art.path, art, picked)
    p = Path(source).expanduser()
    hint = ("pass a checkpoint (.pth, .pt, .safetensors) or an artifact directory written by "
            "`dyt-edge export`")
    if not p.exists():
        raise UsageError(f"{p} does not exist", hint)
    if p.is_dir():
        if not (p / MANIFEST_NAME).is_file():
            raise UsageError(f"{p} is neither a checkpoint nor an artifact directory (it holds "
                             f"no {MANIFEST_NAME})", hint)
        art = load_artifact(p)
        return Source("artifact", art.path, art)
    if p.name == MANIFEST_NAME or (p.suffix.lower() in MODEL_FILE_SUFFIXES
                                   and (p.parent / MANIFEST_NAME).is_file()):
        art = load_artifact(p)
        return Source("artifact", art.path, art)
    if p.suffix.lower() in MODEL_FILE_SUFFIXES:
        raise UsageError(f"{p} is a model file without a {MANIFEST_NAME} beside it", hint)
    return Source("checkpoint", p)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a .safetensors file (header only), empty for anything else."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a safetensors file: no metadata
        return {}


def training_record(src: Source) -> dict[str, Any]:
    """What ``dyt-edge train`` recorded about the model (its config: ``data``,
    ``target_rate``, ...), or {}."""
    if src.artifact is not None:
        return dict(src.artifact.info.source.training.get("config") or {})
    from ..checkpoint import training_record as read_training_record

    record = read_training_record(_safetensors_metadata(src.path))
    return dict(record["config"]) if record is not None else {}


def target_rate(training: dict[str, Any]) -> Optional[float]:
    """The target activation rate a training record names, when it is a valid one."""
    try:
        r = float(training["target_rate"])
    except (KeyError, TypeError, ValueError):
        return None
    return r if 0.0 < r <= 1.0 else None
