"""Checkpoints: published layouts read safely and inferred exactly, the own format round trips,
and every bad or unsafe file is one clear error."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from dyt_edge import safe_pickle
from dyt_edge.checkpoint import (file_sha256, infer_config, load_model, read_checkpoint,
                                 save_model)
from dyt_edge.config import DyTConfig, Preprocessing
from dyt_edge.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from dyt_edge.model import build_model

from .conftest import randomize_dyt, tiny_config

easydict = pytest.importorskip("easydict")

SCALE = 0.25  # not DyTConfig's default (0.1), so a silently defaulted scale shows


# -- helpers ------------------------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, **changes) -> torch.nn.Module:
    changes.setdefault("adapter_scale", SCALE)
    return randomize_dyt(build_model(tiny_config(**changes)), seed=seed, gate_std=0.5)


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def assert_same_logits(reference: torch.nn.Module, loaded: torch.nn.Module) -> None:
    assert not loaded.training and loaded.dispatch_mode == "pack"
    x = images()
    with torch.no_grad():
        ref, ref_masks = reference.eval().set_dispatch("pack")(x, return_masks=True)
        out, masks = loaded(x, return_masks=True)
    # The gates must really be mixed, or dispatch would not be exercised.
    assert 0.0 < ref_masks.float().mean().item() < 1.0
    assert torch.equal(masks, ref_masks)
    assert torch.equal(out, ref)


def published_args(**tuning) -> argparse.Namespace:
    """args as the published training code saves them: a Namespace holding an EasyDict."""
    tuning_config = easydict.EasyDict(ffn_adapt=True, ffn_option="parallel",
                                      ffn_adapter_layernorm_option="none",
                                      ffn_adapter_init_option="lora", ffn_num=8, d_model=32)
    tuning_config.update(tuning)
    return argparse.Namespace(model="vit_base_patch16_224", ffn_num=8, nb_classes=5,
                              output_dir=Path("out"), blr=0.1, tuning_config=tuning_config)


def optimizer_state(model: torch.nn.Module) -> dict:
    params = [p for n, p in model.named_parameters() if "adaptmlp" in n]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt.state_dict()


def save_published(path: Path, model: torch.nn.Module, args=None, *, layout: str = "full",
                   prefix: str = "", legacy: bool = False) -> Path:
    sd = OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
    if layout == "full":
        obj = {"model": sd, "optimizer": optimizer_state(model), "epoch": 3,
               "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 7},
               "args": args if args is not None else published_args()}
    elif layout == "model-only":
        obj = {"model": sd}
    else:
        obj = sd
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


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


# -- published checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_published_full_layout(tmp_path, legacy):
    model = make_model(seed=1)
    path = save_published(tmp_path / "checkpoint-3.pth", model,
                          published_args(ffn_adapter_scalar=str(SCALE)), legacy=legacy)
    loaded = read_checkpoint(path, num_heads=2)
    assert (loaded.format, loaded.layout) == ("published", "full")
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert loaded.config == model.config
    prov = loaded.provenance
    assert set(prov) == {f for f in DyTConfig.__dataclass_fields__}
    assert prov["adapter_scale"] == "args.tuning_config.ffn_adapter_scalar"
    assert prov["num_heads"] == "override"
    for name in ("embed_dim", "depth", "patch_size", "img_size", "num_classes", "variant",
                 "adapter_dim", "mlp_ratio"):
        assert prov[name] == "tensor shapes", name
    assert prov["preprocessing"] == "default: published VTAB recipe"
    assert loaded.config.preprocessing == Preprocessing.vtab(32)
    # args come back as plain JSON-able data, stand-ins and paths included.
    args = json.loads(json.dumps(loaded.args))
    assert args["tuning_config"]["ffn_num"] == 8 and args["output_dir"] == "out"
    assert args["tuning_config"]["ffn_adapter_scalar"] == str(SCALE)
    assert_same_logits(model, load_model(path, num_heads=2))


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


def test_heads_from_args(tmp_path):
    model = make_model()
    args = published_args(ffn_adapter_scalar=SCALE)
    args.num_heads = 2
    path = save_published(tmp_path / "c.pth", model, args)
    loaded = read_checkpoint(path)
    assert loaded.config.num_heads == 2 and loaded.provenance["num_heads"] == "args.num_heads"
    assert_same_logits(model, load_model(path))


def test_args_heads_win_over_the_standard_table():
    args = published_args(ffn_adapter_scalar=SCALE)
    args.num_heads = 16  # e.g. vit_base_patch16_gap_224: width 768, 16 heads
    cfg, prov = infer_config(shaped_state_dict(768), args)
    assert cfg.num_heads == 16 and prov["num_heads"] == "args.num_heads"
    cfg, prov = infer_config(shaped_state_dict(768), args, num_heads=8)
    assert cfg.num_heads == 8 and prov["num_heads"] == "override"


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


def test_args_without_scale_say_so(tmp_path):
    path = save_published(tmp_path / "c.pth", make_model(), published_args())
    with pytest.raises(CheckpointError, match="none of them is set"):
        read_checkpoint(path, num_heads=2)


def test_override_beats_args(tmp_path):
    model = make_model()
    path = save_published(tmp_path / "c.pth", model, published_args(ffn_adapter_scalar="1.0"))
    loaded = read_checkpoint(path, adapter_scale=SCALE, num_heads=2)
    assert loaded.config.adapter_scale == SCALE and loaded.provenance["adapter_scale"] == "override"
    assert_same_logits(model, load_model(path, adapter_scale=SCALE, num_heads=2))


def test_ddp_prefix_is_stripped(tmp_path):
    model = make_model(seed=4)
    path = save_published(tmp_path / "ddp.pth", model, published_args(ffn_adapter_scalar=SCALE),
                          prefix="module.")
    loaded = read_checkpoint(path, num_heads=2)
    assert all(not k.startswith("module.") for k in loaded.state_dict)
    assert_same_logits(model, load_model(path, num_heads=2))


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


def test_args_say_learnable_but_weights_do_not(tmp_path):
    path = save_published(tmp_path / "c.pth", make_model(),
                          published_args(ffn_adapter_scalar="learnable_scalar"))
    with pytest.raises(CheckpointError, match="says the adapter scale is learnable, but the "
                       "checkpoint has no blocks.N.adaptmlp.scale") as exc:
        read_checkpoint(path, num_heads=2)
    assert "--adapter-scale" in str(exc.value)


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


def test_layernorm_override_without_layernorm_weights(tmp_path):
    path = save_published(tmp_path / "c.pth", make_model(),
                          published_args(ffn_adapter_scalar=SCALE))
    with pytest.raises(CheckpointError, match="adapter-layernorm in contradicts"):
        read_checkpoint(path, num_heads=2, adapter_layernorm="in")


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


def test_infer_config_accepts_real_args():
    model = make_model()
    args = published_args(ffn_adapter_scalar=str(SCALE))
    cfg, prov = infer_config(model.state_dict(), args, num_heads=2)
    assert cfg == model.config
    assert prov["adapter_scale"] == "args.tuning_config.ffn_adapter_scalar"


# -- the own format -----------------------------------------------------------------------------

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


def test_load_model_builds_for_real_what_the_weights_do_not_cover(tmp_path, monkeypatch):
    """A tensor the state_dict does not carry (a non-persistent buffer) must not stay on the
    meta device: load_model then builds the model for real."""
    import dyt_edge.checkpoint as checkpoint

    real_build = checkpoint.build_model

    def build_with_buffer(config, **kwargs):
        model = real_build(config, **kwargs)
        model.register_buffer("lookup", torch.arange(3.0), persistent=False)
        return model

    monkeypatch.setattr(checkpoint, "build_model", build_with_buffer)
    model = make_model(seed=2)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert torch.equal(loaded.lookup, torch.arange(3.0))
    assert_same_logits(model, loaded)


def test_save_model_refuses_reserved_metadata(tmp_path):
    with pytest.raises(ConfigError, match="reserved"):
        save_model(make_model(), tmp_path / "m.safetensors", metadata={"config": "{}"})
    assert list(tmp_path.iterdir()) == []


def test_own_format_unknown_variant_suggests(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_model(make_model(), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    cfg["variant"] = "mpl"
    meta["config"] = json.dumps(cfg)
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ConfigError, match="did you mean 'mlp'"):
        read_checkpoint(path)


def test_own_format_newer_version(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_model(make_model(), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "2"
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="format version 2"):
        read_checkpoint(path)


def _rewrite_stored_preprocessing(path: Path, edit) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    edit(cfg["preprocessing"])
    meta["config"] = json.dumps(cfg)
    save_file(load_file(str(path)), str(path), metadata=meta)


@pytest.mark.parametrize("recipe, mode", [("vtab", "squash"), ("imagenet", "shorter")])
def test_own_format_written_before_resize_mode(tmp_path, recipe, mode):
    """Files saved before the resize mode was recorded (no resize_mode / input_size keys) still
    load, and read as the recipe meant: vtab squashes, the image recipes resize the shorter
    side."""
    pre = getattr(Preprocessing, recipe)(32)
    model = make_model(preprocessing=pre)
    path = save_model(model, tmp_path / "old.safetensors")

    def strip(d):
        assert d["resize_mode"] == mode and d["input_size"] == 32  # what this version writes
        del d["resize_mode"], d["input_size"]

    _rewrite_stored_preprocessing(path, strip)
    loaded = load_model(path)
    assert loaded.config.preprocessing == pre and loaded.config.preprocessing.resize_mode == mode
    assert_same_logits(model, loaded)


def test_own_format_bad_resize_mode_is_one_clear_error(tmp_path):
    path = save_model(make_model(), tmp_path / "m.safetensors")
    _rewrite_stored_preprocessing(path, lambda d: d.update(resize_mode="squahs"))
    with pytest.raises(ConfigError, match="unknown resize mode 'squahs'.*did you mean 'squash'"):
        read_checkpoint(path)


# -- unsafe pickles -------------------------------------------------------------------------------

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


# -- bad files ----------------------------------------------------------------------------------

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


def test_bad_files_are_one_clear_error_each(tmp_path):
    files = _bad_files(tmp_path)
    assert set(files) == set(EXPECTED)
    for kind, path in files.items():
        with pytest.raises(CheckpointError) as exc:
            load_model(path, adapter_scale=SCALE, num_heads=2)
        err = exc.value
        assert type(err) is CheckpointError, (kind, err)  # not "unsafe": just broken
        assert EXPECTED[kind] in err.message, (kind, err.message)
        assert str(path) in err.message, (kind, err.message)
        assert err.hint, kind
        assert "\n" not in str(err), (kind, str(err))


def test_not_a_dyt_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a DyT/ViT checkpoint"):
        read_checkpoint(path)

    sd = {k: v for k, v in make_model().state_dict().items() if "token_select" not in k}
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="no token dispatchers"):
        read_checkpoint(path, adapter_scale=SCALE)


def test_wrong_keys_listed_with_counts(tmp_path):
    sd = make_model().state_dict()
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    del sd["blocks.1.mlp.fc1.weight"]
    path = tmp_path / "keys.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path, adapter_scale=SCALE, num_heads=2)
    message = exc.value.message
    assert message.startswith(f"{path} does not match a DyT 'mlp' model: ")
    assert "1 missing key (blocks.1.mlp.fc1.weight)" in message
    assert "1 unexpected key (blocks.0.extra.weight)" in message
    assert "shape" not in message


def test_wrong_shapes_listed(tmp_path):
    sd = make_model().state_dict()
    sd["blocks.1.mlp.fc2.weight"] = torch.zeros(32, 100)
    sd["norm.weight"] = torch.ones(32, dtype=torch.int64)
    for i in range(3):
        del sd[f"blocks.{i}.norm1.weight"], sd[f"blocks.{i}.norm1.bias"]
    path = tmp_path / "shapes.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, adapter_scale=SCALE, num_heads=2)
    message = exc.value.message
    assert "1 shape mismatch (blocks.1.mlp.fc2.weight: checkpoint [32, 100] vs model [32, 128])" \
        in message
    assert "1 non-float tensor (norm.weight: torch.int64)" in message
    assert ("6 missing keys (blocks.0.norm1.weight, blocks.0.norm1.bias, "
            "blocks.1.norm1.weight, ...)") in message


def test_non_square_position_embeddings(tmp_path):
    sd = make_model().state_dict()
    sd["pos_embed"] = torch.zeros(1, 16, 32)  # 15 patch positions
    path = tmp_path / "c.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="not a square grid"):
        read_checkpoint(path, adapter_scale=SCALE)


# -- overrides ------------------------------------------------------------------------------------

@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_published(tmp_path / "ckpt.pth", make_model(),
                          published_args(ffn_adapter_scalar=SCALE))


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


def test_torch_load_is_always_restricted(ckpt, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(ckpt, num_heads=2)
    assert calls and all(c.get("pickle_module") is safe_pickle and c.get("weights_only") is False
                         for c in calls)


def test_loaded_model_owns_fp32_weights(tmp_path):
    model = make_model(seed=9)
    sd = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path / "half.pth"
    torch.save(sd, path)
    loaded = load_model(path, adapter_scale=SCALE, num_heads=2)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in loaded.parameters())
    x = images()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=5e-2)
