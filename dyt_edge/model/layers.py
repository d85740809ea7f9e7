"""DyT building blocks on top of timm: the token gate, the adapters and the DyT block.

Parameter names follow the published DyT code (``mlp_token_select.mlp_head``,
``adaptmlp.down_proj`` / ``up_proj``, ``adaptmlp.scale``, ``adaptmlp.adapter_layer_norm_before``)
so its state_dicts load with a strict key check. The attention-side gates (``attn_token_select``,
``layer_token_select``) and the MoE-adapter keys (``adaptmlp.router``, ``adaptmlp.down_weight``,
...) are this project's own; the README documents them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.attention import Attention
from torch import nn

from .dispatch import full_mask, full_scores, run_dispatched

GUMBEL_TAU = 5.0


def gumbel_sigmoid_hard(logits: torch.Tensor, tau: float = GUMBEL_TAU) -> torch.Tensor:
    """Training gate: sigmoid of logits plus the difference of two Gumbel samples, over tau,
    thresholded at 0.5 with a straight-through gradient."""
    g1 = -torch.empty_like(logits).exponential_().log()
    g2 = -torch.empty_like(logits).exponential_().log()
    soft = torch.sigmoid((logits + g1 - g2) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


def _scale(scale: float, learnable: bool):
    """The adapter's output scale: a fixed float, or a parameter starting at 1 (learned)."""
    return nn.Parameter(torch.ones(1)) if learnable else float(scale)


class TokenSelect(nn.Module):
    """The token dispatcher: a linear gate on the un-normalised residual stream.

    Logits are computed in fp32 whatever precision the rest runs in: in fp16/bf16,
    ``sigmoid(logit) > 0.5`` rounds tiny positive logits to 0.5 and flips decisions.
    """

    def __init__(self, dim: int, tau: float = GUMBEL_TAU) -> None:
        super().__init__()
        self.mlp_head = nn.Linear(dim, 1)
        self.tau = tau

    def logits(self, x_patch: torch.Tensor) -> torch.Tensor:
        """[B, P, C] patch tokens -> [B, P] fp32 logits."""
        if torch.is_autocast_enabled(x_patch.device.type):
            with torch.autocast(device_type=x_patch.device.type, enabled=False):
                return self._logits(x_patch)
        return self._logits(x_patch)

    def _logits(self, x_patch: torch.Tensor) -> torch.Tensor:
        # fp32 at least: a float64 model (the rounding reference of export validation) keeps
        # float64.
        dtype = torch.promote_types(x_patch.dtype, torch.float32)
        w, b = self.mlp_head.weight.to(dtype), self.mlp_head.bias.to(dtype)
        return F.linear(x_patch.to(dtype), w, b).squeeze(-1)

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """Patch-token mask: straight-through Gumbel-sigmoid in training, else the published
        inference rule ``sigmoid(logit) > 0.5`` (bool)."""
        if self.training:
            return gumbel_sigmoid_hard(logits, self.tau)
        return torch.sigmoid(logits) > 0.5


class Adapter(nn.Module):
    """AdaptFormer's bottleneck adapter: Up(ReLU(Down(x))) * scale, optional LayerNorm."""

    def __init__(self, dim: int, bottleneck: int, scale: float = 0.1, learnable_scale: bool = False,
                 layernorm: str = "none") -> None:
        super().__init__()
        self.layernorm_option = layernorm
        if layernorm != "none":
            self.adapter_layer_norm_before = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale = _scale(scale, learnable_scale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # AdaptFormer's "lora" init: the adapter starts as the zero function.
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter_layer_norm_before(x) if self.layernorm_option == "in" else x

    def _out(self, up: torch.Tensor) -> torch.Tensor:
        up = up * self.scale
        return self.adapter_layer_norm_before(up) if self.layernorm_option == "out" else up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self.up_proj(F.relu(self.down_proj(self._in(x)))))


class MoEAdapter(Adapter):
    """MoE-adapter: N adapter experts merged per image by a router over the token mean.

    The router's softmax weights [B, E] merge the experts' down/up weights into one adapter per
    image, so the cost stays that of a single adapter (plus the tiny router).
    """

    def __init__(self, dim: int, bottleneck: int, num_experts: int = 4, scale: float = 0.1,
                 learnable_scale: bool = False, layernorm: str = "none") -> None:
        nn.Module.__init__(self)
        self.layernorm_option = layernorm
        self.num_experts = num_experts
        if layernorm != "none":
            self.adapter_layer_norm_before = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, num_experts)
        self.down_weight = nn.Parameter(torch.empty(num_experts, bottleneck, dim))
        self.down_bias = nn.Parameter(torch.zeros(num_experts, bottleneck))
        self.up_weight = nn.Parameter(torch.zeros(num_experts, dim, bottleneck))
        self.up_bias = nn.Parameter(torch.zeros(num_experts, dim))
        self.scale = _scale(scale, learnable_scale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for e in range(self.num_experts):
            nn.init.kaiming_uniform_(self.down_weight.data[e], a=math.sqrt(5))
        nn.init.zeros_(self.down_bias)
        nn.init.zeros_(self.up_weight)
        nn.init.zeros_(self.up_bias)
        nn.init.normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)

    def expert_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] adapter input -> [B, E] softmax routing weights."""
        return torch.softmax(self.router(x.mean(dim=1)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._in(x)
        w = self.expert_weights(x)                                       # [B, E]
        e, r, c = self.down_weight.shape
        down_w = (w @ self.down_weight.reshape(e, r * c)).reshape(-1, r, c)   # [B, r, C]
        up_w = (w @ self.up_weight.reshape(e, c * r)).reshape(-1, c, r)       # [B, C, r]
        h = F.relu(x @ down_w.transpose(1, 2) + (w @ self.down_bias).unsqueeze(1))
        up = h @ up_w.transpose(1, 2) + (w @ self.up_bias).unsqueeze(1)
        return self._out(up)


def key_padding_bias(key_valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Additive key-padding mask [B, 1, 1, K] of ``key_valid`` [B, K] in ``like``'s dtype and
    device: 0 for valid keys, the dtype's lowest value (exact zero weights) for padding."""
    bias = torch.zeros(key_valid.shape, dtype=like.dtype, device=like.device)
    return bias.masked_fill(~key_valid, torch.finfo(like.dtype).min)[:, None, None, :]


@contextmanager
def export_form(model: nn.Module):
    """While exporting: every :class:`DyTBlock` of ``model`` computes its attention in the form
    the export wants (:meth:`DyTBlock._core_export`: the same math, float rounding aside)."""
    blocks = [m for m in model.modules() if isinstance(m, DyTBlock)]
    before = [b.export_attention for b in blocks]
    for b in blocks:
        b.export_attention = True
    try:
        yield model
    finally:
        for b, was in zip(blocks, before):
            b.export_attention = was


def _mlp_residual(routed, x: torch.Tensor, adapted: torch.Tensor, i: int) -> torch.Tensor:
    """``x + MLP(x) [at the active tokens] + Adapter(x)``.

    Dense modes (``mask``, used in training, and ``complete``) add in the order
    ``x + mlp + adapter``, the order the published code and every trained dyt-edge model used:
    float addition is not associative, and a different order changes a training run's result
    (the digits demo loses half a point). Gathered and packed modes add ``mlp`` into
    ``x + adapter`` at the active tokens only (:meth:`~.dispatch.Routed.add_to`: one scatter,
    no dense zero-filled delta); they match ``mask`` to float rounding, as the tests check.
    """
    if routed.kind in ("dense", "masked"):
        out = routed.outs[i]
        if routed.kind == "masked":
            out = out * routed.mask.to(out.dtype)
        return x + out + adapted
    return routed.add_to(x + adapted, i)


class DyTBlock(nn.Module):
    """A pre-norm ViT block with an adapter and token dispatchers (timm ``block_fn``).

    ``variant`` decides where the gate sits (see :data:`dyt_edge.config.DISPATCH_SITES`):

    * ``mlp``:      x = x + Attn(LN1 x);  x = x + m*MLP(LN2 x) + Adapter(x)
    * ``attn``:     x = x + m*Attn_m(LN1 x);  x = x + MLP(LN2 x) + Adapter(x)
    * ``attn_mlp``: a gate before each sub-block, both as above
    * ``layer``:    one gate; active tokens run attention (among themselves) and the MLP;
                    every token gets the adapter

    ``Attn_m`` is attention among active tokens only (skipped tokens are neither queries nor
    keys/values). Gates read the un-normalised stream, patch tokens only; CLS is always active.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_layer: type[nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 *, variant: str = "mlp", adapter_kind: str = "adapter", adapter_dim: int = 64,
                 adapter_scale: float = 0.1, adapter_scale_learnable: bool = False,
                 adapter_layernorm: str = "none", num_experts: int = 4, **_timm_kwargs) -> None:
        super().__init__()
        self.variant = variant
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        if adapter_kind == "moe":
            self.adaptmlp = MoEAdapter(dim, adapter_dim, num_experts, adapter_scale,
                                       adapter_scale_learnable, adapter_layernorm)
        else:
            self.adaptmlp = Adapter(dim, adapter_dim, adapter_scale, adapter_scale_learnable,
                                    adapter_layernorm)
        if variant in ("attn", "attn_mlp"):
            self.attn_token_select = TokenSelect(dim)
        if variant in ("mlp", "attn_mlp"):
            self.mlp_token_select = TokenSelect(dim)
        if variant == "layer":
            self.layer_token_select = TokenSelect(dim)
        self.dispatch_mode = "mask"
        self.capacity_k: Optional[int] = None
        self.export_attention = False
        """Set while exporting (:func:`export_form`): attention in :meth:`_core_export`'s form."""

    # -- sub-blocks in the dispatch contract: fn(tokens, key_valid) -> tuple ------------------
    def _attn(self, t: torch.Tensor, key_valid: Optional[torch.Tensor]) -> torch.Tensor:
        bias = None if key_valid is None else key_padding_bias(key_valid, t)
        return self._self_attention(self.norm1(t), bias)

    def _exporting(self) -> bool:
        return self.export_attention and getattr(self.attn, "gate", None) is None

    def _self_attention(self, t: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """timm's attention of ``t`` [B, N, C] (additive key mask ``bias`` [B, 1, 1, N] or
        None); in its export form while exporting."""
        if not self._exporting():
            return self.attn(t, attn_mask=bias)
        attn = self.attn
        return attn.proj_drop(attn.proj(self._core_export(attn.qkv(t), bias)))

    def _core_export(self, qkv: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The attention core of ``qkv`` [B, K, 3A] -> [B, K, A] as the export traces it: q, k
        and v split off the heads axis and each transposed once ([0 2 1 3], k [0 2 3 1]), then
        an explicit ``softmax(q k^T * scale + bias) v``. OpenVINO's CPU plugin (2026.4) fuses
        that core with the q and v transposes into one attention kernel. timm's
        ``reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`` stays a standalone 5-D transpose there,
        and the exporter's form of ``scaled_dot_product_attention`` adds a scale multiply on q
        and k and a K transpose that is undone again (README, "Attention in the export")."""
        attn = self.attn
        b, k, _ = qkv.shape
        h = attn.num_heads
        q, key, v = qkv.reshape(b, k, 3 * h, attn.head_dim).split(h, dim=2)   # [B, K, H, D]
        q, key = attn.q_norm(q), attn.k_norm(key)       # norms over D: any layout
        weights = (q.transpose(1, 2) * attn.scale) @ key.permute(0, 2, 3, 1)   # [B, H, K, K]
        if bias is not None:
            weights = weights + bias
        out = weights.softmax(dim=-1) @ v.transpose(1, 2)                    # [B, H, K, D]
        return attn.norm(out.transpose(1, 2).reshape(b, k, attn.attn_dim))

    def _attn_fn(self, t, key_valid):
        return (self._attn(t, key_valid),)

    # -- packed forms (``pack`` mode): token-wise parts on [M, C], the core padded per image --
    def _attention_core(self, qkv: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T / sqrt(d)) v`` for ``qkv`` [B, K, 3A] among each image's valid keys
        -> [B, K, A], as timm's ``Attention.forward`` computes between its ``qkv`` and ``proj``
        (timm 1.0.x: heads split, q/k norms, fused or explicit attention, the output norm)."""
        attn = self.attn
        b, k, _ = qkv.shape
        bias = key_padding_bias(key_valid, qkv)
        if self._exporting():
            return self._core_export(qkv, bias)
        qkv = qkv.reshape(b, k, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, key, v = qkv.unbind(0)
        q, key = attn.q_norm(q), attn.k_norm(key)
        if attn.fused_attn:
            out = F.scaled_dot_product_attention(q, key, v, attn_mask=bias)
        else:
            weights = (q * attn.scale) @ key.transpose(-2, -1) + bias
            out = weights.softmax(dim=-1) @ v
        return attn.norm(out.transpose(1, 2).reshape(b, k, attn.attn_dim))

    def _attention_packed(self, t: torch.Tensor, index) -> torch.Tensor:
        """Attention of the packed tokens ``t`` [M, C] among their own image's tokens:
        LayerNorm and the qkv / output projections on the M rows, the core padded."""
        qkv = self.attn.qkv(self.norm1(t))                                  # [M, 3A]
        core = self._attention_core(index.pad(qkv), index.valid)            # [B, K, A]
        return self.attn.proj_drop(self.attn.proj(index.unpad(core)))      # [M, C]

    def _attn_packed(self, t, index):
        return (self._attention_packed(t, index),)

    def _layer_packed(self, t, index):
        a = self._attention_packed(t, index)
        return a, self.mlp(self.norm2(t + a))

    def _mlp_fn(self, t, key_valid):
        return (self.mlp(self.norm2(t)),)

    def _layer_fn(self, t, key_valid):
        a = self._attn(t, key_valid)
        return a, self.mlp(self.norm2(t + a))

    # -- gating ------------------------------------------------------------------------------
    def _gate(self, select: TokenSelect, x: torch.Tensor, need: bool):
        """Return (patch mask or None, mask_full, scores_full) for the current mode."""
        if not need:
            return None, None, None
        logits = select.logits(x[:, 1:])
        patch_mask = select.decide(logits)
        return patch_mask, full_mask(patch_mask), full_scores(logits)

    def _run(self, fn, x, select: TokenSelect, attention: bool, want_mask: bool,
             packed_fn=None):
        """Gate and dispatch ``fn`` on ``x`` (``packed_fn``: its packed form, for ``pack``
        mode): (:class:`~.dispatch.Routed`, patch mask)."""
        mode = self.dispatch_mode
        if self.training and mode != "complete":
            mode = "mask"  # straight-through masks need the dense path
        need = mode != "complete" or want_mask
        patch_mask, mfull, scores = self._gate(select, x, need)
        routed = run_dispatched(fn, x, mfull, scores, mode, attention=attention,
                                capacity_k=self.capacity_k, packed_fn=packed_fn)
        return routed, patch_mask

    def forward(self, x: torch.Tensor, want_mask: bool = False):
        """x [B, N, C] -> (x, masks [B, sites, P] or None).

        A dispatched sub-block's outputs are added into the rest of the residual sum
        (:meth:`~.dispatch.Routed.add_to`): ``x + Adapter(x)`` for the MLP, ``x`` for attention.
        """
        masks = []
        if self.variant == "layer":
            routed, m = self._run(self._layer_fn, x, self.layer_token_select, True, want_mask,
                                  self._layer_packed)
            masks.append(m)
            x = routed.add_to(x, 0)                       # x + attn
            x = _mlp_residual(routed, x, self.adaptmlp(x), 1)
        else:
            if self.variant in ("attn", "attn_mlp"):
                routed, m = self._run(self._attn_fn, x, self.attn_token_select, True, want_mask,
                                      self._attn_packed)
                masks.append(m)
                x = routed.add_to(x)
            else:
                x = x + self._self_attention(self.norm1(x), None)
            if self.variant in ("mlp", "attn_mlp"):
                routed, m = self._run(self._mlp_fn, x, self.mlp_token_select, False, want_mask)
                masks.append(m)
                x = _mlp_residual(routed, x, self.adaptmlp(x), 0)
            else:
                x = x + self.mlp(self.norm2(x)) + self.adaptmlp(x)
        if any(m is None for m in masks):
            return x, None
        return x, torch.stack(masks, dim=1)

    @property
    def token_selects(self) -> list[TokenSelect]:
        return [getattr(self, f"{s}_token_select") for s in ("attn", "mlp", "layer")
                if hasattr(self, f"{s}_token_select")]
