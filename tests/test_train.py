"""Training with the paper's recipe: every variant runs, the gate learns through straight-through
masks, runs are deterministic, a frozen backbone stays frozen, and (slow) the digits demo meets
its claim."""

from __future__ import annotations

import math

import pytest
import torch

from dyt_edge.errors import CheckpointError, ConfigError, DataError, UsageError
from dyt_edge.model import build_model
from dyt_edge.train import (TrainConfig, dyt_loss, patch_background, read_backbone_weights,
                            resolve, timm_architecture, train)

from .conftest import tiny_config

TINY = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, limit=96, epochs=1, batch_size=32,
            threads=1)


def tiny_run(**changes) -> TrainConfig:
    kw = dict(TINY)
    kw.update(changes)
    return TrainConfig(**kw)


@pytest.mark.parametrize("variant,adapter", [("mlp", "adapter"), ("attn", "adapter"),
                                             ("attn_mlp", "adapter"), ("layer", "adapter"),
                                             ("mlp", "moe")])
def test_one_epoch_of_every_variant(variant, adapter):
    events = []
    r = train(tiny_run(variant=variant, adapter_kind=adapter), progress=events.append)
    assert len(r.history) == 1 and math.isfinite(r.history[0]["loss"])
    for term in ("ce_dynamic", "ce_complete", "kl", "rate_loss"):
        assert math.isfinite(r.history[0][term]) and r.history[0][term] >= -1e-6
    assert r.model_config.variant == variant and r.model_config.adapter_kind == adapter
    assert len(r.activation_per_dispatcher) == len(r.dispatchers) == r.model_config.num_dispatchers
    assert 0.0 <= r.activation_mean <= 1.0 and 0.0 <= r.accuracy <= 1.0
    assert r.test_size == 359 and r.train_size == 96
    assert r.background_activation is not None and r.showcase.count("label ") == 3
    assert not r.model.training and r.model.dispatch_mode == "topk"
    kinds = {e.kind for e in events}
    assert {"note", "start", "step", "epoch", "eval", "done"} <= kinds


@pytest.mark.parametrize("augment", ["shift", "affine"])
def test_augmentations_run_and_keep_the_settings_restored(augment):
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    r = train(tiny_run(augment=augment, pos_embed_init=0.5, attn_init="timm"))
    assert math.isfinite(r.history[0]["loss"]) and r.config.augment == augment
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_training_masks_are_straight_through_and_reach_the_gate():
    torch.manual_seed(0)
    model = build_model(tiny_config(variant="attn_mlp")).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, masks = model(x, return_masks=True)
    assert masks.dtype == torch.float32 and masks.requires_grad
    assert set(masks.unique().tolist()) <= {0.0, 1.0}            # hard values forward
    with model.dispatching("complete"):
        full = model(x)
    loss, terms = dyt_loss(logits, full, masks, y, 0.5)
    assert math.isclose(terms["activation"], float(masks.detach().mean()), rel_tol=1e-6)
    loss.backward()
    for ts in model.token_selects:
        assert ts.mlp_head.weight.grad is not None and ts.mlp_head.weight.grad.abs().sum() > 0


def test_the_loss_is_the_papers():
    torch.manual_seed(1)
    d, c = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    masks = torch.rand(6, 3, 16)
    loss, terms = dyt_loss(d, c, masks, y, 0.3)
    p = torch.softmax(c, -1)
    kl = (p * (p.log() - torch.log_softmax(d, -1))).sum(-1).mean()
    expected = (torch.nn.functional.cross_entropy(d, y) + torch.nn.functional.cross_entropy(c, y)
                + kl + 2.0 * (masks.mean() - 0.3) ** 2)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert math.isclose(terms["rate_loss"], 2.0 * (float(masks.mean()) - 0.3) ** 2, rel_tol=1e-5)


def test_same_seed_same_model_and_masks():
    a = train(tiny_run(seed=3))
    b = train(tiny_run(seed=3))
    assert a.history == [{**row, "seconds": b.history[i]["seconds"]}
                         for i, row in enumerate(a.history)] or \
        all(ra[k] == rb[k] for ra, rb in zip(a.history, b.history) for k in ra if k != "seconds")
    assert a.accuracy == b.accuracy
    assert a.activation_per_dispatcher == b.activation_per_dispatcher
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train(tiny_run(seed=4))
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


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
    cfg = resolve(TrainConfig(arch="vit_tiny_patch16_224", img_size=64)).cfg
    assert (cfg.img_size, cfg.patch_size, cfg.embed_dim) == (64, 16, 192)
    assert cfg.freeze_backbone is False and cfg.pos_embed_init == "timm"


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
    import numpy as np

    unlabelled = tmp_path / "u.npz"
    np.savez(unlabelled, images=np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="no labels"):
        train(tiny_run(data=str(unlabelled)))


def test_background_patches():
    raw = torch.zeros(1, 3, 8, 8)
    raw[0, :, 0, 5] = 0.1
    bg = patch_background(raw, 4)
    assert bg.tolist() == [[True, False, True, True]]


def test_saved_model_loads_with_its_training_metadata(tmp_path):
    pytest.importorskip("dyt_edge.checkpoint")
    from dyt_edge.checkpoint import load_model, read_checkpoint

    out = tmp_path / "runs" / "digits-mlp.safetensors"
    r = train(tiny_run(output=str(out)))
    assert r.checkpoint == out and out.is_file()
    loaded = read_checkpoint(out)
    assert "dyt_edge.training" in loaded.metadata and loaded.config == r.model_config
    model = load_model(out)
    from dyt_edge.data import load_images

    test = load_images("digits", r.model_config.preprocessing, split="test")
    with torch.no_grad():
        pred = model(test.images).argmax(-1)
    assert float((pred == test.labels).float().mean()) == pytest.approx(r.accuracy)


def test_cli_train_prints_the_summary_and_next_step(tmp_path, capsys, monkeypatch):
    import dyt_edge.train as train_mod
    from dyt_edge.cli import main

    pytest.importorskip("dyt_edge.checkpoint")
    monkeypatch.setattr(train_mod, "PRESET_ARCH", dict(img_size=32, patch_size=8, embed_dim=32,
                                                       depth=2, num_heads=2, mlp_ratio=2.0))
    out = tmp_path / "m.safetensors"
    code = main(["train", "--epochs", "1", "--batch-size", "128", "--threads", "1",
                 "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "held-out accuracy" in captured.out and "background vs digit" in captured.out
    assert f"dyt-edge inspect {out} --data digits" in captured.out.replace("\n", "")
    assert out.is_file()

    code = main(["train", "--rate", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("error: target activation rate 2")
    code = main(["train", "--data", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: data not found") and "\n" not in err


@pytest.mark.slow
def test_digits_demo_meets_its_claim(digits_demo_model):
    """The full digits recipe: >= 95% held-out accuracy at a measured activation of 0.4-0.6,
    with the dispatchers clearly skipping background patches, deterministically."""
    path, r = digits_demo_model
    assert path.is_file()
    print(r.showcase)
    assert r.accuracy >= 0.95, r.summary()
    assert 0.4 <= r.activation_mean <= 0.6, r.summary()
    assert r.background_activation < 0.5 * r.foreground_activation, r.summary()
    assert not r.stopped_early
