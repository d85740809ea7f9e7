"""Reading and writing DyT checkpoints, safely.

Two kinds of file are read: what the published DyT training code writes with ``torch.save``
(format ``published``: its architecture inferred from tensor shapes and ``args``), and the
project's own ``.safetensors`` format written by :func:`save_model` (format ``dyt-edge``: the
config travels with the weights). The layouts, the format's metadata and where each inferred
value comes from are described in README.md, "Checkpoints".

Modules: :mod:`.api` (reading a checkpoint into a checked config, weights and model),
:mod:`.reading` (sniffing and reading the file; :func:`read_state_dict` for tensors that need
not form a DyT model), :mod:`.safe_pickle` (the restricted unpickler), :mod:`.own_format` (the
dyt-edge format and the training record it may carry), :mod:`.inference` (the config from the
tensors), :mod:`.args` (the published training ``args``), :mod:`.overrides` (the caller's
config overrides). Names with a leading underscore are internal to this package.

Every problem a user can cause (a bad path, a damaged or unsafe file, weights that do not match
the architecture, a missing adapter scale) is a :class:`~dyt_edge.errors.CheckpointError`
(:class:`~dyt_edge.errors.UnsafeCheckpointError` for a pickle that asks for code) or a
:class:`~dyt_edge.errors.ConfigError` (a bad override), with the fix as its hint.
"""

from __future__ import annotations

from ..artifacts import file_sha256
from .api import LoadedCheckpoint, load_model, read_checkpoint
from .inference import infer_config
from .own_format import FORMAT, FORMAT_VERSION, save_model, training_metadata, training_record
from .reading import read_state_dict

__all__ = ["FORMAT", "FORMAT_VERSION", "LoadedCheckpoint", "file_sha256", "infer_config",
           "load_model", "read_checkpoint", "read_state_dict", "save_model",
           "training_metadata", "training_record"]
