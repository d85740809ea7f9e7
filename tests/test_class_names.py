"""Class names: recorded by training, read from checkpoints or --class-names, carried into the
manifest and the model's metadata, shown by inspect, and used per class by validate and bench
(matched by name against the data's own class names)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from dyt_edge import artifacts
from dyt_edge.checkpoint import read_checkpoint, save_model
from dyt_edge.class_names import METADATA_KEY, match_class_names, read_class_names_file
from dyt_edge.errors import CheckpointError, ConfigError
from dyt_edge.model import build_model

from .helpers import assert_one_line_error, cli, randomize_dyt, saved, tiny_config

NAMES = ["cat", "dog", "fish", "bird", "frog"]


def named_checkpoint(path: Path, names=NAMES) -> Path:
    model = randomize_dyt(build_model(tiny_config(depth=1)), seed=1)
    return save_model(model, path, metadata={METADATA_KEY: json.dumps(names)})


def labelled_npz(path: Path, labels, names=None, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
              "labels": np.asarray(labels, dtype=np.int64)}
    if names is not None:
        arrays["class_names"] = np.array(names)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def named_export(tmp_path_factory):
    """A tiny model that records NAMES, exported once as OpenVINO (model.onnx + model.xml)."""
    from dyt_edge.exporters.pipeline import ExportOptions, export_checkpoint

    base = tmp_path_factory.mktemp("named")
    ckpt = named_checkpoint(base / "named.safetensors")
    export_checkpoint(ckpt, base / "export", ExportOptions(format="openvino", simplify=False))
    return base / "export"


@pytest.fixture(scope="module")
def reference_predictions(named_export):
    """The PyTorch reference's top-1 class of each image of the test data (40 random images)."""
    from dyt_edge.runtimes import open_runtime

    labelled_npz(named_export.parent / "probe.npz", np.zeros(40))
    from dyt_edge.validate import load_validation_data

    info = artifacts.load_artifact(named_export).info
    images, _ = load_validation_data(info, str(named_export.parent / "probe.npz"), 512)
    with open_runtime("pytorch", named_export) as rt:
        return rt.run(images.images.numpy()).logits.argmax(1)


# -- reading -----------------------------------------------------------------------------------

def test_class_names_file(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("\ufeff cat \n\ndog\r\n  \nfish\n", encoding="utf-8")
    assert read_class_names_file(f) == ["cat", "dog", "fish"]
    f.write_text("cat\ndog\ncat\n")
    with pytest.raises(ConfigError, match="'cat' more than once"):
        read_class_names_file(f)
    f.write_text("\n \n")
    with pytest.raises(ConfigError, match="holds no class names"):
        read_class_names_file(f)
    f.write_bytes(b"\xff\xfe\x00c")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_class_names_file(f)
    with pytest.raises(ConfigError, match="does not exist"):
        read_class_names_file(tmp_path / "missing.txt")


def test_checkpoint_records_and_overrides_class_names(tmp_path):
    ckpt = named_checkpoint(tmp_path / "m.safetensors")
    loaded = read_checkpoint(ckpt)
    assert loaded.class_names == NAMES
    assert loaded.class_names_source == "dyt-edge metadata (dyt_edge.class_names)"
    f = tmp_path / "other.txt"
    f.write_text("\n".join(["a", "b", "c", "d", "e"]) + "\n")
    other = read_checkpoint(ckpt, class_names=f)
    assert other.class_names == ["a", "b", "c", "d", "e"]
    assert other.class_names_source == f"--class-names {f}"
    f.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="lists 2 class names but the model has 5 classes"):
        read_checkpoint(ckpt, class_names=f)
    plain = saved(tmp_path, build_model(tiny_config(depth=1)), "plain")
    assert read_checkpoint(plain).class_names is None
    assert read_checkpoint(plain).class_names_source is None
    bad = named_checkpoint(tmp_path / "bad.safetensors", NAMES[:3])
    with pytest.raises(CheckpointError, match="records 3 class names"):
        read_checkpoint(bad)
    assert read_checkpoint(bad, class_names=NAMES).class_names == NAMES  # the fix works


def test_training_saves_the_data_class_names(tmp_path):
    from dyt_edge.train import TrainConfig, train

    from .helpers import write_folder

    root = write_folder(tmp_path / "pets", 24, classes=2)  # folders class0, class1
    out = tmp_path / "pets.safetensors"
    train(TrainConfig(data=str(root), img_size=32, patch_size=8, embed_dim=32, depth=1,
                      num_heads=2, epochs=1, batch_size=8, threads=1, output=str(out)))
    loaded = read_checkpoint(out)
    assert loaded.class_names == ["class0", "class1"]
    assert json.loads(loaded.metadata[METADATA_KEY]) == ["class0", "class1"]


# -- export and inspect ------------------------------------------------------------------------

def test_export_records_class_names_in_manifest_and_metadata(named_export):
    from dyt_edge.exporters.openvino.ir import read_rt_info

    m = artifacts.load_artifact(named_export).manifest
    assert m["class_names"] == NAMES
    assert m["class_names_source"] == "dyt-edge metadata (dyt_edge.class_names)"
    meta = {p.key: p.value for p in onnx.load(str(named_export / "model.onnx")).metadata_props}
    assert json.loads(meta[METADATA_KEY]) == NAMES
    assert json.loads(read_rt_info(named_export / "model.xml")[METADATA_KEY]) == NAMES


def test_export_class_names_option(capsys, tmp_path):
    ckpt = saved(tmp_path, randomize_dyt(build_model(tiny_config(depth=1)), seed=1), "plain")
    names = tmp_path / "labels.txt"
    names.write_text("zero\none\n\ntwo\nthree\nfour\n")
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", ckpt, "-o", out, "--class-names", names,
                       "--no-validate", "--no-simplify")
    assert code == 0, err
    m = artifacts.load_artifact(out).manifest
    assert m["class_names"] == ["zero", "one", "two", "three", "four"]
    assert m["class_names_source"] == f"--class-names {names}"

    names.write_text("zero\none\n")
    out2 = tmp_path / "out2"
    code, _, err = cli(capsys, "export", ckpt, "-o", out2, "--class-names", names)
    assert_one_line_error(code, err, "lists 2 class names", "the model has 5 classes",
                          "give exactly 5 names")
    assert not out2.exists()
    # without names the manifest says so
    code, _, err = cli(capsys, "export", ckpt, "-o", out2, "--no-validate", "--no-simplify")
    assert code == 0, err
    m = artifacts.load_artifact(out2).manifest
    assert m["class_names"] is None and m["class_names_source"] is None


def test_inspect_shows_class_names(capsys, tmp_path):
    ckpt = named_checkpoint(tmp_path / "m.safetensors")
    code, out, err = cli(capsys, "inspect", ckpt)
    assert code == 0, err
    text = " ".join(out.split())
    assert "class names 5: cat, dog, fish, bird, frog" in text
    assert "dyt-edge metadata (dyt_edge.class_names)" in text
    code, out, err = cli(capsys, "inspect", ckpt, "--json", "-")
    info = json.loads(out)
    assert info["class_names"] == NAMES and info["class_names_source"].startswith("dyt-edge")
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"c{i}" for i in range(7)))
    code, _, err = cli(capsys, "inspect", ckpt, "--class-names", many)
    assert_one_line_error(code, err, "lists 7 class names but the model has 5 classes")
    plain = saved(tmp_path, build_model(tiny_config(depth=1)), "plain")
    code, out, _ = cli(capsys, "inspect", plain)
    assert "not recorded (pass --class-names FILE)" in " ".join(out.split())


# -- matching data against the model -------------------------------------------------------------

def test_match_class_names_cases():
    y = np.array([0, 1, 2, 1])
    same = match_class_names(["a", "b", "c"], ["a", "b", "c"], y, 3)
    assert same.relation == "same" and same.labels.tolist() == [0, 1, 2, 1]
    re = match_class_names(["a", "b", "c"], ["c", "a", "b"], y, 3)
    assert re.relation == "reordered" and re.labels.tolist() == [2, 0, 1, 0]
    assert re.names_from == "artifact" and "another order" in re.notes[0]
    sub = match_class_names(["a", "b", "c"], ["c", "b"], np.array([0, 1]), 3)
    assert sub.relation == "subset" and sub.labels.tolist() == [2, 1]
    diff = match_class_names(["a", "b", "c"], ["x", "y", "z"], y, 3)
    assert diff.relation == "different" and diff.labels is None
    assert diff.groups.tolist() == [0, 1, 2, 1] and diff.name(0) == "x"
    assert "may not correspond" in diff.notes[0]
    only = match_class_names(None, None, y, 3)
    assert only.relation == "unnamed" and only.name(2) == "2"
    out = match_class_names(["a", "b"], None, np.array([0, 5]), 2)
    assert out.relation == "out of range" and out.groups is None and "labels ignored" in \
        out.notes[0]
    assert match_class_names(["a"], ["a"], None, 1).groups is None


# -- validate and bench ----------------------------------------------------------------------------

def test_validate_reports_per_class_rows_with_names(capsys, named_export, tmp_path,
                                                     reference_predictions):
    from dyt_edge.validate import validate_artifact

    labels = np.arange(40) % 5
    data = labelled_npz(tmp_path / "same.npz", labels, NAMES)
    report = validate_artifact(named_export, "onnxruntime", data=str(data))
    classes = report.to_dict()["classes"]
    assert classes["relation"] == "same" and classes["names_from"] == "artifact"
    assert classes["accuracy"] is True
    rows = classes["rows"]
    assert [r["name"] for r in rows] == NAMES and [r["images"] for r in rows] == [8] * 5
    for r in rows:
        want = 100.0 * float((reference_predictions[labels == r["index"]] == r["index"]).mean())
        assert r["reference_accuracy_pct"] == pytest.approx(want)
        assert r["top1_agreement_pct"] == 100.0
    # the CLI prints the table, the JSON carries it
    out_json = tmp_path / "v.json"
    code, out, err = cli(capsys, "validate", named_export, "--target", "onnxruntime", "--data",
                         data, "--json", out_json)
    assert code == 0, err
    assert "Per class" in out and "fish" in out and "frog" in out
    assert json.loads(out_json.read_text())["classes"]["rows"] == rows


def test_validate_maps_reordered_names_and_refuses_mismatched_ones(named_export, tmp_path,
                                                                     reference_predictions):
    from dyt_edge.validate import validate_artifact

    # Labels chosen as the model's own predictions, written in the data's own class order:
    # mapped by name they give 100% accuracy, taken as they are they would not.
    order = ["frog", "bird", "fish", "dog", "cat"]
    data_labels = np.array([order.index(NAMES[p]) for p in reference_predictions])
    assert (reference_predictions == data_labels).mean() < 1.0
    data = labelled_npz(tmp_path / "reordered.npz", data_labels, order)
    report = validate_artifact(named_export, "onnxruntime", data=str(data))
    assert report.metrics["reference_accuracy_pct"] == 100.0
    assert report.classes["relation"] == "reordered"
    assert any("another order" in n for n in report.notes)
    assert {r["name"] for r in report.classes["rows"]} <= set(NAMES)

    other = labelled_npz(tmp_path / "other.npz", data_labels, ["a", "b", "c", "d", "e"])
    report = validate_artifact(named_export, "onnxruntime", data=str(other))
    assert report.metrics["reference_accuracy_pct"] is None
    assert report.classes["relation"] == "different" and not report.classes["accuracy"]
    assert all(r["reference_accuracy_pct"] is None for r in report.classes["rows"])
    assert {r["name"] for r in report.classes["rows"]} <= set("abcde")
    assert any("may not correspond" in n for n in report.notes)
    drop = next(c for c in report.checks if c.id == "accuracy_drop")
    assert drop.status == "n/a"

    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((4, 32, 32, 3), np.uint8))
    assert validate_artifact(named_export, "onnxruntime", data=str(unlabelled)).classes is None


def test_bench_reports_activation_per_class(capsys, named_export, tmp_path):
    from dyt_edge.bench import bench_artifact

    labels = np.arange(40) % 5
    data = labelled_npz(tmp_path / "same.npz", labels, NAMES)
    result = bench_artifact(named_export, "onnxruntime", batches=[4], duration=0.0,
                            warmup=0.0, data=str(data), baseline=False).to_dict()
    act = result["activation"]
    assert act["classes"]["relation"] == "same"
    rows = act["per_class"]
    assert [r["name"] for r in rows] == NAMES and [r["images"] for r in rows] == [8] * 5
    mean = sum(r["mean"] * r["images"] for r in rows) / 40
    assert mean == pytest.approx(act["mean"])
    assert any(r["mean"] != rows[0]["mean"] for r in rows)  # really per class
    code, out, err = cli(capsys, "bench", named_export, "--target", "onnxruntime", "--batch",
                         "4", "--duration", "0", "--warmup", "0", "--no-baseline", "--data",
                         data)
    assert code == 0, err
    assert "activation per class" in out and "frog" in " ".join(out.split())
