"""Analytic FLOPs of a DyT vision transformer, per layer, for any activation rate. No torch.

Convention (fvcore's, the one the DyT paper's GFLOPs use: ViT-B/16 = 17.58 GFLOPs)
---------------------------------------------------------------------------------------------
* **One multiply-add = one FLOP.** (``torch.utils.flop_counter`` counts 2 per multiply-add.)
* Counted: every Linear (``tokens x in x out``; biases not counted), the patch-embedding
  convolution (``out_channels x in_channels x kh x kw x output positions``), the two attention
  matmuls ``q @ k^T`` and ``attn @ v`` (``tokens^2 x width`` each, summed over heads), and the
  MoE-adapter's matmuls (router, per-image expert merge, token x merged weights).
* LayerNorm counts ``5 x elements`` (fvcore's ``norm_flop_counter`` with an affine LayerNorm:
  "5 is just a rough estimate"). They are reported apart (``norms``) so a caller can drop them.
* Not counted: softmax, GELU, ReLU, sigmoid, the attention scale, residual and positional adds,
  the adapter's scale, the token mean feeding the MoE router, gathers and scatters.

What each dispatch variant computes, and on which tokens (``dyt_edge.model.layers``)
---------------------------------------------------------------------------------------------
``n = 1 + rate * num_patches`` tokens are active at a dispatcher (CLS always is), ``N`` tokens
in all. Per block:

* ``mlp``:      attention (norm1, qkv, q@k^T, attn@v, proj) on ``N``; norm2 + MLP on ``n``.
* ``attn``:     active tokens attend among themselves: norm1, qkv and proj on ``n``, the two
  attention matmuls on ``n^2``; norm2 + MLP on ``N``.
* ``attn_mlp``: two dispatchers, each as above on its own ``n``.
* ``layer``:    one dispatcher; attention (``n``, ``n^2``) and norm2 + MLP on ``n``.
* The adapter (down + up projection, optional LayerNorm, MoE router and merge) always runs on
  every token; each dispatcher's gate is one ``Linear(C, 1)`` over the patch tokens.

An activation is a rate over *patch* tokens per dispatcher (the mean of a mask row, see
:func:`measured_activation`). Fractional token counts are kept as they are: a rate averaged
over images gives the expected cost per image. The count is of the ideal computation: an
execution that pads (``topk`` at batch > 1, ``capacity``) computes more than this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Optional, Sequence, Union

from .config import DyTConfig
from .errors import ConfigError

LAYERNORM_FLOPS_PER_ELEMENT = 5
"""fvcore's count for an affine LayerNorm: 5 FLOPs per element of its input."""

Activation = Union[None, float, Sequence[float]]

__all__ = [
    "FlopsReport",
    "LayerFlops",
    "LAYERNORM_FLOPS_PER_ELEMENT",
    "measured_activation",
    "model_flops",
    "plain_vit_flops",
]


@dataclass
class LayerFlops:
    """FLOPs of one block (multiply-adds), split by what computes them."""

    name: str
    attention: float
    """qkv, q@k^T, attn@v and the output projection (no LayerNorm)."""
    mlp: float
    """fc1 and fc2 (no LayerNorm)."""
    adapter: float
    """Down and up projections; for the MoE-adapter also the router and the expert merge."""
    gates: float
    """The dispatchers' Linear(C, 1) over the patch tokens (0 when gates are not counted)."""
    norms: float
    """norm1, norm2 and the adapter's LayerNorm when it has one."""
    activation: tuple[float, ...] = field(default_factory=tuple)
    """The rate of each dispatcher site in this block (``config.dispatch_sites`` order)."""

    @property
    def total(self) -> float:
        return self.attention + self.mlp + self.adapter + self.gates + self.norms

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "attention": self.attention,
            "mlp": self.mlp,
            "adapter": self.adapter,
            "gates": self.gates,
            "norms": self.norms,
            "total": self.total,
            "activation": list(self.activation),
        }


@dataclass
class FlopsReport:
    """FLOPs of a whole model for one image at one activation (fvcore convention)."""

    layers: list[LayerFlops]
    patch_embed: float
    head: float
    final_norm: float
    complete_total: float
    """The same model (same adapters) with every token active and no gate cost."""

    @property
    def total(self) -> float:
        return (self.patch_embed + sum(layer.total for layer in self.layers) + self.final_norm
                + self.head)

    @property
    def norms(self) -> float:
        """All LayerNorm FLOPs (blocks and the final norm)."""
        return self.final_norm + sum(layer.norms for layer in self.layers)

    @property
    def ratio(self) -> float:
        """How many times fewer FLOPs than the complete model (>= 1 unless gates dominate)."""
        return self.complete_total / self.total

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def mean_activation(self) -> float:
        """The mean rate over every dispatcher (1.0 for the complete model)."""
        rates = [r for layer in self.layers for r in layer.activation]
        return sum(rates) / len(rates) if rates else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "convention": "fvcore: one multiply-add = one FLOP, LayerNorm = 5 per element",
            "total": self.total,
            "gflops": self.gflops,
            "complete_total": self.complete_total,
            "ratio": self.ratio,
            "mean_activation": self.mean_activation,
            "patch_embed": self.patch_embed,
            "head": self.head,
            "final_norm": self.final_norm,
            "norms": self.norms,
            "layers": [layer.to_dict() for layer in self.layers],
        }


# -- activation handling -----------------------------------------------------------------------
def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        try:  # numpy / torch scalars
            if isinstance(value, (str, bytes)):
                raise TypeError
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"activation rate {where} is {value!r}, not a number",
                              "pass fractions of patch tokens in [0, 1], e.g. 0.5") from None
    rate = float(value)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ConfigError(f"activation rate {where} is {rate}, outside [0, 1]",
                          "pass the fraction of patch tokens a dispatcher keeps, e.g. 0.5")
    return rate


def _rates(config: DyTConfig, activation: Activation) -> list[float]:
    """One rate per dispatcher, in mask-row order (``config.dispatcher_names``)."""
    count = config.num_dispatchers
    if activation is None:
        return [1.0] * count
    if isinstance(activation, (str, bytes)):
        raise ConfigError(f"activation {activation!r} is not a rate",
                          "pass one float in [0, 1] or one per dispatcher")
    if isinstance(activation, Real) or (hasattr(activation, "ndim")
                                        and getattr(activation, "ndim") == 0):
        return [_rate(activation, "")] * count
    try:
        values = list(activation)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"activation {activation!r} is neither a rate nor a sequence of rates",
                          "pass one float in [0, 1] or one per dispatcher") from None
    if len(values) != count:
        sites = config.dispatch_sites
        raise ConfigError(
            f"got {len(values)} activation rates for {count} dispatchers "
            f"(variant '{config.variant}': {config.depth} blocks x {len(sites)} "
            f"site{'s' if len(sites) > 1 else ''} {'/'.join(sites)})",
            f"pass one rate, or {count} in mask-row order: "
            f"{', '.join(config.dispatcher_names[:3])}{', ...' if count > 3 else ''}")
    names = config.dispatcher_names
    return [_rate(v, f"for {names[i]}") for i, v in enumerate(values)]


# -- the count ---------------------------------------------------------------------------------
def _attention(n: float, c: int) -> float:
    """qkv + proj on n tokens, q@k^T and attn@v among them (summed over heads: n^2 C each)."""
    return n * c * 3 * c + n * c * c + 2 * n * n * c


def _mlp(n: float, c: int, hidden: int) -> float:
    return 2 * n * c * hidden


def _norm(n: float, c: int) -> float:
    return LAYERNORM_FLOPS_PER_ELEMENT * n * c


def _adapter(config: DyTConfig, tokens: int) -> float:
    c, r = config.embed_dim, config.adapter_dim
    flops = 2.0 * tokens * c * r                      # down_proj + up_proj (or x @ merged w)
    if config.adapter_kind == "moe":
        e = config.num_experts
        flops += c * e                                # router on the token mean
        flops += 2.0 * e * r * c + e * r + e * c      # merge: w @ down/up weights and biases
    return flops


def _layer(config: DyTConfig, index: int, rates: Sequence[float], include_adapters: bool,
           include_gates: bool) -> LayerFlops:
    c, hidden, p = config.embed_dim, config.mlp_hidden, config.num_patches
    big_n = config.num_tokens
    site_rate = dict(zip(config.dispatch_sites, rates))
    n_of = {s: 1.0 + r * p for s, r in site_rate.items()}
    if config.variant == "layer":
        n_attn = n_mlp = n_of["layer"]
    else:
        n_attn = n_of.get("attn", float(big_n))
        n_mlp = n_of.get("mlp", float(big_n))
    norms = _norm(n_attn, c) + _norm(n_mlp, c)
    adapter = 0.0
    if include_adapters:
        adapter = _adapter(config, big_n)
        if config.adapter_layernorm != "none":  # on the adapter's input or output, every token
            norms += _norm(big_n, c)
    gates = float(len(rates) * p * c) if include_gates else 0.0
    return LayerFlops(
        name=f"blocks.{index}",
        attention=_attention(n_attn, c),
        mlp=_mlp(n_mlp, c, hidden),
        adapter=adapter,
        gates=gates,
        norms=norms,
        activation=tuple(rates),
    )


def _count(config: DyTConfig, rates: list[float], include_adapters: bool,
           include_gates: bool) -> tuple[list[LayerFlops], float, float, float]:
    c = config.embed_dim
    sites = len(config.dispatch_sites)
    layers = [_layer(config, i, rates[i * sites:(i + 1) * sites], include_adapters, include_gates)
              for i in range(config.depth)]
    patch_embed = float(c * config.in_chans * config.patch_size ** 2 * config.num_patches)
    final_norm = _norm(config.num_tokens, c)       # timm normalises every token, then reads CLS
    head = float(c * config.num_classes)           # one token
    return layers, patch_embed, head, final_norm


def model_flops(config: DyTConfig, activation: Activation = None, *,
                include_adapters: bool = True,
                include_gates: Optional[bool] = None) -> FlopsReport:
    """FLOPs of one image through ``config``'s model at ``activation``.

    ``activation``: None for the complete model (every token active); one rate in [0, 1] for
    every dispatcher; or ``config.num_dispatchers`` rates in mask-row order
    (``config.dispatcher_names``; :func:`measured_activation` turns masks into them). Rates are
    over patch tokens; CLS is always active.

    ``include_gates`` defaults to counting the gates exactly when there is an activation (the
    complete model does not need them). ``include_adapters=False`` drops the adapters (and their
    LayerNorm): with no activation that is the plain ViT.
    """
    config.validate()
    rates = _rates(config, activation)
    if include_gates is None:
        include_gates = activation is not None
    layers, patch_embed, head, final_norm = _count(config, rates, include_adapters,
                                                   bool(include_gates))
    complete_layers, *_ = _count(config, [1.0] * config.num_dispatchers, include_adapters, False)
    complete_total = patch_embed + sum(x.total for x in complete_layers) + final_norm + head
    return FlopsReport(layers=layers, patch_embed=patch_embed, head=head, final_norm=final_norm,
                       complete_total=complete_total)


def plain_vit_flops(config: DyTConfig) -> float:
    """FLOPs of the plain ViT with ``config``'s backbone: no adapters, no gates, every token.

    ViT-B/16 at 224 with 1000 classes: 17.58e9 (fvcore's count, as in the DyT paper)."""
    return model_flops(config, None, include_adapters=False, include_gates=False).total


def measured_activation(masks: Any) -> list[float]:
    """Gate decisions ``[B, L, P]`` (bool or float; numpy, torch or nested lists, e.g. from
    ``model(x, return_masks=True)``) -> the mean rate of each of the L dispatchers."""
    import numpy as np

    if hasattr(masks, "detach"):  # a torch tensor, without importing torch
        masks = masks.detach().cpu()
        if hasattr(masks, "float"):
            masks = masks.float()
        masks = masks.numpy()
    try:
        arr = np.asarray(masks, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError("masks are not numeric",
                          "pass the [B, L, P] masks from model(x, return_masks=True)") from None
    if arr.ndim != 3:
        raise ConfigError(f"masks have shape {tuple(arr.shape)}, expected [B, L, P]",
                          "pass the [B, L, P] masks from model(x, return_masks=True); "
                          "add a batch axis for a single image")
    if arr.shape[0] == 0 or arr.shape[2] == 0:
        raise ConfigError(f"masks of shape {tuple(arr.shape)} are empty",
                          "pass masks of at least one image")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ConfigError("masks hold values outside [0, 1]",
                          "pass gate decisions (bool, or 0/1 floats)")
    rates = arr.mean(axis=(0, 2))
    return [float(r) for r in rates]


def _solve_rate(config: DyTConfig, target_total: float, **kwargs: Any) -> float:
    """The uniform rate at which the model costs ``target_total`` (bisection; for reports)."""
    lo, hi = 0.0, 1.0
    if not (model_flops(config, lo, **kwargs).total <= target_total
            <= model_flops(config, hi, **kwargs).total):
        return math.nan
    for _ in range(60):
        mid = (lo + hi) / 2
        if model_flops(config, mid, **kwargs).total < target_total:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
