"""``dyt-edge visualize``: pictures of what the dispatchers do on real images (the figures and
``activation.json`` are described in docs/visualize.md).

:mod:`~dyt_edge.visualize.command` (:func:`visualize`), :mod:`~dyt_edge.visualize.sources`
(checkpoint or artifact, and its training record), :mod:`~dyt_edge.visualize.runners` (running
it over the images), :mod:`~dyt_edge.visualize.measurement` (the masks and each figure's
numbers), :mod:`~dyt_edge.visualize.output` (the output directory and writing the figures).
"""

from ..token_maps import choose_shown
from .command import DEFAULT_BATCH, DEFAULT_IMAGES, DEFAULT_SAMPLES, visualize
from .measurement import (Measurement, activation_by_class_data, activation_map_data,
                          activation_rates_data, figure_data, tokens_data)
from .output import (DATA_FILE, FIGURE_FILES, FIGURES_DIR, VisualizeResult, check_figures_dir,
                     default_figures_dir, write_figures)
from .runners import CHECKPOINT_SUFFIXES
from .sources import Source, resolve_source, training_record

__all__ = [
    "CHECKPOINT_SUFFIXES", "DATA_FILE", "DEFAULT_BATCH", "DEFAULT_IMAGES", "DEFAULT_SAMPLES",
    "FIGURES_DIR", "FIGURE_FILES",
    "Measurement", "Source", "VisualizeResult",
    "activation_by_class_data", "activation_map_data", "activation_rates_data",
    "check_figures_dir", "choose_shown", "default_figures_dir", "figure_data", "resolve_source",
    "tokens_data", "training_record", "visualize", "write_figures",
]
