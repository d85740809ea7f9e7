"""The restricted unpickler: it refuses what a checkpoint never needs, at the opcode level, and
reads the published args at every protocol."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest

from dyt_edge.checkpoint import safe_pickle

from .helpers.checkpoint import published_args


def _pickle_bytes(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def test_safe_pickle_refuses_setting_attributes_on_classes():
    data = _pickle_bytes(_global("collections", "OrderedDict"), b"N}", _unicode("x"), b"K\x01s",
                         b"\x86b")  # BUILD (None, {'x': 1}) on the class object itself
    with pytest.raises(safe_pickle.RefusedGlobal):
        safe_pickle.loads(data)
    assert not hasattr(OrderedDict, "x")


def test_safe_pickle_refuses_creating_other_objects():
    data = _pickle_bytes(_global("torch", "Tensor"), b")\x81")  # NEWOBJ torch.Tensor()
    with pytest.raises(safe_pickle.RefusedGlobal, match="Tensor"):
        safe_pickle.loads(data)
    data = _pickle_bytes(_global("copyreg", "_reconstructor"), _global("torch", "Size"),
                         _global("builtins", "object"), b"N\x87R")
    with pytest.raises(safe_pickle.RefusedGlobal):
        safe_pickle.loads(data)
    for module, name in [("builtins", "getattr"), ("subprocess", "Popen"),
                         ("torch", "load"), ("builtins", "__import__")]:
        with pytest.raises(safe_pickle.RefusedGlobal, match=f"{module}.{name}"):
            safe_pickle.loads(_pickle_bytes(_global(module, name)))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_pickle_reads_args_at_every_protocol(protocol):
    args = published_args(ffn_adapter_scalar="0.1")
    args.shape = (1, 2)
    args.flags = {"a", "b"}
    args.raw = b"\x00\xff"
    args.win = __import__("pathlib").PureWindowsPath("C:/out")
    data = pickle.dumps({"args": args, "epoch": 3}, protocol=protocol)
    out = safe_pickle.loads(data)
    got = out["args"]
    assert isinstance(got, safe_pickle.ArgsNamespace)
    assert isinstance(got.tuning_config, safe_pickle.ArgsEasyDict)
    assert got.tuning_config["ffn_adapter_scalar"] == "0.1"
    assert got.output_dir == "out" and got.shape == (1, 2) and got.raw == b"\x00\xff"
    assert got.flags == {"a", "b"} and got.win == "C:\\out"

