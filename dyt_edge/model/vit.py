"""The DyT vision transformer: timm's VisionTransformer with :class:`DyTBlock` as ``block_fn``."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Iterator, Optional, Sequence, Union

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import DyTConfig, check_choice
from ..errors import ConfigError
from .dispatch import DEFAULT_DISPATCH, DISPATCH_MODES
from .layers import DyTBlock, TokenSelect


class DyTVisionTransformer(VisionTransformer):
    """A ViT whose blocks adapt with adapters and skip tokens with learned dispatchers.

    ``forward(images)`` returns logits; ``forward(images, return_masks=True)`` returns
    ``(logits, masks)`` with ``masks`` [B, L, P]: one row per dispatcher (``config.
    dispatcher_names``), one column per patch token; bool in eval mode (the decisions), the
    straight-through float masks in training mode.

    How skipping is executed is chosen with :meth:`set_dispatch` (default ``pack``).
    """

    def __init__(self, config: DyTConfig, *, init_weights: bool = True) -> None:
        config.validate()
        block_fn = partial(
            DyTBlock,
            variant=config.variant,
            adapter_kind=config.adapter_kind,
            adapter_dim=config.adapter_dim,
            adapter_scale=config.adapter_scale,
            adapter_scale_learnable=config.adapter_scale_learnable,
            adapter_layernorm=config.adapter_layernorm,
            num_experts=config.num_experts,
        )
        super().__init__(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=config.num_classes,
            global_pool="token",
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=True,
            class_token=True,
            block_fn=block_fn,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            weight_init="" if init_weights else "skip",
        )
        self.config = config
        if init_weights:
            for blk in self.dyt_blocks:
                blk.adaptmlp.reset_parameters()
        self.dispatch_mode = DEFAULT_DISPATCH
        self.capacity: Optional[Union[float, tuple[float, ...]]] = None
        self.set_dispatch(DEFAULT_DISPATCH)

    # -- dispatch ------------------------------------------------------------------------------
    @property
    def dyt_blocks(self) -> list[DyTBlock]:
        return list(self.blocks)  # type: ignore[arg-type]

    @property
    def token_selects(self) -> list[TokenSelect]:
        """The dispatchers in mask-row order."""
        return [ts for blk in self.dyt_blocks for ts in blk.token_selects]

    def set_dispatch(self, mode: str,
                     capacity: Optional[Union[float, Sequence[float]]] = None
                     ) -> "DyTVisionTransformer":
        """Choose how skipping runs: complete, mask, topk, pack or capacity.

        ``capacity`` (capacity mode only) is the fraction of patch tokens each dispatcher may
        keep: one float for all, or one per block.
        """
        check_choice("dispatch mode", mode, DISPATCH_MODES)
        slots: list[Optional[int]] = [None] * self.config.depth
        if mode == "capacity":
            if capacity is None:
                raise ConfigError("capacity mode needs a capacity",
                                  "pass --capacity C with C in (0, 1], e.g. 0.6")
            caps = ([float(capacity)] * self.config.depth
                    if isinstance(capacity, (int, float)) else [float(c) for c in capacity])
            if len(caps) != self.config.depth:
                raise ConfigError(f"got {len(caps)} capacities for {self.config.depth} blocks",
                                  "pass one capacity, or one per block")
            slots = [self.config.capacity_slots(c) for c in caps]
            self.capacity = caps[0] if len(set(caps)) == 1 else tuple(caps)
        elif capacity is not None:
            raise ConfigError(f"--capacity applies to capacity mode only, not '{mode}'",
                              "drop --capacity or pass --dispatch capacity")
        else:
            self.capacity = None
        for blk, k in zip(self.dyt_blocks, slots):
            blk.dispatch_mode = mode
            blk.capacity_k = k
        self.dispatch_mode = mode
        return self

    @contextlib.contextmanager
    def dispatching(self, mode: str, capacity=None) -> Iterator["DyTVisionTransformer"]:
        """Temporarily run in another dispatch mode (e.g. the complete pass in training)."""
        old_mode, old_cap = self.dispatch_mode, self.capacity
        self.set_dispatch(mode, capacity)
        try:
            yield self
        finally:
            self.set_dispatch(old_mode, old_cap)

    def capacity_slots(self) -> list[int]:
        """Patch slots per dispatcher row of the masks (capacity mode)."""
        per_block = [blk.capacity_k for blk in self.dyt_blocks]
        if any(k is None for k in per_block):
            raise ConfigError("the model is not in capacity mode")
        sites = len(self.config.dispatch_sites)
        return [int(k) for k in per_block for _ in range(sites)]  # type: ignore[arg-type]

    # -- forward -------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, return_masks: bool = False):  # type: ignore[override]
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.norm_pre(x)
        masks = []
        for blk in self.dyt_blocks:
            x, m = blk(x, want_mask=return_masks)
            masks.append(m)
        x = self.norm(x)
        if return_masks:
            return x, torch.cat(masks, dim=1)
        return x

    def forward(self, x: torch.Tensor, return_masks: bool = False):  # type: ignore[override]
        if return_masks:
            feats, masks = self.forward_features(x, return_masks=True)
            return self.forward_head(feats), masks
        return self.forward_head(self.forward_features(x))

    # -- parameter groups ----------------------------------------------------------------------
    def dyt_parameter_names(self) -> list[str]:
        """Names of the DyT-specific parameters: adapters, dispatchers and the head."""
        keys = ("adaptmlp.", "_token_select.", "head.")
        return [n for n, _ in self.named_parameters() if any(k in n for k in keys)]


def build_model(config: DyTConfig, *, init_weights: bool = True) -> DyTVisionTransformer:
    """Build a DyT ViT in eval mode from a config (random init unless weights are loaded)."""
    return DyTVisionTransformer(config, init_weights=init_weights).eval()
