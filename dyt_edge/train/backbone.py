"""The backbone: the ViT shape behind a timm name (probed on the meta device, never
downloaded), local weights read without running any of their code and copied in, and the
initialisations that help a backbone trained from random init.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import DyTConfig, closest
from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import DyTVisionTransformer


def timm_architecture(name: str) -> dict[str, Any]:
    """The ViT shape behind a timm model name, read from a model built on the meta device
    (no memory, no download). Raises :class:`ConfigError` for anything DyT cannot adapt."""
    import timm
    import torch
    from torch import nn

    if not timm.is_model(name):
        options = [n for n in timm.list_models("vit_*") if "patch" in n]
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

    from ..model import build_model

    with torch.device("meta"):
        model = build_model(config.validate(), init_weights=False)
    dyt = set(model.dyt_parameter_names())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k not in dyt and not k.startswith("head.")}


def read_backbone_weights(path: str | Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a local weights file (:func:`dyt_edge.checkpoint.read_state_dict`: no code
    the file carries is run, the usual wrappers are removed), refused when it holds none. Unlike
    :func:`dyt_edge.checkpoint.read_checkpoint`, the tensors need not form a DyT model: a plain
    timm ViT state dict is the common case."""
    from ..checkpoint import read_state_dict

    sd = read_state_dict(path)
    if not sd:
        raise CheckpointError(f"{path} holds no tensors",
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


def init_pos_embed(model, how: Any) -> None:
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
