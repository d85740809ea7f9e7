"""What ``dyt-edge validate`` compares: the target, the artifact (given, or the most recent
export for the target) and the images (DATA, preprocessed per the artifact's manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ..artifacts import Artifact
    from ..manifest import Manifest

VALIDATION_TARGETS = ("onnxruntime", "openvino", "tensorrt")
PYTORCH_TARGET_PRECISIONS = ("fp16", "bf16")
"""Precisions at which ``--target pytorch`` is validated on the CPU (fp16 is then refused by
the runtime: it runs on CUDA only)."""
TARGET_KINDS = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}
"""Which artifact kind the most recent export is looked for, per target."""
DEFAULT_SAMPLES = 512
DATA_SEED = 0
"""Seed of the digits hold-out split and of the deterministic subset (0: the split the demo
model was trained against)."""
MIN_READABLE = 0.5
"""Stop when fewer than this share of the data's files could be read."""


def check_target(target: Optional[str], device: Optional[str] = None,
                 precision: Optional[str] = None) -> str:
    """``--target`` in canonical form; a usage error when missing, unknown, or the PyTorch
    reference itself. ``pytorch`` is a target only on another device (``--device cuda``: PyTorch
    on a GPU) or at a lower precision (``fp16`` / ``bf16``): PyTorch fp32 on the CPU is the
    reference every target is compared with."""
    from ..config import closest

    if target is None:
        raise UsageError("--target is required",
                         f"choose one of: {', '.join(VALIDATION_TARGETS)}")
    t = str(target).strip().lower()
    if t == "pytorch":
        on_cpu = device is None or str(device).strip().lower() in ("", "cpu")
        if on_cpu and precision not in PYTORCH_TARGET_PRECISIONS:
            raise UsageError("--target pytorch at fp32 on the CPU is the reference validate "
                             "compares against",
                             "add --device cuda (PyTorch on a GPU) or --precision bf16, or "
                             f"choose one of: {', '.join(VALIDATION_TARGETS)}")
        return t
    if t not in VALIDATION_TARGETS:
        raise UsageError(f"unknown target '{target}'",
                         f"{closest(t, VALIDATION_TARGETS)}choose one of: "
                         f"{', '.join(VALIDATION_TARGETS)}")
    return t


def pick_artifact(path: Optional[Union[str, Path]], target: str) -> tuple["Artifact", bool]:
    """The artifact at ``path``; without one, the most recent export holding the model the
    target runs (else the most recent of any kind, which the runtime then refuses with the
    command that makes the right one). Returns ``(artifact, picked)``."""
    from ..artifacts import ArtifactError, find_latest_artifact, load_artifact

    if path is not None:
        return load_artifact(path), False
    kind = TARGET_KINDS.get(target)
    if kind is not None:
        try:
            return find_latest_artifact(kind=kind), True
        except ArtifactError:
            pass
    return find_latest_artifact(), True


def load_validation_data(info: "Manifest", data: Optional[str], samples: int):
    """(ImageSet, data record) for ``data`` (default: digits for the demo model, its held-out
    ``test`` split), preprocessed per the manifest ``info``: at most ``samples`` images, the
    same deterministic subset on every run; unreadable files are skipped and counted, and more
    than half of them unreadable is an error."""
    from ..data import DEMO_DATA, data_name, default_data, is_demo_model, load_images

    spec = default_data(data, demo=is_demo_model(info), purpose="validation")
    pre = info.preprocessing()
    split = "test" if spec == DEMO_DATA else None
    try:
        images = load_images(spec, pre, split=split, limit=samples, seed=DATA_SEED)
    except OSError as exc:
        raise DataError(f"cannot read {spec}: {exc.strerror or exc}",
                        "check the path and its permissions") from None
    n, skipped = len(images), int(images.skipped)
    if n == 0:
        raise DataError(f"no images to validate on in {spec}")
    if skipped and n < MIN_READABLE * (n + skipped):
        raise DataError(f"only {n} of {n + skipped} image files in {spec} could be read "
                        f"({skipped} corrupt or unreadable)",
                        "fix or remove the broken files; validation needs most of them")
    record = {"spec": spec, "name": data_name(spec), "split": split, "images": n,
              "skipped": skipped, "requested": samples, "labelled": images.labels is not None,
              "seed": DATA_SEED, "default": data is None}
    return images, record


__all__ = ["DEFAULT_SAMPLES", "VALIDATION_TARGETS", "check_target", "load_validation_data",
           "pick_artifact"]
