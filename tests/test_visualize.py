"""`dyt-edge visualize`: PNGs that really are PNGs, numbers behind them that equal what the model
does, and bad input as one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt_edge import artifacts
from dyt_edge.checkpoint import file_sha256, load_model, save_model
from dyt_edge.data import load_images
from dyt_edge.model import build_model
from dyt_edge.visualize import FIGURE_FILES, visualize

from .helpers import assert_one_line_error, cli, randomize_dyt, tiny_config
from .helpers.figures import assert_png, leftovers

FIGURES = ("activation_rates.png", "tokens.png", "activation_map.png")


# -- fixtures -------------------------------------------------------------------------------------

def digits_model(variant: str = "mlp", depth: int = 2, seed: int = 1):
    """A digits-shaped tiny DyT (32 px, patch 4: 64 patch tokens) with mixed gate decisions."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(patch_size=4, num_classes=10, depth=depth, variant=variant))
    return randomize_dyt(model, seed=seed, gate_std=1.0, gate_bias=0.2)


@pytest.fixture(scope="module")
def tmp_mod(tmp_path_factory):
    return tmp_path_factory.mktemp("visualize")


@pytest.fixture(scope="module")
def demo_ckpt(tmp_mod) -> Path:
    """A checkpoint recorded as trained on digits with target rate 0.7 (as `dyt-edge train`
    writes it)."""
    training = {"data": "digits", "target_rate": 0.7, "variant": "attn_mlp"}
    return save_model(digits_model("attn_mlp"), tmp_mod / "demo.safetensors",
                      metadata={"dyt_edge.training": json.dumps(training)})


@pytest.fixture(scope="module")
def plain_ckpt(tmp_mod) -> Path:
    """A checkpoint with no training record (no default data)."""
    return save_model(digits_model("mlp", seed=2), tmp_mod / "plain.safetensors")


@pytest.fixture(scope="module")
def npz_data(tmp_mod) -> Path:
    """20 labelled 32x32 images of 3 classes: a bright square at a class-dependent place."""
    rng = np.random.default_rng(0)
    images = (rng.random((20, 32, 32, 3)) * 40).astype(np.uint8)
    labels = np.arange(20) % 3
    for i, c in enumerate(labels):
        images[i, 8 * c:8 * c + 12, 4:20] = 230
    path = tmp_mod / "squares.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["a", "b", "c"]))
    return path


def reference_masks(ckpt: Path, data: str, samples: int, split=None):
    """What the model itself says, computed here independently of dyt_edge.visualize."""
    model = load_model(ckpt)
    imageset = load_images(data, model.config.preprocessing, split=split, limit=samples)
    with torch.no_grad():
        logits, masks = model(imageset.images, return_masks=True)
    return model, imageset, masks.numpy(), logits.argmax(-1).numpy()


# -- the figures and their numbers ----------------------------------------------------------------

def test_checkpoint_figures_show_the_models_measured_rates(tmp_path, demo_ckpt, npz_data):
    out = tmp_path / "figs"
    result = visualize(demo_ckpt, str(npz_data), out, images=4, samples=20)
    model, imageset, masks, preds = reference_masks(demo_ckpt, str(npz_data), 20)
    cfg = model.config
    assert masks.shape == (20, 4, 64)  # attn_mlp: two dispatchers per block, 2 blocks
    assert 0.05 < masks.mean() < 0.95, "fixture should give mixed decisions"

    rates = result.figures["activation_rates"]
    want = masks.mean(axis=(0, 2))
    np.testing.assert_allclose(rates["rates"], want, rtol=0, atol=1e-12)
    assert rates["dispatchers"] == cfg.dispatcher_names == [
        "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert rates["sites"] == ["attn", "mlp"]
    np.testing.assert_allclose(rates["by_block"], want.reshape(2, 2), atol=1e-12)
    assert rates["mean"] == pytest.approx(float(masks.mean()), abs=1e-12)
    np.testing.assert_allclose(rates["min"], masks.mean(axis=2).min(axis=0), atol=1e-12)
    np.testing.assert_allclose(rates["max"], masks.mean(axis=2).max(axis=0), atol=1e-12)
    assert rates["target_rate"] == 0.7  # from the checkpoint's training record

    tokens = result.figures["tokens"]
    shown = result.measurement.shown
    assert len(shown) == 4 and shown[:3] == [0, 1, 2]  # one of each class first
    assert tokens["masks"].shape == (4, 4, 8, 8)
    np.testing.assert_array_equal(tokens["masks"], masks[shown].reshape(4, 4, 8, 8))
    np.testing.assert_allclose(tokens["rates"], masks[shown].mean(axis=2), atol=1e-12)
    raw = imageset.raw(cfg.preprocessing)[shown].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(tokens["images"], raw, atol=1e-6)
    assert [r["label"] for r in tokens["rows"]] == ["a", "b", "c", "a"]
    names = ["a", "b", "c"]  # the model has 10 classes: predictions past the data's are numbers
    assert [r["prediction"] for r in tokens["rows"]] == [
        names[p] if p < 3 else str(p) for p in preds[shown]]
    assert tokens["columns"] == ["L0 attn", "L0 mlp", "L1 attn", "L1 mlp"]

    by_class = result.figures["activation_by_class"]
    labels = imageset.labels.numpy()
    assert by_class["classes"] == ["a", "b", "c"] and by_class["counts"] == [7, 7, 6]
    for c in range(3):
        np.testing.assert_allclose(by_class["rates"][c], masks[labels == c].mean(axis=(0, 2)),
                                   atol=1e-12)
    np.testing.assert_allclose(result.figures["activation_map"]["maps"],
                               masks.mean(axis=0).reshape(4, 8, 8), atol=1e-12)

    # the files: every figure a real PNG, sized by its content, plus the numbers as JSON
    assert [p.name for p in result.paths] == [*FIGURES, "activation_by_class.png",
                                              "activation.json"]
    for name in (*FIGURES, "activation_by_class.png"):
        assert_png(out / name)
    w, h = assert_png(out / "tokens.png")
    assert w > 5 * 80 and h > 4 * 80  # 5 columns (image + 4 dispatchers), 4 rows
    saved = json.loads((out / "activation.json").read_text())
    assert list(saved)[:4] == ["schema", "schema_version", "dyt_edge_version", "created"]
    assert saved["schema"] == "dyt-edge.visualize" and saved["schema_version"] == 1
    np.testing.assert_allclose(saved["activation_per_dispatcher"], want, atol=1e-12)
    assert saved["target_rate"] == 0.7 and saved["samples"] == 20
    assert saved["accuracy"] == pytest.approx(float((preds == labels).mean()))
    assert leftovers(out) == []


def test_cli_digits_default_for_the_demo_model(tmp_path, capsys, demo_ckpt):
    out = tmp_path / "digits-figs"
    code, stdout, err = cli(capsys, "visualize", demo_ckpt, "--samples", 24, "--images", 2,
                            "-o", out)
    assert code == 0, err
    _, _, masks, _ = reference_masks(demo_ckpt, "digits", 24, split="test")
    assert f"activation {masks.mean():.3f}" in stdout and "of digits" in stdout
    assert "target r = 0.7" in stdout
    for name in (*FIGURES, "activation_by_class.png", "activation.json"):
        assert f"wrote {out / name}" in stdout
    saved = json.loads((out / "activation.json").read_text())
    np.testing.assert_allclose(saved["activation_per_dispatcher"], masks.mean(axis=(0, 2)),
                               atol=1e-12)
    assert len(saved["shown"]) == 2
    assert set(saved["activation_by_class"]) <= {str(c) for c in range(10)}
    assert_png(out / "tokens.png")


def test_default_output_dir_for_a_checkpoint_does_not_block_its_export(tmp_path, monkeypatch,
                                                                      capsys, plain_ckpt,
                                                                      npz_data):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli(capsys, "visualize", plain_ckpt, "--data", npz_data, "--images", 1)
    assert code == 0, err
    figs = Path("dyt-edge-out") / "figures" / "plain"
    assert (figs / "activation_rates.png").is_file()
    artifacts.check_output_dir(artifacts.default_output_dir(plain_ckpt))  # export may go there
    # a checkpoint `dyt-edge train` did not write records no target rate
    assert json.loads((figs / "activation.json").read_text())["target_rate"] is None


def test_cli_json_carries_activation_json(tmp_path, capsys, plain_ckpt, npz_data):
    out = tmp_path / "figs"
    code, stdout, err = cli(capsys, "visualize", plain_ckpt, "--data", npz_data, "--images", 1,
                            "-o", out, "--json", "-")
    assert code == 0, err
    printed = json.loads(stdout)  # stdout holds the JSON alone; the lines went to stderr
    assert printed == json.loads((out / "activation.json").read_text())
    assert printed["schema"] == "dyt-edge.visualize" and f"wrote {out / 'tokens.png'}" in err
    report = tmp_path / "reports" / "vis.json"
    code, stdout, err = cli(capsys, "visualize", plain_ckpt, "--data", npz_data, "--images", 1,
                            "-o", out, "--json", report)
    assert code == 0, err
    assert json.loads(report.read_text()) == json.loads((out / "activation.json").read_text())
    assert f"wrote {report}" in stdout


def write_torch_artifact(directory: Path, ckpt: Path) -> Path:
    """An artifact directory the PyTorch reference runs (it rebuilds the recorded checkpoint):
    the manifest fields `dyt-edge export` writes that the runtimes read, without an ONNX file."""
    model = load_model(ckpt)
    cfg = model.config
    directory.mkdir(parents=True)
    manifest = artifacts.new_manifest(
        format="onnx", files={},
        source={"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt), "format": "dyt-edge",
                "layout": "dyt-edge", "training": None},
        model=cfg.to_dict(), variant=cfg.variant,
        dispatch={"mode": "topk", "capacity": None, "capacity_slots": None,
                  "dispatchers": cfg.dispatcher_names},
        batch="dynamic", preprocessing=cfg.preprocessing.to_dict())
    artifacts.write_manifest(directory, manifest)
    return directory


def test_artifact_masks_come_from_the_runtime(tmp_path, capsys, plain_ckpt, npz_data):
    art = write_torch_artifact(tmp_path / "art", plain_ckpt)
    result = visualize(art, str(npz_data), None, images=2, samples=20, target="pytorch")
    assert result.output == art / "figures"
    _, _, masks, _ = reference_masks(plain_ckpt, str(npz_data), 20)
    np.testing.assert_allclose(result.figures["activation_rates"]["rates"],
                               masks.mean(axis=(0, 2)), atol=1e-12)
    assert result.measurement.kind == "artifact" and result.measurement.target == "pytorch"
    assert result.figures["activation_rates"]["target_rate"] is None
    for name in FIGURES:
        assert_png(art / "figures" / name)
    # an artifact without an ONNX model cannot run on ONNX Runtime: one line
    code, _, err = cli(capsys, "visualize", art, "--data", npz_data, "--target", "onnxruntime")
    assert_one_line_error(code, err, "onnx")


# -- bad input ------------------------------------------------------------------------------------

@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "notes.txt"
    p.write_text("not a model\n")
    return p


@pytest.mark.parametrize("case", ["data-missing", "data-empty", "no-data", "neither-file",
                                  "neither-dir", "missing-path", "output-under-file",
                                  "images-zero", "samples-zero", "target-on-checkpoint",
                                  "unknown-target", "output-png"])
def test_bad_input_is_one_line(tmp_path, capsys, case, demo_ckpt, plain_ckpt, npz_data,
                               text_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    args, needles = {
        "data-missing": ([plain_ckpt, "--data", tmp_path / "nope.npz"], ["data not found"]),
        "data-empty": ([plain_ckpt, "--data", empty], ["no images"]),
        "no-data": ([plain_ckpt], ["--data is required"]),
        "neither-file": ([text_file], ["neither a DyT checkpoint nor an artifact"]),
        "neither-dir": ([empty], ["neither a checkpoint nor an artifact"]),
        "missing-path": ([tmp_path / "gone.pth"], ["does not exist"]),
        "output-under-file": ([demo_ckpt, "-o", text_file / "figs"], ["is a file"]),
        "images-zero": ([demo_ckpt, "--images", "0"], ["--images must be positive"]),
        "samples-zero": ([demo_ckpt, "--samples", "-3"], ["--samples must be positive"]),
        "target-on-checkpoint": ([demo_ckpt, "--target", "openvino"], ["is a checkpoint"]),
        "unknown-target": ([demo_ckpt, "--target", "tflite"], ["unknown target"]),
        "output-png": ([demo_ckpt, "-o", tmp_path / "x.png"], ["takes a directory"]),
    }[case]
    out_default = tmp_path / "figs"
    extra = [] if "-o" in args else ["-o", out_default]
    code, _, err = cli(capsys, "visualize", *args, *extra)
    assert_one_line_error(code, err, *needles)
    assert not out_default.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root may write to any directory")
def test_unwritable_output_is_one_line(tmp_path, capsys, demo_ckpt):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = cli(capsys, "visualize", demo_ckpt, "-o", locked / "figs")
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, err, "not writable")


def test_a_target_without_masks_stops_at_its_first_batch():
    from dyt_edge.errors import DytEdgeError
    from dyt_edge.visualize.runners import run_all

    calls = []

    def run(x):
        calls.append(len(x))
        return np.zeros((len(x), 2), np.float32), None

    with pytest.raises(DytEdgeError, match="no dispatch masks"):
        run_all(run, np.zeros((6, 3, 4, 4), np.float32), 2, None, None)
    assert calls == [2]


# -- a real export on ONNX Runtime ----------------------------------------------------------------

@pytest.mark.slow
def test_onnxruntime_masks_equal_the_pytorch_reference(tmp_path, plain_ckpt, npz_data):
    pytest.importorskip("onnxruntime")
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint

    art = tmp_path / "export"
    export_checkpoint(plain_ckpt, art, ExportOptions(simplify=False, validate=False))
    ref = visualize(art, str(npz_data), tmp_path / "ref", images=2, samples=20)
    ort = visualize(art, str(npz_data), tmp_path / "ort", images=2, samples=20,
                    target="onnxruntime")
    np.testing.assert_array_equal(ort.measurement.masks, ref.measurement.masks)
    assert ort.figures["activation_rates"]["rates"] == ref.figures["activation_rates"]["rates"]
    assert_png(tmp_path / "ort" / FIGURE_FILES["tokens"])
