"""The DyT model on timm building blocks. Knows nothing of exporters or runtimes."""

from .dispatch import DISPATCH_MODES, capacity_overflow, run_dispatched
from .layers import Adapter, DyTBlock, MoEAdapter, TokenSelect, gumbel_sigmoid_hard
from .vit import DyTVisionTransformer, build_model

__all__ = [
    "DISPATCH_MODES",
    "Adapter",
    "DyTBlock",
    "DyTVisionTransformer",
    "MoEAdapter",
    "TokenSelect",
    "build_model",
    "capacity_overflow",
    "gumbel_sigmoid_hard",
    "run_dispatched",
]
