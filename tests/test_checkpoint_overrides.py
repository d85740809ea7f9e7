"""Config overrides: they win over args and defaults, and one that contradicts the weights, or
an unknown name or value, is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyt_edge.checkpoint import load_model, read_checkpoint
from dyt_edge.config import Preprocessing
from dyt_edge.errors import CheckpointError, ConfigError

from .helpers.checkpoint import (SCALE, assert_same_logits, make_model, published_args,
                                 save_published)


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_published(tmp_path / "ckpt.pth", make_model(),
                          published_args(ffn_adapter_scalar=SCALE))


def test_override_beats_args(tmp_path):
    model = make_model()
    path = save_published(tmp_path / "c.pth", model, published_args(ffn_adapter_scalar="1.0"))
    loaded = read_checkpoint(path, adapter_scale=SCALE, num_heads=2)
    assert loaded.config.adapter_scale == SCALE and loaded.provenance["adapter_scale"] == "override"
    assert_same_logits(model, load_model(path, adapter_scale=SCALE, num_heads=2))


def test_layernorm_override_without_layernorm_weights(tmp_path):
    path = save_published(tmp_path / "c.pth", make_model(),
                          published_args(ffn_adapter_scalar=SCALE))
    with pytest.raises(CheckpointError, match="adapter-layernorm in contradicts"):
        read_checkpoint(path, num_heads=2, adapter_layernorm="in")


def test_image_size_that_does_not_fit_the_patch(ckpt):
    with pytest.raises(ConfigError, match="image size 30 does not fit patch size 8"):
        read_checkpoint(ckpt, num_heads=2, img_size=30)
    with pytest.raises(CheckpointError, match="position embeddings"):
        read_checkpoint(ckpt, num_heads=2, img_size=64)
    assert read_checkpoint(ckpt, num_heads=2, img_size=32).provenance["img_size"] == "override"


def test_override_contradicting_shapes(ckpt):
    with pytest.raises(CheckpointError,
                       match=r"--embed-dim 64 contradicts .*cls_token is \[1, 1, 32\]"):
        read_checkpoint(ckpt, num_heads=2, embed_dim=64)
    with pytest.raises(CheckpointError, match="--variant attn contradicts .*mlp_token_select"):
        read_checkpoint(ckpt, num_heads=2, variant="attn")
    with pytest.raises(CheckpointError, match="--num-classes 7"):
        read_checkpoint(ckpt, num_heads=2, num_classes=7)
    with pytest.raises(ConfigError, match="not divisible by 3 heads"):
        read_checkpoint(ckpt, num_heads=3)


def test_unknown_override_name(ckpt):
    with pytest.raises(ConfigError, match="unknown model option 'adapter_scael'") as exc:
        read_checkpoint(ckpt, adapter_scael=0.1)
    assert "did you mean 'adapter_scale'" in exc.value.hint


def test_unknown_variant_override_suggests(ckpt):
    with pytest.raises(ConfigError, match="unknown variant 'mpl'") as exc:
        load_model(ckpt, num_heads=2, variant="mpl")
    assert "did you mean 'mlp'" in exc.value.hint


def test_none_overrides_are_ignored(ckpt):
    loaded = read_checkpoint(ckpt, num_heads=2, adapter_scale=None, img_size=None,
                             variant=None, preprocessing=None)
    assert loaded.provenance["adapter_scale"] == "args.tuning_config.ffn_adapter_scalar"
    assert loaded.provenance["img_size"] == "tensor shapes"


def test_preprocessing_override(ckpt):
    loaded = read_checkpoint(ckpt, num_heads=2, preprocessing="imagenet")
    assert loaded.config.preprocessing == Preprocessing.imagenet(32)
    assert loaded.provenance["preprocessing"] == "override"
    custom = Preprocessing(40, 32, "bilinear", (0.1,) * 3, (0.2,) * 3, "custom")
    assert read_checkpoint(ckpt, num_heads=2, preprocessing=custom).config.preprocessing == custom
    with pytest.raises(ConfigError, match="did you mean 'imagenet'"):
        read_checkpoint(ckpt, num_heads=2, preprocessing="imgnet")

