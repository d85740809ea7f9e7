"""Calibration images for INT8: DATA preprocessed exactly as the artifact's manifest says.

``load_calibration(spec, info, size=300)`` (``info``: the export's typed manifest) returns a
:class:`CalibrationSet`: up to ``size`` images (a deterministic, hash-ordered subset chosen
before anything is decoded), with labels when DATA has them, and the number of files that could
not be read (skipped and counted, the run goes on when at least :func:`minimum_images` usable
images remain).

Which images: all of DATA, except for the embedded ``digits``, where the held-out ``test``
split is left out (that is the split ``dyt-edge validate`` and training report accuracy on, so
quantization never sees it). Preprocessing always comes from the manifest's record through
:meth:`dyt_edge.manifest.Manifest.preprocessing` (resize mode, resize, crop, interpolation,
mean, std); images of any size are resized per it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

from ..config import Preprocessing
from ..errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..manifest import Manifest

DEFAULT_SIZE = 300
"""Calibration images by default (NNCF's default subset size)."""
MIN_IMAGES = 16
"""Fewer usable images than this (or than asked for, when fewer were asked) is an error."""
DIGITS = "digits"


def minimum_images(size: int) -> int:
    return min(MIN_IMAGES, size)


@dataclass
class CalibrationSet:
    images: "np.ndarray"
    """[N, 3, H, W] float32, preprocessed per the manifest."""
    labels: Optional["np.ndarray"]
    """[N] int64, or None when DATA has no labels."""
    spec: str
    """DATA as given (``digits``, a directory, an .npz)."""
    name: str
    split: Optional[str]
    requested: int
    skipped: int
    seed: int
    preprocessing: Preprocessing

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def batches(self, batch: Optional[int] = None) -> list["np.ndarray"]:
        """The images as model inputs: one image per item, or items of exactly ``batch`` images
        for a static-batch model (the last one filled up from the start)."""
        import numpy as np

        x = self.images
        if not batch or batch <= 1:
            return [x[i:i + 1] for i in range(len(x))]
        items = []
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            if len(chunk) < batch:
                chunk = np.concatenate([chunk, x[:batch - len(chunk)]])
            items.append(chunk)
        return items

    def labelled_items(self, batch: Optional[int] = None
                       ) -> list[tuple["np.ndarray", "np.ndarray", "np.ndarray"]]:
        """(images, labels, valid) items (see :meth:`batches`); ``valid`` is False for the
        images that only fill up the last static batch, so they are not counted twice."""
        import numpy as np

        if self.labels is None:
            raise DataError(f"{self.name} has no labels")
        labels = np.asarray(self.labels)
        images = self.batches(batch)
        if not batch or batch <= 1:
            return [(img, labels[i:i + 1], np.ones(1, bool)) for i, img in enumerate(images)]
        n = len(labels)
        items = []
        for k, img in enumerate(images):
            pos = [k * batch + j for j in range(batch)]
            items.append((img, labels[[p % n for p in pos]], np.array([p < n for p in pos])))
        return items

    def record(self) -> dict[str, Any]:
        """What the build manifest records."""
        return {"data": self.spec, "name": self.name, "split": self.split,
                "size": len(self), "requested": self.requested, "skipped": self.skipped,
                "seed": self.seed, "labels": self.has_labels,
                "preprocessing": self.preprocessing.to_dict()}

    def __iter__(self) -> Iterator["np.ndarray"]:
        return iter(self.batches())


def load_calibration(spec: str, info: "Manifest", size: int = DEFAULT_SIZE, *,
                     seed: int = 0, require_labels: bool = False,
                     flag: str = "--calib") -> CalibrationSet:
    """Up to ``size`` calibration images from ``spec``, preprocessed per the manifest ``info``.

    ``seed`` chooses the subset (and, for ``digits``, the hold-out split: keep 0 so that the
    test split stays out). Errors are :class:`DataError` (``flag`` names the option in them).
    """
    from ..data import load_images

    if int(size) <= 0:
        raise UsageError(f"--calib-size must be positive, got {size}")
    pre = info.preprocessing()
    spec = str(spec)
    split = "train" if spec == DIGITS else None
    try:
        loaded = load_images(spec, pre, split=split, limit=int(size), seed=seed)
    except DataError as exc:
        raise DataError(f"{flag}: {exc.message}", exc.hint) from None
    except OSError as exc:  # a directory we may not list, a file we may not open
        raise DataError(f"{flag}: cannot read {spec}: {exc.strerror or exc}",
                        "check the path and its permissions") from None
    n = len(loaded)
    need = minimum_images(int(size))
    if n < need:
        skipped = f" ({loaded.skipped} unreadable files skipped)" if loaded.skipped else ""
        raise DataError(f"{flag}: only {n} usable image(s) in {spec}{skipped}; INT8 "
                        f"calibration needs at least {need}",
                        "pass more images like the ones the model will see")
    if require_labels and loaded.labels is None:
        raise DataError(f"{flag}: {spec} has no labels; --accuracy-control measures accuracy "
                        "and needs them", "pass an ImageFolder (one sub-folder per class) or an "
                        ".npz with 'labels', or drop --accuracy-control")
    images = loaded.images.numpy().astype("float32", copy=False)
    expected = (3, pre.crop, pre.crop)
    if tuple(images.shape[1:]) != expected:  # load_images resizes; a guard, not expected
        raise DataError(f"{flag}: images came out as {list(images.shape[1:])}, expected "
                        f"{list(expected)}")
    labels = loaded.labels.numpy() if loaded.labels is not None else None
    return CalibrationSet(images=images, labels=labels, spec=spec, name=loaded.name,
                          split=split, requested=int(size), skipped=int(loaded.skipped),
                          seed=seed, preprocessing=pre)
