"""Synthetic DyT models of realistic size: random weights (nothing is downloaded) at the scales of
a trained ViT, with gates calibrated to a target activation rate.

They stand in for a trained checkpoint wherever one cannot be shipped: the demo's ViT-B/16 leg,
the benchmarks, and the tests that must see what a real ViT-B does to fp32 rounding. They are
random models: their accuracy means nothing, and everything that reports on them says so.

``synthetic_model(config=None, rate=0.5, seed=0)`` builds one (ViT-B/16, ``mlp`` variant, 1000
classes, adapters of bottleneck 64 and scale 0.1, the image recipe, by default).

Why not timm's initialisation: a freshly initialised ViT (weights of std 0.02) is numerically
tame. Its attention is nearly uniform, its residual stream small, its logits around 1, and fp32
stays ~1e-6 away from float64 on the logits: a fixed tolerance looks right on it and then fails
on a trained ViT-B, where fp32 is ~3e-4 away from float64 at logits of ~8. The scales below
(:func:`realistic_weights_`) reproduce that:

* weights ~ N(0, 1 / fan_in) (unit gain: each projection keeps its input's scale);
* LayerNorm gains uniform in [0.5, 1.5], biases ~ N(0, 0.05^2), position embeddings
  ~ N(0, 0.1^2), a CLS token ~ N(0, 0.5^2);
* four residual-stream channels offset by +30 through the patch embedding (trained ViTs carry a
  few such large-magnitude channels through every block);
* query and key projections scaled by 4.5, so that attention is as peaked as in a trained
  model: the sharpness of the softmax is what makes rounding error grow over 12 blocks (measured
  with torch 2.14 on 8 generated images: scale 1 gives ~7e-6 against float64, 4.5 gives ~4e-4,
  8 makes the model chaotic);
* adapters that are not the zero function (down ~ N(0, 1 / C), up ~ N(0, 1 / r)), gates
  ~ N(0, 0.01 / C), and the classifier scaled so that the largest logit on generated images is 8.

:func:`calibrate_gates_` then sets each gate's bias so that about ``rate`` of the patch tokens
of generated images are active in its layer (one pass, each bias set as the pass reaches it,
given the decisions of the gates before it). Generated images differ in content (noise at three
scales, flat, gradients, blobs), so the number of active tokens varies from image to image, as
on real images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from .config import DyTConfig, Preprocessing

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .model import DyTVisionTransformer

QK_GAIN = 4.5
STREAM_OUTLIER = 30.0
STREAM_OUTLIER_CHANNELS = 4
LOGIT_SCALE = 8.0
CALIBRATION_IMAGES = 16
LABEL = "synthetic: random weights at trained-ViT scales, gates calibrated (accuracy meaningless)"


def vitb16_config(**changes) -> DyTConfig:
    """ViT-B/16 at 224 px, ``mlp`` dispatch, bottleneck-64 adapters of scale 0.1, 1000 classes
    and the image recipe's preprocessing (resize 256, centre crop 224, ImageNet statistics)."""
    base = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                num_classes=1000, variant="mlp", adapter_dim=64, adapter_scale=0.1,
                preprocessing=Preprocessing.imagenet(224))
    base.update(changes)
    return DyTConfig(**base).validate()


def synthetic_model(config: Optional[DyTConfig] = None, *, rate: float = 0.5, seed: int = 0,
                    calibration_images: int = CALIBRATION_IMAGES,
                    images: Optional["np.ndarray"] = None) -> "DyTVisionTransformer":
    """A DyT model with realistic random weights and gates calibrated to ``rate`` (see the module
    doc); eval mode, ``pack`` dispatch. ``rate`` >= 1 opens every gate. ``images`` (normalised,
    [N, C, H, W]) are what the gates are calibrated on; default: ``calibration_images``
    generated ones."""
    import torch

    from .model import build_model

    if not 0.0 < rate:
        raise ValueError(f"rate must be positive, got {rate}")
    torch.manual_seed(seed)
    model = build_model(config or vitb16_config())
    realistic_weights_(model, seed=seed)
    calibrate_gates_(model, rate, seed=seed + 1, images=calibration_images, given=images)
    model.eval()
    model.set_dispatch("pack")
    return model


def realistic_weights_(model: "DyTVisionTransformer", *, seed: int = 0) -> "DyTVisionTransformer":
    """Overwrite every weight of ``model`` at trained-ViT scales (in place; see the module doc).
    The classifier is scaled last, on generated images, to a largest logit of 8."""
    import torch

    from .data import generated_images

    cfg = model.config
    c = cfg.embed_dim
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std: float) -> "torch.Tensor":
        return torch.randn(shape, generator=g) * std

    def linear(layer, gain: float = 1.0) -> None:
        fan_in = layer.weight.shape[1]
        layer.weight.copy_(normal(layer.weight.shape, gain / math.sqrt(fan_in)))
        if layer.bias is not None:
            layer.bias.copy_(normal(layer.bias.shape, 0.05))

    def layernorm(ln) -> None:
        ln.weight.copy_(0.5 + torch.rand(ln.weight.shape, generator=g))
        ln.bias.copy_(normal(ln.bias.shape, 0.05))

    with torch.no_grad():
        proj = model.patch_embed.proj
        proj.weight.copy_(normal(proj.weight.shape, 1.0 / math.sqrt(proj.weight[0].numel())))
        proj.bias.copy_(normal(proj.bias.shape, 0.05))
        outliers = torch.randperm(c, generator=g)[:min(STREAM_OUTLIER_CHANNELS, c)]
        proj.bias[outliers] += STREAM_OUTLIER
        model.pos_embed.copy_(normal(model.pos_embed.shape, 0.1))
        model.cls_token.copy_(normal(model.cls_token.shape, 0.5))
        for blk in model.dyt_blocks:
            layernorm(blk.norm1)
            layernorm(blk.norm2)
            linear(blk.attn.qkv)
            blk.attn.qkv.weight[:2 * c] *= QK_GAIN            # queries and keys
            linear(blk.attn.proj)
            linear(blk.mlp.fc1)
            linear(blk.mlp.fc2)
            _adapter(blk.adaptmlp, normal)
            for ts in blk.token_selects:
                ts.mlp_head.weight.copy_(normal(ts.mlp_head.weight.shape, 0.1 / math.sqrt(c)))
                ts.mlp_head.bias.zero_()
        layernorm(model.norm)
        linear(model.head)
        model.head.bias.zero_()
        x = torch.from_numpy(generated_images(4, cfg.in_chans, cfg.img_size, seed=seed + 7))
        with model.dispatching("complete"):
            peak = float(model(x).abs().max())
        if peak > 0:
            model.head.weight.mul_(LOGIT_SCALE / peak)
    return model


def random_dispatch_weights_(model: "DyTVisionTransformer", *, seed: int = 0,
                             adapter_std: float = 0.1, gate_std: float = 0.3,
                             gate_bias: float = 0.0) -> "DyTVisionTransformer":
    """Only the parts DyT adds, random (in place): every adapter weight ~ N(0, adapter_std),
    every gate weight ~ N(0, gate_std), every gate bias ``gate_bias``; the backbone keeps its
    weights. Adapters and gates initialise to zero / near zero, so without this a model's
    adapters do nothing and its dispatch decisions are all alike."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaptmlp" in name:
                p.copy_(torch.randn(p.shape, generator=g) * adapter_std)
        for ts in model.token_selects:
            ts.mlp_head.weight.copy_(torch.randn(ts.mlp_head.weight.shape, generator=g) * gate_std)
            ts.mlp_head.bias.fill_(gate_bias)
    return model


def _adapter(adapter, normal) -> None:
    """Non-zero adapter weights (a trained adapter is not the zero function it starts as)."""
    if hasattr(adapter, "down_proj"):
        c, r = adapter.up_proj.weight.shape
        adapter.down_proj.weight.copy_(normal(adapter.down_proj.weight.shape, 1 / math.sqrt(c)))
        adapter.down_proj.bias.copy_(normal(adapter.down_proj.bias.shape, 0.05))
        adapter.up_proj.weight.copy_(normal(adapter.up_proj.weight.shape, 1 / math.sqrt(r)))
        adapter.up_proj.bias.copy_(normal(adapter.up_proj.bias.shape, 0.05))
    else:  # MoE adapter
        e, r, c = adapter.down_weight.shape
        adapter.down_weight.copy_(normal(adapter.down_weight.shape, 1 / math.sqrt(c)))
        adapter.down_bias.copy_(normal(adapter.down_bias.shape, 0.05))
        adapter.up_weight.copy_(normal(adapter.up_weight.shape, 1 / math.sqrt(r)))
        adapter.up_bias.copy_(normal(adapter.up_bias.shape, 0.05))
        adapter.router.weight.copy_(normal(adapter.router.weight.shape, 1 / math.sqrt(c)))
    if hasattr(adapter, "adapter_layer_norm_before"):
        adapter.adapter_layer_norm_before.weight.fill_(1.0)
        adapter.adapter_layer_norm_before.bias.zero_()


def calibrate_gates_(model: "DyTVisionTransformer", rate: float, *, seed: int = 1,
                     images: int = CALIBRATION_IMAGES,
                     given: Optional["np.ndarray"] = None) -> "DyTVisionTransformer":
    """Set every gate bias (in place) so that about ``rate`` of the patch tokens of ``images``
    generated images (or of the normalised images ``given``) are active in its dispatcher;
    ``rate`` >= 1 opens every gate (bias 1e4).

    One pass in dense ``mask`` mode: as the pass reaches a gate, its bias is shifted so that its
    logits are centred on their (1 - rate) quantile, given the decisions of the gates before."""
    import numpy as np
    import torch

    from .data import generated_images

    selects = model.token_selects
    if rate >= 1.0:
        with torch.no_grad():
            for ts in selects:
                ts.mlp_head.bias.fill_(1.0e4)
        return model
    cfg = model.config
    x = torch.from_numpy(np.ascontiguousarray(given, dtype=np.float32) if given is not None
                         else generated_images(images, cfg.in_chans, cfg.img_size, seed=seed))
    for ts in selects:
        original = ts.logits

        def calibrating(x_patch, _ts=ts, _original=original):
            out = _original(x_patch)
            q = float(np.quantile(out.detach().numpy(), 1.0 - rate))
            with torch.no_grad():
                _ts.mlp_head.bias.sub_(q)
            return out - q

        ts.logits = calibrating  # instance attribute shadows the method for this one pass
    try:
        with torch.no_grad(), model.dispatching("mask"):
            model(x, return_masks=True)
    finally:
        for ts in selects:
            ts.__dict__.pop("logits", None)
    return model


def pixel_images(n: int, size: int, seed: int = 0) -> "np.ndarray":
    """``n`` varied RGB images as uint8 [n, size, size, 3] (raw pixels, for data files): the
    generated images mapped to [0, 255]."""
    import numpy as np

    from .data import generated_images

    x = generated_images(n, 3, size, seed=seed) * 0.25 + 0.5
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


__all__ = ["LABEL", "calibrate_gates_", "pixel_images", "realistic_weights_",
           "synthetic_model", "vitb16_config"]
