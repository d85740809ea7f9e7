"""The dyt-edge format: save_model writes one safetensors file carrying its config, atomically,
and it reads back by content, old files included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dyt_edge.checkpoint import (load_model, read_checkpoint, save_model, training_metadata,
                                 training_record)
from dyt_edge.config import DyTConfig, Preprocessing
from dyt_edge.errors import CheckpointError, ConfigError

from .helpers.checkpoint import (SCALE, assert_same_logits, make_model, published_args,
                                 save_published)


def test_own_format_is_recognised_by_content(tmp_path):
    model = make_model(seed=8, variant="attn")
    path = save_model(model, tmp_path / "weights.bin")
    assert read_checkpoint(path).format == "dyt-edge"
    assert_same_logits(model, load_model(path))
    # and a torch.save file is not mistaken for one because of its name
    pth = save_published(tmp_path / "really-a-pickle.safetensors", model,
                         published_args(ffn_adapter_scalar=SCALE))
    loaded = read_checkpoint(pth, num_heads=2)
    assert (loaded.format, loaded.layout) == ("published", "full")


def test_own_format_metadata(tmp_path):
    from safetensors import safe_open

    model = make_model()
    path = save_model(model, tmp_path / "sub" / "m.safetensors", metadata={"dataset": "digits"})
    assert path == tmp_path / "sub" / "m.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "dyt-edge" and meta["format_version"] == "1"
    assert meta["dataset"] == "digits" and "dyt_edge_version" in meta
    assert DyTConfig.from_dict(json.loads(meta["config"])) == model.config
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]


def test_training_record_round_trip(tmp_path):
    config, result = {"data": "digits", "target_rate": 0.5}, {"accuracy": 0.9}
    path = save_model(make_model(), tmp_path / "m.safetensors",
                      metadata=training_metadata(config, result))
    record = training_record(read_checkpoint(path).metadata)
    assert record == {"config": config, "result": result, "data": "digits"}
    assert training_record({}) is None                              # not written by train
    assert training_record({"dyt_edge.training": "{broken"}) is None
    assert training_record({"dyt_edge.training": "[1, 2]"}) is None
    assert training_record({"dyt_edge.training": "{}"}) == {"config": {}, "data": None}


def test_own_format_overrides(tmp_path):
    model = make_model()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = read_checkpoint(path, preprocessing="imagenet", adapter_scale=None)
    assert loaded.config.preprocessing == Preprocessing.imagenet(32)
    assert loaded.provenance["preprocessing"] == "override"
    assert loaded.provenance["adapter_scale"] == "dyt-edge metadata"
    with pytest.raises(CheckpointError, match="embed-dim"):
        read_checkpoint(path, embed_dim=64)


def test_save_model_writes_nothing_half_done(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_model(make_model(seed=1), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(CheckpointError, match="cannot write"):
        save_model(make_model(seed=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_model_with_weights_sharing_storage(tmp_path):
    """Weights loaded from a file whose tensors share storage (views of one buffer, a tied
    weight) still save: safetensors refuses tensors that share memory."""
    model = make_model(seed=3)
    with torch.no_grad():
        model.blocks[1].norm1.weight.copy_(model.blocks[0].norm1.weight)
    sd = model.state_dict()
    flat = torch.cat([v.reshape(-1) for v in sd.values()])
    views, offset = {}, 0
    for k, v in sd.items():
        views[k] = flat[offset:offset + v.numel()].view(v.shape)
        offset += v.numel()
    views["blocks.1.norm1.weight"] = views["blocks.0.norm1.weight"]  # tied
    path = tmp_path / "views.pth"
    torch.save(views, path)
    loaded = load_model(path, adapter_scale=SCALE, num_heads=2)
    assert loaded.blocks[0].norm1.weight.data_ptr() == loaded.blocks[1].norm1.weight.data_ptr()
    again = load_model(save_model(loaded, tmp_path / "m.safetensors"))
    assert_same_logits(model, again)


def test_save_model_refuses_reserved_metadata(tmp_path):
    with pytest.raises(ConfigError, match="reserved"):
        save_model(make_model(), tmp_path / "m.safetensors", metadata={"config": "{}"})
    assert list(tmp_path.iterdir()) == []


def _rewrite_metadata(path: Path, edit) -> None:
    """Write the dyt-edge file at ``path`` again with ``edit(metadata)`` applied: a hand edit."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    edit(meta)
    save_file(load_file(str(path)), str(path), metadata=meta)


def _rewrite_stored_config(path: Path, edit) -> None:
    """:func:`_rewrite_metadata` with ``edit(config)`` applied to the stored config's JSON."""
    def edit_config(meta):
        cfg = json.loads(meta["config"])
        edit(cfg)
        meta["config"] = json.dumps(cfg)

    _rewrite_metadata(path, edit_config)


def test_own_format_unknown_variant_suggests(tmp_path):
    path = save_model(make_model(), tmp_path / "m.safetensors")
    _rewrite_stored_config(path, lambda cfg: cfg.update(variant="mpl"))
    with pytest.raises(ConfigError, match="did you mean 'mlp'"):
        read_checkpoint(path)


def test_own_format_newer_version(tmp_path):
    path = save_model(make_model(), tmp_path / "m.safetensors")
    _rewrite_metadata(path, lambda meta: meta.update(format_version="2"))
    with pytest.raises(CheckpointError, match="format version 2"):
        read_checkpoint(path)


@pytest.mark.parametrize("recipe, mode", [("vtab", "squash"), ("imagenet", "shorter")])
def test_own_format_written_before_resize_mode(tmp_path, recipe, mode):
    """Files saved before the resize mode was recorded (no resize_mode / input_size keys) still
    load, and read as the recipe meant: vtab squashes, the image recipes resize the shorter
    side."""
    pre = getattr(Preprocessing, recipe)(32)
    model = make_model(preprocessing=pre)
    path = save_model(model, tmp_path / "old.safetensors")

    def strip(cfg):
        d = cfg["preprocessing"]
        assert d["resize_mode"] == mode and d["input_size"] == 32  # what this version writes
        del d["resize_mode"], d["input_size"]

    _rewrite_stored_config(path, strip)
    loaded = load_model(path)
    assert loaded.config.preprocessing == pre and loaded.config.preprocessing.resize_mode == mode
    assert_same_logits(model, loaded)


def test_own_format_bad_resize_mode_is_one_clear_error(tmp_path):
    path = save_model(make_model(), tmp_path / "m.safetensors")
    _rewrite_stored_config(path, lambda cfg: cfg["preprocessing"].update(resize_mode="squahs"))
    with pytest.raises(ConfigError, match="unknown resize mode 'squahs'.*did you mean 'squash'"):
        read_checkpoint(path)

