"""What a checkpoint holds: architecture, adapters, parameters, FLOPs and (on data) how much the
dispatchers really skip. One JSON-able dict feeds both ``dyt-edge inspect`` and ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from .errors import UsageError


def count_parameters(model) -> dict[str, int]:
    """Total parameters, and the DyT-specific ones (adapters, dispatchers, head) that train."""
    total = sum(p.numel() for p in model.parameters())
    params = dict(model.named_parameters())
    groups = {"adapters": "adaptmlp.", "dispatchers": "_token_select.", "head": "head."}
    counts = {name: sum(p.numel() for n, p in params.items() if key in n)
              for name, key in groups.items()}
    return {
        "total": total,
        "trainable": counts["adapters"] + counts["dispatchers"] + counts["head"],
        "adapters": counts["adapters"],
        "dispatchers": counts["dispatchers"],
        "head": counts["head"],
        "backbone_frozen": total - counts["adapters"] - counts["dispatchers"] - counts["head"],
    }


def measure_dispatch(model, images, labels=None, *, batch_size: int = 64,
                     progress: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Run the model (its current dispatch mode) over images; collect masks and accuracy."""
    import torch

    from .flops import measured_activation

    if batch_size <= 0:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    masks, correct = [], 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            logits, m = model(x, return_masks=True)
            masks.append(m)
            if labels is not None:
                correct += int((logits.argmax(-1) == labels[start:start + batch_size]).sum())
            if progress:
                progress(len(x))
    all_masks = torch.cat(masks)                                    # [N, L, P]
    per_image = all_masks.float().mean(dim=-1)                       # [N, L]
    rates = measured_activation(all_masks)
    return {
        "samples": int(all_masks.shape[0]),
        "activation_mean": float(all_masks.float().mean()),
        "activation_per_dispatcher": rates,
        "activation_min_per_dispatcher": per_image.min(dim=0).values.tolist(),
        "activation_max_per_dispatcher": per_image.max(dim=0).values.tolist(),
        "accuracy": (correct / len(images)) if labels is not None else None,
    }


def inspect_checkpoint(path: str | Path, *, data: Optional[str] = None, samples: int = 512,
                       batch_size: int = 64, progress: Optional[Callable[[int], None]] = None,
                       class_names: Any = None, **overrides: Any) -> dict[str, Any]:
    """Describe a checkpoint; with ``data``, measure activation rates (and accuracy) on it.
    ``class_names`` (a file or a list) win over the names the checkpoint records."""
    from .checkpoint import read_checkpoint
    from .flops import model_flops, plain_vit_flops
    from .model import build_model

    if samples <= 0:
        raise UsageError(f"--samples must be positive, got {samples}")
    loaded = read_checkpoint(path, class_names=class_names, **overrides)
    cfg = loaded.config
    model = build_model(cfg, init_weights=False)
    model.load_state_dict(loaded.state_dict, strict=True)
    model.eval().set_dispatch("pack")

    complete = model_flops(cfg)
    info: dict[str, Any] = {
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256,
                       "format": loaded.format, "layout": loaded.layout},
        "config": cfg.to_dict(),
        "provenance": dict(loaded.provenance),
        "class_names": loaded.class_names,
        "class_names_source": loaded.class_names_source,
        "dispatchers": cfg.dispatcher_names,
        "parameters": count_parameters(model),
        "flops": {"plain_vit": plain_vit_flops(cfg), "complete": complete.total},
        "data": None,
    }
    if data is not None:
        from .data import load_images

        # digits: the held-out split the training accuracy claim uses; user data: all of it.
        split = "test" if data == "digits" else None
        imageset = load_images(data, cfg.preprocessing, split=split, limit=samples)
        measured = measure_dispatch(model, imageset.images, imageset.labels,
                                    batch_size=batch_size, progress=progress)
        dyn = model_flops(cfg, measured["activation_per_dispatcher"])
        info["data"] = {"name": imageset.name, "skipped": imageset.skipped, **measured}
        info["flops"].update({"measured": dyn.total, "ratio": complete.total / dyn.total,
                              "per_layer": [row.total for row in dyn.layers]})
    return info
