"""The DyT model configuration: plain data, no torch, readable by every other module.

A :class:`DyTConfig` fully describes the architecture (and the preprocessing its weights expect),
so an exported artifact can record it as JSON and anything downstream can rebuild the model or
reason about it (FLOPs, shapes) without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError

VARIANTS = ("mlp", "attn", "attn_mlp", "layer")
"""Where tokens are dispatched: before the MLP (the published code), before attention, both
(two gates per block), or before the whole block."""

ADAPTER_KINDS = ("adapter", "moe")
ADAPTER_LAYERNORM = ("none", "in", "out")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

# Dispatcher sites per variant, in execution order inside a block. The names are also the
# prefixes of the gate modules: `<site>_token_select.mlp_head` (`mlp_token_select` is the
# published code's name).
DISPATCH_SITES: dict[str, tuple[str, ...]] = {
    "mlp": ("mlp",),
    "attn": ("attn",),
    "attn_mlp": ("attn", "mlp"),
    "layer": ("layer",),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def closest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    """A ' (did you mean X?)'-style suggestion, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"did you mean '{match[0]}'? " if match else ""


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(
            f"unknown {kind} '{value}'",
            f"{closest(value, choices)}choose one of: {', '.join(choices)}",
        )
    return value


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into the model's input tensor.

    ``resize`` is the size of the shorter side after resizing (equal to ``crop`` for the VTAB
    recipe's plain resize to a square), then a center crop of ``crop`` x ``crop``; pixel values in
    [0, 1] are normalised with ``mean`` and ``std``.
    """

    resize: int = 224
    crop: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    name: str = "vtab"

    @classmethod
    def vtab(cls, img_size: int) -> "Preprocessing":
        """The published VTAB-1K recipe: bicubic resize to a square, mean = std = 0.5."""
        return cls(img_size, img_size, "bicubic", (0.5,) * 3, (0.5,) * 3, "vtab")

    @classmethod
    def imagenet(cls, img_size: int) -> "Preprocessing":
        """The image recipes: resize to img/0.875 (256 for 224), center crop, ImageNet stats."""
        return cls(int(round(img_size / 0.875)), img_size, "bicubic", IMAGENET_MEAN, IMAGENET_STD,
                   "imagenet")

    def validate(self) -> None:
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        if self.crop <= 0 or self.resize < self.crop:
            raise ConfigError(f"preprocessing resize {self.resize} / crop {self.crop} is invalid",
                              "resize must be >= crop > 0")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError("preprocessing mean/std must have 3 entries and std > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**_known_fields(cls, d, "preprocessing"))


@dataclass(frozen=True)
class DyTConfig:
    """Architecture of a DyT vision transformer (timm's ViT with DyT blocks)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    variant: str = "mlp"
    adapter_kind: str = "adapter"
    adapter_dim: int = 64
    adapter_scale: float = 0.1
    adapter_scale_learnable: bool = False
    adapter_layernorm: str = "none"
    num_experts: int = 4
    preprocessing: Preprocessing | None = None
    """None means the published VTAB recipe at `img_size` (filled in on construction)."""

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", Preprocessing.vtab(self.img_size))

    # -- derived ------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_tokens(self) -> int:
        """Patch tokens plus the CLS token."""
        return self.num_patches + 1

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def dispatch_sites(self) -> tuple[str, ...]:
        return DISPATCH_SITES[self.variant]

    @property
    def num_dispatchers(self) -> int:
        return self.depth * len(self.dispatch_sites)

    @property
    def dispatcher_names(self) -> list[str]:
        """One name per dispatcher in mask order, e.g. ``blocks.3.mlp``."""
        return [f"blocks.{i}.{s}" for i in range(self.depth) for s in self.dispatch_sites]

    def capacity_slots(self, capacity: float) -> int:
        """Patch-token slots per image that `capacity` mode reserves: ceil(c * patches)."""
        if not 0.0 < capacity <= 1.0:
            raise ConfigError(f"capacity {capacity} is outside (0, 1]",
                              "pass a fraction of patch tokens such as 0.6")
        return min(self.num_patches, math.ceil(capacity * self.num_patches - 1e-9))

    # -- checks and (de)serialisation ----------------------------------------------------------
    def validate(self) -> "DyTConfig":
        check_choice("variant", self.variant, VARIANTS)
        check_choice("adapter kind", self.adapter_kind, ADAPTER_KINDS)
        check_choice("adapter layernorm option", self.adapter_layernorm, ADAPTER_LAYERNORM)
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                     "num_classes", "adapter_dim", "num_experts"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"image size {self.img_size} is not a multiple of patch size {self.patch_size}",
                "pass --img-size as a multiple of the patch size")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"width {self.embed_dim} is not divisible by {self.num_heads} heads",
                "pass --num-heads that divides the width")
        if self.mlp_ratio <= 0 or int(self.embed_dim * self.mlp_ratio) <= 0:
            raise ConfigError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not math.isfinite(self.adapter_scale):
            raise ConfigError(f"adapter scale must be a finite number, got {self.adapter_scale}")
        self.preprocessing.validate()
        return self

    def replace(self, **changes: Any) -> "DyTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DyTConfig":
        d = dict(d)
        pre = d.pop("preprocessing", None)
        kwargs = _known_fields(cls, d, "model config")
        if pre is not None:
            kwargs["preprocessing"] = (pre if isinstance(pre, Preprocessing)
                                       else Preprocessing.from_dict(pre))
        return cls(**kwargs).validate()


def _known_fields(cls: type, d: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} field(s): {', '.join(unknown)}",
                          "the file was written by a newer dyt-edge, or edited by hand")
    return dict(d)
