"""The published training args: heads, adapter scale and its learnability read from them, in
order, and turned into plain data."""

from __future__ import annotations

import pytest

from dyt_edge.checkpoint import infer_config, load_model, read_checkpoint
from dyt_edge.errors import CheckpointError

from .helpers.checkpoint import (SCALE, assert_same_logits, make_model, published_args,
                                 save_published)


def test_heads_from_args(tmp_path):
    model = make_model()
    args = published_args(ffn_adapter_scalar=SCALE)
    args.num_heads = 2
    path = save_published(tmp_path / "c.pth", model, args)
    loaded = read_checkpoint(path)
    assert loaded.config.num_heads == 2 and loaded.provenance["num_heads"] == "args.num_heads"
    assert_same_logits(model, load_model(path))


@pytest.mark.parametrize("where", ["ffn_adapter_scalar", "scale", "tuning_config"])
def test_adapter_scale_sources(tmp_path, where):
    args = published_args()
    if where == "tuning_config":
        args.tuning_config.ffn_adapter_scalar = str(SCALE)
        expected = "args.tuning_config.ffn_adapter_scalar"
    else:
        setattr(args, where, SCALE if where == "scale" else str(SCALE))
        expected = f"args.{where}"
    path = save_published(tmp_path / "c.pth", make_model(), args)
    loaded = read_checkpoint(path, num_heads=2)
    assert loaded.config.adapter_scale == SCALE
    assert loaded.provenance["adapter_scale"] == expected


def test_tuning_config_scale_wins_over_top_level_args(tmp_path):
    """The model is built from tuning_config, so its scale is the one the weights were trained
    with, even if the top-level args say otherwise."""
    args = published_args(ffn_adapter_scalar=str(SCALE))
    args.scale = 1.0
    path = save_published(tmp_path / "c.pth", make_model(), args)
    assert read_checkpoint(path, num_heads=2).config.adapter_scale == SCALE


def test_bad_scale_value_in_args(tmp_path):
    path = save_published(tmp_path / "c.pth", make_model(),
                          published_args(ffn_adapter_scalar="big"))
    with pytest.raises(CheckpointError, match="args.tuning_config.ffn_adapter_scalar") as exc:
        read_checkpoint(path, num_heads=2)
    assert "--adapter-scale" in str(exc.value)


def test_args_without_scale_say_so(tmp_path):
    path = save_published(tmp_path / "c.pth", make_model(), published_args())
    with pytest.raises(CheckpointError, match="none of them is set"):
        read_checkpoint(path, num_heads=2)


def test_args_say_learnable_but_weights_do_not(tmp_path):
    path = save_published(tmp_path / "c.pth", make_model(),
                          published_args(ffn_adapter_scalar="learnable_scalar"))
    with pytest.raises(CheckpointError, match="says the adapter scale is learnable, but the "
                       "checkpoint has no blocks.N.adaptmlp.scale") as exc:
        read_checkpoint(path, num_heads=2)
    assert "--adapter-scale" in str(exc.value)


def test_infer_config_accepts_real_args():
    model = make_model()
    args = published_args(ffn_adapter_scalar=str(SCALE))
    cfg, prov = infer_config(model.state_dict(), args, num_heads=2)
    assert cfg == model.config
    assert prov["adapter_scale"] == "args.tuning_config.ffn_adapter_scalar"

