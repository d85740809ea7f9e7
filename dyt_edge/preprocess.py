"""One image -> the model's input, exactly as the published recipes preprocess it.

Resize (``squash``: both sides to the size, as the VTAB recipe's ``Resize((s, s))``;
``shorter``: the shorter side, then a centre crop, as the ImageNet recipe), then scale to
[0, 1] and normalise with the recipe's mean and std, all through torchvision so results match
it to the bit. :mod:`dyt_edge.data` applies it to image folders, ``.npz`` files and the digits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import RESIZE_MODES, Preprocessing, check_choice

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


def interpolation_mode(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}[name]


def normalise(x: "torch.Tensor", pre: Preprocessing) -> "torch.Tensor":
    import torch

    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def needs_resize(h: int, w: int, pre: Preprocessing) -> bool:
    return not (h == w == pre.crop and pre.resize == pre.crop)


def resize_size(pre: Preprocessing) -> list[int]:
    """torchvision's ``size`` argument for the resize step: ``[s, s]`` (squash: both sides,
    aspect ratio not kept) or ``[s]`` (shorter side to s, aspect ratio kept)."""
    if pre.resize_mode == "squash":
        return [pre.resize, pre.resize]
    if pre.resize_mode == "shorter":
        return [pre.resize]
    check_choice("resize mode", str(pre.resize_mode), RESIZE_MODES)  # raises: not validated
    return [pre.resize]


def antialias_for(pre: Preprocessing) -> bool:
    """Whether float tensors are resized with antialiasing (PIL images always are)."""
    return pre.interpolation != "nearest"


def pil_to_tensor(img, pre: Preprocessing) -> "torch.Tensor":
    """A PIL image -> [3, crop, crop] float32 in [0, 1] (not yet normalised)."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    img = img.convert("RGB")
    if needs_resize(img.height, img.width, pre):
        img = TF.resize(img, resize_size(pre), interpolation=interpolation_mode(pre.interpolation))
        if img.height != pre.crop or img.width != pre.crop:
            img = TF.center_crop(img, [pre.crop, pre.crop])
    return TF.pil_to_tensor(img).to(torch.float32).div_(255.0)


def preprocess_image(image, pre: Preprocessing) -> "np.ndarray":
    """One image (a path or a PIL image) -> the model's input ``[3, crop, crop]`` float32,
    resized, scaled and normalised: what a client sends a server (``dyt-edge package``
    records the artifact's preprocessing in ``dyt_edge_package.json``)."""
    if not hasattr(image, "convert"):
        from PIL import Image

        with Image.open(image) as opened:
            return preprocess_image(opened, pre)
    return normalise(pil_to_tensor(image, pre)[None], pre)[0].numpy()


def resize_float(x: "torch.Tensor", pre: Preprocessing) -> "torch.Tensor":
    """[N, 3, H, W] float in [0, 1] -> [N, 3, crop, crop] (identity when already that size)."""
    from torchvision.transforms.v2 import functional as TF

    if not needs_resize(x.shape[-2], x.shape[-1], pre):
        return x
    x = TF.resize(x, resize_size(pre), interpolation=interpolation_mode(pre.interpolation),
                  antialias=antialias_for(pre))
    if x.shape[-2] != pre.crop or x.shape[-1] != pre.crop:
        x = TF.center_crop(x, [pre.crop, pre.crop])
    return x.clamp(0.0, 1.0)  # not in place: resize may hand back its (expanded) input
