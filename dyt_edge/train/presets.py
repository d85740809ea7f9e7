"""What to train: :class:`TrainConfig`, the presets and recipes that fill its defaults, and
:func:`resolve`, which fills them and checks the result.

The ``digits`` preset (``data="digits"`` and no ``arch``) is a small ViT on 32x32 digits with
patch 4 (one original pixel per patch): random init and a trained backbone, because no
pretrained weights exist offline - a documented deviation from the paper's frozen backbone.
With weights the backbone is frozen by default (the paper's setting: adapters, dispatchers and
head train); with random init it must train.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import ADAPTER_KINDS, VARIANTS, DyTConfig, Preprocessing, check_choice
from ..errors import UsageError
from .backbone import timm_architecture
from .recipe import AUGMENTS

PREPROCESSINGS = ("vtab", "imagenet")

PRESET_NAME = "dyt-digits"
PRESET_ARCH: dict[str, Any] = dict(img_size=32, patch_size=4, embed_dim=64, depth=4,
                                   num_heads=4, mlp_ratio=4.0)
"""The small ViT used when no ``arch`` is given (the digits preset)."""
PRESET_ADAPTER: dict[str, Any] = dict(adapter_dim=16, adapter_scale=1.0)
PRESET_TRAIN: dict[str, Any] = dict(epochs=20, batch_size=64, lr=2e-3, weight_decay=0.05,
                                    gate_bias=3.0, gate_lr_scale=10.0, augment="none",
                                    pos_embed_init="sincos", attn_init="mimetic")
"""Training defaults of the digits preset (random init, backbone trained). Tuned on 2 cores:

* ``pos_embed_init="sincos"`` and ``attn_init="mimetic"``: initialisations only (2-D sine-cosine
  position embeddings, still learned; mimetic self-attention init). With timm's default init
  (position embeddings of std 0.02) a ViT from scratch on 1.4k images sits on a loss plateau
  for many epochs and then generalises at ~94-95%; with these, ~96-97% in 20 epochs.
* ``gate_bias=3.0``: every dispatcher starts with ~95% of tokens active; the rate term then
  pushes activations down and the tokens whose sub-block matters least (the black
  background) are the ones dropped. Started at 50%, the gates settle on no clear pattern.
* ``gate_lr_scale=10``: the gates must become decisive (|logit| >> 1 against the logistic
  Gumbel noise) within ~450 steps, or the measured (hard, eval-mode) activation drifts below
  the training one.
* no augmentation: whole-patch shifts and small affine warps both cost more accuracy in this
  budget than they gain.
"""
FINETUNE_TRAIN: dict[str, Any] = dict(epochs=30, batch_size=32, lr=1e-3, weight_decay=1e-4,
                                      gate_bias=0.0, gate_lr_scale=1.0, augment="none",
                                      pos_embed_init=None, attn_init=None)
"""Defaults for a timm architecture with pretrained weights (frozen backbone; VTAB-like)."""
SCRATCH_TRAIN: dict[str, Any] = dict(epochs=30, batch_size=64, lr=1e-3, weight_decay=0.05,
                                     gate_bias=0.0, gate_lr_scale=1.0, augment="none",
                                     pos_embed_init=None, attn_init=None)
"""Defaults for a timm architecture from random init (backbone trained)."""


@dataclass
class TrainConfig:
    """What to train and how. ``None`` means: the preset's / recipe's default (see
    :func:`resolve`, which fills every field and records where each value came from)."""

    data: str = "digits"
    arch: Optional[str] = None
    """timm ViT name (e.g. ``vit_tiny_patch16_224``), used for its shape only; None: the small
    preset ViT."""
    weights: Optional[str] = None
    """Local backbone weights (timm/DyT state dict: .safetensors, .pth, .pt, .bin). Never a
    download."""
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    variant: str = "mlp"
    adapter_kind: str = "adapter"
    num_experts: int = 4
    adapter_dim: Optional[int] = None
    adapter_scale: Optional[float] = None
    target_rate: float = 0.5
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    seed: int = 0
    freeze_backbone: Optional[bool] = None
    """Default: True with ``weights`` (the paper), False for random init."""
    threads: Optional[int] = None
    """CPU threads; default min(cores, 8). Results are reproducible for a given count."""
    time_limit_s: Optional[float] = None
    output: Optional[str] = None
    """Where to save the trained model (.safetensors); None: not saved."""
    # Library-level knobs (no CLI flag needed for the common cases).
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    preprocessing: Optional[str] = None
    """``vtab`` (bicubic squash to img x img, mean = std = 0.5; default) or ``imagenet``
    (shorter side to img / 0.875, center crop, ImageNet stats)."""
    gate_bias: Optional[float] = None
    """Initial bias of every dispatcher's gate logit (0: start at 50% active)."""
    pos_embed_init: Optional[Any] = None
    """Random init only: ``"sincos"`` (2-D sine-cosine start), a std (float), or ``"timm"``
    (timm's std 0.02). Default: the preset's / recipe's."""
    attn_init: Optional[str] = None
    """Random init only: ``"mimetic"`` (mimetic self-attention init) or ``"timm"``."""
    gate_lr_scale: Optional[float] = None
    """Learning-rate multiplier of the dispatchers' gates (they must become decisive within a
    short run: Gumbel noise is logistic with scale 1, so only |logit| >> 1 is a firm choice)."""
    augment: Optional[str] = None
    """``shift`` (random translation by up to one patch, digits default) or ``none``."""
    limit: Optional[int] = None
    """Use at most this many training images (quick runs)."""
    data_seed: int = 0
    """Seed of the held-out split (keep 0: ``dyt-edge inspect --data`` measures on it)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Resolved:
    """What :func:`resolve` returns: the filled-in configuration and where it came from."""

    cfg: TrainConfig
    arch: dict[str, Any]
    recipe: dict[str, Any]
    notes: list[str]
    arch_label: str


def _positive(name: str, value: Any, flag: str) -> None:
    if value is not None and not value > 0:
        raise UsageError(f"{name} must be positive, got {value}", f"pass a positive {flag}")


def _check(cfg: TrainConfig) -> None:
    check_choice("variant", cfg.variant, VARIANTS)
    check_choice("adapter kind", cfg.adapter_kind, ADAPTER_KINDS)
    if cfg.augment is not None:
        check_choice("augmentation", cfg.augment, AUGMENTS)
    if cfg.attn_init is not None:
        check_choice("attention init", cfg.attn_init, ("timm", "mimetic"))
    pe = cfg.pos_embed_init
    if pe is not None and pe not in ("timm", "sincos") and not (
            isinstance(pe, (int, float)) and not isinstance(pe, bool) and pe > 0):
        raise UsageError(f"unknown position-embedding init {pe!r}",
                         "use 'sincos', 'timm' or a positive standard deviation")
    if cfg.preprocessing is not None:
        check_choice("preprocessing", cfg.preprocessing, PREPROCESSINGS)
    if not 0.0 < cfg.target_rate <= 1.0 or not math.isfinite(cfg.target_rate):
        raise UsageError(f"target activation rate {cfg.target_rate} is outside (0, 1]",
                         "pass --rate such as 0.5 (the paper's headline setting)")
    for name, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("lr", "--lr"),
                       ("threads", "--threads"), ("img_size", "--img-size"),
                       ("patch_size", "--patch-size"), ("adapter_dim", "--adapter-dim"),
                       ("num_experts", "--experts"), ("time_limit_s", "time limit"),
                       ("embed_dim", "width"), ("depth", "depth"), ("num_heads", "heads"),
                       ("mlp_ratio", "mlp ratio"), ("limit", "limit")):
        _positive(name.replace("_", " "), getattr(cfg, name), flag)
    if cfg.weight_decay is not None and not cfg.weight_decay >= 0:
        raise UsageError(f"weight decay must be >= 0, got {cfg.weight_decay}")
    if cfg.adapter_scale is not None and not math.isfinite(cfg.adapter_scale):
        raise UsageError(f"adapter scale must be a finite number, got {cfg.adapter_scale}")
    if cfg.output is not None and Path(cfg.output).suffix.lower() != ".safetensors":
        raise UsageError(f"output {cfg.output} is not a .safetensors file",
                         "pass -o PATH.safetensors")


def resolve(cfg: TrainConfig) -> _Resolved:
    """Fill every default of ``cfg``; return it with the architecture and the notes to log."""
    _check(cfg)
    notes: list[str] = []
    preset = cfg.arch is None
    if preset:
        arch = dict(PRESET_ARCH)
        arch_label = f"{PRESET_NAME} preset ViT"
    else:
        arch = timm_architecture(cfg.arch)
        arch_label = f"timm {cfg.arch} (architecture only)"
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio"):
        if getattr(cfg, key) is not None:
            arch[key] = getattr(cfg, key)
    if cfg.freeze_backbone is None:
        freeze = cfg.weights is not None
    else:
        freeze = bool(cfg.freeze_backbone)
    if cfg.weights is not None:
        recipe = dict(FINETUNE_TRAIN)
    elif preset:
        recipe = dict(PRESET_TRAIN)
    else:
        recipe = dict(SCRATCH_TRAIN)
    adapter = dict(PRESET_ADAPTER) if preset else dict(adapter_dim=64, adapter_scale=0.1)
    if cfg.weights is None:
        notes.append(f"backbone: {arch_label}, random init, "
                     + ("frozen: only adapters, dispatchers and the head train (from random "
                        "init this rarely learns much)" if freeze else
                        "trained with the adapters (no pretrained weights; the paper freezes a "
                        "pretrained backbone)"))
    else:
        notes.append(f"backbone: {arch_label}, weights from {cfg.weights}, "
                     + ("frozen: adapters, dispatchers and head train (the paper's setting)"
                        if freeze else "trained too (--no-freeze)"))
    resolved = dataclasses.replace(
        cfg,
        img_size=int(arch["img_size"]), patch_size=int(arch["patch_size"]),
        embed_dim=int(arch["embed_dim"]), depth=int(arch["depth"]),
        num_heads=int(arch["num_heads"]), mlp_ratio=float(arch["mlp_ratio"]),
        adapter_dim=cfg.adapter_dim if cfg.adapter_dim is not None else adapter["adapter_dim"],
        adapter_scale=(cfg.adapter_scale if cfg.adapter_scale is not None
                       else adapter["adapter_scale"]),
        epochs=cfg.epochs if cfg.epochs is not None else recipe["epochs"],
        batch_size=cfg.batch_size if cfg.batch_size is not None else recipe["batch_size"],
        lr=cfg.lr if cfg.lr is not None else recipe["lr"],
        weight_decay=(cfg.weight_decay if cfg.weight_decay is not None
                      else recipe["weight_decay"]),
        gate_bias=cfg.gate_bias if cfg.gate_bias is not None else recipe["gate_bias"],
        gate_lr_scale=(cfg.gate_lr_scale if cfg.gate_lr_scale is not None
                       else recipe["gate_lr_scale"]),
        augment=cfg.augment if cfg.augment is not None else recipe["augment"],
        pos_embed_init=(cfg.pos_embed_init if cfg.pos_embed_init is not None
                        else recipe["pos_embed_init"] or "timm"),
        attn_init=(cfg.attn_init if cfg.attn_init is not None
                   else recipe["attn_init"] or "timm"),
        preprocessing=cfg.preprocessing or "vtab",
        freeze_backbone=freeze,
        threads=cfg.threads if cfg.threads is not None else max(1, min(os.cpu_count() or 1, 8)),
    )
    return _Resolved(resolved, arch, recipe, notes, arch_label)


def model_config(cfg: TrainConfig, num_classes: int) -> DyTConfig:
    """The DyT architecture of a resolved training configuration."""
    pre = (Preprocessing.imagenet(cfg.img_size) if cfg.preprocessing == "imagenet"
           else Preprocessing.vtab(cfg.img_size))
    return DyTConfig(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                     depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                     num_classes=num_classes, variant=cfg.variant,
                     adapter_kind=cfg.adapter_kind, adapter_dim=cfg.adapter_dim,
                     adapter_scale=cfg.adapter_scale, num_experts=cfg.num_experts,
                     preprocessing=pre).validate()
