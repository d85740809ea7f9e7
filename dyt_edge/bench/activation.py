"""The activation ``dyt-edge bench`` reports: the share of patch tokens each dispatcher keeps,
measured with the runtime's own masks on the images (per image, per batch size as what the
dispatch mode really computes, per class), the GFLOPs it implies, and the note that ``pack``
would serve batches better (``docs/bench.md``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..manifest import Manifest

from ..batches import run_in_batches


def batch_max_rates(rates: Any, batch: int) -> tuple[list[float], int]:
    """Per-image rates ``[N, L]`` -> per dispatcher, the mean over consecutive batches of
    ``batch`` images of each batch's maximum rate (what data-dependent K computes), and how many
    batches. Fewer than ``batch`` images: one batch of all of them (repeating images does not
    change a maximum); a last partial batch is left out."""
    import numpy as np

    r = np.asarray(rates, dtype=np.float64)
    n = r.shape[0]
    full = n // batch
    if full == 0:
        return [float(v) for v in r.max(axis=0)], 1
    maxima = r[:full * batch].reshape(full, batch, -1).max(axis=1)
    return [float(v) for v in maxima.mean(axis=0)], full


def computed_rates(mode: str, per_image: Any, batch: int, info: "Manifest"
                   ) -> tuple[list[float], Optional[int]]:
    """The per-dispatcher rate a batch of ``batch`` actually computes in dispatch ``mode``."""
    import numpy as np

    r = np.asarray(per_image, dtype=np.float64)
    layers = r.shape[1]
    if mode == "topk":
        return batch_max_rates(r, batch)
    if mode == "capacity":
        slots = info.dispatch.capacity_slots or ()
        patches = (info.img_size // int(info.model["patch_size"])) ** 2
        if len(slots) == layers:
            return [min(1.0, s / patches) for s in slots], None
        return [float(v) for v in r.mean(axis=0)], None
    if mode in ("mask", "complete"):
        return [1.0] * layers, None
    # pack: the active tokens (an attention sub-block's core is padded per image; the FLOPs
    # model counts it at the mean too)
    return [float(v) for v in r.mean(axis=0)], None


class _NoMasks(Exception):
    """The runtime returned no masks: there is no activation to measure."""


def measure_activation(runtime: Any, images: Any, batch: int) -> Optional[Any]:
    """Per-image, per-dispatcher rates ``[N, L]`` from the runtime's own masks (None when it
    exposes none). Images run in batches of ``batch`` (the last one padded by repetition)."""
    def run(x: Any):
        out = runtime.run(x)
        if out.masks is None:
            raise _NoMasks
        return out.logits, out.masks

    try:
        _, masks = run_in_batches(run, images, batch=batch, static=batch)
    except _NoMasks:
        return None
    return masks.reshape(masks.shape[0], masks.shape[1], -1).mean(axis=2)


def activation_summary(per_image: Any, info: "Manifest", spec: str, loaded: Any,
                       sizes: Sequence[int], mode: str) -> Optional[dict[str, Any]]:
    """The report's ``activation`` section from the per-image rates (None without masks):
    the mean and per-dispatcher rates, and per batch size what dispatch ``mode`` computes."""
    if per_image is None:
        return None
    from ..flops import model_flops

    config = info.config()
    names = info.dispatch.dispatchers or config.dispatcher_names
    per_layer = [float(v) for v in per_image.mean(axis=0)]
    batch_max = {}
    for b in sizes:
        rates, count = computed_rates(mode, per_image, b, info)
        batch_max[str(b)] = {"mean": sum(rates) / len(rates), "per_layer": rates,
                             "batches": count,
                             "computed_gflops": model_flops(config, rates).gflops}
    return {"data": spec, "images": int(per_image.shape[0]), "skipped": int(loaded.skipped),
            "dispatch": mode, "dispatchers": list(names),
            "mean": sum(per_layer) / len(per_layer), "per_layer": per_layer,
            "batch_max": batch_max}


def add_per_class(activation: Optional[dict[str, Any]], per_image: Any,
                  info: "Manifest", loaded: Any, notes: list[str]) -> None:
    """The activation per class (labelled data): ``activation["per_class"]`` and how the
    data's labels were matched to the artifact's classes (``activation["classes"]``), named by
    the artifact's class names, else the data's, else the index."""
    if activation is None:
        return
    from ..class_names import match_artifact_classes, per_class_activation

    labels = None if loaded.labels is None else loaded.labels.numpy()
    match = match_artifact_classes(info, loaded.class_names, labels)
    activation["classes"] = match.to_dict() if match.groups is not None else None
    activation["per_class"] = per_class_activation(per_image, match)
    notes.extend(n for n in match.notes if "no accuracy" not in n)
    if match.relation == "different":
        notes.append("the data's class names are not the artifact's: activation per class is "
                     "grouped by the data's own classes")


def flops_summary(info: "Manifest", activation: Optional[dict[str, Any]]
                  ) -> Optional[dict[str, Any]]:
    """The report's ``flops`` section: GFLOPs of the DyT model at the measured activation and
    of the complete model, and their ratio (None without an activation)."""
    if activation is None:
        return None
    from ..flops import model_flops

    config = info.config()
    dyt = model_flops(config, activation["per_layer"])
    full = model_flops(config, None)
    per_layer = [{"name": d.name, "activation": list(d.activation), "gflops": d.total / 1e9,
                  "complete_gflops": c.total / 1e9} for d, c in zip(dyt.layers, full.layers)]
    return {"convention": dyt.to_dict()["convention"], "dyt_gflops": dyt.gflops,
            "complete_gflops": full.gflops, "ratio": full.total / dyt.total,
            "per_layer": per_layer}


def padding_notes(activation: Optional[dict[str, Any]]) -> list[str]:
    """A ``topk`` artifact computes, per dispatcher, K = the active count of the busiest image in
    the batch. When that is well above the mean at some batch size and token-wise (MLP)
    sub-blocks are dispatched, ``pack`` (which computes the active tokens alone) is the better
    export for batched serving: say so."""
    if not activation or activation.get("dispatch") != "topk":
        return []
    if not any(str(n).rsplit(".", 1)[-1].startswith("mlp")
               for n in activation.get("dispatchers") or []):
        return []
    mean = float(activation["mean"])
    worst = max(((int(b), float(v["mean"])) for b, v in activation["batch_max"].items()
                 if int(b) > 1), key=lambda bv: bv[1] - mean, default=None)
    if worst is None or worst[1] - mean < 0.1:
        return []
    return [f"topk computes K = the busiest image of each batch: {worst[1]:.0%} of the tokens at "
            f"batch {worst[0]} against a mean activation of {mean:.0%}; for batched serving "
            "export with --dispatch pack, which computes the active tokens alone"]


__all__ = ["activation_summary", "add_per_class", "batch_max_rates", "computed_rates",
           "flops_summary", "measure_activation", "padding_notes"]
