"""What the checkpoint tests share: tiny DyT models, and checkpoints saved the way the published
DyT training code saves them."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from dyt_edge.model import build_model

from . import randomize_dyt, tiny_config

SCALE = 0.25  # not DyTConfig's default (0.1), so a silently defaulted scale shows


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
    """args as the published training code saves them: a Namespace holding an EasyDict (the
    test is skipped where easydict is not installed)."""
    easydict = pytest.importorskip("easydict")
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

