"""The training configuration (dyt_edge.train.presets): resolve fills the defaults from the
architecture and refuses bad settings with one-line errors."""

from __future__ import annotations

import pytest

from dyt_edge.errors import ConfigError, UsageError
from dyt_edge.train import TrainConfig, resolve


def test_bad_configurations_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="outside"):
        resolve(TrainConfig(target_rate=1.5))
    with pytest.raises(ConfigError, match="unknown variant"):
        resolve(TrainConfig(variant="mpl"))
    with pytest.raises(UsageError, match="position-embedding init"):
        resolve(TrainConfig(pos_embed_init="random"))
    with pytest.raises(ConfigError, match="unknown augmentation"):
        resolve(TrainConfig(augment="flip"))
    with pytest.raises(UsageError, match="epochs must be positive"):
        resolve(TrainConfig(epochs=0))
    with pytest.raises(UsageError, match="safetensors"):
        resolve(TrainConfig(output=str(tmp_path / "model.pth")))


def test_a_timm_architecture_gives_its_shape_and_trains_from_random_init():
    cfg = resolve(TrainConfig(arch="vit_tiny_patch16_224", img_size=64)).cfg
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim) == (64, 16, 192)
    assert cfg.freeze_backbone is False and cfg.pos_embed_init == "timm"
