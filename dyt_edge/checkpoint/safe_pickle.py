"""A restricted pickle module for reading published DyT checkpoints without running their code.

The published training code saves ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` where
``args`` is an ``argparse.Namespace`` holding an ``easydict.EasyDict``. ``torch.load(...,
weights_only=True)`` refuses such files (its unpickler only fills plain dicts, so an EasyDict
fails even when allow-listed), and plain ``pickle`` would run whatever the file asks for. This
module is passed to ``torch.load`` as its ``pickle_module``; its :class:`Unpickler`:

* resolves globals through an explicit allow-list (:data:`ALLOWED`): tensor rebuilding, storages,
  ``OrderedDict``, torch dtypes / ``Size`` / ``device``, inert builtins; the argument classes
  (``argparse.Namespace``, ``easydict.EasyDict``, ``pathlib`` paths) resolve to inert stand-ins
  defined here. Anything else raises :class:`RefusedGlobal` *before* it is imported or called;
* only sets object state (``BUILD``) on the stand-ins and ``OrderedDict`` (a state dict's
  ``_metadata``), and only creates objects with ``NEWOBJ`` for the stand-ins and plain
  containers, so a pickle cannot patch attributes of allowed classes.

Sparse, nested and quantized tensor rebuilders are deliberately left out: with
``weights_only=False`` torch skips its invariant checks on loaded sparse tensors, and a
checkpoint never needs them.

The pure-Python unpickler is used (the C one cannot restrict ``BUILD``); a checkpoint's pickle is
a few thousand opcodes (the tensor data lives outside it), so this costs milliseconds.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections import OrderedDict
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Callable

import torch

__all__ = ["ALLOWED", "ArgsEasyDict", "ArgsNamespace", "RefusedGlobal", "Unpickler",
           "UnpicklingError", "load", "loads"]

UnpicklingError = pickle.UnpicklingError


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for something a checkpoint never needs; nothing was imported or run."""

    def __init__(self, name: str, what: str = "asks for") -> None:
        super().__init__(f"pickle {what} '{name}', which is not allowed")
        self.name = name
        self.what = what


# -- inert stand-ins for the argument classes -------------------------------------------------

class ArgsNamespace:
    """Stand-in for ``argparse.Namespace``: attributes only, no behaviour."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


class ArgsEasyDict(dict):
    """Stand-in for ``easydict.EasyDict`` (a dict subclass pickled with SETITEMS and BUILD)."""


def _inert_posix_path(*parts: Any) -> str:
    """Stand-in for ``pathlib.(Posix)Path``: the path as a string, no file system access."""
    return str(PurePosixPath(*[str(p) for p in parts]))


def _inert_windows_path(*parts: Any) -> str:
    return str(PureWindowsPath(*[str(p) for p in parts]))


_STATE_TYPES: tuple[type, ...] = (ArgsNamespace, ArgsEasyDict, OrderedDict)
"""Exact types whose instance state ``BUILD`` may set (attribute dicts with string keys)."""

_NEWOBJ_TYPES: tuple[type, ...] = (ArgsNamespace, ArgsEasyDict, OrderedDict, dict, list, set,
                                   frozenset, tuple, object)
"""Exact classes ``NEWOBJ`` may instantiate (``cls.__new__(cls, *args)``)."""


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), for the stand-ins only."""
    if cls not in (ArgsNamespace, ArgsEasyDict) or base not in (object, dict):
        raise RefusedGlobal(f"copyreg._reconstructor({getattr(cls, '__name__', cls)!s})",
                            "asks to reconstruct")
    obj = cls.__new__(cls)
    if base is dict and state is not None:
        dict.update(obj, state)
    return obj


def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes`` (latin-1 only, no other codecs)."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1",
                                                                               "iso88591"):
        raise RefusedGlobal(f"_codecs.encode(..., {encoding!r})", "asks for")
    return text.encode("latin1")


def _rebuild_from_type_v2(func: Callable, new_type: Any, args: tuple, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors / parameters only."""
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise RefusedGlobal(f"tensor subclass {getattr(new_type, '__name__', new_type)!s}",
                            "asks to build a")
    if state:
        raise RefusedGlobal("tensor attributes", "asks to set")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                  state: Any) -> Any:
    """``torch._utils._rebuild_parameter_with_state`` without attribute state."""
    if state:
        raise RefusedGlobal("parameter attributes", "asks to set")
    return torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)


def _allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "UntypedStorage"): torch.UntypedStorage,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("_codecs", "encode"): _encode,
        # argument classes -> inert stand-ins
        ("argparse", "Namespace"): ArgsNamespace,
        ("easydict", "EasyDict"): ArgsEasyDict,
    }
    for mod in ("pathlib", "pathlib._local"):
        for name in ("Path", "PosixPath", "PurePath", "PurePosixPath"):
            allowed[(mod, name)] = _inert_posix_path
        for name in ("WindowsPath", "PureWindowsPath"):
            allowed[(mod, name)] = _inert_windows_path
    # Builtins that construct plain, inert values.
    for name in ("object", "dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes",
                 "complex", "slice"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
    # Dense tensor rebuilding (the subset of torch's weights-only set a checkpoint needs).
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                 "_rebuild_parameter"):
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            allowed[("torch._utils", name)] = fn
    allowed[("torch._utils", "_rebuild_parameter_with_state")] = _rebuild_parameter_with_state
    layout = getattr(torch.serialization, "_get_layout", None)
    if layout is not None:
        allowed[("torch.serialization", "_get_layout")] = layout
    # dtypes (pickled as GLOBAL 'torch float32') and memory formats.
    for value in vars(torch).values():
        if isinstance(value, (torch.dtype, torch.memory_format)):
            allowed[("torch", str(value).split(".", 1)[-1])] = value
    return allowed


ALLOWED: dict[tuple[str, str], Any] = _allowed()


class Unpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """``pickle.Unpickler`` restricted to what a checkpoint needs (see the module docstring)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(f"{module}.{name}") from None

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) not in _STATE_TYPES:
            raise RefusedGlobal(f"state of a {type(inst).__name__} object", "asks to set the")
        parts = state if (isinstance(state, tuple) and len(state) == 2) else (state,)
        for part in parts:
            if part is None:
                continue
            if not isinstance(part, dict):
                raise RefusedGlobal(f"{type(part).__name__} state", "holds a")
            for key, value in part.items():
                if type(key) is not str or key.startswith("__"):
                    raise RefusedGlobal(f"attribute {key!r}", "asks to set")
                inst.__dict__[key] = value

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    @staticmethod
    def _new(cls: Any, args: Any, kwargs: Any) -> Any:
        if not any(cls is allowed for allowed in _NEWOBJ_TYPES):
            raise RefusedGlobal(f"{getattr(cls, '__name__', type(cls).__name__)} object",
                                "asks to create a")
        return cls.__new__(cls, *args, **kwargs)

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted :class:`Unpickler` (torch's legacy format uses it)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    return load(io.BytesIO(data), **kwargs)
