"""Fine-tune a DyT model with the paper's recipe.

One step (the loss of the published DyT training code, as the README's Training section
describes it)::

    logits_d, masks = model(x, return_masks=True)   # straight-through Gumbel-sigmoid, tau 5
    with model.dispatching("complete"):
        logits_c = model(x)                             # the same network, every token active
    loss = CE(logits_d, y) + CE(logits_c, y)
         + KL(softmax(logits_c).detach() || softmax(logits_d))     # batchmean
         + 2.0 * (masks.mean() - r) ** 2                # mean over batch, dispatchers, tokens

Evaluation runs in eval mode with exact dispatch (``topk``: the hard decision
``sigmoid(logit) > 0.5``, skipped tokens really skipped) on a held-out split the training never
sees (see :mod:`dyt_edge.data`).

The backbone comes from a timm ViT architecture name (only its shape is used: built on the meta
device, never downloaded) with random init, or from a local weights file read without running
any of its code. With weights the backbone is frozen by default (the paper's setting: adapters,
dispatchers and head train); with random init it must train.

The ``digits`` preset (``data="digits"`` and no ``arch``) is a small ViT on 32x32 digits with
patch 4 (one original pixel per patch): random init and a trained backbone, because no
pretrained weights exist offline - a documented deviation from the paper's frozen backbone.

Runs are deterministic for a given seed and thread count: seeds for python/numpy/torch, a fixed
thread count, ``torch.use_deterministic_algorithms`` (restored afterwards), a seeded shuffle.
A ``time_limit_s`` that stops training early makes the result depend on machine speed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .config import ADAPTER_KINDS, VARIANTS, DyTConfig, Preprocessing, check_choice
from .errors import CheckpointError, ConfigError, DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .data import ImageSet
    from .model import DyTVisionTransformer

RATE_LOSS_WEIGHT = 2.0
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

AUGMENTS = ("none", "shift", "affine")


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
class TrainEvent:
    """What :func:`train` reports to its ``progress`` callback."""

    kind: str
    """``note`` (a message), ``start``, ``step``, ``epoch``, ``eval`` or ``done``."""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    """Total optimisation steps of the run."""
    loss: Optional[float] = None
    activation: Optional[float] = None
    accuracy: Optional[float] = None
    elapsed_s: float = 0.0
    message: Optional[str] = None


@dataclass
class TrainResult:
    model: "DyTVisionTransformer"
    config: TrainConfig
    """The resolved configuration (every default filled in)."""
    model_config: DyTConfig
    history: list[dict[str, float]]
    """One row per epoch: loss terms, training accuracy and activation, lr, seconds."""
    accuracy: float
    """Held-out accuracy with exact dispatch (eval mode, ``topk``)."""
    accuracy_complete: float
    """Held-out accuracy of the same network with every token active."""
    activation_mean: float
    """Measured held-out activation rate (share of patch tokens the dispatchers keep)."""
    activation_per_dispatcher: list[float]
    dispatchers: list[str]
    seconds: float
    """Wall time of the training loop (data loading and evaluation excluded)."""
    total_seconds: float
    train_size: int
    test_size: int
    data_name: str
    skipped: int = 0
    checkpoint: Optional[Path] = None
    background_activation: Optional[float] = None
    """digits: activation on background patches (pixel == 0), and on digit patches."""
    foreground_activation: Optional[float] = None
    background_per_dispatcher: Optional[list[float]] = None
    foreground_per_dispatcher: Optional[list[float]] = None
    showcase: Optional[str] = None
    """digits: ASCII pictures of held-out digits next to each dispatcher's token map."""
    notes: list[str] = field(default_factory=list)
    stopped_early: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers (what the checkpoint metadata records)."""
        return {
            "data": self.data_name, "train_size": self.train_size, "test_size": self.test_size,
            "accuracy": self.accuracy, "accuracy_complete": self.accuracy_complete,
            "activation_mean": self.activation_mean,
            "activation_per_dispatcher": self.activation_per_dispatcher,
            "background_activation": self.background_activation,
            "foreground_activation": self.foreground_activation,
            "epochs_run": len(self.history), "seconds": round(self.seconds, 2),
            "stopped_early": self.stopped_early,
        }


Progress = Callable[[TrainEvent], None]


# -- configuration ----------------------------------------------------------------------------

@dataclass
class _Resolved:
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


def timm_architecture(name: str) -> dict[str, Any]:
    """The ViT shape behind a timm model name, read from a model built on the meta device
    (no memory, no download). Raises :class:`ConfigError` for anything DyT cannot adapt."""
    import timm
    import torch
    from torch import nn

    if not timm.is_model(name):
        options = [n for n in timm.list_models("vit_*") if "patch" in n]
        from .config import closest

        raise ConfigError(f"unknown timm architecture '{name}'",
                          f"{closest(name, options)}pass a timm ViT name such as "
                          "vit_tiny_patch16_224 or vit_base_patch16_224")
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as exc:  # noqa: BLE001 - timm's own refusal, in one line
        raise ConfigError(f"timm cannot build '{name}': {str(exc).strip().splitlines()[0]}",
                          "pass a plain ViT name such as vit_base_patch16_224") from None
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"'{name}' is a {type(model).__name__}, not a ViT",
                          "DyT adapts timm VisionTransformer models such as vit_base_patch16_224")
    blk = model.blocks[0]
    img = model.patch_embed.img_size
    patch = model.patch_embed.patch_size
    arch = dict(img_size=int(img[0]), patch_size=int(patch[0]), embed_dim=int(model.embed_dim),
                depth=len(model.blocks), num_heads=int(blk.attn.num_heads),
                mlp_ratio=float(blk.mlp.fc1.out_features) / float(model.embed_dim))
    problems = []
    if img[0] != img[1] or patch[0] != patch[1]:
        problems.append("non-square images or patches")
    if model.global_pool != "token" or not model.has_class_token or model.no_embed_class:
        problems.append("no CLS-token classifier")
    if getattr(model, "num_reg_tokens", 0):
        problems.append("register tokens")
    act = getattr(blk.mlp, "act", None)
    if not (isinstance(act, nn.GELU) and act.approximate == "none"):
        problems.append(f"activation {type(act).__name__} (DyT blocks use exact GELU)")
    eps = getattr(blk.norm1, "eps", None)
    if eps is not None and abs(eps - 1e-6) > 1e-12:
        problems.append(f"LayerNorm eps {eps:g} (DyT blocks use 1e-6)")
    if not problems:
        theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()
                  if not k.startswith("head.")}
        ours = _backbone_shapes(DyTConfig(**arch, num_classes=2))
        extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        if extra:
            problems.append(f"extra parameters {', '.join(extra[:3])}")
        if missing:
            problems.append(f"missing parameters {', '.join(missing[:3])}")
        if not extra and not missing:
            bad = [k for k in theirs if theirs[k] != ours[k]]
            if bad:
                problems.append(f"different shapes for {', '.join(bad[:3])}")
    if problems:
        raise ConfigError(f"timm architecture '{name}' is not a plain ViT DyT can adapt: "
                          f"{'; '.join(problems)}",
                          "pass a plain ViT such as vit_tiny_patch16_224, vit_small_patch16_224 "
                          "or vit_base_patch16_224")
    return arch


def _backbone_shapes(config: DyTConfig) -> dict[str, tuple[int, ...]]:
    import torch

    from .model import build_model

    with torch.device("meta"):
        model = build_model(config.validate(), init_weights=False)
    dyt = set(model.dyt_parameter_names())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k not in dyt and not k.startswith("head.")}


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


# -- weights ----------------------------------------------------------------------------------

def read_backbone_weights(path: str | Path) -> dict[str, "torch.Tensor"]:
    """A state dict from a local file, read by :mod:`dyt_edge.checkpoint` without running any
    code the file carries (safetensors, or the restricted unpickler; TorchScript refused).

    The usual wrappers (``{'model': ...}``, ``{'state_dict': ...}``, ``module.`` prefixes) are
    unwrapped. Unlike :func:`dyt_edge.checkpoint.read_checkpoint`, the tensors need not form a
    DyT model: a plain timm ViT state dict is the common case.
    """
    from . import checkpoint as ck

    reader = getattr(ck, "read_state_dict", None)
    if reader is not None:
        return dict(reader(path))
    p = Path(path).expanduser()
    where = str(path)
    size = ck._check_file(p, where)
    head = ck._read_head(p, where)
    if ck._is_safetensors(head, size):
        raw, _ = ck._read_safetensors(p, where)
    else:
        obj = ck._torch_load(p, where, head)
        if isinstance(obj, dict):
            for key in ("state_dict", "model_state", "module"):
                if key in obj and isinstance(obj[key], dict) and "model" not in obj:
                    obj = obj[key]
                    break
        raw, _, _ = ck._split_layout(obj, where)
    sd = ck._clean_state_dict(raw, where)
    if not sd:
        raise CheckpointError(f"{where} holds no tensors",
                              "pass a timm/DyT state dict as .safetensors or .pth")
    return sd


def load_backbone(model: "DyTVisionTransformer", state: dict[str, "torch.Tensor"],
                  source: str) -> list[str]:
    """Copy a timm ViT (or DyT) state dict's backbone into ``model``; return notes.

    Keys are timm's names (identical to ours). ``pos_embed`` and the patch embedding are
    resampled when the image or patch size differs; the head is loaded only when its shape
    matches; DyT parameters (adapters, dispatchers) are loaded when present.
    """
    import torch
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    notes: list[str] = []
    ours = model.state_dict()
    dyt = set(model.dyt_parameter_names())
    backbone = [k for k in ours if k not in dyt and not k.startswith("head.")]
    missing = [k for k in backbone if k not in state]
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} backbone tensor(s) of this architecture, e.g. "
            f"{', '.join(missing[:3])}",
            "pass --arch matching the weights (a plain timm ViT state dict)")
    new: dict[str, torch.Tensor] = {}
    cfg = model.config
    for k in backbone:
        v = state[k].detach().to(torch.float32)
        if k == "pos_embed" and v.shape != ours[k].shape:
            if v.ndim != 3 or v.shape[-1] != ours[k].shape[-1]:
                raise CheckpointError(f"{source}: pos_embed {list(v.shape)} does not fit width "
                                      f"{cfg.embed_dim}", "pass --arch matching the weights")
            old = int(round(math.sqrt(v.shape[1] - 1)))
            v = resample_abs_pos_embed(v, [cfg.grid_size, cfg.grid_size], [old, old],
                                       num_prefix_tokens=1)
            notes.append(f"pos_embed resampled from {old}x{old} to "
                         f"{cfg.grid_size}x{cfg.grid_size} patches")
        elif k == "patch_embed.proj.weight" and v.shape != ours[k].shape and \
                v.shape[:2] == ours[k].shape[:2]:
            v = resample_patch_embed(v, [cfg.patch_size, cfg.patch_size])
            notes.append(f"patch embedding resampled to patch {cfg.patch_size}")
        if v.shape != ours[k].shape:
            raise CheckpointError(f"{source}: {k} has shape {list(v.shape)}, this "
                                  f"architecture needs {list(ours[k].shape)}",
                                  "pass --arch (and --img-size/--patch-size) matching the weights")
        new[k] = v
    extra_dyt = [k for k in ours if k in dyt and k in state and state[k].shape == ours[k].shape]
    for k in extra_dyt:
        new[k] = state[k].detach().to(torch.float32)
    if extra_dyt:
        notes.append(f"{len(extra_dyt)} adapter/dispatcher/head tensor(s) loaded from {source}")
    elif "head.weight" in state:
        notes.append("classifier head re-initialised for this dataset's classes")
    model.load_state_dict(new, strict=False)
    return notes


# -- the recipe -------------------------------------------------------------------------------

def dyt_loss(logits_dyn: "torch.Tensor", logits_full: "torch.Tensor", masks: "torch.Tensor",
             labels: "torch.Tensor", target_rate: float) -> tuple["torch.Tensor", dict[str, float]]:
    """The paper's loss; returns (loss, its terms as floats)."""
    import torch.nn.functional as F

    ce_dyn = F.cross_entropy(logits_dyn, labels)
    ce_full = F.cross_entropy(logits_full, labels)
    kl = F.kl_div(F.log_softmax(logits_dyn, dim=-1), F.softmax(logits_full, dim=-1).detach(),
                  reduction="batchmean")
    rate = masks.mean()
    rate_loss = RATE_LOSS_WEIGHT * (rate - target_rate) ** 2
    loss = ce_dyn + ce_full + kl + rate_loss
    return loss, {"loss": float(loss.detach()), "ce_dynamic": float(ce_dyn.detach()),
                  "ce_complete": float(ce_full.detach()), "kl": float(kl.detach()),
                  "rate_loss": float(rate_loss.detach()), "activation": float(rate.detach())}


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _shift_batch(x: "torch.Tensor", patch: int, fill: "torch.Tensor",
                 gen: "torch.Generator") -> "torch.Tensor":
    """Translate each image horizontally by -1, 0 or +1 patch (whole patches, so the patch grid
    still aligns with the content), filling with the background value.

    Horizontal only: the outer columns of the 8x8 digits are almost always empty (column 0 in
    99% of the images, column 7 in 88%), while every digit touches the top and bottom rows, so
    a vertical shift would crop strokes.
    """
    import torch

    b, _, h, w = x.shape
    shifts = (torch.randint(-1, 2, (b,), generator=gen) * patch).tolist()
    out = fill.view(1, 3, 1, 1).expand(b, 3, h, w).clone()
    for i, dx in enumerate(shifts):
        if dx >= 0:
            out[i, :, :, dx:] = x[i, :, :, :w - dx]
        else:
            out[i, :, :, :w + dx] = x[i, :, :, -dx:]
    return out


def _affine_batch(x: "torch.Tensor", patch: int, fill: "torch.Tensor",
                  gen: "torch.Generator") -> "torch.Tensor":
    """A small random affine transform per image (shift up to half a patch, rotation up to 8
    degrees, scale 0.95-1.05; bilinear), filling with the background value."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=gen) * 2 - 1
    shift = u[:, :2] * (patch / 2) * 2 / torch.tensor([w, h])
    angle = u[:, 2] * math.radians(8)
    scale = 1 + 0.05 * u[:, 3]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    f = fill.view(1, 3, 1, 1).to(x.dtype)
    return F.grid_sample(x - f, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + f


def _init_pos_embed(model, how: Any) -> None:
    """Random init only: position embeddings that are not tiny. timm draws them with std 0.02;
    from scratch on 1.4k images that leaves attention uniform for many epochs. ``how`` is
    ``"sincos"`` (2-D sine-cosine values, then learned) or a standard deviation."""
    if how == "sincos" and model.config.embed_dim % 4 == 0:
        from timm.layers import build_sincos2d_pos_embed

        g = model.config.grid_size
        pe = build_sincos2d_pos_embed([g, g], dim=model.config.embed_dim)
        model.pos_embed[0, 0].zero_()
        model.pos_embed[0, 1:].copy_(pe.to(model.pos_embed.dtype))
    else:  # sincos needs a width divisible by 4; otherwise a std of 0.5
        model.pos_embed.normal_(0.0, 0.5 if how == "sincos" else float(how))


def mimetic_init(model, alpha1: float = 0.7, beta1: float = 0.7, alpha2: float = 0.4,
                 beta2: float = 0.4) -> None:
    """Mimetic initialisation of self-attention (Trockman & Kolter, 2023): per head
    ``W_q^T W_k ~ alpha1 Z + beta1 I`` and ``W_proj W_v ~ alpha2 Z - beta2 I`` (Z Gaussian with
    variance 1/d), the structure attention layers of pretrained ViTs show. An initialisation
    only (the architecture is unchanged); it makes a ViT trained from scratch on a small dataset
    learn faster and generalise better. Draws from torch's global RNG."""
    import torch

    for blk in model.dyt_blocks:
        qkv, proj = blk.attn.qkv, blk.attn.proj
        d = qkv.weight.shape[1]
        heads = blk.attn.num_heads
        hd = d // heads
        eye = torch.eye(d)
        for h in range(heads):
            z = torch.randn(d, d) / math.sqrt(d)
            u, s, vh = torch.linalg.svd(alpha1 * z + beta1 * eye)
            r = s[:hd].sqrt()
            qkv.weight[h * hd:(h + 1) * hd] = (u[:, :hd] * r).T
            qkv.weight[d + h * hd:d + (h + 1) * hd] = r[:, None] * vh[:hd]
        z = torch.randn(d, d) / math.sqrt(d)
        u, s, vh = torch.linalg.svd(alpha2 * z - beta2 * eye)
        r = s.sqrt()
        qkv.weight[2 * d:] = r[:, None] * vh
        proj.weight.copy_(u * r)


def _param_groups(model, weight_decay: float, gate_lr_scale: float = 1.0):
    decay, no_decay, gates = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "_token_select." in name:
            gates.append(p)
        elif p.ndim <= 1 or name in ("pos_embed", "cls_token") or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
              {"params": gates, "weight_decay": 0.0, "lr_scale": gate_lr_scale}]
    return [g for g in groups if g["params"]]


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Evaluation:
    accuracy: float
    accuracy_complete: float
    masks: "torch.Tensor"
    """[N, L, P] bool, exact dispatch."""
    predictions: "torch.Tensor"


def evaluate(model: "DyTVisionTransformer", images: "torch.Tensor", labels: "torch.Tensor",
             batch_size: int = 256) -> Evaluation:
    """Held-out accuracy with exact dispatch (eval, ``topk``) and with every token active."""
    import torch

    model.eval()
    preds, preds_full, masks = [], [], []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = images[s:s + batch_size]
            with model.dispatching("topk"):
                logits, m = model(x, return_masks=True)
            with model.dispatching("complete"):
                logits_full = model(x)
            preds.append(logits.argmax(-1))
            preds_full.append(logits_full.argmax(-1))
            masks.append(m)
    p, pf = torch.cat(preds), torch.cat(preds_full)
    return Evaluation(float((p == labels).float().mean()), float((pf == labels).float().mean()),
                      torch.cat(masks), p)


def patch_background(raw: "torch.Tensor", patch: int) -> "torch.Tensor":
    """[N, 3, H, W] images in [0, 1] -> [N, P] bool: every pixel of the patch is 0 (black)."""
    import torch.nn.functional as F

    peak = F.max_pool2d(raw.amax(dim=1, keepdim=True), patch)            # [N, 1, g, g]
    return (peak < 0.5 / 255).flatten(1)


def background_rates(masks: "torch.Tensor", background: "torch.Tensor"
                     ) -> tuple[float, float, list[float], list[float]]:
    """Activation on background vs foreground patches: overall, and per dispatcher."""
    m = masks.float()                                                   # [N, L, P]
    bg = background.unsqueeze(1).expand_as(m).float()
    fg = 1.0 - bg
    bg_per = ((m * bg).sum(dim=(0, 2)) / bg.sum(dim=(0, 2)).clamp(min=1)).tolist()
    fg_per = ((m * fg).sum(dim=(0, 2)) / fg.sum(dim=(0, 2)).clamp(min=1)).tolist()
    bg_all = float((m * bg).sum() / bg.sum().clamp(min=1))
    fg_all = float((m * fg).sum() / fg.sum().clamp(min=1))
    return bg_all, fg_all, bg_per, fg_per


SHADES = " .:-=+*#%@"


def dispatch_picture(raw: "torch.Tensor", masks: "torch.Tensor", labels: "torch.Tensor",
                     predictions: "torch.Tensor", patch: int, dispatchers: list[str],
                     count: int = 3) -> str:
    """ASCII: a few images (one character per patch, by brightness) next to each dispatcher's
    token map (``#`` active: the token runs the sub-block; ``.`` skipped)."""
    import torch.nn.functional as F

    grid = int(round(math.sqrt(masks.shape[-1])))
    chosen, seen = [], set()
    for i in range(len(labels)):
        if int(labels[i]) not in seen:
            seen.add(int(labels[i]))
            chosen.append(i)
        if len(chosen) == count:
            break
    bright = F.avg_pool2d(raw.mean(dim=1, keepdim=True), patch)[:, 0]   # [N, g, g]
    heads = ["image"] + [d.replace("blocks.", "L").replace(".", " ") for d in dispatchers]
    width = max(grid, max(len(h) for h in heads))
    lines = []
    for i in chosen:
        lines.append(f"label {int(labels[i])}, predicted {int(predictions[i])}, "
                     f"{float(masks[i].float().mean()):.0%} of patch tokens active")
        lines.append("  ".join(h.ljust(width) for h in heads).rstrip())
        m = masks[i].view(len(dispatchers), grid, grid)
        for r in range(grid):
            cells = ["".join(SHADES[min(len(SHADES) - 1, int(float(v) * len(SHADES)))]
                             for v in bright[i, r]).ljust(width)]
            for d in range(len(dispatchers)):
                cells.append("".join("#" if bool(v) else "." for v in m[d, r]).ljust(width))
            lines.append("  ".join(cells).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


class _Settings:
    """Threads and determinism for the run, restored afterwards."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> "_Settings":
        import torch

        self.old_threads = torch.get_num_threads()
        self.old_det = torch.are_deterministic_algorithms_enabled()
        self.old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.old_threads)
        torch.use_deterministic_algorithms(self.old_det, warn_only=self.old_warn)


def train(cfg: TrainConfig, progress: Optional[Progress] = None) -> TrainResult:
    """Train a DyT model per ``cfg``; evaluate it on the held-out split; save it if asked."""
    import torch

    from .data import data_name, load_images
    from .model import build_model

    t_start = time.perf_counter()
    res = resolve(cfg)
    rc = res.cfg

    def emit(kind: str, **kw: Any) -> None:
        if progress is not None:
            progress(TrainEvent(kind, elapsed_s=time.perf_counter() - t_start, **kw))

    notes = list(res.notes)
    for note in notes:
        emit("note", message=note)

    with _Settings(int(rc.threads)):
        seed_everything(rc.seed)
        pre = model_config(rc, 2).preprocessing
        train_set = load_images(rc.data, pre, split="train", limit=rc.limit, seed=rc.data_seed)
        test_set = load_images(rc.data, pre, split="test", seed=rc.data_seed)
        name = data_name(rc.data)
        for s in (train_set, test_set):
            if s.labels is None:
                raise DataError(f"{name} has no labels, training needs them",
                                "use class sub-folders (ImageFolder) or an .npz with 'labels'")
        num_classes = max(train_set.num_classes or 0, test_set.num_classes or 0)
        if num_classes < 2:
            raise DataError(f"{name} has {num_classes} class(es), training needs at least 2")
        if len(train_set) < 2:
            raise DataError(f"{name} has only {len(train_set)} training image(s)")
        skipped = train_set.skipped + test_set.skipped
        if skipped:
            emit("note", message=f"{skipped} unreadable image file(s) skipped")
            notes.append(f"{skipped} unreadable image file(s) skipped")
        mcfg = model_config(rc, num_classes)
        emit("note", message=(
            f"{name}: {len(train_set)} training / {len(test_set)} held-out images, "
            f"{num_classes} classes; ViT {mcfg.img_size}px patch {mcfg.patch_size} "
            f"({mcfg.num_patches} patch tokens), width {mcfg.embed_dim}, depth {mcfg.depth}, "
            f"{mcfg.num_heads} heads; {mcfg.variant} dispatch, {mcfg.adapter_kind} "
            f"bottleneck {mcfg.adapter_dim}; target rate {rc.target_rate}; "
            f"{rc.threads} thread(s)"))

        seed_everything(rc.seed)
        model = build_model(mcfg)
        gates_loaded = False
        if rc.weights is not None:
            state = read_backbone_weights(rc.weights)
            gates_loaded = any("_token_select." in k for k in state)
            for note in load_backbone(model, state, Path(rc.weights).name):
                notes.append(note)
                emit("note", message=note)
        with torch.no_grad():
            if rc.weights is None and rc.attn_init == "mimetic":
                mimetic_init(model)
            if rc.weights is None and rc.pos_embed_init != "timm":
                _init_pos_embed(model, rc.pos_embed_init)
            if not gates_loaded:
                for ts in model.token_selects:
                    ts.mlp_head.bias.fill_(float(rc.gate_bias))
        if rc.freeze_backbone:
            trainable = set(model.dyt_parameter_names())
            for n, p in model.named_parameters():
                p.requires_grad_(n in trainable)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in model.parameters())
        emit("note", message=f"training {n_train:,} of {n_total:,} parameters")

        history, stopped_early, seconds = _fit(model, rc, train_set, pre, emit, t_start)
        stopped_early = bool(stopped_early)
        if stopped_early:
            notes.append(f"stopped by the time limit after {len(history)} epoch(s)")

        ev = evaluate(model, test_set.images, test_set.labels)
        model.set_dispatch("topk")
        masks = ev.masks
        per = masks.float().mean(dim=(0, 2)).tolist()
        result = TrainResult(
            model=model, config=rc, model_config=mcfg, history=history,
            accuracy=ev.accuracy, accuracy_complete=ev.accuracy_complete,
            activation_mean=float(masks.float().mean()), activation_per_dispatcher=per,
            dispatchers=mcfg.dispatcher_names, seconds=seconds, total_seconds=0.0,
            train_size=len(train_set), test_size=len(test_set), data_name=name,
            skipped=skipped, notes=notes, stopped_early=stopped_early)
        if rc.data == "digits":
            raw = test_set.raw(pre)
            bg = patch_background(raw, mcfg.patch_size)
            (result.background_activation, result.foreground_activation,
             result.background_per_dispatcher, result.foreground_per_dispatcher) = \
                background_rates(masks, bg)
            result.showcase = dispatch_picture(raw, masks, test_set.labels, ev.predictions,
                                               mcfg.patch_size, mcfg.dispatcher_names)
        emit("eval", accuracy=ev.accuracy, activation=result.activation_mean)

        if rc.output is not None:
            result.checkpoint = _save(model, rc, result,
                                      class_names=train_set.class_names or test_set.class_names)
    result.total_seconds = time.perf_counter() - t_start
    emit("done", accuracy=result.accuracy, activation=result.activation_mean)
    return result


def _fit(model, rc: TrainConfig, train_set: "ImageSet", pre: Preprocessing,
         emit: Callable[..., None], t_start: float) -> tuple[list[dict[str, float]], bool, float]:
    import torch

    images, labels = train_set.images, train_set.labels
    n = len(images)
    bs = min(int(rc.batch_size), n)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * int(rc.epochs)
    warmup = min(steps_per_epoch, max(1, total // 10))
    params = _param_groups(model, float(rc.weight_decay), float(rc.gate_lr_scale))
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    opt = torch.optim.AdamW(params, lr=float(rc.lr), betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(rc.seed)
    fill = ((torch.zeros(3) - torch.tensor(pre.mean)) / torch.tensor(pre.std)).to(images.dtype)
    history: list[dict[str, float]] = []
    emit("start", epochs=int(rc.epochs), steps=total)
    t0 = time.perf_counter()
    step = 0
    stopped = False
    model.train()
    for epoch in range(int(rc.epochs)):
        te = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        correct = 0
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            x, y = images[idx], labels[idx]
            if rc.augment == "shift":
                x = _shift_batch(x, int(rc.patch_size), fill, gen)
            elif rc.augment == "affine":
                x = _affine_batch(x, int(rc.patch_size), fill, gen)
            lr = _lr_at(step, total, warmup, float(rc.lr))
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            logits, masks = model(x, return_masks=True)
            with model.dispatching("complete"):
                logits_full = model(x)
            loss, terms = dyt_loss(logits, logits_full, masks, y, float(rc.target_rate))
            if not math.isfinite(terms["loss"]):
                raise ConfigError(f"training diverged at epoch {epoch + 1} (loss "
                                  f"{terms['loss']})", "lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            correct += int((logits.detach().argmax(-1) == y).sum())
            emit("step", epoch=epoch + 1, epochs=int(rc.epochs), step=step, steps=total,
                 loss=terms["loss"], activation=terms["activation"])
            if rc.time_limit_s is not None and time.perf_counter() - t_start > rc.time_limit_s:
                stopped = True
                break
        seen = min(n, (s + bs)) if stopped else n
        row = {k: v / seen for k, v in sums.items()}
        row.update(epoch=epoch + 1, train_accuracy=correct / seen, lr=lr,
                   seconds=time.perf_counter() - te)
        history.append(row)
        emit("epoch", epoch=epoch + 1, epochs=int(rc.epochs), step=step, steps=total,
             loss=row["loss"], activation=row["activation"], accuracy=row["train_accuracy"])
        if stopped:
            break
    model.eval()
    return history, stopped, time.perf_counter() - t0


def _save(model, rc: TrainConfig, result: TrainResult,
          class_names: Optional[list[str]] = None) -> Path:
    """The checkpoint, with the training record and (when the data names them, one per class)
    the class names in its metadata."""
    from .checkpoint import save_model
    from .class_names import METADATA_KEY

    metadata = {
        "dyt_edge.training": json.dumps(rc.to_dict(), sort_keys=True),
        "dyt_edge.training_result": json.dumps(result.summary(), sort_keys=True),
    }
    if class_names and len(class_names) == model.config.num_classes \
            and len(set(class_names)) == len(class_names):
        metadata[METADATA_KEY] = json.dumps([str(n) for n in class_names])
    return Path(save_model(model, Path(rc.output), metadata=metadata))
