"""The DyT model configuration: plain data, no torch, readable by every other module.

A :class:`DyTConfig` fully describes the architecture (and the preprocessing its weights expect),
so an exported artifact can record it as JSON and anything downstream can rebuild the model or
reason about it (FLOPs, shapes) without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import ConfigError

VARIANTS = ("mlp", "attn", "attn_mlp", "layer")
"""Where tokens are dispatched: before the MLP (the published code), before attention, both
(two gates per block), or before the whole block."""

DISPATCH_MODES = ("complete", "mask", "topk", "pack", "capacity")
"""How token skipping executes (:mod:`dyt_edge.model.dispatch` documents each)."""
DEFAULT_DISPATCH = "pack"
"""The default everywhere (model, export, CLI): the batch's active tokens packed into one matrix
(NonZero), so a batch costs its mean activation at every batch size; exact. ``topk`` pays the
busiest image of the batch (K is the batch maximum), ``capacity`` is the static-shape option."""

ADAPTER_KINDS = ("adapter", "moe")
ADAPTER_LAYERNORM = ("none", "in", "out")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("squash", "shorter")
"""How an image becomes ``resize`` pixels: squashed to a square (aspect ratio not kept) or its
shorter side scaled (aspect ratio kept); see :class:`Preprocessing`."""

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

STANDARD_VIT_HEADS: dict[int, tuple[int, str]] = {
    192: (3, "ViT-Ti"),
    256: (4, "ViT-XS"),
    320: (5, "ViT-Little"),
    384: (6, "ViT-S"),
    512: (8, "ViT-M"),
    640: (10, "ViT-Betwixt"),
    768: (12, "ViT-B"),
    1024: (16, "ViT-L"),
    1280: (16, "ViT-H"),
    1408: (16, "ViT-g"),
    1664: (16, "ViT-G"),
}
"""Width (embed_dim) -> (attention heads, model name) of timm's standard ViT definitions
(``timm.models.vision_transformer``: ``vit_tiny`` 192/3, ``vit_xsmall`` / ``vit_wee`` 256/4,
``vit_little`` 320/5, ``vit_small`` 384/6, ``vit_medium`` 512/8, ``vit_betwixt`` 640/10,
``vit_base`` 768/12, ``vit_large`` 1024/16, ``vit_huge`` 1280/16, ``vit_giant`` 1408/16,
``vit_gigantic`` 1664/16). Published checkpoints do not store the head count; a width outside
this table has no default (the head count must be given)."""


def standard_heads(width: int) -> tuple[int, str] | None:
    """(heads, name) of the standard timm ViT of this width, or None when there is none."""
    return STANDARD_VIT_HEADS.get(int(width))


def standard_heads_hint() -> str:
    """The table in a few words, for error hints and help texts."""
    return ", ".join(f"{w}->{h}" for w, (h, _) in STANDARD_VIT_HEADS.items())


def legacy_resize_mode(name: str) -> str:
    """The resize mode of a preprocessing record that does not say (written before dyt-edge
    recorded it): the ``vtab`` recipe always meant a squash to the square, the others resized
    the shorter side."""
    return "squash" if name == "vtab" else "shorter"


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

    ``resize_mode`` says how an image of any shape becomes ``resize`` pixels:

    * ``"squash"``: resized to ``resize`` x ``resize``, the aspect ratio *not* kept (what
      torchvision's ``Resize((s, s))`` does; the published VTAB recipe), then center-cropped to
      ``crop`` x ``crop`` when ``resize > crop``;
    * ``"shorter"``: the shorter side resized to ``resize``, the aspect ratio kept, then a center
      crop of ``crop`` x ``crop`` (``Resize(s)`` + ``CenterCrop(c)``; the image recipes).

    Pixel values in [0, 1] are then normalised with ``mean`` and ``std``. The model's input is
    ``crop`` x ``crop`` (:attr:`input_size`). ``resize_mode=None`` (the default) reads as records
    written before the mode was recorded do: ``"squash"`` for a recipe named ``vtab``,
    ``"shorter"`` for any other.
    """

    resize: int = 224
    crop: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    name: str = "vtab"
    resize_mode: Optional[str] = None

    def __post_init__(self) -> None:
        if self.resize_mode is None:
            object.__setattr__(self, "resize_mode", legacy_resize_mode(self.name))

    @classmethod
    def vtab(cls, img_size: int) -> "Preprocessing":
        """The published VTAB-1K recipe: bicubic squash to img x img (aspect ratio not kept, no
        crop), mean = std = 0.5."""
        return cls(img_size, img_size, "bicubic", (0.5,) * 3, (0.5,) * 3, "vtab", "squash")

    @classmethod
    def imagenet(cls, img_size: int) -> "Preprocessing":
        """The image recipes: shorter side to img/0.875 (256 for 224), center crop img x img,
        bicubic, ImageNet stats."""
        return cls(int(round(img_size / 0.875)), img_size, "bicubic", IMAGENET_MEAN, IMAGENET_STD,
                   "imagenet", "shorter")

    @property
    def input_size(self) -> int:
        """The side of the square the model gets (``crop``)."""
        return self.crop

    def describe(self) -> str:
        """One line, e.g. ``vtab: squash to 224x224, bicubic, mean=std=0.5``."""
        if self.resize_mode == "squash":
            how = f"squash to {self.resize}x{self.resize}"
        else:
            how = f"shorter side to {self.resize}"
        if self.resize != self.crop or self.resize_mode != "squash":
            how += f", center crop {self.crop}x{self.crop}"
        mean, std = tuple(self.mean), tuple(self.std)
        if mean == std and len(set(mean)) == 1:
            stats = f"mean=std={mean[0]:g}"
        elif mean == IMAGENET_MEAN and std == IMAGENET_STD:
            stats = "ImageNet mean/std"
        else:
            stats = (f"mean ({', '.join(f'{v:g}' for v in mean)}), "
                     f"std ({', '.join(f'{v:g}' for v in std)})")
        return f"{self.name}: {how}, {self.interpolation}, {stats}"

    def validate(self) -> None:
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        check_choice("resize mode", str(self.resize_mode), RESIZE_MODES)
        if self.crop <= 0 or self.resize < self.crop:
            raise ConfigError(f"preprocessing resize {self.resize} / crop {self.crop} is invalid",
                              "resize must be >= crop > 0")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError("preprocessing mean/std must have 3 entries and std > 0")

    def to_dict(self) -> dict[str, Any]:
        """The complete data config: every field plus ``input_size`` (the model's square input
        side, equal to ``crop``) for readers that only need that."""
        d = dataclasses.asdict(self)
        d["input_size"] = self.input_size
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        """The inverse of :meth:`to_dict`; also reads records written before ``resize_mode`` and
        ``input_size`` existed (see the class docstring for the mode they mean)."""
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        size = d.pop("input_size", None)
        if size is not None:
            d.setdefault("crop", size)
            if int(size) != int(d["crop"]):
                raise ConfigError(f"preprocessing input_size {size} differs from its crop "
                                  f"{d['crop']}", "the record was edited by hand: make them equal")
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
