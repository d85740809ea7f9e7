"""The caller's config overrides (``--num-heads``, ``--adapter-scale``, ...): their names and
values checked, and each one checked against what the checkpoint's tensors say.

An override wins over ``args`` and defaults, but one that contradicts the weights is an error:
a :class:`~dyt_edge.errors.ConfigError` for a bad name or value, a
:class:`~dyt_edge.errors.CheckpointError` for a contradiction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ..config import (ADAPTER_KINDS, ADAPTER_LAYERNORM, VARIANTS, DyTConfig, Preprocessing,
                      check_choice, closest)
from ..errors import CheckpointError, ConfigError

PREPROCESSING_RECIPES = ("vtab", "imagenet")

_INT_FIELDS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
               "num_classes", "adapter_dim", "num_experts")
_FLOAT_FIELDS = ("mlp_ratio", "adapter_scale")
_FIELDS = tuple(f.name for f in dataclasses.fields(DyTConfig))


def _normalise_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate override names and values; drop the ones that are None."""
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown model option '{name}'",
                              f"{closest(name, _FIELDS)}known options: {', '.join(_FIELDS)}")
        if value is None:
            continue
        out[name] = _coerce(name, value)
    return out


def _coerce(name: str, value: Any) -> Any:
    """``value`` as the type of the :class:`DyTConfig` field ``name``, or a ConfigError."""
    flag = "--" + name.replace("_", "-")
    if name in _INT_FIELDS:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if not isinstance(value, int) else value
            if number != int(number):
                raise ValueError
            number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{flag} must be a whole number, got {value!r}") from None
        if number <= 0:
            raise ConfigError(f"{flag} must be positive, got {number}")
        return number
    if name in _FLOAT_FIELDS:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
        return number
    if name == "adapter_scale_learnable":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{flag} must be true or false, got {value!r}")
    if name == "variant":
        return check_choice("variant", str(value), VARIANTS)
    if name == "adapter_kind":
        return check_choice("adapter kind", str(value), ADAPTER_KINDS)
    if name == "adapter_layernorm":
        return check_choice("adapter layernorm option", str(value), ADAPTER_LAYERNORM)
    if name == "preprocessing":
        if isinstance(value, Preprocessing):
            value.validate()
            return value
        if isinstance(value, Mapping):
            pre = Preprocessing.from_dict(value)
            pre.validate()
            return pre
        return check_choice("preprocessing recipe", str(value), PREPROCESSING_RECIPES)
    return value


def _contradiction(where: str, name: str, value: Any, fact: Any, evidence: str) -> CheckpointError:
    flag = "--" + name.replace("_", "-")
    return CheckpointError(
        f"{flag} {value} contradicts {where}: its tensors say {name} = {fact} ({evidence})",
        f"drop {flag}; the weights decide it")


def _check_overrides(ov: Mapping[str, Any], facts: Mapping[str, tuple[Any, str]],
                     where: str) -> None:
    """Refuse an override that contradicts ``facts`` (field -> (value, evidence), from the
    tensor shapes)."""
    patch = ov.get("patch_size", facts["patch_size"][0])
    if "patch_size" in ov and ov["patch_size"] != facts["patch_size"][0]:
        raise _contradiction(where, "patch_size", ov["patch_size"], *facts["patch_size"])
    if "img_size" in ov:
        img = ov["img_size"]
        trained = facts["img_size"][0]
        if img % patch:
            raise ConfigError(
                f"image size {img} does not fit patch size {patch}: it must be a multiple of it",
                f"pass --img-size as a multiple of {patch}; this checkpoint was trained at "
                f"{trained}")
        if img != trained:
            raise CheckpointError(
                f"image size {img} does not match {where}: its position embeddings cover "
                f"{trained // patch}x{trained // patch} patches of {patch} pixels, i.e. "
                f"{trained}x{trained} images",
                "drop --img-size (resizing position embeddings is not supported)")
    for name in ("embed_dim", "depth", "in_chans", "num_classes", "variant", "adapter_kind",
                 "adapter_dim", "adapter_scale_learnable"):
        if name in ov and name in facts and ov[name] != facts[name][0]:
            raise _contradiction(where, name, ov[name], *facts[name])
    if "num_experts" in ov and facts["adapter_kind"][0] == "moe" \
            and ov["num_experts"] != facts["num_experts"][0]:
        raise _contradiction(where, "num_experts", ov["num_experts"], *facts["num_experts"])
    if "mlp_ratio" in ov and "mlp_ratio" in facts:
        width = facts["embed_dim"][0]
        if int(width * ov["mlp_ratio"]) != int(width * facts["mlp_ratio"][0]):
            raise _contradiction(where, "mlp_ratio", ov["mlp_ratio"], *facts["mlp_ratio"])
    if "adapter_layernorm" in ov:
        has_ln, evidence = facts["_adapter_ln"]
        if (ov["adapter_layernorm"] != "none") != has_ln:
            raise _contradiction(where, "adapter_layernorm", ov["adapter_layernorm"],
                                 "in/out" if has_ln else "none", evidence)
    if "adapter_scale" in ov and facts["adapter_scale_learnable"][0]:
        raise CheckpointError(
            f"--adapter-scale {ov['adapter_scale']} cannot apply to {where}: its adapter scale "
            "is learned (blocks.N.adaptmlp.scale holds it)", "drop --adapter-scale")
