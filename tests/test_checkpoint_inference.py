"""Config inference: what the tensor shapes decide, the standard heads table, and what the
weights cannot say asked for rather than guessed."""

from __future__ import annotations

import pytest
import torch

from dyt_edge.checkpoint import infer_config, load_model, read_checkpoint, save_model
from dyt_edge.errors import CheckpointError

from .helpers.checkpoint import (SCALE, assert_same_logits, images, make_model, published_args,
                                 save_published)


# -- heads ------------------------------------------------------------------------------------

def shaped_state_dict(width: int) -> dict:
    """A published DyT state_dict's shape-bearing keys at ``width`` (stride-0 views: no memory),
    enough for infer_config."""
    def t(*shape):
        return torch.zeros(1).expand(*shape)
    return {"cls_token": t(1, 1, width), "pos_embed": t(1, 17, width),
            "patch_embed.proj.weight": t(width, 3, 8, 8),
            "blocks.0.mlp.fc1.weight": t(4 * width, width),
            "blocks.0.mlp_token_select.mlp_head.weight": t(1, width),
            "blocks.0.adaptmlp.down_proj.weight": t(8, width), "head.weight": t(5, width)}


@pytest.mark.parametrize("width,heads,name", [
    (192, 3, "ViT-Ti"), (256, 4, "ViT-XS"), (320, 5, "ViT-Little"), (384, 6, "ViT-S"),
    (512, 8, "ViT-M"), (640, 10, "ViT-Betwixt"), (768, 12, "ViT-B"), (1024, 16, "ViT-L"),
    (1280, 16, "ViT-H"), (1408, 16, "ViT-g"), (1664, 16, "ViT-G")])
def test_heads_of_standard_timm_widths(width, heads, name):
    cfg, prov = infer_config(shaped_state_dict(width), published_args(ffn_adapter_scalar=SCALE))
    assert cfg.embed_dim == width and cfg.num_heads == heads
    assert prov["num_heads"] == f"standard timm width {width} ({name})"


def test_standard_heads_table_matches_timm():
    """The table is timm's own model definitions (one entry per standard width)."""
    import timm

    from dyt_edge.config import STANDARD_VIT_HEADS

    models = {192: "vit_tiny_patch16_224", 256: "vit_xsmall_patch16_clip_224",
              320: "vit_little_patch16_reg1_gap_256", 384: "vit_small_patch16_224",
              512: "vit_medium_patch16_gap_256", 640: "vit_betwixt_patch16_gap_256",
              768: "vit_base_patch16_224", 1024: "vit_large_patch16_224",
              1280: "vit_huge_patch14_224", 1408: "vit_giant_patch14_224",
              1664: "vit_gigantic_patch14_224"}
    assert set(models) == set(STANDARD_VIT_HEADS)
    for width, arch in models.items():
        with torch.device("meta"):
            vit = timm.create_model(arch, pretrained=False)
        assert vit.embed_dim == width, arch
        assert vit.blocks[0].attn.num_heads == STANDARD_VIT_HEADS[width][0], arch


def test_heads_of_a_standard_width_checkpoint(tmp_path):
    model = make_model(embed_dim=192, num_heads=3, depth=2)
    path = save_published(tmp_path / "c.pth", model, published_args(ffn_adapter_scalar=SCALE))
    loaded = read_checkpoint(path)
    assert loaded.config.num_heads == 3
    assert loaded.provenance["num_heads"] == "standard timm width 192 (ViT-Ti)"
    assert_same_logits(model, load_model(path))


@pytest.mark.parametrize("width", [32, 96, 1000])
def test_heads_of_other_widths_are_asked_for(width):
    sd = shaped_state_dict(width)
    with pytest.raises(CheckpointError) as exc:
        infer_config(sd, published_args(ffn_adapter_scalar=SCALE))
    assert f"width {width} is not a standard timm ViT width" in exc.value.message
    assert "--num-heads" in exc.value.hint and "768->12" in exc.value.hint
    with pytest.raises(CheckpointError, match="has no args"):
        infer_config(sd, None, adapter_scale=SCALE)
    heads = 4 if width % 4 == 0 else 3
    cfg, prov = infer_config(sd, published_args(ffn_adapter_scalar=SCALE), num_heads=heads)
    assert cfg.num_heads == heads and prov["num_heads"] == "override"


def test_args_heads_win_over_the_standard_table():
    args = published_args(ffn_adapter_scalar=SCALE)
    args.num_heads = 16  # e.g. vit_base_patch16_gap_224: width 768, 16 heads
    cfg, prov = infer_config(shaped_state_dict(768), args)
    assert cfg.num_heads == 16 and prov["num_heads"] == "args.num_heads"
    cfg, prov = infer_config(shaped_state_dict(768), args, num_heads=8)
    assert cfg.num_heads == 8 and prov["num_heads"] == "override"


# -- adapters and variants --------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["model-only", "state_dict"])
def test_layouts_without_args_need_the_adapter_scale(tmp_path, layout):
    model = make_model(seed=3)
    path = save_published(tmp_path / "ckpt.pth", model, layout=layout)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path, num_heads=2)
    err = exc.value
    assert "adapter scale not found in" in err.message and "ckpt.pth" in err.message
    for key in ("args.ffn_adapter_scalar", "args.scale", "args.tuning_config.ffn_adapter_scalar"):
        assert key in err.message
    assert "has no args" in err.message
    assert "--adapter-scale" in err.hint

    loaded = read_checkpoint(path, adapter_scale=SCALE, num_heads=2)
    assert loaded.layout == layout and loaded.args is None
    assert loaded.provenance["adapter_scale"] == "override"
    assert_same_logits(model, load_model(path, adapter_scale=SCALE, num_heads=2))


def test_learnable_scale(tmp_path):
    model = make_model(seed=5, adapter_scale_learnable=True)
    assert model.blocks[0].adaptmlp.scale.abs().item() > 0  # randomised, not the init 1.0
    path = save_published(tmp_path / "c.pth", model,
                          published_args(ffn_adapter_scalar="learnable_scalar"))
    loaded = read_checkpoint(path, num_heads=2)
    assert loaded.config.adapter_scale_learnable
    assert loaded.provenance["adapter_scale_learnable"] == "tensor shapes"
    assert_same_logits(model, load_model(path, num_heads=2))
    # No args at all is fine too: the scale is a weight.
    bare = save_published(tmp_path / "bare.pth", model, layout="state_dict")
    assert_same_logits(model, load_model(bare, num_heads=2))
    with pytest.raises(CheckpointError, match="learned"):
        read_checkpoint(path, num_heads=2, adapter_scale=0.5)


@pytest.mark.parametrize("option", ["in", "out"])
def test_adapter_layernorm(tmp_path, option):
    model = make_model(seed=6, adapter_layernorm=option)
    args = published_args(ffn_adapter_scalar=SCALE, ffn_adapter_layernorm_option=option)
    path = save_published(tmp_path / "c.pth", model, args)
    loaded = read_checkpoint(path, num_heads=2)
    assert loaded.config.adapter_layernorm == option
    assert (loaded.provenance["adapter_layernorm"]
            == "args.tuning_config.ffn_adapter_layernorm_option")
    assert_same_logits(model, load_model(path, num_heads=2))

    # Without args the placement is asked for, not guessed.
    bare = save_published(tmp_path / "bare.pth", model, layout="model-only")
    with pytest.raises(CheckpointError, match="adapter LayerNorm") as exc:
        read_checkpoint(bare, adapter_scale=SCALE, num_heads=2)
    assert "--adapter-layernorm in|out" in exc.value.hint
    assert_same_logits(model, load_model(bare, adapter_scale=SCALE, num_heads=2,
                                         adapter_layernorm=option))
    # ... and the placement matters, so a wrong answer would have shown.
    other = "out" if option == "in" else "in"
    wrong = load_model(bare, adapter_scale=SCALE, num_heads=2, adapter_layernorm=other)
    with torch.no_grad():
        assert not torch.allclose(wrong(images()), model(images()))


@pytest.mark.parametrize("changes", [
    dict(variant="mlp"),
    dict(variant="attn"),
    dict(variant="attn_mlp"),
    dict(variant="layer"),
    dict(variant="mlp", adapter_kind="moe", num_experts=3),
    dict(variant="attn_mlp", adapter_kind="moe", num_experts=2, adapter_scale_learnable=True,
         adapter_layernorm="out"),
], ids=["mlp", "attn", "attn_mlp", "layer", "moe", "moe-attn_mlp-learnable-ln"])
def test_variants_and_moe(tmp_path, changes):
    model = make_model(seed=7, **changes)
    cfg = model.config

    # Own format: the config travels with the weights.
    path = save_model(model, tmp_path / "m.safetensors", metadata={"note": "round trip"})
    loaded = read_checkpoint(path)
    assert (loaded.format, loaded.layout) == ("dyt-edge", "dyt-edge")
    assert loaded.config == cfg
    assert set(loaded.provenance.values()) == {"dyt-edge metadata"}
    assert loaded.metadata["note"] == "round trip"
    assert_same_logits(model, load_model(path))

    # Published bare state_dict: the same architecture is inferred from the shapes.
    overrides = dict(num_heads=2, adapter_layernorm=cfg.adapter_layernorm)
    if not cfg.adapter_scale_learnable:
        overrides["adapter_scale"] = SCALE
    if cfg.adapter_layernorm == "none":
        del overrides["adapter_layernorm"]
    inferred, prov = infer_config(model.state_dict(), **overrides)
    if cfg.adapter_scale_learnable:  # the float is unused then; the weight holds the scale
        assert prov["adapter_scale"].startswith("unused")
        inferred = inferred.replace(adapter_scale=cfg.adapter_scale)
    assert inferred == cfg
    assert prov["variant"] == prov["adapter_kind"] == prov["adapter_dim"] == "tensor shapes"
    if cfg.adapter_kind == "moe":
        assert prov["num_experts"] == "tensor shapes"


# -- not a DyT --------------------------------------------------------------------------------

def test_not_a_dyt_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a DyT/ViT checkpoint"):
        read_checkpoint(path)

    sd = {k: v for k, v in make_model().state_dict().items() if "token_select" not in k}
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="no token dispatchers"):
        read_checkpoint(path, adapter_scale=SCALE)


def test_non_square_position_embeddings(tmp_path):
    sd = make_model().state_dict()
    sd["pos_embed"] = torch.zeros(1, 16, 32)  # 15 patch positions
    path = tmp_path / "c.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="not a square grid"):
        read_checkpoint(path, adapter_scale=SCALE)

