"""Reading a checkpoint file into a checked config and weights, and into a ready model.

:func:`read_checkpoint` sniffs and reads the file (:mod:`~dyt_edge.checkpoint.reading`), takes
the config a dyt-edge file records (:mod:`~dyt_edge.checkpoint.own_format`) or infers it
(:mod:`~dyt_edge.checkpoint.inference`), and checks the weights against a model of that config
built on the meta device, so that a mismatch is one error and costs no model memory.
:func:`load_model` then loads the weights into that model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..artifacts import file_sha256
from ..class_names import METADATA_KEY, checked_names, read_class_names_file
from ..config import DEFAULT_DISPATCH, DyTConfig
from ..errors import CheckpointError
from ..model import DyTVisionTransformer, build_model
from .args import _plain
from .inference import METADATA, _resolve
from .overrides import _normalise_overrides
from .own_format import FORMAT, _stored_class_names, _stored_config
from .reading import PathLike, _clean_state_dict, _read_file, _split_layout


@dataclass
class LoadedCheckpoint:
    """A checkpoint read and checked against its inferred architecture (no model built)."""

    path: Path
    sha256: str
    format: str
    """``dyt-edge`` (the project's own file) or ``published`` (config inferred)."""
    layout: str
    """``dyt-edge`` | ``full`` ({'model', 'args', ...}) | ``model-only`` ({'model'}) |
    ``state_dict`` (bare)."""
    state_dict: dict[str, torch.Tensor]
    config: DyTConfig
    provenance: dict[str, str]
    """Config field -> where its value came from (``tensor shapes``, ``args.<key>``,
    ``override``, ``dyt-edge metadata``, ``default: ...``)."""
    args: Optional[dict[str, Any]] = None
    """The checkpoint's ``args`` as plain JSON-able data (None when it has none)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The safetensors metadata of a dyt-edge file (empty for published checkpoints)."""
    class_names: Optional[list[str]] = None
    """One name per class, in logit order, when known (:mod:`dyt_edge.class_names`)."""
    class_names_source: Optional[str] = None
    """Where they came from: ``dyt-edge metadata (dyt_edge.class_names)``,
    ``--class-names FILE``, ``given``; None when there are none."""


def read_checkpoint(path: PathLike, *,
                    class_names: Optional[Union[PathLike, list[str], tuple[str, ...]]] = None,
                    **overrides: Any) -> LoadedCheckpoint:
    """Read a checkpoint and its architecture, checked strictly against the weights.

    ``overrides`` are :class:`DyTConfig` field names (None values are ignored); an override wins
    over args and defaults, but one that contradicts the tensors is an error. ``class_names``
    (a text file, one name per line, or a list) wins over the names a dyt-edge checkpoint
    records; either must hold one name per class.
    """
    loaded = _read(path, overrides)[0]
    if class_names is not None:
        if isinstance(class_names, (list, tuple)):
            names, what, source = class_names, "the class names", "given"
        else:
            names = read_class_names_file(class_names)
            what = source = f"--class-names {class_names}"
        loaded.class_names = checked_names(names, loaded.config.num_classes, what)
        loaded.class_names_source = source
    else:
        loaded.class_names = _stored_class_names(loaded.metadata, loaded.config, str(path))
        if loaded.class_names is not None:
            loaded.class_names_source = f"{METADATA} ({METADATA_KEY})"
    return loaded


def load_model(path: PathLike, **overrides: Any) -> DyTVisionTransformer:
    """Load a checkpoint into a :class:`DyTVisionTransformer` (eval mode, ``pack`` dispatch).

    The model is built from the inferred config (``build_model(config, init_weights=False)``,
    on the meta device so that nothing is initialised only to be overwritten) and its weights
    are the checkpoint's tensors (as fp32), loaded strictly: no copy when they already are.
    """
    loaded, model = _read(path, overrides)
    weights = {k: _as_fp32(v) for k, v in loaded.state_dict.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    leftovers = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftovers:  # a tensor the state_dict does not carry: build it for real
        model = build_model(loaded.config, init_weights=False)
        model.load_state_dict(loaded.state_dict, strict=True)
    model.eval()
    model.set_dispatch(DEFAULT_DISPATCH)
    return model


def _read(path: PathLike,
          overrides: Mapping[str, Any]) -> tuple[LoadedCheckpoint, DyTVisionTransformer]:
    """(LoadedCheckpoint, meta-device model built from its config and checked against it)."""
    ov = _normalise_overrides(overrides)
    p = Path(path).expanduser()
    where = str(path)
    raw, safetensors_meta = _read_file(p, where)

    stored: Optional[DyTConfig] = None
    meta: dict[str, str] = {}
    args_obj: Any = None
    if safetensors_meta is None:
        fmt = "published"
        raw, layout, args_obj = _split_layout(raw, where)
    elif safetensors_meta.get("format") == FORMAT:
        fmt, layout, meta = FORMAT, FORMAT, safetensors_meta
        stored = _stored_config(meta, where)
    else:
        fmt, layout = "published", "state_dict"

    sd = _clean_state_dict(raw, where)
    args = _plain(args_obj)
    if args is not None and not isinstance(args, dict):
        args = {"value": args}
    config, provenance = _resolve(sd, args, ov, where, stored=stored)
    model = _check_against_model(sd, config, where)
    loaded = LoadedCheckpoint(path=p, sha256=file_sha256(p), format=fmt, layout=layout,
                              state_dict=sd, config=config, provenance=provenance, args=args,
                              metadata=dict(meta))
    return loaded, model


def _check_against_model(sd: Mapping[str, torch.Tensor], config: DyTConfig,
                         where: str) -> DyTVisionTransformer:
    """Build the model on the meta device and compare keys, shapes and dtypes: one error."""
    with torch.device("meta"):
        model = build_model(config, init_weights=False)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(t.shape)}"
              for k, t in expected.items() if k in sd and sd[k].shape != t.shape]
    dtypes = [f"{k}: {sd[k].dtype}" for k, t in expected.items()
              if k in sd and t.is_floating_point() and not sd[k].is_floating_point()]
    if missing or unexpected or shapes or dtypes:
        parts = [_count(missing, "missing key"), _count(unexpected, "unexpected key"),
                 _count(shapes, "shape mismatch", "shape mismatches"),
                 _count(dtypes, "non-float tensor")]
        raise CheckpointError(
            f"{where} does not match a DyT '{config.variant}' model: "
            + ", ".join(p for p in parts if p),
            "the file is not a DyT checkpoint of this architecture, or an override "
            "(--variant, --img-size, ...) contradicts it")
    return model


def _count(items: list[str], singular: str, plural: Optional[str] = None) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
    noun = singular if len(items) == 1 else (plural or singular + "s")
    return f"{len(items)} {noun} ({shown})"


def _as_fp32(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous()
