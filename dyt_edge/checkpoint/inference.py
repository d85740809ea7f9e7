"""A published DyT checkpoint's architecture (:class:`DyTConfig`), inferred from its tensors.

The tensor shapes decide what they can (width, depth, patch and image size, classes, variant,
adapter kind and size, a learned adapter scale); the rest comes from the checkpoint's ``args``
(:mod:`~dyt_edge.checkpoint.args`) or from the caller's overrides, never from a silent guess.
The head count comes from ``args``, else from timm's standard width -> heads table
(:data:`~dyt_edge.config.STANDARD_VIT_HEADS`), else from the caller. Every value's source is
recorded as its provenance.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Optional

import torch

from ..config import VARIANTS, DyTConfig, Preprocessing, standard_heads, standard_heads_hint
from ..errors import CheckpointError, ConfigError
from .args import (HEADS_KEYS, LAYERNORM_KEYS, SCALE_HINT, SCALE_KEYS, _listed, _lookup,
                   _parse_scale, _plain)
from .overrides import _FIELDS, _check_overrides, _coerce, _normalise_overrides
from .reading import _clean_state_dict

HEADS_HINT = ("pass --num-heads H (the attention heads it was trained with; standard timm "
              f"widths -> heads: {standard_heads_hint()})")

# Provenance: where a config value came from.
SHAPES = "tensor shapes"
METADATA = "dyt-edge metadata"
OVERRIDE = "override"


def infer_config(state_dict: Mapping[str, Any], args: Any = None,
                 **overrides: Any) -> tuple[DyTConfig, dict[str, str]]:
    """The architecture of a published DyT state_dict, from its shapes and ``args``.

    Returns the config and its provenance (field -> where the value came from). ``args`` may be
    an ``argparse.Namespace``, a mapping or None. Does not check every key;
    :func:`~dyt_edge.checkpoint.read_checkpoint` and :func:`~dyt_edge.checkpoint.load_model` do.
    """
    ov = _normalise_overrides(overrides)
    sd = _clean_state_dict(state_dict, "the checkpoint")
    return _resolve(sd, _plain(args), ov, "the checkpoint")


_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _shape(sd: Mapping[str, torch.Tensor], key: str, ndim: int, where: str) -> list[int]:
    shape = list(sd[key].shape)
    if len(shape) != ndim or any(s <= 0 for s in shape):
        raise CheckpointError(f"{where}: '{key}' has shape {shape}, which no ViT has",
                              "the checkpoint is damaged or not a DyT ViT")
    return shape


def _shape_facts(sd: Mapping[str, torch.Tensor], where: str) -> dict[str, tuple[Any, str]]:
    """Config fields the tensors decide: field -> (value, evidence)."""
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)
    missing = [k for k, ok in (("cls_token", "cls_token" in sd), ("pos_embed", "pos_embed" in sd),
                               ("blocks.0.*", depth > 0),
                               ("patch_embed.proj.weight", "patch_embed.proj.weight" in sd))
               if not ok]
    if missing:
        first = ", ".join(list(sd)[:4]) or "it is empty"
        raise CheckpointError(
            f"{where} is not a DyT/ViT checkpoint: it has no {', '.join(missing)} "
            f"(its first keys: {first})",
            "expected the state_dict of a DyT vision transformer (cls_token, pos_embed, "
            "patch_embed.*, blocks.N.*, head.*)")
    facts: dict[str, tuple[Any, str]] = {}
    width = _shape(sd, "cls_token", 3, where)[-1]
    facts["embed_dim"] = (width, f"cls_token is {list(sd['cls_token'].shape)}")
    facts["depth"] = (depth, f"blocks.0 to blocks.{depth - 1}")
    out_c, in_chans, ph, pw = _shape(sd, "patch_embed.proj.weight", 4, where)
    proj = f"patch_embed.proj.weight is {[out_c, in_chans, ph, pw]}"
    if ph != pw:
        raise CheckpointError(f"{where} has non-square {ph}x{pw} patches ({proj})",
                              "only square patches are supported")
    facts["patch_size"] = (ph, proj)
    facts["in_chans"] = (in_chans, proj)
    tokens = _shape(sd, "pos_embed", 3, where)[1]
    grid = math.isqrt(max(tokens - 1, 0))
    if grid < 1 or grid * grid != tokens - 1:
        raise CheckpointError(
            f"{where}: pos_embed holds {tokens - 1} patch positions (plus CLS), which is not a "
            "square grid", "only square images with one CLS token are supported")
    facts["img_size"] = (grid * ph, f"pos_embed holds {grid}x{grid} patch positions + CLS "
                                    f"at patch size {ph}")
    fc1 = "blocks.0.mlp.fc1.weight"
    if fc1 in sd:
        hidden = _shape(sd, fc1, 2, where)[0]
        ratio = hidden / width
        while int(width * ratio) < hidden:  # int(width * ratio) must give back `hidden`
            ratio = math.nextafter(ratio, math.inf)
        facts["mlp_ratio"] = (ratio, f"{fc1} is {list(sd[fc1].shape)}")
    if "head.weight" in sd:
        facts["num_classes"] = (_shape(sd, "head.weight", 2, where)[0],
                                f"head.weight is {list(sd['head.weight'].shape)}")
    else:
        raise CheckpointError(f"{where} has no classifier head (head.weight)",
                              "expected the state_dict of a DyT classifier")

    sites = {s for s in ("attn", "mlp", "layer")
             if f"blocks.0.{s}_token_select.mlp_head.weight" in sd}
    by_sites = {("mlp",): "mlp", ("attn",): "attn", ("attn", "mlp"): "attn_mlp",
                ("layer",): "layer"}
    variant = by_sites.get(tuple(sorted(sites)))
    if not sites:
        raise CheckpointError(
            f"{where} has no token dispatchers (blocks.N.mlp_token_select.mlp_head.*): it is a "
            "plain ViT / AdaptFormer checkpoint, not DyT", "pass a DyT checkpoint")
    if variant is None:
        raise CheckpointError(f"{where} has an unknown combination of dispatchers in blocks.0 "
                              f"({', '.join(sorted(s + '_token_select' for s in sites))})",
                              f"expected one of the variants {', '.join(VARIANTS)}")
    facts["variant"] = (variant, "blocks.0 has " + " and ".join(
        f"{s}_token_select" for s in sorted(sites)))

    a = "blocks.0.adaptmlp."
    if a + "router.weight" in sd:
        experts = _shape(sd, a + "router.weight", 2, where)[0]
        facts["adapter_kind"] = ("moe", f"{a}router.weight exists")
        facts["num_experts"] = (experts, f"{a}router.weight is "
                                         f"{list(sd[a + 'router.weight'].shape)}")
        if a + "down_weight" not in sd:
            raise CheckpointError(f"{where} has an MoE router but no {a}down_weight",
                                  "the checkpoint is incomplete")
        r = _shape(sd, a + "down_weight", 3, where)[1]
        facts["adapter_dim"] = (r, f"{a}down_weight is {list(sd[a + 'down_weight'].shape)}")
    elif a + "down_proj.weight" in sd:
        facts["adapter_kind"] = ("adapter", f"{a}down_proj.weight exists")
        r = _shape(sd, a + "down_proj.weight", 2, where)[0]
        facts["adapter_dim"] = (r, f"{a}down_proj.weight is "
                                   f"{list(sd[a + 'down_proj.weight'].shape)}")
    else:
        raise CheckpointError(f"{where} has no adapter weights ({a}down_proj.* or "
                              f"{a}router.*)", "expected a DyT checkpoint with adapters")
    learnable = a + "scale" in sd
    facts["adapter_scale_learnable"] = (
        learnable, f"{a}scale {'exists' if learnable else 'does not exist'}")
    has_ln = a + "adapter_layer_norm_before.weight" in sd
    facts["_adapter_ln"] = (has_ln, f"{a}adapter_layer_norm_before.* "
                                    f"{'exists' if has_ln else 'does not exist'}")
    return facts


def _resolve(sd: Mapping[str, torch.Tensor], args: Optional[Mapping[str, Any]],
             ov: Mapping[str, Any], where: str, *,
             stored: Optional[DyTConfig] = None) -> tuple[DyTConfig, dict[str, str]]:
    """(config, provenance) of ``sd``: ``stored`` (a dyt-edge file's own config) or what the
    tensors and ``args`` say, then the overrides ``ov`` on top."""
    facts = _shape_facts(sd, where)
    _check_overrides(ov, facts, where)
    values: dict[str, Any] = {}
    prov: dict[str, str] = {}

    if stored is not None:
        for name in _FIELDS:
            values[name] = getattr(stored, name)
            prov[name] = METADATA
    else:
        for name, (value, _) in facts.items():
            if not name.startswith("_"):
                values[name], prov[name] = value, SHAPES
        if facts["adapter_kind"][0] != "moe":
            values["num_experts"] = DyTConfig.num_experts
            prov["num_experts"] = "default (unused: plain adapter)"
        values.update(_published_extras(facts, args, ov, where, prov))

    for name, value in ov.items():
        if name != "preprocessing":
            values[name], prov[name] = value, OVERRIDE
    for f in dataclasses.fields(DyTConfig):  # not decided by anything: the strict check will say
        if f.name not in values and f.name != "preprocessing":
            values[f.name], prov[f.name] = f.default, "default"

    pre = ov.get("preprocessing")
    img = values["img_size"]
    if isinstance(pre, Preprocessing):
        values["preprocessing"], prov["preprocessing"] = pre, OVERRIDE
    elif pre is not None:
        recipe = Preprocessing.vtab if pre == "vtab" else Preprocessing.imagenet
        values["preprocessing"], prov["preprocessing"] = recipe(img), OVERRIDE
    elif stored is None:
        values["preprocessing"] = Preprocessing.vtab(img)
        prov["preprocessing"] = "default: published VTAB recipe"
    return DyTConfig(**values).validate(), {k: prov[k] for k in _FIELDS}


def _published_extras(facts: Mapping[str, tuple[Any, str]], args: Optional[Mapping[str, Any]],
                      ov: Mapping[str, Any], where: str,
                      prov: dict[str, str]) -> dict[str, Any]:
    """What the tensors cannot say: heads, adapter scale, adapter LayerNorm placement."""
    values: dict[str, Any] = {}
    width = facts["embed_dim"][0]

    # heads
    if "num_heads" not in ov:
        for key in HEADS_KEYS:
            found, value = _lookup(args, key)
            if found:
                try:
                    values["num_heads"] = _coerce("num_heads", value)
                except ConfigError as exc:
                    raise CheckpointError(f"{where}: args.{key} = {value!r} is not a head count",
                                          HEADS_HINT) from exc
                prov["num_heads"] = f"args.{key}"
                break
        else:
            standard = standard_heads(width)
            if standard is None:
                why = ("the checkpoint has no args" if args is None else
                       f"its args do not say (looked in {_listed(HEADS_KEYS)})")
                raise CheckpointError(
                    f"attention heads not found in {where}: width {width} is not a standard "
                    f"timm ViT width and {why}", HEADS_HINT)
            values["num_heads"] = standard[0]
            prov["num_heads"] = f"standard timm width {width} ({standard[1]})"

    # adapter scale (not in the state_dict)
    if facts["adapter_scale_learnable"][0]:
        values["adapter_scale"] = 1.0
        prov["adapter_scale"] = "unused: learned (blocks.N.adaptmlp.scale)"
    elif "adapter_scale" not in ov:
        for key in SCALE_KEYS:
            found, value = _lookup(args, key)
            if found:
                parsed = _parse_scale(value, key, where)
                if parsed == "learnable":
                    raise CheckpointError(
                        f"{where}: args.{key} = {value!r} says the adapter scale is learnable, "
                        "but the checkpoint has no blocks.N.adaptmlp.scale weights", SCALE_HINT)
                values["adapter_scale"], prov["adapter_scale"] = parsed, f"args.{key}"
                break
        else:
            why = "the checkpoint has no args" if args is None else "none of them is set"
            raise CheckpointError(f"adapter scale not found in {where} (looked in "
                                  f"{_listed(SCALE_KEYS)}; {why})", SCALE_HINT)

    # adapter LayerNorm placement
    has_ln = facts["_adapter_ln"][0]
    if not has_ln:
        values["adapter_layernorm"], prov["adapter_layernorm"] = "none", SHAPES
    elif "adapter_layernorm" not in ov:
        for key in LAYERNORM_KEYS:
            found, value = _lookup(args, key)
            if found:
                option = str(value)
                if option not in ("in", "out"):
                    raise CheckpointError(
                        f"{where} has adapter LayerNorm weights but args.{key} = {value!r}",
                        "pass --adapter-layernorm in|out")
                values["adapter_layernorm"], prov["adapter_layernorm"] = option, f"args.{key}"
                break
        else:
            raise CheckpointError(
                f"{where} has adapter LayerNorm weights (adaptmlp.adapter_layer_norm_before) but "
                "does not say whether it normalises the adapter input or output (looked in "
                f"{_listed(LAYERNORM_KEYS)})",
                "pass --adapter-layernorm in|out")
    return values

