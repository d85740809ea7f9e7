"""Fine-tune a DyT model with the paper's recipe (README "Training").

:mod:`~dyt_edge.train.presets` (what to train and its defaults), :mod:`~dyt_edge.train.backbone`
(timm shapes, local weights, initialisations), :mod:`~dyt_edge.train.recipe` (loss, optimiser
groups, schedule, augmentations), :mod:`~dyt_edge.train.evaluation` (held-out measurements) and
:mod:`~dyt_edge.train.loop` (:func:`train`).
"""

from .backbone import load_backbone, mimetic_init, read_backbone_weights, timm_architecture
from .evaluation import Evaluation, background_rates, evaluate, patch_background
from .loop import OnEvent, TrainEvent, TrainResult, train
from .presets import (FINETUNE_TRAIN, PRESET_ADAPTER, PRESET_ARCH, PRESET_NAME, PRESET_TRAIN,
                      SCRATCH_TRAIN, TrainConfig, model_config, resolve)
from .recipe import AUGMENTS, RATE_LOSS_WEIGHT, dyt_loss, seed_everything

__all__ = [
    "AUGMENTS", "FINETUNE_TRAIN", "PRESET_ADAPTER", "PRESET_ARCH", "PRESET_NAME", "PRESET_TRAIN",
    "RATE_LOSS_WEIGHT", "SCRATCH_TRAIN",
    "Evaluation", "OnEvent", "TrainConfig", "TrainEvent", "TrainResult",
    "background_rates", "dyt_loss", "evaluate", "load_backbone", "mimetic_init", "model_config",
    "patch_background", "read_backbone_weights", "resolve", "seed_everything",
    "timm_architecture", "train",
]
