"""Held-out evaluation of a trained model: accuracy with exact dispatch (eval mode, ``topk``:
the hard decision ``sigmoid(logit) > 0.5``, skipped tokens really skipped) and with every token
active, and (digits) the activation on background vs digit patches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..model import DyTVisionTransformer


@dataclass
class Evaluation:
    """What :func:`evaluate` measured on the held-out images."""

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
