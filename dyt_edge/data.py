"""Images for training and measuring: the embedded ``digits`` set, an ImageFolder directory, or an
``.npz`` file, turned into one normalised tensor per the model's :class:`Preprocessing`.

``load_images(spec, preprocessing, split=..., limit=..., seed=...) -> ImageSet``

* ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, shipped with
  scikit-learn, no download). Values 0..16 are scaled to [0, 1] and upsampled to 32x32 RGB with
  *nearest* interpolation, so one original pixel is exactly one 4x4 patch of a patch-4 ViT: a
  patch is background exactly when its pixel is 0, which is what lets a dispatcher be seen
  skipping the background. (Bilinear upsampling would smear digit strokes into neighbouring
  patches.) The preprocessing's mean/std are applied; a model whose input is not 32x32 gets the
  images resized like any other data.
* a directory: ImageFolder layout (one sub-folder per class, labels in sorted folder order), a
  flat folder of images (no labels), or a split layout (``train/`` plus ``val/``, ``valid/`` or
  ``test/``, each an ImageFolder). Unreadable or corrupt files are skipped and counted.
* an ``.npz``: ``images`` as uint8 [N, H, W, C] / [N, C, H, W] / [N, H, W] or float in [0, 1];
  optional ``labels`` [N] (non-negative integers) and ``class_names``. Read without pickle.

Preprocessing, per its ``resize_mode`` and the same for all three sources: ``squash`` resizes to
``resize`` x ``resize`` whatever the aspect ratio (torchvision's ``Resize((s, s))``, the
published VTAB recipe), ``shorter`` resizes the shorter side to ``resize`` keeping the aspect
ratio (``Resize(s)``); both then center crop ``crop`` x ``crop`` (nothing to crop when a squash
has ``resize == crop``), scale to [0, 1] and normalise with ``mean`` / ``std``. Folder images are
resized as PIL images by torchvision (so they equal torchvision's transforms on the same files);
.npz and digits pixels as float tensors (antialiased except for ``nearest``, clamped to [0, 1]).
Images already at ``crop`` x ``crop`` with ``resize == crop`` are left untouched (no
resampling: both modes would return them unchanged).

Splits: ``split="train"`` / ``"test"`` give a deterministic, stratified 80/20 hold-out (20% of
every class, at least one image of any class with two or more). Membership is decided by a hash
of ``(seed, item key)`` (the index for digits and .npz, the relative path for folders), so it is
the same on every machine and library version, and adding a file to a folder does not reshuffle
the others. A split layout directory uses its own folders instead. ``limit`` keeps a
deterministic (hash-ordered) subset of that many images, chosen before any file is decoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from .config import Preprocessing
from .errors import DataError
from .preprocess import normalise, pil_to_tensor, resize_float

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from .manifest import Manifest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm")
SPLITS = ("train", "test")
TEST_FRACTION = 0.2
SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "valid", "validation")}

DIGITS_SIZE = 32
"""Digits are 8x8; upsampled 4x (nearest) so that one pixel is one 4x4 patch."""
DIGITS_PATCH = 4


@dataclass
class ImageSet:
    """Images ready for a model, with their labels when the data has them."""

    images: "torch.Tensor"
    """[N, 3, H, W] float32, normalised per the preprocessing."""
    labels: Optional["torch.Tensor"]
    """[N] int64, or None for unlabelled data."""
    class_names: Optional[list[str]]
    name: str
    skipped: int = 0
    """Files that could not be read and were left out."""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> Optional[int]:
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None or len(self.labels) == 0:
            return None
        return int(self.labels.max()) + 1

    def raw(self, preprocessing: Preprocessing) -> "torch.Tensor":
        """The images back in [0, 1] (undoing mean/std)."""
        import torch

        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        return self.images * std + mean


def data_name(spec: str) -> str:
    """A short name for a data spec: ``digits``, a folder's name or an .npz file's stem."""
    if spec == "digits":
        return "digits"
    path = Path(spec)
    return path.stem if path.suffix.lower() == ".npz" else (path.resolve().name or "data")


def load_images(spec: str, preprocessing: Preprocessing, *, split: Optional[str] = None,
                limit: Optional[int] = None, seed: int = 0) -> ImageSet:
    """Load ``spec`` (``digits``, a directory or an ``.npz``) as an :class:`ImageSet`.

    ``split`` is ``"train"``, ``"test"`` or None (everything); ``seed`` chooses the hold-out
    split (keep the default 0 to measure on the split a model was trained against).
    """
    preprocessing.validate()
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split '{split}'", "use 'train', 'test' or no split")
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")
    spec = str(spec)
    if spec == "digits":
        return _load_digits(preprocessing, split, limit, seed)
    path = Path(spec).expanduser()
    if not path.exists():
        hint = ("pass 'digits', an ImageFolder directory or an .npz file"
                if path.suffix.lower() != ".npz" else "check the path")
        raise DataError(f"data not found: {spec}", hint)
    if path.is_dir():
        return _load_folder(path, preprocessing, split, limit, seed)
    if path.suffix.lower() == ".npz":
        return _load_npz(path, preprocessing, split, limit, seed)
    raise DataError(f"cannot read data from {spec}",
                    "pass 'digits', an ImageFolder directory or an .npz file")


# -- splitting --------------------------------------------------------------------------------

def _hash_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_indices(keys: Sequence[str], labels: Optional[Sequence[int]], split: Optional[str],
                  seed: int = 0, test_fraction: float = TEST_FRACTION) -> list[int]:
    """Indices (ascending) of the items in ``split``: stratified by label, hash-ordered."""
    n = len(keys)
    if split is None:
        return list(range(n))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(int(labels[i]) if labels is not None else 0, []).append(i)
    test: set[int] = set()
    for members in groups.values():
        ordered = sorted(members, key=lambda i: _hash_key(seed, keys[i]))
        n_test = int(round(test_fraction * len(ordered)))
        if len(ordered) >= 2:
            n_test = min(max(n_test, 1), len(ordered) - 1)
        else:
            n_test = 0
        test.update(ordered[:n_test])
    return [i for i in range(n) if (i in test) == (split == "test")]


def _limit(indices: list[int], keys: Sequence[str], limit: Optional[int], seed: int) -> list[int]:
    if limit is None or limit >= len(indices):
        return indices
    chosen = sorted(indices, key=lambda i: _hash_key(seed + 1, keys[i]))[:limit]
    return sorted(chosen)


# -- digits -----------------------------------------------------------------------------------

def digits_raw() -> tuple["np.ndarray", "np.ndarray"]:
    """scikit-learn's digits as (images [1797, 8, 8] float32 in [0, 1], labels [1797] int64)."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def upsample_digits(images8: "torch.Tensor") -> "torch.Tensor":
    """[N, 8, 8] in [0, 1] -> [N, 3, 32, 32]: nearest, one pixel per 4x4 patch, grey RGB."""
    scale = DIGITS_SIZE // 8
    x = images8.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _load_digits(pre: Preprocessing, split: Optional[str], limit: Optional[int],
                 seed: int) -> ImageSet:
    import torch

    images8, labels = digits_raw()
    keys = [str(i) for i in range(len(labels))]
    idx = _limit(split_indices(keys, labels.tolist(), split, seed), keys, limit, seed)
    x = upsample_digits(torch.from_numpy(images8[idx]))
    x = normalise(resize_float(x, pre), pre)
    return ImageSet(x, torch.from_numpy(labels[idx]), [str(c) for c in range(10)], "digits", 0)


# -- .npz -------------------------------------------------------------------------------------

def _npz_images_to_float(arr: "np.ndarray", path: Path) -> "torch.Tensor":
    """An images array in any supported layout -> [N, 3, H, W] float32 in [0, 1]."""
    import numpy as np
    import torch

    if arr.ndim == 3:                                           # [N, H, W] greyscale
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3):
            arr = np.moveaxis(arr, -1, 1)                       # NHWC -> NCHW
        elif arr.shape[1] not in (1, 3, 4):
            raise DataError(f"{path.name}: 'images' has shape {list(arr.shape)} with no channel "
                            "axis of size 1, 3 or 4",
                            "store images as [N, H, W, C] or [N, C, H, W]")
    else:
        raise DataError(f"{path.name}: 'images' must be [N, H, W, C], [N, C, H, W] or [N, H, W], "
                        f"got shape {list(arr.shape)}")
    if arr.shape[1] == 4:
        arr = arr[:, :3]                                        # drop alpha
    if arr.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32).div_(255.0)
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
            raise DataError(f"{path.name}: float 'images' must lie in [0, 1] "
                            f"(found {float(x.min()):.3g}..{float(x.max()):.3g})",
                            "store raw pixels: uint8 0..255 or float 0..1, not normalised")
    else:
        raise DataError(f"{path.name}: 'images' has dtype {arr.dtype}",
                        "store uint8 (0..255) or float (0..1) pixels")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _load_npz(path: Path, pre: Preprocessing, split: Optional[str], limit: Optional[int],
              seed: int) -> ImageSet:
    import numpy as np
    import torch

    try:
        npz = np.load(path, allow_pickle=False)
        files = set(npz.files)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the user's file
        raise DataError(f"cannot read {path.name} as .npz: {_first_line(exc)}",
                        "pass an .npz written by numpy.savez with an 'images' array") from None
    with npz:
        if "images" not in files:
            raise DataError(f"{path.name} has no 'images' array (found: "
                            f"{', '.join(sorted(files)) or 'nothing'})",
                            "save the pixels under the key 'images'")
        try:
            arr = npz["images"]
            labels_arr = npz["labels"] if "labels" in files else None
            names_arr = npz["class_names"] if "class_names" in files else None
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read arrays from {path.name}: {_first_line(exc)}",
                            "object arrays (pickles) are not accepted") from None
    if arr.ndim < 1 or arr.shape[0] == 0:
        raise DataError(f"{path.name}: 'images' is empty")
    n = int(arr.shape[0])
    labels = None
    if labels_arr is not None:
        labels_arr = np.asarray(labels_arr).reshape(-1) if labels_arr.ndim <= 1 else labels_arr
        if labels_arr.ndim != 1 or labels_arr.shape[0] != n:
            raise DataError(f"{path.name}: {n} images but 'labels' has shape "
                            f"{list(labels_arr.shape)}", "store one integer label per image")
        if not (np.issubdtype(labels_arr.dtype, np.integer)
                or (np.issubdtype(labels_arr.dtype, np.floating)
                    and np.all(np.mod(labels_arr, 1) == 0))):
            raise DataError(f"{path.name}: 'labels' must be integers, got {labels_arr.dtype}")
        labels = labels_arr.astype(np.int64)
        if labels.min() < 0:
            raise DataError(f"{path.name}: 'labels' must be non-negative class indices")
    class_names = None
    if names_arr is not None:
        class_names = [str(s) for s in np.asarray(names_arr).reshape(-1).tolist()]
        if labels is not None and int(labels.max()) >= len(class_names):
            raise DataError(f"{path.name}: label {int(labels.max())} but only "
                            f"{len(class_names)} class_names")
    keys = [str(i) for i in range(n)]
    idx = _limit(split_indices(keys, None if labels is None else labels.tolist(), split, seed),
                 keys, limit, seed)
    if not idx:
        raise DataError(f"{path.name}: no images in the '{split}' split",
                        "add more images (the test split is 20% of every class)")
    x = _npz_images_to_float(arr[idx], path)
    x = normalise(resize_float(x, pre), pre)
    y = torch.from_numpy(labels[idx]) if labels is not None else None
    return ImageSet(x, y, class_names, path.stem, 0)


# -- folders ----------------------------------------------------------------------------------

def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_imagefolder(root: Path) -> tuple[list[Path], Optional[list[int]], Optional[list[str]]]:
    """(files, labels, class names): class sub-folders, else a flat folder without labels."""
    classes = [d for d in _subdirs(root) if _images_in(d)]
    if classes:
        files, labels = [], []
        for c, d in enumerate(classes):
            for f in _images_in(d):
                files.append(f)
                labels.append(c)
        return files, labels, [d.name for d in classes]
    flat = sorted(p for p in root.iterdir() if _is_image(p))
    return flat, None, None


def _split_layout(root: Path) -> Optional[dict[str, Path]]:
    """``train/`` + ``val|valid|test/`` sub-folders, when the directory is laid out that way."""
    subs = {d.name.lower(): d for d in _subdirs(root)}
    known = {name for names in SPLIT_DIRS.values() for name in names}
    if "train" not in subs or not set(subs) <= known or len(subs) < 2:
        return None
    test = next((subs[n] for n in SPLIT_DIRS["test"] if n in subs), None)
    return {"train": subs["train"], "test": test} if test is not None else None


def _load_folder(root: Path, pre: Preprocessing, split: Optional[str], limit: Optional[int],
                 seed: int) -> ImageSet:
    import torch
    from PIL import Image

    layout = _split_layout(root)
    if layout is not None:
        parts = [layout[s] for s in (SPLITS if split is None else (split,))]
        scans = [_scan_imagefolder(p) for p in parts]
        names = scans[0][2]
        files, labels = [], []
        for (f, lab, cls), part in zip(scans, parts):
            if cls != names:
                raise DataError(f"{root}: the class folders of {parts[0].name}/ and "
                                f"{part.name}/ differ", "give every split the same class folders")
            files += f
            labels += lab or []
        labels_opt: Optional[list[int]] = labels if names is not None else None
        class_names = names
        keys = [str(f.relative_to(root)) for f in files]
        idx = _limit(list(range(len(files))), keys, limit, seed)
    else:
        files, labels_opt, class_names = _scan_imagefolder(root)
        keys = [str(f.relative_to(root)) for f in files]
        idx = _limit(split_indices(keys, labels_opt, split, seed), keys, limit, seed)
    if not files:
        raise DataError(f"no images in {root}",
                        "expected class sub-folders of images (ImageFolder), or image files "
                        f"({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:5])}, ...)")
    if not idx:
        raise DataError(f"{root}: no images in the '{split}' split",
                        "add more images (the test split is 20% of every class)")
    tensors, kept, skipped = [], [], 0
    for i in idx:
        try:
            with Image.open(files[i]) as img:
                img.load()
                tensors.append(pil_to_tensor(img, pre))
            kept.append(i)
        except Exception:  # noqa: BLE001 - a corrupt file is skipped and counted
            skipped += 1
    if not tensors:
        raise DataError(f"none of the {len(idx)} image files in {root} could be read",
                        "the files are corrupt or not images")
    x = normalise(torch.stack(tensors), pre)
    y = (torch.tensor([labels_opt[i] for i in kept], dtype=torch.int64)
         if labels_opt is not None else None)
    return ImageSet(x, y, class_names, root.resolve().name, skipped)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- which data a model runs on by default ------------------------------------------------------

DEMO_DATA = "digits"


def is_demo_model(info: "Manifest") -> bool:
    """True for an artifact of a model ``dyt-edge train`` trained on the embedded digits (the
    one model for which commands may pick their data themselves)."""
    return trained_on_digits(info.model, info.source.training.get("data"))


def trained_on_digits(model: Mapping[str, Any], trained_on: Optional[str]) -> bool:
    """True for the demo model: a model config record (:meth:`DyTConfig.to_dict`) of the digits'
    shape, trained on the data ``trained_on`` names (a training record's ``data``)."""
    return (trained_on == DEMO_DATA and model.get("img_size") == DIGITS_SIZE
            and model.get("patch_size") == DIGITS_PATCH)


def default_data(data: Optional[str], *, demo: bool, purpose: str = "this command",
                 flag: str = "--data") -> str:
    """``data`` when given; ``digits`` for the demo model (``demo``: :func:`is_demo_model`);
    otherwise a clear error (random noise misleads a dispatcher, and calibrating on the wrong
    images ruins INT8)."""
    if data is not None:
        return str(data)
    if demo:
        return DEMO_DATA
    raise DataError(f"{flag} is required for {purpose} on this model (only the digits demo "
                    "model has a default)",
                    f"pass {flag} with images like the ones it will see: an ImageFolder "
                    "directory or an .npz")


# -- generated images (no data set needed) ------------------------------------------------------

def generated_images(n: int, channels: int, size: int, seed: int = 0) -> "np.ndarray":
    """``n`` normalised images [n, channels, size, size] float32 of varied content, so that
    gates activate different numbers of tokens per image: noise at three scales, flat images,
    smooth gradients, blobs (export validation, synthetic models and benchmarks use them; a
    real deployment is measured on real images)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    out = np.empty((n, channels, size, size), np.float32)
    for i in range(n):
        kind = i % 6
        if kind == 0:
            img = rng.standard_normal((channels, size, size))
        elif kind == 1:
            img = 0.3 * rng.standard_normal((channels, size, size))
        elif kind == 2:
            img = 2.0 * rng.standard_normal((channels, size, size))
        elif kind == 3:
            img = np.broadcast_to(rng.uniform(-1, 1, (channels, 1, 1)), (channels, size, size))
        elif kind == 4:
            a, b = rng.uniform(-1, 1, 2)
            img = np.broadcast_to(a * xx + b * yy, (channels, size, size))
        else:
            cx, cy = rng.uniform(-0.5, 0.5, 2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.1)
            img = (2 * blob - 1)[None] + 0.1 * rng.standard_normal((channels, size, size))
        out[i] = img
    return out
