"""Reading checkpoint files: published layouts unwrapped, every bad file one clear error, and
unsafe pickles refused before anything in them runs."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from dyt_edge.checkpoint import (load_model, read_checkpoint, read_state_dict, safe_pickle,
                                 save_model)
from dyt_edge.errors import CheckpointError, UnsafeCheckpointError

from .helpers.checkpoint import (SCALE, assert_same_logits, make_model, published_args,
                                 save_published)


def test_ddp_prefix_is_stripped(tmp_path):
    model = make_model(seed=4)
    path = save_published(tmp_path / "ddp.pth", model, published_args(ffn_adapter_scalar=SCALE),
                          prefix="module.")
    loaded = read_checkpoint(path, num_heads=2)
    assert all(not k.startswith("module.") for k in loaded.state_dict)
    assert_same_logits(model, load_model(path, num_heads=2))


def test_read_state_dict_unwraps_the_usual_wrappers(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.weight": torch.ones(2, 3), "b": torch.zeros(4)}
    ddp = {"module." + k: v for k, v in sd.items()}
    save_file(sd, str(tmp_path / "plain.safetensors"), metadata={"format": "dyt-edge"})
    layouts = {"plain.safetensors": None, "bare.pth": sd, "model.pth": {"model": sd, "epoch": 3},
               "state_dict.pth": {"state_dict": ddp, "epoch": 3},
               "model_state.pth": {"model_state": sd}, "module.pth": {"module": ddp}}
    for name, obj in layouts.items():
        if obj is not None:
            torch.save(obj, tmp_path / name)
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd), name
    torch.save({"model": sd, "state_dict": {"other": torch.ones(1)}}, tmp_path / "both.pth")
    assert set(read_state_dict(tmp_path / "both.pth")) == set(sd)  # 'model' wins


def test_torch_load_is_always_restricted(tmp_path, monkeypatch):
    ckpt = save_published(tmp_path / "ckpt.pth", make_model(),
                          published_args(ffn_adapter_scalar=SCALE))
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(ckpt, num_heads=2)
    assert calls and all(c.get("pickle_module") is safe_pickle and c.get("weights_only") is False
                         for c in calls)


# -- unsafe pickles ---------------------------------------------------------------------------

class Evil:
    """A pickle payload: unpickling it with plain pickle would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvilEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", [Evil, EvilEval], ids=["os.system", "eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, legacy, payload):
    marker = tmp_path / "MARKER"
    path = tmp_path / "ckpt.pth"
    model = make_model()
    args = published_args(ffn_adapter_scalar=SCALE)
    args.hook = payload(marker)  # hidden inside the args, as an attacker would
    torch.save({"model": model.state_dict(), "args": args}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as exc:
        load_model(path, num_heads=2)
    message = str(exc.value)
    assert "refusing to load" in message and "ckpt.pth" in message
    assert ("system" in message) if payload is Evil else ("builtins.eval" in message)
    assert "nothing in it was run" in message
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole-model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        read_checkpoint(path)


def test_torchscript_archive_is_refused(tmp_path):
    """torch.load would hand a TorchScript archive to torch.jit.load, which runs its code."""
    src = save_published(tmp_path / "c.pth", make_model(), layout="state_dict")
    path = tmp_path / "scripted.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        prefix = zin.namelist()[0].split("/")[0]
        zout.writestr(f"{prefix}/constants.pkl", pickle.dumps(()))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        read_checkpoint(path, adapter_scale=SCALE)


# -- bad files --------------------------------------------------------------------------------

def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = save_published(tmp_path / "good.pth", make_model(),
                          published_args(ffn_adapter_scalar=SCALE))
    data = good.read_bytes()
    files = {
        "missing": tmp_path / "nope.pth",
        "directory": tmp_path,
        "empty": tmp_path / "empty.pth",
        "random": tmp_path / "random.pth",
        "text": tmp_path / "notes.pth",
        "truncated": tmp_path / "truncated.pth",
        "truncated-legacy": tmp_path / "truncated-legacy.pth",
        "truncated-safetensors": tmp_path / "truncated.safetensors",
        "not-a-dict": tmp_path / "list.pth",
        "non-tensor": tmp_path / "nontensor.pth",
        "plain-pickle": tmp_path / "plain.pkl",
        "no-weights": tmp_path / "noweights.pth",
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(bytes(torch.randint(0, 256, (4096,),
                                                    generator=torch.Generator().manual_seed(0))
                                      .to(torch.uint8).tolist()))
    files["text"].write_text("these are not weights\n" * 20)
    files["truncated"].write_bytes(data[: len(data) // 2])
    legacy = save_published(tmp_path / "legacy.pth", make_model(), layout="model-only",
                            legacy=True).read_bytes()
    files["truncated-legacy"].write_bytes(legacy[: len(legacy) // 2])
    own = save_model(make_model(), tmp_path / "own.safetensors").read_bytes()
    files["truncated-safetensors"].write_bytes(own[: len(own) // 2])
    torch.save([torch.zeros(2)], files["not-a-dict"])
    sd = make_model().state_dict()
    sd["blocks.0.norm1.weight"] = "not a tensor"
    torch.save({"model": sd}, files["non-tensor"])
    files["plain-pickle"].write_bytes(pickle.dumps({"w": 1}, protocol=2))
    torch.save({"epoch": 3, "optimizer": {}}, files["no-weights"])
    return files


EXPECTED = {
    "missing": "does not exist",
    "directory": "is a directory",
    "empty": "is empty",
    "random": "is not a checkpoint",
    "text": "text file",
    "truncated": "truncated or corrupt",
    "truncated-legacy": "truncated or corrupt",
    "truncated-safetensors": "not a readable safetensors file",
    "not-a-dict": "holds a list",
    "non-tensor": "'blocks.0.norm1.weight' is a str, not a tensor",
    "plain-pickle": "not a readable PyTorch checkpoint",
    "no-weights": "has no 'model' entry",
}


@pytest.mark.parametrize("read", [lambda p: load_model(p, adapter_scale=SCALE, num_heads=2),
                                  read_state_dict], ids=["load_model", "read_state_dict"])
def test_bad_files_are_one_clear_error_each(tmp_path, read):
    files = _bad_files(tmp_path)
    assert set(files) == set(EXPECTED)
    for kind, path in files.items():
        with pytest.raises(CheckpointError) as exc:
            read(path)
        err = exc.value
        assert type(err) is CheckpointError, (kind, err)  # not "unsafe": just broken
        assert EXPECTED[kind] in err.message, (kind, err.message)
        assert str(path) in err.message, (kind, err.message)
        assert err.hint, kind
        assert "\n" not in str(err), (kind, str(err))

