"""Running the model over the images: a checkpoint in PyTorch (the model's default ``pack``
dispatch) or an artifact on a runtime, batch by batch, returning the logits and the dispatch
masks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..artifacts import Artifact
from ..batches import BatchRun as Runner
from ..batches import run_in_batches
from ..errors import CheckpointError, DytEdgeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..config import DyTConfig

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


def checkpoint_runner(path: Path, overrides: dict[str, Any]
                      ) -> tuple[Runner, "DyTConfig", Optional[list[str]]]:
    """(run, config, the class names the checkpoint records)."""
    import numpy as np
    import torch

    from ..checkpoint import read_checkpoint
    from ..model import build_model

    try:
        loaded = read_checkpoint(path, **overrides)
    except CheckpointError as exc:
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            raise
        raise CheckpointError(f"{path} is neither a DyT checkpoint nor an artifact directory: "
                              f"{exc.message}",
                              "pass a checkpoint (.pth, .pt, .safetensors) or an artifact "
                              "directory written by `dyt-edge export`") from None
    model = build_model(loaded.config, init_weights=False)
    model.load_state_dict(loaded.state_dict, strict=True)
    model.float().eval()

    def run(x: "np.ndarray"):
        with torch.inference_mode():
            logits, masks = model(torch.from_numpy(x), return_masks=True)
        return logits.float().numpy(), masks.numpy().astype(np.bool_)

    return run, model.config, loaded.class_names


def artifact_runner(art: Artifact, target: str) -> tuple[Runner, Any]:
    """(run, the open runtime: the caller closes it)."""
    from ..runtimes import open_runtime

    runtime = open_runtime(target, art)

    def run(x: "np.ndarray"):
        out = runtime.run(x)
        return out.logits, out.masks

    return run, runtime


def run_all(run: Runner, images: "np.ndarray", batch: int, static: Optional[int],
            progress: Optional[Callable[[int], None]]) -> tuple["np.ndarray", "np.ndarray"]:
    """(logits, masks != 0) of every image, ``batch`` at a time (``static``: the artifact's
    fixed batch, the last one padded); ``progress(n)`` after each batch. Fails on the first
    batch that comes back without masks."""
    def with_masks(x: "np.ndarray"):
        out_logits, out_masks = run(x)
        if out_masks is None:
            raise DytEdgeError("this target returns no dispatch masks for this artifact",
                               "use --target pytorch (the recorded checkpoint)")
        return out_logits, out_masks

    def done(start: int, stop: int) -> None:
        if progress:
            progress(stop - start)

    return run_in_batches(with_masks, images, batch=batch, static=static, on_batch=done)
