"""Reading a checkpoint file's tensors without running anything it carries.

The format is sniffed from the content, never from the suffix: a safetensors header, a
``torch.save`` zip archive, or a legacy / tar ``torch.save`` pickle. Pickles are read by
``torch.load`` with the restricted :mod:`~dyt_edge.checkpoint.safe_pickle` module, and a
TorchScript archive (whose code ``torch.load`` would run) is refused. Every damaged, foreign or
unsafe file is one :class:`~dyt_edge.errors.CheckpointError` (an
:class:`~dyt_edge.errors.UnsafeCheckpointError` for a file that asks for code) naming the file,
with the fix as its hint.
"""

from __future__ import annotations

import os
import struct
import tarfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from . import safe_pickle

PathLike = Union[str, "os.PathLike[str]"]


STATE_DICT_WRAPPERS = ("state_dict", "model_state", "module")
"""Keys under which training scripts other than DyT's save the state dict (``{'model': ...}``
is handled with the published layouts)."""


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file (safetensors or ``torch.save``), read without
    running any code it carries; they need not form a DyT model (a timm ViT state dict will do).

    The usual wrappers are removed: ``{'model': ...}``, :data:`STATE_DICT_WRAPPERS` and a
    DistributedDataParallel ``module.`` prefix; a safetensors file's metadata is ignored. The
    result may be empty (a safetensors file holding no tensors).
    """
    p = Path(path).expanduser()
    where = str(path)
    content, meta = _read_file(p, where)
    if meta is None:
        if isinstance(content, dict) and "model" not in content:
            for key in STATE_DICT_WRAPPERS:
                if isinstance(content.get(key), dict):
                    content = content[key]
                    break
        content = _split_layout(content, where)[0]
    return _clean_state_dict(content, where)


def _read_file(p: Path, where: str) -> tuple[Any, Optional[dict[str, str]]]:
    """What the checkpoint file at ``p`` holds: (tensors, metadata) of a safetensors file, or
    (what ``torch.save`` wrote, None)."""
    size = _check_file(p, where)
    head = _read_head(p, where)
    if _is_safetensors(head, size):
        return _read_safetensors(p, where)
    return _torch_load(p, where, head), None


def _check_file(p: Path, where: str) -> int:
    """The size of the regular, non-empty file at ``p``."""
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
    """The file's first 512 bytes, enough to tell the formats apart."""
    try:
        with open(p, "rb") as f:
            return f.read(512)
    except OSError as exc:
        raise CheckpointError(f"cannot read {where}: {exc.strerror or exc}",
                              "check the file's permissions") from None


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: a little-endian u64 header length, then a JSON header."""
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
    """What ``torch.save`` wrote to ``p``, unpickled through :mod:`.safe_pickle`."""
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
    """(tensors, metadata) of the safetensors file at ``p``."""
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
    """``raw`` checked to map names to dense CPU tensors, a DDP ``module.`` prefix stripped."""
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
