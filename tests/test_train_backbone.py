"""The backbone (dyt_edge.train.backbone): timm shapes without a download, local weights copied
in (resampled to another patch grid where needed) and frozen by default."""

from __future__ import annotations

import pytest
import torch

from dyt_edge.errors import CheckpointError, ConfigError
from dyt_edge.train import read_backbone_weights, timm_architecture, train

from .helpers.train import tiny_run


def _timm_backbone(tmp_path, img_size=32, patch_size=8):
    """A timm VisionTransformer state dict (timm's own key names) saved as .safetensors."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(7)
    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=32, depth=2,
                            num_heads=2, num_classes=3)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path, vit.state_dict()


def test_weights_freeze_the_backbone_by_default(tmp_path):
    path, timm_sd = _timm_backbone(tmp_path)
    events = []
    r = train(tiny_run(weights=str(path), lr=1e-2), progress=events.append)
    assert r.config.freeze_backbone is True
    assert any("frozen" in (e.message or "") for e in events)
    sd = r.model.state_dict()
    trainable = set(r.model.dyt_parameter_names())
    backbone = [k for k in sd if k not in trainable]
    assert backbone and all(torch.equal(sd[k], timm_sd[k]) for k in backbone)
    assert not torch.equal(sd["blocks.0.adaptmlp.up_proj.weight"],
                           torch.zeros_like(sd["blocks.0.adaptmlp.up_proj.weight"]))
    assert sd["head.weight"].shape[0] == 10                      # re-initialised for digits

    r2 = train(tiny_run(weights=str(path), freeze_backbone=False, lr=1e-2))
    assert not torch.equal(r2.model.state_dict()["blocks.0.attn.qkv.weight"],
                           timm_sd["blocks.0.attn.qkv.weight"])


def test_weights_resampled_to_another_patch_grid_and_bad_weights(tmp_path):
    path, _ = _timm_backbone(tmp_path, img_size=48, patch_size=16)
    r = train(tiny_run(weights=str(path)))                       # 3x3 patches of 16 -> 4x4 of 8
    assert any("pos_embed resampled from 3x3 to 4x4" in n for n in r.notes)
    assert any("patch embedding resampled to patch 8" in n for n in r.notes)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_backbone_weights(tmp_path / "nope.safetensors")
    wrong, _ = _timm_backbone(tmp_path)
    with pytest.raises(CheckpointError, match="lacks|shape"):
        train(tiny_run(weights=str(wrong), embed_dim=64, num_heads=2))


def test_timm_architecture_without_download():
    arch = timm_architecture("vit_tiny_patch16_224")
    assert arch == dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                        mlp_ratio=4.0)
    with pytest.raises(ConfigError, match="unknown timm architecture"):
        timm_architecture("vit_tiny_patch16_2244")
    with pytest.raises(ConfigError, match="not a ViT"):
        timm_architecture("resnet18")
    with pytest.raises(ConfigError, match="not a plain ViT"):
        timm_architecture("vit_base_patch16_clip_224")       # pre-norm, QuickGELU-free CLIP

