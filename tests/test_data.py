"""Datasets: the embedded digits, .npz files and ImageFolder directories, and bad input as
one DataError each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dyt_edge.config import Preprocessing
from dyt_edge.data import digits_raw, load_images, split_indices
from dyt_edge.errors import DataError

PRE32 = Preprocessing.vtab(32)


# -- digits -------------------------------------------------------------------------------------

def test_digits_shape_range_and_patch_alignment():
    full = load_images("digits", PRE32)
    assert full.images.shape == (1797, 3, 32, 32) and full.images.dtype == torch.float32
    assert full.labels.shape == (1797,) and full.class_names == [str(i) for i in range(10)]
    assert full.name == "digits" and full.skipped == 0 and full.num_classes == 10
    assert float(full.images.min()) == -1.0 and float(full.images.max()) == 1.0  # mean=std=0.5
    raw = full.raw(PRE32)
    assert torch.allclose(raw[:, 0], raw[:, 1]) and torch.allclose(raw[:, 0], raw[:, 2])
    # Nearest upsampling: each original pixel is exactly one constant 4x4 patch.
    images8, _ = digits_raw()
    blocks = raw[:, 0].reshape(-1, 8, 4, 8, 4)
    assert torch.equal(blocks.amax(dim=(2, 4)), blocks.amin(dim=(2, 4)))
    assert torch.allclose(blocks[:, :, 0, :, 0], torch.from_numpy(images8), atol=1e-6)


def test_digits_split_is_deterministic_stratified_and_disjoint():
    train = load_images("digits", PRE32, split="train")
    test = load_images("digits", PRE32, split="test")
    again = load_images("digits", PRE32, split="test")
    assert len(train) + len(test) == 1797
    assert torch.equal(test.images, again.images) and torch.equal(test.labels, again.labels)
    counts = torch.bincount(test.labels, minlength=10)
    full = torch.bincount(load_images("digits", PRE32).labels, minlength=10)
    assert torch.all((counts - 0.2 * full).abs() <= 1)          # 20% of every class
    flat = lambda s: {tuple(v) for v in s.images[:, 0, ::4, ::4].reshape(len(s), -1).tolist()}
    # No test image also sits in the training split (digits has a few exact duplicates, so
    # compare indices through the split function rather than pixel values).
    _, labels = digits_raw()
    keys = [str(i) for i in range(len(labels))]
    tr = set(split_indices(keys, labels.tolist(), "train"))
    te = set(split_indices(keys, labels.tolist(), "test"))
    assert not tr & te and len(tr | te) == 1797
    assert len(flat(test)) > 300
    other = load_images("digits", PRE32, split="test", seed=1)
    assert not torch.equal(other.labels, test.labels) or not torch.equal(other.images, test.images)


def test_digits_limit_and_resize_for_other_input_sizes():
    few = load_images("digits", PRE32, split="test", limit=25)
    assert len(few) == 25
    assert torch.equal(few.images, load_images("digits", PRE32, split="test", limit=25).images)
    big = load_images("digits", Preprocessing.imagenet(48), limit=4)
    assert big.images.shape == (4, 3, 48, 48)


# -- .npz ---------------------------------------------------------------------------------------

def _rng_images(n: int, layout: str, size: int = 16):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    if layout == "nchw":
        return x, np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if layout == "float":
        return x, x.astype(np.float32) / 255.0
    if layout == "grey":
        return x[..., :1].repeat(3, axis=-1), x[..., 0]
    return x, x


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "float", "grey"])
def test_npz_layouts_agree(tmp_path, layout):
    reference, stored = _rng_images(10, layout)
    path = tmp_path / f"{layout}.npz"
    np.savez(path, images=stored, labels=np.arange(10) % 2)
    s = load_images(str(path), Preprocessing.vtab(16))
    expected = torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    assert s.images.shape == (10, 3, 16, 16) and s.name == layout
    assert torch.allclose(s.images, expected, atol=1e-5)
    assert s.labels.tolist() == [i % 2 for i in range(10)]


def test_npz_without_labels_resized_and_split(tmp_path):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, images=_rng_images(10, "nhwc", size=20)[1])
    s = load_images(str(path), Preprocessing.vtab(16))
    assert s.labels is None and s.images.shape == (10, 3, 16, 16)
    te = load_images(str(path), Preprocessing.vtab(16), split="test")
    tr = load_images(str(path), Preprocessing.vtab(16), split="train")
    assert len(te) == 2 and len(tr) == 8


def test_npz_bad_inputs(tmp_path):
    def err(**arrays) -> str:
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays)
        with pytest.raises(DataError) as exc:
            load_images(str(path), PRE32)
        return str(exc.value)

    imgs = _rng_images(4, "nhwc")[1]
    assert "no 'images' array" in err(pixels=imgs)
    assert "4 images but 'labels'" in err(images=imgs, labels=np.arange(3))
    assert "must lie in [0, 1]" in err(images=imgs.astype(np.float32))
    assert "integers" in err(images=imgs, labels=np.array([0.5, 1, 2, 3]))
    assert "non-negative" in err(images=imgs, labels=np.array([0, -1, 2, 3]))
    assert "must be [N, H, W, C]" in err(images=np.zeros((4, 5), np.uint8))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="cannot read garbage.npz"):
        load_images(str(garbage), PRE32)


# -- folders ------------------------------------------------------------------------------------

def _write_folder(root, classes=("cat", "dog"), per_class=5, size=(24, 20)):
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_imagefolder_with_a_corrupt_file_skipped_and_counted(tmp_path):
    root = _write_folder(tmp_path / "pets")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    s = load_images(str(root), Preprocessing.vtab(16))
    assert s.images.shape == (10, 3, 16, 16)
    assert s.skipped == 1
    assert s.class_names == ["cat", "dog"] and s.labels.tolist() == [0] * 5 + [1] * 5
    assert s.name == "pets"
    assert float(s.images.min()) >= -1.0 and float(s.images.max()) <= 1.0
    te = load_images(str(root), Preprocessing.vtab(16), split="test")
    tr = load_images(str(root), Preprocessing.vtab(16), split="train")
    assert len(te) + te.skipped == 2                     # one file of every class held out
    assert len(te) + len(tr) == 10 and te.skipped + tr.skipped == 1


def test_flat_folder_and_split_layout(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(flat / f"{i}.jpg")
    s = load_images(str(flat), Preprocessing.imagenet(16))
    assert s.labels is None and s.class_names is None and s.images.shape == (3, 3, 16, 16)

    root = tmp_path / "split"
    _write_folder(root / "train", per_class=3)
    _write_folder(root / "val", per_class=2)
    assert len(load_images(str(root), PRE32, split="train")) == 6
    val = load_images(str(root), PRE32, split="test")
    assert len(val) == 4 and val.class_names == ["cat", "dog"]
    assert len(load_images(str(root), PRE32)) == 10


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        load_images(str(tmp_path / "missing"), PRE32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images in"):
        load_images(str(empty), PRE32)
    junk = tmp_path / "junk"
    (junk / "a").mkdir(parents=True)
    (junk / "a" / "x.png").write_bytes(b"garbage")
    (junk / "a" / "y.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 image files"):
        load_images(str(junk), PRE32)
    other = tmp_path / "file.csv"
    other.write_text("a,b\n")
    with pytest.raises(DataError, match="cannot read data"):
        load_images(str(other), PRE32)
    with pytest.raises(DataError, match="unknown split"):
        load_images("digits", PRE32, split="validation")
    for message in (str(e) for e in [DataError("x", "y")]):
        assert message == "x (y)"


# -- preprocessing: the published recipes, exactly ---------------------------------------------
# torchvision's own transforms on the same PIL images / tensors are the reference: the VTAB
# recipe of the published training code squashes to the square (Resize((s, s)), aspect ratio
# not kept, no crop); the image recipes resize the shorter side and center crop.

def _tv():
    from torchvision import transforms as T

    return T, T.InterpolationMode.BICUBIC


def _non_square_folder(root, sizes=((300, 200), (150, 400))):
    """An ImageFolder of random non-square PNGs; returns the PIL images in load order."""
    rng = np.random.default_rng(3)
    images = []
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img.save(root / c / f"{i}.png")
            images.append(img)
    return images


def test_vtab_recipe_on_folder_images_is_torchvisions_squash(tmp_path):
    T, bicubic = _tv()
    pils = _non_square_folder(tmp_path / "rect")
    s = load_images(str(tmp_path / "rect"), Preprocessing.vtab(224))
    published = T.Compose([T.Resize((224, 224), interpolation=bicubic), T.ToTensor(),
                           T.Normalize((0.5,) * 3, (0.5,) * 3)])
    expected = torch.stack([published(p) for p in pils])
    assert s.images.shape == (4, 3, 224, 224)
    assert torch.equal(s.images, expected)
    # the shorter-side resize + center crop used before sees other pixels
    cropped = T.Compose([T.Resize(224, interpolation=bicubic), T.CenterCrop(224), T.ToTensor(),
                         T.Normalize((0.5,) * 3, (0.5,) * 3)])
    assert not torch.allclose(s.images, torch.stack([cropped(p) for p in pils]), atol=0.1)


def test_imagenet_recipe_on_folder_images_is_shorter_side_and_center_crop(tmp_path):
    from dyt_edge.config import IMAGENET_MEAN, IMAGENET_STD

    T, bicubic = _tv()
    pils = _non_square_folder(tmp_path / "rect")
    pre = Preprocessing.imagenet(56)
    assert (pre.resize, pre.crop, pre.resize_mode) == (64, 56, "shorter")
    s = load_images(str(tmp_path / "rect"), pre)
    published = T.Compose([T.Resize(64, interpolation=bicubic), T.CenterCrop(56), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert s.images.shape == (4, 3, 56, 56)
    assert torch.equal(s.images, torch.stack([published(p) for p in pils]))


@pytest.mark.parametrize("recipe", ["vtab", "imagenet"])
def test_npz_non_square_images_follow_the_recipe(tmp_path, recipe):
    from dyt_edge.preprocess import antialias_for

    T, bicubic = _tv()
    arr = np.random.default_rng(4).integers(0, 256, (3, 30, 20, 3), dtype=np.uint8)  # H 30 W 20
    np.savez(tmp_path / "rect.npz", images=arr)
    pre = getattr(Preprocessing, recipe)(16)
    s = load_images(str(tmp_path / "rect.npz"), pre)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255

    def reference(size):
        resized = T.Resize(size, interpolation=bicubic, antialias=antialias_for(pre))(x)
        return T.Normalize(pre.mean, pre.std)(T.CenterCrop(pre.crop)(resized).clamp(0.0, 1.0))

    squash, shorter = reference([pre.resize, pre.resize]), reference(pre.resize)
    assert s.images.shape == (3, 3, 16, 16)
    assert torch.equal(s.images, squash if recipe == "vtab" else shorter)
    assert not torch.allclose(squash, shorter, atol=0.1)  # the two modes really differ here


def test_square_digits_look_the_same_in_both_modes():
    import dataclasses

    squash = load_images("digits", Preprocessing.vtab(48), limit=8)
    shorter = load_images("digits", dataclasses.replace(Preprocessing.vtab(48),
                                                        resize_mode="shorter"), limit=8)
    assert squash.images.shape == (8, 3, 48, 48)
    assert torch.equal(squash.images, shorter.images)


def test_recipes_record_a_complete_data_config():
    import json

    vtab = Preprocessing.vtab(224)
    assert vtab.to_dict() == {"resize": 224, "crop": 224, "input_size": 224,
                              "interpolation": "bicubic", "resize_mode": "squash",
                              "mean": (0.5,) * 3, "std": (0.5,) * 3, "name": "vtab"}
    imagenet = Preprocessing.imagenet(224)
    d = imagenet.to_dict()
    assert (d["resize"], d["crop"], d["input_size"], d["resize_mode"]) == (256, 224, 224, "shorter")
    for pre in (vtab, imagenet):
        assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert vtab.describe() == "vtab: squash to 224x224, bicubic, mean=std=0.5"
    assert imagenet.describe() == ("imagenet: shorter side to 256, center crop 224x224, bicubic, "
                                   "ImageNet mean/std")


def test_records_written_before_resize_mode_read_as_the_recipe_meant():
    from dyt_edge.config import DyTConfig

    def old(resize, crop, name, stats=0.5):
        return {"resize": resize, "crop": crop, "interpolation": "bicubic",
                "mean": [stats] * 3, "std": [stats] * 3, "name": name}

    assert Preprocessing.from_dict(old(224, 224, "vtab")) == Preprocessing.vtab(224)
    imagenet = Preprocessing.imagenet(224).to_dict()
    del imagenet["resize_mode"], imagenet["input_size"]
    assert Preprocessing.from_dict(imagenet) == Preprocessing.imagenet(224)
    assert Preprocessing.from_dict(old(40, 32, "custom")).resize_mode == "shorter"
    cfg = DyTConfig(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2).to_dict()
    cfg["preprocessing"] = old(32, 32, "vtab")
    assert DyTConfig.from_dict(cfg).preprocessing.resize_mode == "squash"


def test_bad_resize_mode_and_input_size_are_clear_errors():
    from dyt_edge.errors import ConfigError

    bad = Preprocessing(32, 32, resize_mode="fit")
    with pytest.raises(ConfigError, match="unknown resize mode 'fit'") as exc:
        bad.validate()
    assert "squash, shorter" in exc.value.hint
    with pytest.raises(ConfigError, match="unknown resize mode"):
        load_images("digits", bad, limit=2)
    record = Preprocessing.vtab(32).to_dict()
    record["input_size"] = 48
    with pytest.raises(ConfigError, match="input_size 48 differs from its crop 32"):
        Preprocessing.from_dict(record)
    record = Preprocessing.vtab(32).to_dict()
    del record["crop"]
    assert Preprocessing.from_dict(record).crop == 32  # input_size alone says the crop


# -- the artifact's preprocessing: one reader ---------------------------------------------------

def _manifest(directory, **changes):
    """A manifest like `dyt-edge export` writes (no model files), saved in ``directory``."""
    from dyt_edge import artifacts
    from dyt_edge.config import DyTConfig

    cfg = DyTConfig(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                    num_classes=10)
    manifest = artifacts.new_manifest(
        format="onnx", files={}, source={"path": "none.safetensors", "training": None},
        model=cfg.to_dict(), variant=cfg.variant,
        dispatch={"mode": "topk", "capacity": None, "capacity_slots": None,
                  "dispatchers": cfg.dispatcher_names},
        batch="dynamic", preprocessing=cfg.preprocessing.to_dict())
    manifest.update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    artifacts.write_manifest(directory, manifest)
    return manifest


def _consumers():
    """Every command's read of an artifact's data, as far as its preprocessing."""
    from dyt_edge import artifacts
    from dyt_edge.bench import bench_artifact
    from dyt_edge.calibration.data import load_calibration
    from dyt_edge.validate import load_validation_data
    from dyt_edge.visualize import visualize

    def info(d, m):
        return artifacts.Artifact(d, m).info

    return {
        "calibration": lambda d, m: load_calibration("digits", info(d, m), 16),
        "validate": lambda d, m: load_validation_data(info(d, m), "digits", 4),
        "bench": lambda d, m: bench_artifact(artifacts.Artifact(d, m), "pytorch", data="digits",
                                             baseline=False),
        "visualize": lambda d, m: visualize(d, "digits", d / "figures", target="pytorch"),
    }


def test_preprocessing_of_reads_checks_and_refuses(tmp_path):
    from dyt_edge.artifacts import ArtifactError, preprocessing_of

    manifest = _manifest(tmp_path / "a")
    assert preprocessing_of(manifest) == Preprocessing.vtab(32)
    old = {**manifest, "preprocessing": {k: v for k, v in manifest["preprocessing"].items()
                                         if k not in ("resize_mode", "input_size")}}
    assert preprocessing_of(old).resize_mode == "squash"
    with pytest.raises(ArtifactError, match="records no preprocessing"):
        preprocessing_of({k: v for k, v in manifest.items() if k != "preprocessing"})
    with pytest.raises(ArtifactError, match="records no preprocessing"):
        preprocessing_of({**manifest, "preprocessing": None})
    bad = {**manifest, "preprocessing": {**manifest["preprocessing"], "resize_mode": "fit"}}
    with pytest.raises(ArtifactError, match="invalid .unknown resize mode 'fit'"):
        preprocessing_of(bad)
    bad = {**manifest, "preprocessing": {**manifest["preprocessing"], "colour": "rgb"}}
    with pytest.raises(ArtifactError, match="invalid"):
        preprocessing_of(bad)
    other = {**manifest, "preprocessing": Preprocessing.vtab(48).to_dict()}
    with pytest.raises(ArtifactError, match="crops 48 px but the model takes 32"):
        preprocessing_of(other)


@pytest.mark.parametrize("consumer", ["calibration", "validate", "bench", "visualize"])
def test_every_consumer_reads_preprocessing_through_the_one_reader(tmp_path, monkeypatch,
                                                                     consumer):
    from dyt_edge import artifacts, manifest
    from dyt_edge.artifacts import ArtifactError

    run = _consumers()[consumer]
    # No record: one clear error, whatever else the manifest holds (the model record has a
    # preprocessing too; no consumer may fall back to it or to a default).
    d = tmp_path / "none"
    m = _manifest(d)
    del m["preprocessing"]
    artifacts.write_manifest(d, m)
    with pytest.raises(ArtifactError, match="records no preprocessing"):
        run(d, m)

    # A valid record goes through manifest.preprocessing_of, not through a copy of it.
    class Reached(Exception):
        pass

    seen = []

    def spy(raw):
        seen.append(raw)
        raise Reached

    monkeypatch.setattr(manifest, "preprocessing_of", spy)
    d = tmp_path / "ok"
    m = _manifest(d)
    with pytest.raises(Reached):
        run(d, m)
    assert len(seen) == 1
    assert Preprocessing.from_dict(seen[0]["preprocessing"]) == Preprocessing.vtab(32)
