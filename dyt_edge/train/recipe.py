"""The paper's training recipe: the loss, the optimiser's parameter groups, the learning-rate
schedule (linear warmup, then cosine) and the optional augmentations.

One step (the loss of the published DyT training code)::

    logits_d, masks = model(x, return_masks=True)   # straight-through Gumbel-sigmoid, tau 5
    with model.dispatching("complete"):
        logits_c = model(x)                             # the same network, every token active
    loss = CE(logits_d, y) + CE(logits_c, y)
         + KL(softmax(logits_c).detach() || softmax(logits_d))     # batchmean
         + 2.0 * (masks.mean() - r) ** 2                # mean over batch, dispatchers, tokens
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

RATE_LOSS_WEIGHT = 2.0
AUGMENTS = ("none", "shift", "affine")


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


def shift_batch(x: "torch.Tensor", patch: int, fill: "torch.Tensor",
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


def affine_batch(x: "torch.Tensor", patch: int, fill: "torch.Tensor",
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


def augment(x: "torch.Tensor", kind: str, patch: int, fill: "torch.Tensor",
            gen: "torch.Generator") -> "torch.Tensor":
    """The batch ``x`` under augmentation ``kind`` (one of :data:`AUGMENTS`)."""
    if kind == "shift":
        return shift_batch(x, patch, fill, gen)
    if kind == "affine":
        return affine_batch(x, patch, fill, gen)
    return x


def param_groups(model, weight_decay: float, gate_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: weights decay; biases, norms,
    ``pos_embed`` and ``cls_token`` do not; the dispatchers' gates do not and take their own
    learning-rate multiplier (``lr_scale``)."""
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


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """The learning rate of ``step`` (0-based) out of ``total``: linear warmup over ``warmup``
    steps to ``base``, then cosine decay to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
