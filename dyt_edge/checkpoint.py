"""Reading and writing DyT checkpoints, safely.

Two kinds of file are read:

``published``
    What the published DyT training code writes with ``torch.save``: ``{'model': state_dict,
    'optimizer', 'epoch', 'scaler', 'args'}`` (layout ``full``), ``{'model': state_dict}``
    (``model-only``) or a bare state_dict (``state_dict``); a ``module.`` (DDP) prefix is stripped.
    The pickle is read with a restricted unpickler (:mod:`dyt_edge.safe_pickle`): nothing in the
    file is imported or run. The architecture is inferred from tensor shapes and ``args``
    (:func:`infer_config`); what the weights cannot say (the adapter scale, the adapter LayerNorm
    placement) comes from ``args`` or from the caller, never from a silent guess; the head count
    comes from ``args``, else from timm's standard width -> heads table
    (:data:`~dyt_edge.config.STANDARD_VIT_HEADS`), else from the caller. A
    ``.safetensors`` file without dyt-edge metadata is read the same way (layout ``state_dict``).

``dyt-edge``
    The project's own format (:func:`save_model`): one ``.safetensors`` file whose metadata holds
    ``format=dyt-edge``, ``format_version=1``, ``config`` (:meth:`DyTConfig.to_dict` as JSON) and
    ``dyt_edge_version``, plus the caller's metadata. Recognised by content, not by suffix.

Every problem a user can cause (a bad path, a damaged or unsafe file, weights that do not match
the architecture, a missing adapter scale) is a :class:`~dyt_edge.errors.CheckpointError`
(:class:`~dyt_edge.errors.UnsafeCheckpointError` for a pickle that asks for code) or a
:class:`~dyt_edge.errors.ConfigError` (a bad override), with the fix as its hint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
import tarfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from . import safe_pickle
from ._version import __version__
from .artifacts import file_sha256
from .config import (ADAPTER_KINDS, ADAPTER_LAYERNORM, DEFAULT_DISPATCH, VARIANTS, DyTConfig,
                     Preprocessing, check_choice, closest, standard_heads, standard_heads_hint)
from .errors import CheckpointError, ConfigError, UnsafeCheckpointError
from .model import DyTVisionTransformer, build_model

__all__ = ["FORMAT", "FORMAT_VERSION", "LoadedCheckpoint", "file_sha256", "infer_config",
           "load_model", "read_checkpoint", "save_model"]

FORMAT = "dyt-edge"
FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]

# Where the published code's args keep what the state_dict cannot say, in lookup order. The
# model is built from `tuning_config`, so it wins over the top-level copies.
SCALE_KEYS = ("tuning_config.ffn_adapter_scalar", "ffn_adapter_scalar", "scale")
LAYERNORM_KEYS = ("tuning_config.ffn_adapter_layernorm_option", "ffn_adapter_layernorm_option")
HEADS_KEYS = ("num_heads", "tuning_config.num_heads")

SCALE_HINT = "pass --adapter-scale S (1.0 for the VTAB recipe, 0.1 for the image recipes)"
HEADS_HINT = ("pass --num-heads H (the attention heads it was trained with; standard timm "
              f"widths -> heads: {standard_heads_hint()})")
PREPROCESSING_RECIPES = ("vtab", "imagenet")
SHAPES = "tensor shapes"
METADATA = "dyt-edge metadata"
OVERRIDE = "override"

_INT_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
               "num_classes", "adapter_dim", "num_experts")
_FLOAT_FIELDS = ("mlp_ratio", "adapter_scale")
_FIELDS = tuple(f.name for f in dataclasses.fields(DyTConfig))


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


# -- public API ---------------------------------------------------------------------------------

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
        from .class_names import checked_names, read_class_names_file

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
            loaded.class_names_source = f"{METADATA} (dyt_edge.class_names)"
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


def infer_config(state_dict: Mapping[str, Any], args: Any = None,
                 **overrides: Any) -> tuple[DyTConfig, dict[str, str]]:
    """The architecture of a published DyT state_dict, from its shapes and ``args``.

    Returns the config and its provenance (field -> where the value came from). ``args`` may be
    an ``argparse.Namespace``, a mapping or None. Does not check every key; :func:`read_checkpoint`
    and :func:`load_model` do.
    """
    ov = _normalise_overrides(overrides)
    sd = _clean_state_dict(state_dict, "the checkpoint")
    return _resolve(sd, _plain(args) if args is not None else None, ov, "the checkpoint")


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


# -- reading ------------------------------------------------------------------------------------

def _read(path: PathLike,
          overrides: Mapping[str, Any]) -> tuple[LoadedCheckpoint, DyTVisionTransformer]:
    """(LoadedCheckpoint, meta-device model built from its config and checked against it)."""
    ov = _normalise_overrides(overrides)
    p = Path(path).expanduser()
    where = str(path)
    size = _check_file(p, where)
    head = _read_head(p, where)

    stored: Optional[DyTConfig] = None
    meta: dict[str, str] = {}
    args_obj: Any = None
    if _is_safetensors(head, size):
        raw, meta = _read_safetensors(p, where)
        if meta.get("format") == FORMAT:
            fmt, layout = FORMAT, FORMAT
            stored = _stored_config(meta, where)
        else:
            fmt, layout = "published", "state_dict"
            meta = {}
    else:
        fmt = "published"
        obj = _torch_load(p, where, head)
        raw, layout, args_obj = _split_layout(obj, where)

    sd = _clean_state_dict(raw, where)
    args = _plain(args_obj) if args_obj is not None else None
    if args is not None and not isinstance(args, dict):
        args = {"value": args}
    config, provenance = _resolve(sd, args, ov, where, stored=stored)
    model = _check_against_model(sd, config, where)
    loaded = LoadedCheckpoint(path=p, sha256=file_sha256(p), format=fmt, layout=layout,
                              state_dict=sd, config=config, provenance=provenance, args=args,
                              metadata=dict(meta))
    return loaded, model


def _stored_class_names(meta: Mapping[str, str], config: DyTConfig,
                        where: str) -> Optional[list[str]]:
    from .class_names import METADATA_KEY, parse_metadata

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


def _check_file(p: Path, where: str) -> int:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} does not exist",
                              "check the path and the working directory") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {where}: {exc.strerror or exc}",
                              "check the path and its permissions") from None
    if p.is_dir():
        raise CheckpointError(f"{where} is a directory, not a checkpoint file",
                              "pass the .pth / .safetensors file inside it")
    if not p.is_file():
        raise CheckpointError(f"{where} is not a regular file", "pass a checkpoint file")
    if st.st_size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes)",
                              "the download or copy did not finish; fetch the file again")
    return st.st_size


def _read_head(p: Path, where: str) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(512)
    except OSError as exc:
        raise CheckpointError(f"cannot read {where}: {exc.strerror or exc}",
                              "check the file's permissions") from None


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _describe_content(head: bytes) -> str:
    sample = head[:64]
    try:
        text = sample.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return "it is a text file"
    except UnicodeDecodeError:
        pass
    return f"its content is not recognised (it starts with {sample[:8].hex(' ')})"


def _not_readable(where: str, exc: BaseException) -> CheckpointError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = detail.split(". This is an internal", 1)[0]  # miniz's boilerplate
    if len(detail) > 160:
        detail = detail[:157] + "..."
    lowered = detail.lower()
    if isinstance(exc, EOFError) or any(w in lowered for w in ("central directory", "truncat",
                                                               "eof")):
        return CheckpointError(f"{where} is truncated or corrupt ({detail})",
                               "the file is incomplete; copy or download it again")
    return CheckpointError(f"{where} is not a readable PyTorch checkpoint ({detail})",
                           "the file is damaged, or was not written by torch.save; "
                           "copy or download it again")


def _unsafe(where: str, exc: safe_pickle.RefusedGlobal) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing to load {where}: its pickle {exc.what} '{exc.name}', which a checkpoint "
        "never needs (nothing in it was run)",
        "load checkpoints only from sources you trust; a genuine one can be re-saved with "
        "torch.save({'model': model.state_dict()}, path)")


def _torch_load(p: Path, where: str, head: bytes) -> Any:
    is_zip = head[:4] == b"PK\x03\x04"
    if not is_zip and head[:1] != b"\x80" and not tarfile.is_tarfile(p):
        raise CheckpointError(f"{where} is not a checkpoint: {_describe_content(head)}",
                              "expected a .pth/.pt written by torch.save, or a .safetensors "
                              "file")
    with open(p, "rb") as f:
        if is_zip:
            _refuse_torchscript(f, where)
            f.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # weights_only=False is safe here: unpickling goes through safe_pickle, whose
                # Unpickler resolves every global through an allow-list (tensor rebuilding,
                # storages, OrderedDict, inert stand-ins for the args classes) and refuses
                # anything else before it is imported or called. weights_only=True cannot be
                # used: it refuses the published checkpoints' EasyDict args.
                return torch.load(f, map_location="cpu", pickle_module=safe_pickle,
                                  weights_only=False)
        except safe_pickle.RefusedGlobal as exc:
            raise _unsafe(where, exc) from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # any library error on bad bytes is a bad file
            raise _not_readable(where, exc) from None


def _refuse_torchscript(f, where: str) -> None:
    """torch.load hands a TorchScript archive to torch.jit.load, which runs its code: refuse."""
    try:
        with torch.serialization._open_zipfile_reader(f) as reader:
            records = set(reader.get_all_records())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise _not_readable(where, exc) from None
    if "constants.pkl" in records or any(r.startswith("code/") for r in records):
        raise UnsafeCheckpointError(
            f"refusing to load {where}: it is a TorchScript archive (torch.jit.save), whose "
            "code would run on loading; nothing in it was run",
            "save the model's weights with torch.save({'model': model.state_dict()}, path)")
    if "data.pkl" not in records:
        raise CheckpointError(f"{where} is a zip archive but not a torch.save checkpoint "
                              "(it has no data.pkl)",
                              "expected a .pth/.pt written by torch.save")


def _read_safetensors(p: Path, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors, meta
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where} is not a readable safetensors file ({detail[:160]})",
                              "the file is truncated or damaged; copy or write it again") from None


def _stored_config(meta: Mapping[str, str], where: str) -> DyTConfig:
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


def _split_layout(obj: Any, where: str) -> tuple[Any, str, Any]:
    """(state_dict, layout, args) of a torch.load result."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{where} holds a {type(obj).__name__} at its top level, not a checkpoint dict",
            "expected torch.save of a state_dict, or of {'model': state_dict, ...}")
    if "model" in obj:
        sd = obj["model"]
        if not isinstance(sd, dict):
            raise CheckpointError(f"{where}: its 'model' entry is a {type(sd).__name__}, not a "
                                  "state_dict",
                                  "expected {'model': model.state_dict(), ...}")
        layout = "model-only" if set(obj) == {"model"} else "full"
        return sd, layout, obj.get("args")
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
        raise CheckpointError(f"{where} has no 'model' entry and holds no tensors (top-level "
                              f"keys: {keys})",
                              "expected a state_dict, or {'model': state_dict, ...}")
    return obj, "state_dict", None


def _clean_state_dict(raw: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: the state_dict is a {type(raw).__name__}, not a dict")
    sd: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: state_dict key {key!r} is not a string",
                                  "expected parameter names mapped to tensors")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: state_dict entry '{key}' is a "
                                  f"{type(value).__name__}, not a tensor",
                                  "expected parameter names mapped to tensors")
        if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
            raise CheckpointError(f"{where}: state_dict entry '{key}' is not a dense CPU tensor "
                                  f"({value.layout}, {value.device})",
                                  "save plain dense weights")
        sd[key] = value
    if sd and all(k.startswith("module.") for k in sd):  # DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


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


# -- config inference ---------------------------------------------------------------------------

def _normalise_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate override names and values; drop the ones that are None."""
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown model option '{name}'",
                              f"{closest(name, _FIELDS)}known options: {', '.join(_FIELDS)}")
        if value is None:
            continue
        out[name] = _coerce(name, value)
    return out


def _coerce(name: str, value: Any) -> Any:
    flag = "--" + name.replace("_", "-")
    if name in _INT_FIELDS:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if not isinstance(value, int) else value
            if number != int(number):
                raise ValueError
            number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{flag} must be a whole number, got {value!r}") from None
        if number <= 0:
            raise ConfigError(f"{flag} must be positive, got {number}")
        return number
    if name in _FLOAT_FIELDS:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
        return number
    if name == "adapter_scale_learnable":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{flag} must be true or false, got {value!r}")
    if name == "variant":
        return check_choice("variant", str(value), VARIANTS)
    if name == "adapter_kind":
        return check_choice("adapter kind", str(value), ADAPTER_KINDS)
    if name == "adapter_layernorm":
        return check_choice("adapter layernorm option", str(value), ADAPTER_LAYERNORM)
    if name == "preprocessing":
        if isinstance(value, Preprocessing):
            value.validate()
            return value
        if isinstance(value, Mapping):
            pre = Preprocessing.from_dict(value)
            pre.validate()
            return pre
        return check_choice("preprocessing recipe", str(value), PREPROCESSING_RECIPES)
    return value


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _shape(sd: Mapping[str, torch.Tensor], key: str, ndim: int, where: str) -> list[int]:
    shape = list(sd[key].shape)
    if len(shape) != ndim or any(s <= 0 for s in shape):
        raise CheckpointError(f"{where}: '{key}' has shape {shape}, which no ViT has",
                              "the checkpoint is damaged or not a DyT ViT")
    return shape


def _shape_facts(sd: Mapping[str, torch.Tensor], where: str) -> dict[str, tuple[Any, str]]:
    """Config fields the tensors decide: field -> (value, evidence)."""
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)
    missing = [k for k, ok in (("cls_token", "cls_token" in sd), ("pos_embed", "pos_embed" in sd),
                               ("blocks.0.*", depth > 0),
                               ("patch_embed.proj.weight", "patch_embed.proj.weight" in sd))
               if not ok]
    if missing:
        first = ", ".join(list(sd)[:4]) or "it is empty"
        raise CheckpointError(
            f"{where} is not a DyT/ViT checkpoint: it has no {', '.join(missing)} "
            f"(its first keys: {first})",
            "expected the state_dict of a DyT vision transformer (cls_token, pos_embed, "
            "patch_embed.*, blocks.N.*, head.*)")
    facts: dict[str, tuple[Any, str]] = {}
    width = _shape(sd, "cls_token", 3, where)[-1]
    facts["embed_dim"] = (width, f"cls_token is {list(sd['cls_token'].shape)}")
    facts["depth"] = (depth, f"blocks.0 to blocks.{depth - 1}")
    out_c, in_chans, ph, pw = _shape(sd, "patch_embed.proj.weight", 4, where)
    proj = f"patch_embed.proj.weight is {[out_c, in_chans, ph, pw]}"
    if ph != pw:
        raise CheckpointError(f"{where} has non-square {ph}x{pw} patches ({proj})",
                              "only square patches are supported")
    facts["patch_size"] = (ph, proj)
    facts["in_chans"] = (in_chans, proj)
    tokens = _shape(sd, "pos_embed", 3, where)[1]
    grid = math.isqrt(max(tokens - 1, 0))
    if grid < 1 or grid * grid != tokens - 1:
        raise CheckpointError(
            f"{where}: pos_embed holds {tokens - 1} patch positions (plus CLS), which is not a "
            "square grid", "only square images with one CLS token are supported")
    facts["img_size"] = (grid * ph, f"pos_embed holds {grid}x{grid} patch positions + CLS "
                                    f"at patch size {ph}")
    fc1 = "blocks.0.mlp.fc1.weight"
    if fc1 in sd:
        hidden = _shape(sd, fc1, 2, where)[0]
        ratio = hidden / width
        while int(width * ratio) < hidden:  # int(width * ratio) must give back `hidden`
            ratio = math.nextafter(ratio, math.inf)
        facts["mlp_ratio"] = (ratio, f"{fc1} is {list(sd[fc1].shape)}")
    if "head.weight" in sd:
        facts["num_classes"] = (_shape(sd, "head.weight", 2, where)[0],
                                f"head.weight is {list(sd['head.weight'].shape)}")
    else:
        raise CheckpointError(f"{where} has no classifier head (head.weight)",
                              "expected the state_dict of a DyT classifier")

    sites = {s for s in ("attn", "mlp", "layer")
             if f"blocks.0.{s}_token_select.mlp_head.weight" in sd}
    by_sites = {("mlp",): "mlp", ("attn",): "attn", ("attn", "mlp"): "attn_mlp",
                ("layer",): "layer"}
    variant = by_sites.get(tuple(sorted(sites)))
    if not sites:
        raise CheckpointError(
            f"{where} has no token dispatchers (blocks.N.mlp_token_select.mlp_head.*): it is a "
            "plain ViT / AdaptFormer checkpoint, not DyT", "pass a DyT checkpoint")
    if variant is None:
        raise CheckpointError(f"{where} has an unknown combination of dispatchers in blocks.0 "
                              f"({', '.join(sorted(s + '_token_select' for s in sites))})",
                              f"expected one of the variants {', '.join(VARIANTS)}")
    facts["variant"] = (variant, "blocks.0 has " + " and ".join(
        f"{s}_token_select" for s in sorted(sites)))

    a = "blocks.0.adaptmlp."
    if a + "router.weight" in sd:
        experts = _shape(sd, a + "router.weight", 2, where)[0]
        facts["adapter_kind"] = ("moe", f"{a}router.weight exists")
        facts["num_experts"] = (experts, f"{a}router.weight is "
                                         f"{list(sd[a + 'router.weight'].shape)}")
        if a + "down_weight" not in sd:
            raise CheckpointError(f"{where} has an MoE router but no {a}down_weight",
                                  "the checkpoint is incomplete")
        r = _shape(sd, a + "down_weight", 3, where)[1]
        facts["adapter_dim"] = (r, f"{a}down_weight is {list(sd[a + 'down_weight'].shape)}")
    elif a + "down_proj.weight" in sd:
        facts["adapter_kind"] = ("adapter", f"{a}down_proj.weight exists")
        r = _shape(sd, a + "down_proj.weight", 2, where)[0]
        facts["adapter_dim"] = (r, f"{a}down_proj.weight is "
                                   f"{list(sd[a + 'down_proj.weight'].shape)}")
    else:
        raise CheckpointError(f"{where} has no adapter weights ({a}down_proj.* or "
                              f"{a}router.*)", "expected a DyT checkpoint with adapters")
    learnable = a + "scale" in sd
    facts["adapter_scale_learnable"] = (
        learnable, f"{a}scale {'exists' if learnable else 'does not exist'}")
    has_ln = a + "adapter_layer_norm_before.weight" in sd
    facts["_adapter_ln"] = (has_ln, f"{a}adapter_layer_norm_before.* "
                                    f"{'exists' if has_ln else 'does not exist'}")
    return facts


def _lookup(args: Optional[Mapping[str, Any]], dotted: str) -> tuple[bool, Any]:
    node: Any = args
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return node is not None, node


def _contradiction(where: str, name: str, value: Any, fact: Any, evidence: str) -> CheckpointError:
    flag = "--" + name.replace("_", "-")
    return CheckpointError(
        f"{flag} {value} contradicts {where}: its tensors say {name} = {fact} ({evidence})",
        f"drop {flag}; the weights decide it")


def _check_overrides(ov: Mapping[str, Any], facts: Mapping[str, tuple[Any, str]],
                     where: str) -> None:
    patch = ov.get("patch_size", facts["patch_size"][0])
    if "patch_size" in ov and ov["patch_size"] != facts["patch_size"][0]:
        raise _contradiction(where, "patch_size", ov["patch_size"], *facts["patch_size"])
    if "img_size" in ov:
        img = ov["img_size"]
        trained = facts["img_size"][0]
        if img % patch:
            raise ConfigError(
                f"image size {img} does not fit patch size {patch}: it must be a multiple of it",
                f"pass --img-size as a multiple of {patch}; this checkpoint was trained at "
                f"{trained}")
        if img != trained:
            raise CheckpointError(
                f"image size {img} does not match {where}: its position embeddings cover "
                f"{trained // patch}x{trained // patch} patches of {patch} pixels, i.e. "
                f"{trained}x{trained} images",
                "drop --img-size (resizing position embeddings is not supported)")
    for name in ("embed_dim", "depth", "in_chans", "num_classes", "variant", "adapter_kind",
                 "adapter_dim", "adapter_scale_learnable"):
        if name in ov and name in facts and ov[name] != facts[name][0]:
            raise _contradiction(where, name, ov[name], *facts[name])
    if "num_experts" in ov and facts["adapter_kind"][0] == "moe" \
            and ov["num_experts"] != facts["num_experts"][0]:
        raise _contradiction(where, "num_experts", ov["num_experts"], *facts["num_experts"])
    if "mlp_ratio" in ov and "mlp_ratio" in facts:
        width = facts["embed_dim"][0]
        if int(width * ov["mlp_ratio"]) != int(width * facts["mlp_ratio"][0]):
            raise _contradiction(where, "mlp_ratio", ov["mlp_ratio"], *facts["mlp_ratio"])
    if "adapter_layernorm" in ov:
        has_ln, evidence = facts["_adapter_ln"]
        if (ov["adapter_layernorm"] != "none") != has_ln:
            raise _contradiction(where, "adapter_layernorm", ov["adapter_layernorm"],
                                 "in/out" if has_ln else "none", evidence)
    if "adapter_scale" in ov and facts["adapter_scale_learnable"][0]:
        raise CheckpointError(
            f"--adapter-scale {ov['adapter_scale']} cannot apply to {where}: its adapter scale "
            "is learned (blocks.N.adaptmlp.scale holds it)", "drop --adapter-scale")


def _parse_scale(value: Any, key: str, where: str) -> Union[float, str]:
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


def _resolve(sd: Mapping[str, torch.Tensor], args: Optional[Mapping[str, Any]],
             ov: Mapping[str, Any], where: str, *,
             stored: Optional[DyTConfig] = None) -> tuple[DyTConfig, dict[str, str]]:
    facts = _shape_facts(sd, where)
    _check_overrides(ov, facts, where)
    values: dict[str, Any] = {}
    prov: dict[str, str] = {}

    if stored is not None:
        for name in _FIELDS:
            values[name] = getattr(stored, name)
            prov[name] = METADATA
    else:
        for name, (value, _) in facts.items():
            if not name.startswith("_"):
                values[name], prov[name] = value, SHAPES
        if facts["adapter_kind"][0] != "moe":
            values["num_experts"] = DyTConfig.num_experts
            prov["num_experts"] = "default (unused: plain adapter)"
        values.update(_published_extras(facts, args, ov, where, prov))

    for name, value in ov.items():
        if name != "preprocessing":
            values[name], prov[name] = value, OVERRIDE
    for f in dataclasses.fields(DyTConfig):  # not decided by anything: the strict check will say
        if f.name not in values and f.name != "preprocessing":
            values[f.name], prov[f.name] = f.default, "default"

    pre = ov.get("preprocessing")
    img = values["img_size"]
    if isinstance(pre, Preprocessing):
        values["preprocessing"], prov["preprocessing"] = pre, OVERRIDE
    elif pre is not None:
        recipe = Preprocessing.vtab if pre == "vtab" else Preprocessing.imagenet
        values["preprocessing"], prov["preprocessing"] = recipe(img), OVERRIDE
    elif stored is None:
        values["preprocessing"] = Preprocessing.vtab(img)
        prov["preprocessing"] = "default: published VTAB recipe"
    return DyTConfig(**values).validate(), {k: prov[k] for k in _FIELDS}


def _published_extras(facts: Mapping[str, tuple[Any, str]], args: Optional[Mapping[str, Any]],
                      ov: Mapping[str, Any], where: str,
                      prov: dict[str, str]) -> dict[str, Any]:
    """What the tensors cannot say: heads, adapter scale, adapter LayerNorm placement."""
    values: dict[str, Any] = {}
    width = facts["embed_dim"][0]

    # heads
    if "num_heads" not in ov:
        for key in HEADS_KEYS:
            found, value = _lookup(args, key)
            if found:
                try:
                    values["num_heads"] = _coerce("num_heads", value)
                except ConfigError as exc:
                    raise CheckpointError(f"{where}: args.{key} = {value!r} is not a head count",
                                          HEADS_HINT) from exc
                prov["num_heads"] = f"args.{key}"
                break
        else:
            standard = standard_heads(width)
            if standard is None:
                why = ("the checkpoint has no args" if args is None else
                       "its args do not say (looked in args.num_heads, "
                       "args.tuning_config.num_heads)")
                raise CheckpointError(
                    f"attention heads not found in {where}: width {width} is not a standard "
                    f"timm ViT width and {why}", HEADS_HINT)
            values["num_heads"] = standard[0]
            prov["num_heads"] = f"standard timm width {width} ({standard[1]})"

    # adapter scale (not in the state_dict)
    if facts["adapter_scale_learnable"][0]:
        values["adapter_scale"] = 1.0
        prov["adapter_scale"] = "unused: learned (blocks.N.adaptmlp.scale)"
    elif "adapter_scale" not in ov:
        for key in SCALE_KEYS:
            found, value = _lookup(args, key)
            if found:
                parsed = _parse_scale(value, key, where)
                if parsed == "learnable":
                    raise CheckpointError(
                        f"{where}: args.{key} = {value!r} says the adapter scale is learnable, "
                        "but the checkpoint has no blocks.N.adaptmlp.scale weights", SCALE_HINT)
                values["adapter_scale"], prov["adapter_scale"] = parsed, f"args.{key}"
                break
        else:
            looked = "args.ffn_adapter_scalar, args.scale, args.tuning_config.ffn_adapter_scalar"
            why = ("the checkpoint has no args" if args is None
                   else "none of them is set")
            raise CheckpointError(f"adapter scale not found in {where} (looked in {looked}; "
                                  f"{why})", SCALE_HINT)

    # adapter LayerNorm placement
    has_ln = facts["_adapter_ln"][0]
    if not has_ln:
        values["adapter_layernorm"], prov["adapter_layernorm"] = "none", SHAPES
    elif "adapter_layernorm" not in ov:
        for key in LAYERNORM_KEYS:
            found, value = _lookup(args, key)
            if found:
                option = str(value)
                if option not in ("in", "out"):
                    raise CheckpointError(
                        f"{where} has adapter LayerNorm weights but args.{key} = {value!r}",
                        "pass --adapter-layernorm in|out")
                values["adapter_layernorm"], prov["adapter_layernorm"] = option, f"args.{key}"
                break
        else:
            raise CheckpointError(
                f"{where} has adapter LayerNorm weights (adaptmlp.adapter_layer_norm_before) but "
                "does not say whether it normalises the adapter input or output (looked in "
                "args.ffn_adapter_layernorm_option, "
                "args.tuning_config.ffn_adapter_layernorm_option)",
                "pass --adapter-layernorm in|out")
    return values


# -- args as plain data -------------------------------------------------------------------------

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
